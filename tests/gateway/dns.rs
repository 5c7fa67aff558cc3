//! Names with several addresses, as real providers have: connection fallback across addresses
//! and families (Happy Eyeballs), health of a multi-address instance, and the resolver's TTLs,
//! coalescing, failure cache and timeout. The gateway resolves through the test's own DNS
//! server (`dns_server.rs`) over UDP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::dns_server::{DnsServer, A, AAAA};
use crate::harness::*;

fn opts(dns: &DnsServer) -> GatewayOpts<'static> {
    GatewayOpts {
        gateway_extra: Box::leak(dns.gateway_conf().into_boxed_str()),
        log_format: Some("$status $upstream_addr $llm_instance"),
        ..Default::default()
    }
}

fn with_extra(dns: &DnsServer, extra: &str) -> GatewayOpts<'static> {
    let mut o = opts(dns);
    o.gateway_extra = Box::leak(format!("{}{extra}", dns.gateway_conf()).into_boxed_str());
    o
}

fn ok(r: &Resp) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// A listening socket whose accept queue is full, so connecting to it hangs (SYNs are dropped):
/// an address that swallows packets, like a dead host or a missing route.
struct BlackHole {
    _sockets: Vec<socket2::Socket>,
}

fn black_hole(addr: SocketAddr) -> BlackHole {
    use socket2::{Domain, Socket, Type};
    let l = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    l.bind(&addr.into()).unwrap();
    l.listen(0).unwrap();
    let mut sockets = vec![l];
    for _ in 0..4 {
        let c = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        c.set_nonblocking(true).unwrap();
        let _ = c.connect(&addr.into());
        sockets.push(c);
    }
    std::thread::sleep(Duration::from_millis(100));
    BlackHole { _sockets: sockets }
}

