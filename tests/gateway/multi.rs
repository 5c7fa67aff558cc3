//! ai-proxy-multi: smooth weighted and priority balancing, chash stickiness, fallback on 429/5xx,
//! refused connections and timeouts (plain, streaming, 1 MiB), max_retries, health checks.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

/// One instance of an ai-proxy-multi plugin, pointed at a mock (or a dead port).
struct Inst<'a> {
    name: &'a str,
    endpoint: String,
    weight: u32,
    priority: i64,
    extra: &'a str,
}

fn inst<'a>(name: &'a str, mock: &Mock, weight: u32) -> Inst<'a> {
    Inst {
        name,
        endpoint: mock.chat_url(),
        weight,
        priority: 0,
        extra: "",
    }
}

fn dead<'a>(name: &'a str, weight: u32) -> Inst<'a> {
    Inst {
        name,
        endpoint: format!("http://127.0.0.1:{}/v1/chat/completions", closed_port()),
        weight,
        priority: 0,
        extra: "",
    }
}

/// A route `/chat` with ai-proxy-multi; each instance's model is `model-<name>` and its key
/// `Bearer key-<name>`, so tests can tell which instance answered and with what.
fn multi_route(plugin_extra: &str, instances: &[Inst]) -> String {
    let mut s = format!(
        "routes:\n  - id: multi\n    uri: /chat\n    plugins:\n      ai-proxy-multi:\n{plugin_extra}        instances:\n"
    );
    for i in instances {
        s.push_str(&format!(
            "          - name: {n}\n            provider: openai-compatible\n            weight: {w}\n            priority: {p}\n            auth: {{ header: {{ Authorization: \"Bearer key-{n}\" }} }}\n            options: {{ model: model-{n} }}\n            override: {{ endpoint: \"{e}\" }}\n{x}",
            n = i.name,
            w = i.weight,
            p = i.priority,
            e = i.endpoint,
            x = i.extra
        ));
    }
    s
}

const FALLBACK: &str = "        fallback_strategy: [http_429, http_5xx]\n";
const LOG: &str = "$status $llm_instance $llm_attempts $upstream_addr $llm_model";

fn model(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["model"].as_str().unwrap().to_string()
}

fn ask(gw: &Gateway) -> Resp {
    gw.chat("/chat", &chat_body("What is 1+1?"))
}

#[test]
fn weights_8_2_give_exactly_8_and_2_in_every_10_interleaved() {
    let a = Mock::start("a");
    let b = Mock::start("b");
    let gw = Gateway::start(&multi_route("", &[inst("a", &a, 8), inst("b", &b, 2)]));
    let mut counts = (0, 0);
    for window in 0..100 {
        let picks: Vec<String> = (0..10).map(|_| model(&ask(&gw))).collect();
        let n_b = picks.iter().filter(|m| *m == "model-b").count();
        assert_eq!(n_b, 2, "window {window}: {picks:?}");
        // Interleaved: never eight a's in a row within a window.
        assert!(
            !picks.windows(8).any(|w| w.iter().all(|m| m == "model-a")),
            "window {window}: {picks:?}"
        );
        counts.0 += 10 - n_b;
        counts.1 += n_b;
    }
    assert_eq!(counts, (800, 200));
    assert_eq!(a.llm_requests().len(), 800);
}

#[test]
fn higher_priority_first_and_lower_tiers_only_when_it_cannot_serve() {
    let high = Mock::start("high");
    let low = Mock::start("low");
    let mut h = inst("high", &high, 1);
    h.priority = 10;
    let gw = Gateway::start(&multi_route(FALLBACK, &[inst("low", &low, 5), h]));
    for _ in 0..10 {
        assert_eq!(model(&ask(&gw)), "model-high");
    }
    assert!(low.llm_requests().is_empty());
    // The high tier fails: its requests fall back to the low tier.
    let r = gw.chat_with("/chat", &[("x-mock-status", "500")], &chat_body("hi"));
    // Both tiers see the header and fail, so the client gets the last answer (the low tier's).
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["message"], "mock low error 500");
    high.set(json!({"status": 503}));
    assert_eq!(model(&ask(&gw)), "model-low");
}

