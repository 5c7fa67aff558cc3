//! Slow, broken and hostile clients: every client-side wait is bounded (header, body, idle
//! keep-alive, a client that stops reading), headers and connection counts are capped, and a
//! request whose body framing is broken ends its connection. Each limit is set short here and
//! checked from a raw socket, while a normal request on another connection is still served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

fn limits(extra: &str) -> GatewayOpts<'static> {
    GatewayOpts {
        gateway_extra: Box::leak(extra.to_string().into_boxed_str()),
        ..Default::default()
    }
}

fn raw(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Read until the server closes the connection; what it sent, and when it closed.
fn until_closed(s: &mut TcpStream) -> (String, Instant) {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (String::from_utf8_lossy(&out).to_string(), Instant::now()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A normal request still works while the slow client is being held.
fn still_serving(gw: &Gateway) {
    let r = gw.chat("/v1/chat/completions", &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The chat route on `mock` plus a plain route `/anything` to `upstream`.
fn chat_and_plain_routes(mock: &Mock, upstream: &Mock) -> String {
    format!(
        "{}  - id: plain\n    uri: /anything\n    upstream:\n      nodes:\n        \"127.0.0.1:{}\": 1\n",
        chat_route(&mock.chat_url(), "sk", &[]),
        upstream.port
    )
}

fn gateway(mock: &Mock, extra: &str) -> Gateway {
    Gateway::start_with(&chat_route(&mock.chat_url(), "sk", &[]), limits(extra))
}

#[test]
fn a_header_trickled_byte_by_byte_is_cut_at_client_header_timeout() {
    let mock = Mock::start("m");
    let gw = gateway(&mock, "  client_header_timeout: 1\n");
    let mut s = raw(gw.port);
    let start = Instant::now();
    let port = gw.port;
    // Keep sending, a byte every 200 ms: each read is quick, the header never completes.
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = w.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n");
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(200));
            if w.write_all(b"X").is_err() {
                return;
            }
        }
        let _ = port;
    });
    std::thread::sleep(Duration::from_millis(300));
    still_serving(&gw);
    let (answer, closed) = until_closed(&mut s);
    let took = closed - start;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_client_header_timeout() {
    let mock = Mock::start("m");
    let gw = gateway(&mock, "  client_header_timeout: 0.5\n");
    let mut s = raw(gw.port);
    let start = Instant::now();
    let (answer, closed) = until_closed(&mut s);
    assert!(answer.is_empty(), "{answer}");
    assert!(closed - start < Duration::from_millis(1500));
    still_serving(&gw);
}

#[test]
fn an_oversized_header_gets_431_and_memory_stays_bounded() {
    let mock = Mock::start("m");
    let gw = gateway(&mock, "  max_header_size: 16384\n");
    // One header just under the limit is fine.
    let big = "a".repeat(15_000);
    let r = gw.chat_with("/v1/chat/completions", &[("x-big", &big)], &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    // Over it: 431 and the connection closes.
    let mut s = raw(gw.port);
    let huge = "b".repeat(20_000);
    s.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n").as_bytes())
        .unwrap();
    let (answer, _) = until_closed(&mut s);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(answer.contains("request_header_too_large"), "{answer}");

    // The probe: many connections each sending 1 MB of header that never ends. Each
    // is cut at the limit, so the gateway's peak memory stays small.
    let chunk = vec![b'c'; 64 * 1024];
    let conns: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = raw(gw.port);
            s.write_all(b"GET / HTTP/1.1\r\nX-Junk: ").unwrap();
            for _ in 0..16 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
            s
        })
        .collect();
    still_serving(&gw);
    drop(conns);
    let hwm = peak_rss_kb(gw.pid());
    assert!(hwm < 96 * 1024, "peak RSS {hwm} kB");
}

fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_stalled_body_is_cut_at_client_body_timeout() {
    let mock = Mock::start("m");
    let gw = gateway(&mock, "  client_body_timeout: 0.5\n");
    let mut s = raw(gw.port);
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"messages\":",
    )
    .unwrap();
    let start = Instant::now();
    let (answer, closed) = until_closed(&mut s);
    let took = closed - start;
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    still_serving(&gw);
    assert!(
        mock.llm_requests().len() == 1,
        "the stalled request never went upstream"
    );
}