#[test]
fn a_dual_stack_name_serves_every_request_when_one_family_refuses() {
    // The case: the name resolves to ::1 and 127.0.0.1, the provider listens on IPv4
    // only. IPv6 comes first (RFC 8305), is refused, and the next address is tried at once.
    let dns = DnsServer::start();
    let mock = Mock::start("v4only");
    dns.set("dual.test", &["::1", "127.0.0.1"], 300);
    let ep = format!("http://dual.test:{}/v1/chat/completions", mock.port);
    let gw = Gateway::start_with(&chat_route(&ep, "sk-dual", &[]), opts(&dns));
    for i in 0..20 {
        let r = gw.chat("/v1/chat/completions", &chat_body("hi"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let lines = gw.log_lines(20);
    assert_eq!(lines.len(), 20);
    for l in &lines {
        // The address that really answered, not the nominal first one.
        assert_eq!(
            l,
            &format!("200 127.0.0.1:{} ai-proxy-openai-compatible", mock.port)
        );
    }
    assert_eq!(mock.llm_requests().len(), 20);
    // The Host header is the name, as the provider expects.
    assert_eq!(
        mock.last()["headers"]["host"],
        format!("dual.test:{}", mock.port)
    );
}

#[test]
fn a_refused_address_moves_on_to_the_next_of_the_same_family() {
    let dns = DnsServer::start();
    let mock = Mock::start("second");
    // 127.0.0.2 is loopback too, but nothing listens there: refused.
    dns.set("two.test", &["127.0.0.2", "127.0.0.1"], 300);
    let ep = format!("http://two.test:{}/v1/chat/completions", mock.port);
    let gw = Gateway::start_with(&chat_route(&ep, "sk", &[]), opts(&dns));
    for _ in 0..5 {
        let t = Instant::now();
        ok(&gw.chat("/v1/chat/completions", &chat_body("hi")));
        assert!(t.elapsed() < Duration::from_secs(2));
    }
    // Streams too.
    let r = gw.chat(
        "/v1/chat/completions",
        &json!({"stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 200);
    assert!(r.sse_data().contains(&"[DONE]".to_string()), "{}", r.text());
}

#[test]
fn a_black_holed_address_costs_the_attempt_delay_not_the_timeout() {
    let dns = DnsServer::start();
    let mock = Mock::start("alive");
    let _hole = black_hole(SocketAddr::from(([127, 0, 0, 3], mock.port)));
    dns.set("hole.test", &["127.0.0.3", "127.0.0.1"], 300);
    let ep = format!("http://hole.test:{}/v1/chat/completions", mock.port);
    // A 10 s timeout: waiting for the dead address would take all of it.
    let gw = Gateway::start_with(&chat_route(&ep, "sk", &["timeout: 10000"]), opts(&dns));
    let t = Instant::now();
    ok(&gw.chat("/v1/chat/completions", &chat_body("hi")));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(240) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn every_address_dead_is_a_clear_502_within_the_timeout() {
    let dns = DnsServer::start();
    let port = closed_port();
    let _hole = black_hole(SocketAddr::from(([127, 0, 0, 3], port)));
    dns.set("dead.test", &["127.0.0.2", "127.0.0.3"], 300);
    let ep = format!("http://dead.test:{port}/v1/chat/completions");
    let gw = Gateway::start_with(&chat_route(&ep, "sk-dead", &["timeout: 1000"]), opts(&dns));
    let t = Instant::now();
    let r = gw.chat("/v1/chat/completions", &chat_body("hi"));
    let took = t.elapsed();
    let e = r.openai_error(504);
    assert_eq!(e["code"], "upstream_timeout");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // Only refusals: 502, at once.
    dns.set("refused.test", &["127.0.0.2", "127.0.0.4"], 300);
    let ep = format!("http://refused.test:{port}/v1/chat/completions");
    let gw = Gateway::start_with(&chat_route(&ep, "sk-dead", &["timeout: 5000"]), opts(&dns));
    let t = Instant::now();
    let e = gw
        .chat("/v1/chat/completions", &chat_body("hi"))
        .openai_error(502);
    assert_eq!(e["code"], "upstream_unreachable", "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(!gw.error_log().contains("sk-dead"));
}

#[test]
fn answers_are_kept_for_their_ttl_and_then_followed() {
    let dns = DnsServer::start();
    let v4 = Mock::start("v4");
    // The same port on another loopback address: a second "host" for the same name.
    let moved = Mock::start_at("moved", &format!("127.0.0.5:{}", v4.port), &[]);
    dns.set("moving.test", &["127.0.0.1"], 1);
    dns.set("steady.test", &["127.0.0.1"], 300);
    let ep = |n: &str| format!("http://{n}:{}/v1/chat/completions", v4.port);
    let routes = format!(
        "{}  - id: steady\n    uri: /steady\n    plugins:\n      ai-proxy:\n        provider: openai-compatible\n        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n        override: {{ endpoint: \"{}\" }}\n",
        chat_route(&ep("moving.test"), "k", &[]),
        ep("steady.test")
    );
    let gw = Gateway::start_with(&routes, opts(&dns));
    let served_by = |path: &str| {
        let r = gw.chat(path, &chat_body("hi"));
        ok(&r);
        r.header("x-mock-name").unwrap().to_string()
    };
    assert_eq!(served_by("/v1/chat/completions"), "v4");
    assert_eq!(served_by("/steady"), "v4");
    dns.set("moving.test", &["127.0.0.5"], 1);
    dns.set("steady.test", &["127.0.0.5"], 300);
    // Within the TTL the cached answer is used...
    assert_eq!(served_by("/v1/chat/completions"), "v4");
    std::thread::sleep(Duration::from_millis(1300));
    // ...after it, the new one.
    assert_eq!(served_by("/v1/chat/completions"), "moved");
    assert_eq!(served_by("/steady"), "v4", "a 300 s TTL is still fresh");
    assert_eq!(dns.queries("steady.test", A), 1);
    assert!(moved.llm_requests().len() == 1);
}

#[test]
fn concurrent_lookups_of_one_name_are_one_query() {
    let dns = DnsServer::start();
    let mock = Mock::start("m");
    dns.set("busy.test", &["127.0.0.1"], 300);
    dns.delay(Duration::from_millis(400));
    let ep = format!("http://busy.test:{}/v1/chat/completions", mock.port);
    let gw = Gateway::start_with(&chat_route(&ep, "sk", &[]), opts(&dns));
    let port = gw.port;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let body = chat_body("hi").to_string();
                request(
                    port,
                    "POST",
                    "/v1/chat/completions",
                    &[("content-type", "application/json")],
                    body.as_bytes(),
                )
                .status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    assert_eq!(dns.queries("busy.test", A), 1);
    assert_eq!(dns.queries("busy.test", AAAA), 1);
}

#[test]
fn a_name_that_does_not_resolve_fails_fast_and_is_not_asked_again_at_once() {
    let dns = DnsServer::start();
    let ep = "http://nowhere.test:8000/v1/chat/completions";
    let gw = Gateway::start_with(&chat_route(ep, "sk-nx", &[]), opts(&dns));
    let e = gw
        .chat("/v1/chat/completions", &chat_body("hi"))
        .openai_error(502);
    assert_eq!(e["code"], "upstream_unreachable");
    assert!(
        e["message"].as_str().unwrap().contains("nowhere.test"),
        "{e}"
    );
    let asked = dns.queries("nowhere.test", A);
    assert!(asked >= 1);
    let t = Instant::now();
    for _ in 0..5 {
        gw.chat("/v1/chat/completions", &chat_body("hi"))
            .openai_error(502);
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(
        dns.queries("nowhere.test", A),
        asked,
        "the failure is cached"
    );
}

#[test]
fn a_silent_nameserver_costs_at_most_the_dns_timeout() {
    let dns = DnsServer::start();
    dns.silence("mute.test");
    let ep = "http://mute.test:8000/v1/chat/completions";
    let gw = Gateway::start_with(
        &chat_route(ep, "sk", &["timeout: 30000"]),
        with_extra(&dns, "    timeout: 0.5\n"),
    );
    let t = Instant::now();
    let e = gw
        .chat("/v1/chat/completions", &chat_body("hi"))
        .openai_error(502);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(e["message"].as_str().unwrap().contains("mute.test"), "{e}");
}

#[test]
fn the_last_good_addresses_outlive_a_dns_outage() {
    let dns = DnsServer::start();
    let mock = Mock::start("m");
    dns.set("flaky.test", &["127.0.0.1"], 1);
    let ep = format!("http://flaky.test:{}/v1/chat/completions", mock.port);
    let gw = Gateway::start_with(
        &chat_route(&ep, "sk", &[]),
        with_extra(&dns, "    timeout: 0.3\n"),
    );
    ok(&gw.chat("/v1/chat/completions", &chat_body("hi")));
    dns.silence("flaky.test");
    std::thread::sleep(Duration::from_millis(1200));
    for _ in 0..3 {
        ok(&gw.chat("/v1/chat/completions", &chat_body("hi")));
    }
    assert!(
        gw.error_log().contains("keeping its last known addresses"),
        "{}",
        gw.error_log()
    );
}

#[test]
fn the_gateways_own_client_uses_every_address_too() {
    // passthrough's first hop is made by the gateway's own HTTP client.
    let dns = DnsServer::start();
    let llm = Mock::start("llm");
    let echo = Mock::start("echo");
    dns.set("llm.test", &["::1", "127.0.0.2", "127.0.0.1"], 300);
    let routes = format!(
        "routes:\n  - id: pt\n    uri: /anything\n    plugins:\n      ai-proxy:\n        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n        model: {{ provider: openai, name: gpt-4 }}\n        override: {{ endpoint: \"http://llm.test:{}/v1/chat/completions\" }}\n        passthrough: true\n    upstream:\n      nodes:\n        \"127.0.0.1:{}\": 1\n",
        llm.port, echo.port
    );
    let gw = Gateway::start_with(&routes, opts(&dns));
    let r = gw.chat("/anything", &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(llm.llm_requests().len(), 1);
}

#[test]
fn a_multi_address_instance_goes_down_within_its_failures_and_stays_down() {
    let dns = DnsServer::start();
    let a = Mock::start("a");
    let b = Mock::start("b");
    // Instance a's name has a refusing address and a live one, and its answer changes every
    // second: the probe's health history must survive both.
    dns.set("multi.test", &["127.0.0.2", "127.0.0.1"], 1);
    let inst_a = format!("          - name: a\n            provider: openai-compatible\n            weight: 1\n            auth: {{ header: {{ Authorization: \"Bearer ka\" }} }}\n            options: {{ model: model-a }}\n            override: {{ endpoint: \"http://multi.test:{}/v1/chat/completions\" }}\n", a.port);
    let checks = "            checks:\n              active:\n                http_path: /health\n                healthy: { interval: 0.2, successes: 2 }\n                unhealthy: { interval: 0.2, http_failures: 3 }\n";
    let inst_b = format!("          - name: b\n            provider: openai-compatible\n            weight: 1\n            auth: {{ header: {{ Authorization: \"Bearer kb\" }} }}\n            options: {{ model: model-b }}\n            override: {{ endpoint: \"{}\" }}\n", b.chat_url());
    let routes = format!(
        "routes:\n  - id: m\n    uri: /chat\n    plugins:\n      ai-proxy-multi:\n        instances:\n{inst_a}{checks}{inst_b}"
    );
    let gw = Gateway::start_with(&routes, opts(&dns));
    let model = || {
        let r = gw.chat("/chat", &chat_body("hi"));
        ok(&r)["model"].as_str().unwrap().to_string()
    };
    std::thread::sleep(Duration::from_millis(600));
    let picks: Vec<String> = (0..4).map(|_| model()).collect();
    assert!(picks.contains(&"model-a".to_string()), "{picks:?}");
    // Probes reach it through the live address.
    assert!(a.requests().iter().any(|r| r["path"] == "/health"));

    a.set(json!({"health_status": 500}));
    // Three failed probes 0.2 s apart: out well within 1.5 s.
    std::thread::sleep(Duration::from_millis(1500));
    let before = a.llm_requests().len();
    // And it stays out while DNS keeps changing (the old code lost the failure count on
    // every rotation, and with one failure allowed it flapped).
    for round in 0..6 {
        dns.set(
            "multi.test",
            if round % 2 == 0 {
                &["127.0.0.1", "127.0.0.2"]
            } else {
                &["127.0.0.2", "127.0.0.1"]
            },
            1,
        );
        for _ in 0..3 {
            assert_eq!(model(), "model-b", "round {round}");
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(a.llm_requests().len(), before);
    let log = gw.error_log();
    assert_eq!(
        log.matches("instance a failed its health checks").count(),
        1,
        "{log}"
    );

    a.set(json!({"health_status": 200}));
    std::thread::sleep(Duration::from_millis(1200));
    let picks: Vec<String> = (0..4).map(|_| model()).collect();
    assert!(picks.contains(&"model-a".to_string()), "back: {picks:?}");
}