#[test]
fn zero_weights_everywhere_mean_equal_shares() {
    // Seed 003 uses weight 0 on every instance.
    let a = Mock::start("a0");
    let b = Mock::start("b0");
    let gw = Gateway::start(&multi_route("", &[inst("a", &a, 0), inst("b", &b, 0)]));
    let picks: Vec<String> = (0..10).map(|_| model(&ask(&gw))).collect();
    assert_eq!(
        picks.iter().filter(|m| *m == "model-a").count(),
        5,
        "{picks:?}"
    );
}

#[test]
fn chash_keeps_a_client_on_one_instance() {
    let mocks: Vec<Mock> = ["c1", "c2", "c3"].iter().map(|n| Mock::start(n)).collect();
    let instances: Vec<Inst> = ["c1", "c2", "c3"]
        .iter()
        .zip(&mocks)
        .map(|(n, m)| inst(n, m, 1))
        .collect();
    let gw = Gateway::start(&multi_route(
        "        balancer: { algorithm: chash, hash_on: header, key: X-User }\n",
        &instances,
    ));
    let mut used = std::collections::HashSet::new();
    for user in 0..12 {
        let user = format!("user-{user}");
        let first = model(&gw.chat_with("/chat", &[("X-User", &user)], &chat_body("hi")));
        for _ in 0..5 {
            assert_eq!(
                model(&gw.chat_with("/chat", &[("X-User", &user)], &chat_body("hi"))),
                first,
                "{user}"
            );
        }
        used.insert(first);
    }
    assert!(used.len() >= 2, "12 users all on one instance: {used:?}");
}