#[test]
fn a_body_trickled_under_the_read_timeout_is_cut_at_client_body_total_timeout() {
    let mock = Mock::start("m");
    let upstream = Mock::start("plain");
    let routes = chat_and_plain_routes(&mock, &upstream);
    let gw = Gateway::start_with(
        &routes,
        limits("  client_body_timeout: 5\n  client_body_total_timeout: 1\n"),
    );
    // Both the body the gateway reads itself (an AI route) and one it streams to a plain
    // upstream.
    for path in ["/v1/chat/completions", "/anything"] {
        let mut s = raw(gw.port);
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{")
                .as_bytes(),
        )
        .unwrap();
        let start = Instant::now();
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(150));
                if w.write_all(b" ").is_err() {
                    return;
                }
            }
        });
        let (_, closed) = until_closed(&mut s);
        let took = closed - start;
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "{path}: {took:?}"
        );
    }
    still_serving(&gw);
}

#[test]
fn an_idle_keepalive_connection_is_closed_at_keepalive_timeout() {
    let mock = Mock::start("m");
    let gw = gateway(&mock, "  keepalive_timeout: 0.5\n");
    let mut c = Conn::open(gw.port);
    let r = c.request(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        chat_body("hi").to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    // Reused at once: fine.
    let r = c.request(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        chat_body("again").to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    // Then idle: closed by the gateway after keepalive_timeout.
    let idle_from = Instant::now();
    assert!(c.wait_closed());
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(400) && idle < Duration::from_millis(1500),
        "{idle:?}"
    );
    // The same after a request the gateway answered itself.
    let mut s = raw(gw.port);
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    let idle_from = Instant::now();
    let (rest, closed) = until_closed(&mut s);
    assert!(rest.is_empty(), "{rest}");
    let idle = closed - idle_from;
    assert!(
        idle >= Duration::from_millis(400) && idle < Duration::from_millis(1500),
        "{idle:?}"
    );
}

/// The idle timer is one per connection, set lazily (`downstream::read_head`): a wait can start
/// with the timer still set for an earlier wait's deadline, so it fires early and must be set
/// again. Each idle gap here is shorter than the timeout but the gaps add up past it: no request
/// may be refused and the connection may not close before its last request's timeout.
#[test]
fn a_busy_keepalive_connection_is_kept_until_its_last_request_idles_out() {
    let mock = Mock::start("m");
    let gw = gateway(
        &mock,
        "  client_header_timeout: 1\n  keepalive_timeout: 1\n",
    );
    let mut c = Conn::open(gw.port);
    let body = chat_body("hi").to_string();
    for i in 0..4 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(600));
        }
        let r = c.request(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let idle_from = Instant::now();
    assert!(c.wait_closed());
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(2000),
        "{idle:?}"
    );
}

#[test]
fn a_client_that_stops_reading_is_cut_at_send_timeout() {
    let mock = Mock::start("m");
    let gw = Gateway::start_with(
        &chat_route(&mock.chat_url(), "sk", &[]),
        GatewayOpts {
            gateway_extra: "  send_timeout: 1\n",
            log_format: Some("$status $body_bytes_sent $request_time"),
            ..Default::default()
        },
    );
    // A long stream (~30 MB) the client never reads.
    let body = json!({"stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let mut s = raw(gw.port);
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-mock-chunks: 200000\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let start = Instant::now();
    // The request ends (and is logged) while the client still holds its connection unread.
    let lines = gw.log_lines(1);
    let took = start.elapsed();
    assert_eq!(lines.len(), 1, "the stalled request was not cut");
    assert!(took < Duration::from_secs(6), "{took:?}");
    let f: Vec<&str> = lines[0].split(' ').collect();
    let sent: u64 = f[1].parse().unwrap();
    assert!(sent < 25_000_000, "{}", lines[0]);
    still_serving(&gw);
    drop(s);
}

#[test]
fn beyond_max_connections_new_connections_get_503_and_accepted_ones_are_served() {
    let mock = Mock::start("m");
    let gw = gateway(&mock, "  max_connections: 4\n");
    // Three idle connections and one busy one fill the gateway.
    let idle: Vec<TcpStream> = (0..3).map(|_| raw(gw.port)).collect();
    let mut busy = Conn::open(gw.port);
    std::thread::sleep(Duration::from_millis(100));
    let mut refused = raw(gw.port);
    let (answer, _) = until_closed(&mut refused);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("server_busy"), "{answer}");
    // An accepted connection is unaffected.
    let r = busy.request(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        chat_body("hi").to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    // A freed slot is reused.
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    still_serving(&gw);
    assert!(gw
        .error_log()
        .contains("gateway.max_connections (4) reached"));
}

#[test]
fn a_bad_chunk_size_is_400_and_the_connection_closes() {
    let mock = Mock::start("m");
    let upstream = Mock::start("plain");
    let routes = chat_and_plain_routes(&mock, &upstream);
    let gw = Gateway::start_with(&routes, GatewayOpts::default());
    for size in ["zz", "-5"] {
        let mut s = raw(gw.port);
        s.write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n{{}}\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let (answer, _) = until_closed(&mut s);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{size}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        // The bytes after the broken chunk were never taken for a request.
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    }
    // A plain route streaming the body: the connection closes too.
    let mut s = raw(gw.port);
    s.write_all(b"POST /anything HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (answer, _) = until_closed(&mut s);
    assert!(answer.matches("HTTP/1.1").count() <= 1, "{answer}");
    still_serving_route(&gw);
}

fn still_serving_route(gw: &Gateway) {
    let r = gw.chat("/v1/chat/completions", &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn clients_hanging_up_mid_header_are_not_errors() {
    let mock = Mock::start("m");
    let gw = gateway(&mock, "");
    for i in 0..50 {
        let mut s = raw(gw.port);
        let part = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-{i}: ");
        s.write_all(part.as_bytes()).unwrap();
        drop(s);
    }
    still_serving(&gw);
    std::thread::sleep(Duration::from_millis(200));
    let log = gw.error_log();
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn the_file_descriptor_limit_is_raised_and_sizes_the_default_connection_cap() {
    let mock = Mock::start("m");
    let gw = Gateway::start_with(
        &chat_route(&mock.chat_url(), "sk", &[]),
        GatewayOpts {
            env: vec![("RUST_LOG", "info".to_string())],
            soft_nofile: Some(600),
            ..Default::default()
        },
    );
    still_serving(&gw);
    let log = gw.error_log();
    let hard = hard_nofile();
    if hard > 600 {
        assert!(
            log.contains(&format!("file-descriptor limit raised from 600 to {hard}")),
            "{log}"
        );
    }
    let expected = ((hard.saturating_sub(512)) / 2).clamp(64, 65_536);
    assert!(
        log.contains(&format!("max_connections {expected},")),
        "{log}"
    );
}

fn hard_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_max
}

#[test]
fn bad_client_limits_and_dns_settings_are_refused_naming_the_field() {
    let route = chat_route("http://127.0.0.1:9/v1/chat/completions", "sk", &[]);
    for (line, path) in [
        (
            "  client_header_timeout: 0",
            "gateway.client_header_timeout",
        ),
        (
            "  client_body_timeout: 1e300",
            "gateway.client_body_timeout",
        ),
        (
            "  client_body_total_timeout: -1",
            "gateway.client_body_total_timeout",
        ),
        ("  keepalive_timeout: .nan", "gateway.keepalive_timeout"),
        ("  send_timeout: 86401", "gateway.send_timeout"),
        ("  max_header_size: 100", "gateway.max_header_size"),
        ("  max_header_size: 524289", "gateway.max_header_size"),
        ("  max_connections: 0", "gateway.max_connections"),
        (
            "  dns: { nameservers: [\"resolver.local\"] }",
            "gateway.dns.nameservers[0]",
        ),
        ("  dns: { nameservers: [] }", "gateway.dns.nameservers"),
        ("  dns: { timeout: 120 }", "gateway.dns.timeout"),
        ("  dns: { min_ttl: 60, max_ttl: 10 }", "gateway.dns.max_ttl"),
        ("  dns: { error_ttl: -5 }", "gateway.dns.error_ttl"),
        ("  dns: { ttl: 5 }", "gateway.dns"),
    ] {
        let text = format!("gateway:\n  listen: 127.0.0.1:9999\n{line}\n{route}");
        let (ok, out) = check_config(&text, &[]);
        assert!(!ok, "{line} was accepted");
        assert!(out.contains(path), "{line}: {out}");
    }
    let good = format!(
        "gateway:\n  listen: 127.0.0.1:9999\n  client_header_timeout: 0.5\n  max_connections: 10\n  dns: {{ nameservers: [\"10.0.0.2\", \"[::1]:5353\"], timeout: 2, min_ttl: 0, max_ttl: 60, error_ttl: 0 }}\n{route}"
    );
    let (ok, out) = check_config(&good, &[]);
    assert!(ok, "{out}");
}

#[test]
fn a_large_header_limit_still_takes_a_body_sent_with_the_header() {
    // The header and the start of the body arrive together; what the gateway reads ahead for
    // the header must stay within Pingora's own 1 MiB header cap whatever follows it.
    let mock = Mock::start("m");
    let gw = gateway(&mock, "  max_header_size: 524288\n");
    let text = "x".repeat(3 * 1024 * 1024);
    let r = gw.chat("/v1/chat/completions", &chat_body(&text));
    assert_eq!(r.status, 200, "{}", r.text());
    let big = "h".repeat(500_000);
    let r = gw.chat_with(
        "/v1/chat/completions",
        &[("x-big", &big)],
        &chat_body(&text),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