#[test]
fn two_instances_on_one_host_with_different_keys_stay_two() {
    let shared = Mock::start("shared");
    let gw = Gateway::start(&multi_route(
        "",
        &[inst("k1", &shared, 1), inst("k2", &shared, 1)],
    ));
    let picks: Vec<String> = (0..4).map(|_| model(&ask(&gw))).collect();
    assert_eq!(picks, vec!["model-k1", "model-k2", "model-k1", "model-k2"]);
    let auths: Vec<String> = shared
        .llm_requests()
        .iter()
        .map(|r| r["headers"]["authorization"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        auths,
        vec![
            "Bearer key-k1",
            "Bearer key-k2",
            "Bearer key-k1",
            "Bearer key-k2"
        ]
    );
}

/// Sends requests that land on `first` (weights 1:0 pick it first) and checks the fallback went
/// to `second` with second's own model, key and endpoint.
fn assert_fell_back(
    first: &Mock,
    second: &Mock,
    resp: &Resp,
    gw: &Gateway,
    first_failed_at_all: bool,
) {
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["model"], "model-second");
    let sent = second.last();
    assert_eq!(sent["headers"]["authorization"], "Bearer key-second");
    let body: serde_json::Value = serde_json::from_str(sent["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["model"], "model-second");
    if first_failed_at_all {
        let tried = first.last();
        assert_eq!(tried["headers"]["authorization"], "Bearer key-first");
        let body: serde_json::Value =
            serde_json::from_str(tried["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["model"], "model-first");
    }
    let lines = gw.log_lines(1);
    let last = lines.last().unwrap();
    assert!(last.starts_with("200 second 2 "), "{last}");
}

fn fallback_pair(first: &Mock, second: &Mock, extra: &str) -> String {
    let mut f = inst("first", first, 1);
    f.priority = 1; // always tried first
    multi_route(
        &format!("{FALLBACK}{extra}"),
        &[f, inst("second", second, 1)],
    )
}

#[test]
fn fallback_on_429_and_500_with_the_next_instances_own_model_and_key() {
    for status in ["429", "500", "503"] {
        let first = Mock::start_with("first", &["--status", status]);
        let second = Mock::start("second");
        let gw = Gateway::start_with(
            &fallback_pair(&first, &second, ""),
            GatewayOpts {
                log_format: Some(LOG),
                ..Default::default()
            },
        );
        let r = ask(&gw);
        assert_fell_back(&first, &second, &r, &gw, true);
    }
}

#[test]
fn fallback_on_a_refused_connection_and_on_a_timeout() {
    let second = Mock::start("second");
    let mut d = dead("first", 1);
    d.priority = 1;
    let gw = Gateway::start_with(
        &multi_route(FALLBACK, &[d, inst("second", &second, 1)]),
        GatewayOpts {
            log_format: Some(LOG),
            ..Default::default()
        },
    );
    let r = ask(&gw);
    assert_fell_back(&second, &second, &r, &gw, false);

    let slow = Mock::start_with("first", &["--delay-ms", "3000"]);
    let second = Mock::start("second");
    let gw = Gateway::start_with(
        &fallback_pair(&slow, &second, "        timeout: 300\n"),
        GatewayOpts {
            log_format: Some(LOG),
            ..Default::default()
        },
    );
    let t = Instant::now();
    let r = ask(&gw);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    assert_fell_back(&slow, &second, &r, &gw, true);
}

/// Every failure kind, for a plain request, a stream and a 1 MiB body: the request ends up with
/// the second instance, rewritten for it, after two attempts.
#[test]
fn fallback_for_every_failure_kind_and_request_kind() {
    let text: String = (0..(1 << 20) / 8).map(|i| format!("w{:06} ", i)).collect();
    let big = json!({"messages": [{"role": "user", "content": text}]});
    let mut stream = chat_body("stream please");
    stream["stream"] = json!(true);
    // Passive cool-down off: every request must really try the failing instance first.
    let no_cooldown = "            checks: { passive: { cooldown: 0 } }\n";
    for kind in ["429", "500", "refused", "timeout"] {
        let first = match kind {
            "timeout" => Some(Mock::start_with("first", &["--delay-ms", "3000"])),
            "refused" => None,
            status => Some(Mock::start_with("first", &["--status", status])),
        };
        let second = Mock::start("second");
        let mut f = match &first {
            Some(m) => inst("first", m, 1),
            None => dead("first", 1),
        };
        f.priority = 1;
        f.extra = no_cooldown;
        let gw = Gateway::start_with(
            &multi_route(
                &format!("{FALLBACK}        timeout: 400\n"),
                &[f, inst("second", &second, 1)],
            ),
            GatewayOpts {
                log_format: Some(LOG),
                ..Default::default()
            },
        );
        let r = gw.chat("/chat", &chat_body("plain"));
        assert_eq!(
            r.json()["model"],
            "model-second",
            "{kind} plain: {}",
            r.text()
        );
        let r = gw.chat("/chat", &stream);
        let data = r.sse_data();
        assert_eq!(
            data.last().map(String::as_str),
            Some("[DONE]"),
            "{kind} stream"
        );
        assert!(
            data[0].contains("\"model\":\"model-second\""),
            "{kind} stream: {}",
            data[0]
        );
        let r = gw.chat("/chat", &big);
        assert_eq!(r.json()["model"], "model-second", "{kind} 1 MiB");
        let sent = second.last();
        let b: serde_json::Value = serde_json::from_str(sent["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            b["messages"][0]["content"].as_str().unwrap(),
            text,
            "{kind}: the fallback got the whole body"
        );
        assert_eq!(b["model"], "model-second");
        assert_eq!(sent["headers"]["authorization"], "Bearer key-second");
        if let Some(first) = &first {
            let tried = first.llm_requests();
            assert_eq!(
                tried.len(),
                3,
                "{kind}: the first instance was tried each time"
            );
            let b: serde_json::Value =
                serde_json::from_str(tried[2]["body"].as_str().unwrap()).unwrap();
            assert_eq!(
                b["model"], "model-first",
                "{kind}: each attempt is rewritten for its own instance"
            );
            assert_eq!(b["messages"][0]["content"].as_str().unwrap(), text);
        }
        let lines = gw.log_lines(3);
        assert!(
            lines.iter().all(|l| l.starts_with("200 second 2 ")),
            "{kind}: {lines:?}"
        );
    }
}

#[test]
fn without_a_fallback_strategy_the_first_answer_is_final() {
    let first = Mock::start_with("first", &["--status", "500"]);
    let second = Mock::start("second");
    let mut f = inst("first", &first, 1);
    f.priority = 1;
    let gw = Gateway::start(&multi_route("", &[f, inst("second", &second, 1)]));
    let r = ask(&gw);
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["message"], "mock first error 500");
    assert!(second.llm_requests().is_empty());
}

#[test]
fn a_single_instance_is_never_retried() {
    let only = Mock::start_with("only", &["--status", "500"]);
    let gw = Gateway::start_with(
        &multi_route(FALLBACK, &[inst("only", &only, 1)]),
        GatewayOpts {
            log_format: Some(LOG),
            ..Default::default()
        },
    );
    assert_eq!(ask(&gw).status, 500);
    assert_eq!(only.llm_requests().len(), 1);
    assert!(gw.log_lines(1)[0].starts_with("500 only 1 "));
}

#[test]
fn max_retries_bounds_the_attempts_and_the_last_answer_wins() {
    let mocks: Vec<Mock> = ["m1", "m2", "m3"]
        .iter()
        .map(|n| Mock::start_with(n, &["--status", "500"]))
        .collect();
    let mut instances: Vec<Inst> = ["m1", "m2", "m3"]
        .iter()
        .zip(&mocks)
        .map(|(n, m)| inst(n, m, 1))
        .collect();
    for (i, x) in instances.iter_mut().enumerate() {
        x.priority = 10 - i as i64; // tried in order m1, m2, m3
    }
    let gw = Gateway::start_with(
        &multi_route(&format!("{FALLBACK}        max_retries: 1\n"), &instances),
        GatewayOpts {
            log_format: Some(LOG),
            ..Default::default()
        },
    );
    let r = ask(&gw);
    assert_eq!(r.status, 500);
    assert_eq!(
        r.json()["error"]["message"],
        "mock m2 error 500",
        "the last attempt's own body"
    );
    assert_eq!(mocks[0].llm_requests().len(), 1);
    assert_eq!(mocks[1].llm_requests().len(), 1);
    assert!(mocks[2].llm_requests().is_empty());
    assert!(
        gw.log_lines(1)[0].starts_with("500 m2 2 "),
        "{}",
        gw.log_lines(1)[0]
    );
}

#[test]
fn when_no_instance_answers_the_client_gets_502() {
    let gw = Gateway::start_with(
        &multi_route(FALLBACK, &[dead("x", 1), dead("y", 1)]),
        GatewayOpts {
            log_format: Some(LOG),
            ..Default::default()
        },
    );
    let e = ask(&gw).openai_error(502);
    assert_eq!(e["code"], "no_instance_answered");
    assert!(
        e["message"].as_str().unwrap().contains("2 instances"),
        "{e}"
    );
    assert!(
        gw.log_lines(1)[0].starts_with("502 "),
        "{}",
        gw.log_lines(1)[0]
    );
}

#[test]
fn active_checks_take_a_failing_instance_out_and_bring_it_back() {
    let a = Mock::start("a");
    let b = Mock::start("b");
    let checks = "            checks:\n              active:\n                type: http\n                http_path: /health\n                healthy: { interval: 1, successes: 1 }\n                unhealthy: { interval: 1, http_failures: 1 }\n";
    let mut ia = inst("a", &a, 1);
    ia.extra = checks;
    let gw = Gateway::start(&multi_route("", &[ia, inst("b", &b, 1)]));
    std::thread::sleep(Duration::from_millis(300));
    let picks: Vec<String> = (0..4).map(|_| model(&ask(&gw))).collect();
    assert!(picks.contains(&"model-a".to_string()), "{picks:?}");
    // Probes carry the instance's auth.
    let probe = a
        .requests()
        .into_iter()
        .find(|r| r["path"] == "/health")
        .expect("no probe reached the instance");
    assert_eq!(probe["headers"]["authorization"], "Bearer key-a");

    a.set(json!({"health_status": 500}));
    std::thread::sleep(Duration::from_millis(2200)); // within two probe intervals
    let before = a.llm_requests().len();
    for _ in 0..6 {
        assert_eq!(model(&ask(&gw)), "model-b");
    }
    assert_eq!(a.llm_requests().len(), before);

    a.set(json!({"health_status": 200}));
    std::thread::sleep(Duration::from_millis(2200));
    let picks: Vec<String> = (0..4).map(|_| model(&ask(&gw))).collect();
    assert!(
        picks.contains(&"model-a".to_string()),
        "back in the pool: {picks:?}"
    );
}

#[test]
fn when_every_instance_is_unhealthy_all_are_used() {
    let a = Mock::start("a");
    let b = Mock::start("b");
    let checks = "            checks:\n              active:\n                http_path: /health\n                healthy: { interval: 1, successes: 1 }\n                unhealthy: { interval: 1, http_failures: 1 }\n";
    a.set(json!({"health_status": 500}));
    b.set(json!({"health_status": 500}));
    let (mut ia, mut ib) = (inst("a", &a, 1), inst("b", &b, 1));
    ia.extra = checks;
    ib.extra = checks;
    let gw = Gateway::start(&multi_route("", &[ia, ib]));
    std::thread::sleep(Duration::from_millis(1500));
    // Both really were found unhealthy by their probes...
    let log = gw.error_log();
    assert!(
        log.contains("instance a failed its health checks")
            && log.contains("instance b failed its health checks"),
        "{log}"
    );
    // ...and both are still used rather than none.
    let picks: Vec<String> = (0..4).map(|_| model(&ask(&gw))).collect();
    assert_eq!(
        picks.iter().filter(|m| *m == "model-a").count(),
        2,
        "{picks:?}"
    );
}

#[test]
fn passive_health_skips_a_failing_instance_for_a_cool_down() {
    let second = Mock::start("second");
    let mut d = dead("first", 1);
    d.priority = 1;
    d.extra = "            checks:\n              passive:\n                cooldown: 1\n                unhealthy: { tcp_failures: 2 }\n";
    let gw = Gateway::start_with(
        &multi_route(FALLBACK, &[d, inst("second", &second, 1)]),
        GatewayOpts {
            log_format: Some(LOG),
            ..Default::default()
        },
    );
    for _ in 0..2 {
        assert_eq!(model(&ask(&gw)), "model-second");
    }
    // Two failures in a row: the dead instance is skipped, requests go straight to `second`.
    assert_eq!(model(&ask(&gw)), "model-second");
    // Lines of requests on separate connections may land in either order: counted.
    let lines = gw.log_lines(3);
    let count = |p: &str| lines.iter().filter(|l| l.starts_with(p)).count();
    assert_eq!(
        (count("200 second 2 "), count("200 second 1 ")),
        (2, 1),
        "{lines:?}"
    );
    // After the cool-down it is tried again.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(model(&ask(&gw)), "model-second");
    assert!(
        gw.log_lines(4)[3].starts_with("200 second 2 "),
        "{:?}",
        gw.log_lines(4)
    );
}

#[test]
fn retry_on_failure_within_ms_stops_late_fallbacks() {
    let slow = Mock::start_with("first", &["--delay-ms", "400", "--status", "500"]);
    let second = Mock::start("second");
    let gw = Gateway::start(&fallback_pair(
        &slow,
        &second,
        "        retry_on_failure_within_ms: 200\n",
    ));
    let r = ask(&gw);
    assert_eq!(r.status, 500, "failed after the window: no fallback");
    assert!(second.llm_requests().is_empty());
}

#[test]
fn config_errors_name_the_field() {
    let base = "server: {pid_file: /tmp/x.pid}\nroutes:\n  - id: r\n    uri: /c\n    plugins:\n      ai-proxy-multi:\n";
    let one = "          - name: a\n            provider: openai\n            weight: 1\n            auth: { header: { Authorization: k } }\n";
    let cases: &[(&str, &str)] = &[
        (&format!("        instances:\n{one}{one}"), "routes[0].plugins.ai-proxy-multi.instances[1].name: duplicate instance name"),
        ("        instances: []\n", "routes[0].plugins.ai-proxy-multi.instances: at least one"),
        (&format!("        fallback_strategy: http_4xx\n        instances:\n{one}"), "routes[0].plugins.ai-proxy-multi.fallback_strategy: unknown strategy"),
        (&format!("        fallback_strategy: [http_429, nope]\n        instances:\n{one}"), "fallback_strategy[1]"),
        (&format!("        fallback_http_statuses: [302]\n        instances:\n{one}"), "fallback_http_statuses[0]"),
        (&format!("        balancer: {{ algorithm: random }}\n        instances:\n{one}"), "balancer.algorithm"),
        (&format!("        balancer: {{ algorithm: chash, hash_on: header }}\n        instances:\n{one}"), "needs balancer.key"),
        ("        instances:\n          - name: a\n            provider: openai\n            weight: 1\n            auth: {}\n            override: { endpoint: \"api.example.com/v1\" }\n", "instances[0].override.endpoint: invalid endpoint"),
        ("        instances:\n          - name: a\n            provider: openai\n            auth: {}\n", "missing field `weight`"),
        ("        instances:\n          - name: a\n            provider: openai\n            weight: 1\n            auth: {}\n            checks: { active: { type: udp } }\n", "instances[0].checks.active: type must be http, https or tcp"),
    ];
    for (plugin, want) in cases {
        let (ok, out) = check_config(&format!("{base}{plugin}"), &[]);
        assert!(!ok, "accepted: {plugin}");
        assert!(out.contains(want), "{want:?} not in {out}");
    }
    let (ok, out) = check_config(&format!("{base}        fallback_strategy: instance_health_and_rate_limiting\n        instances:\n{one}"), &[]);
    assert!(ok, "{out}");
}
