//! ai-proxy request shaping as seeds 000 and 002 show it: model and options from the plugin,
//! auth replaced, headers cleaned, request ids, provider answers relayed.

use serde_json::json;

use crate::harness::*;

fn route(mock: &Mock, extra: &str) -> String {
    format!(
        r#"
routes:
  - id: openai-route
    paths: ["/openai"]
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth:
          header:
            Authorization: "Bearer sk-configured"
        options:
          model: gpt-4o
        override:
          endpoint: "{}"
{extra}
"#,
        mock.url("/v1/chat/completions?api-version=1")
    )
}

#[test]
fn seed_000_the_plugin_sets_the_model_and_the_key() {
    let mock = Mock::start("openai");
    let gw = Gateway::start(&route(&mock, ""));
    let body = json!({"messages": [
        {"role": "system", "content": "You are a computer scientist."},
        {"role": "user", "content": "Explain in one sentence what a Turing machine is."}
    ]});
    let r = gw.chat("/openai", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o");
    assert_eq!(v["usage"]["prompt_tokens"], 14);

    let sent = mock.last();
    assert_eq!(sent["method"], "POST");
    assert_eq!(sent["path"], "/v1/chat/completions?api-version=1");
    assert_eq!(sent["headers"]["authorization"], "Bearer sk-configured");
    let sent_body: serde_json::Value =
        serde_json::from_str(sent["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent_body["model"], "gpt-4o");
    assert_eq!(sent_body["messages"], body["messages"]);
    assert_eq!(
        sent["headers"]["content-length"],
        sent["body_len"].to_string()
    );
}

#[test]
fn headers_are_cleaned_and_the_configured_auth_wins() {
    let mock = Mock::start("h");
    let gw = Gateway::start(&route(&mock, ""));
    let r = gw.chat_with(
        "/openai",
        &[
            ("Authorization", "Bearer client-key"),
            ("Accept-Encoding", "gzip, br"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "hop"),
            ("TE", "trailers"),
            ("X-Custom", "kept"),
            ("User-Agent", "test-agent"),
        ],
        &chat_body("hi"),
    );
    assert_eq!(r.status, 200);
    let h = &mock.last()["headers"];
    assert_eq!(h["authorization"], "Bearer sk-configured");
    assert!(h.get("accept-encoding").is_none(), "{h}");
    assert!(h.get("te").is_none(), "{h}");
    assert!(h.get("x-hop").is_none(), "{h}");
    assert_ne!(h["connection"], "keep-alive, X-Hop");
    assert_eq!(h["host"], format!("127.0.0.1:{}", mock.port));
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["user-agent"], "test-agent");
    assert_eq!(h["content-type"], "application/json");
}

#[test]
fn request_ids_are_generated_or_kept_and_reach_both_sides() {
    let mock = Mock::start("rid");
    let gw = Gateway::start(&route(&mock, ""));
    let r = gw.chat("/openai", &chat_body("hi"));
    let id = r.header("x-request-id").expect("X-Request-Id").to_string();
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(mock.last()["headers"]["x-request-id"], id.as_str());

    let r = gw.chat_with(
        "/openai",
        &[("X-Request-Id", "trace-abc-123")],
        &chat_body("hi"),
    );
    assert_eq!(r.header("x-request-id"), Some("trace-abc-123"));
    assert_eq!(mock.last()["headers"]["x-request-id"], "trace-abc-123");
    // Lines of requests on separate connections may land in either order.
    let lines = gw.log_lines(2);
    assert!(
        lines.iter().any(|l| l.contains(" trace-abc-123 ")),
        "{lines:?}"
    );

    // Errors carry it too.
    let r = gw.post("/openai", &[("content-type", "application/json")], b"{");
    assert_eq!(r.status, 400);
    assert!(r.header("x-request-id").is_some());
}

#[test]
fn plugin_options_overwrite_the_clients_fields() {
    let mock = Mock::start("opts");
    let gw2 = Gateway::start(&format!(
        r#"
routes:
  - id: r
    uri: /x
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth: {{ header: {{ Authorization: "Bearer k" }} }}
        options: {{ model: m, max_tokens: 512, temperature: 1.0, top_p: 0.5 }}
        override: {{ endpoint: "{}" }}
"#,
        mock.chat_url()
    ));
    let body = json!({"model": "client-model", "temperature": 0.1, "messages": [], "presence_penalty": 0.3});
    let r = gw2.chat("/x", &body);
    assert_eq!(r.status, 200);
    let sent: serde_json::Value =
        serde_json::from_str(mock.last()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["model"], "m");
    assert_eq!(sent["temperature"], 1.0);
    assert_eq!(sent["max_tokens"], 512);
    assert_eq!(sent["top_p"], 0.5);
    assert_eq!(sent["presence_penalty"], 0.3);
    let lines = gw2.log_lines(1);
    assert!(lines[0].contains("\"client-model\" \"m\""), "{}", lines[0]);
}

#[test]
fn provider_errors_are_relayed_with_status_body_and_type() {
    let mock = Mock::start("err");
    let gw = Gateway::start(&route(&mock, ""));
    for status in ["429", "500", "503", "400", "401"] {
        let r = gw.chat_with("/openai", &[("x-mock-status", status)], &chat_body("hi"));
        assert_eq!(r.status.to_string(), status);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.json()["error"]["message"],
            format!("mock err error {status}")
        );
    }
    let r = gw.chat_with(
        "/openai",
        &[
            ("x-mock-status", "502"),
            ("x-mock-error-body", "upstream says no"),
            ("x-mock-error-content-type", "text/plain"),
        ],
        &chat_body("hi"),
    );
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.text(), "upstream says no");
    // The gateway is fine afterwards.
    assert_eq!(gw.chat("/openai", &chat_body("hi")).status, 200);
}

#[test]
fn keepalive_false_closes_upstream_connections() {
    let mock = Mock::start("ka");
    let gw = Gateway::start(&route(&mock, "        keepalive: false"));
    assert_eq!(gw.chat("/openai", &chat_body("hi")).status, 200);
    assert_eq!(mock.last()["headers"]["connection"], "close");
}

#[test]
fn many_requests_share_one_client_connection() {
    let mock = Mock::start("conn");
    let gw = Gateway::start(&route(&mock, ""));
    chats_on_one_connection(&gw, 20);
    assert_eq!(mock.llm_requests().len(), 20);
}

/// `n` chat requests one after another on one client connection, each answered 200.
fn chats_on_one_connection(gw: &Gateway, n: usize) {
    let mut c = Conn::open(gw.port);
    for i in 0..n {
        let body = chat_body(&format!("request {i}")).to_string();
        let r = c.request(
            "POST",
            "/openai",
            &[("content-type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
}

#[test]
fn the_provider_request_comes_in_one_tcp_segment_without_delay() {
    let mock = Mock::start("segments");
    let gw = Gateway::start(&route(&mock, ""));
    let started = std::time::Instant::now();
    chats_on_one_connection(&gw, 3);
    // Header and body were held together and let go as soon as the body was written: not by the
    // kernel's own 200 ms limit on a corked socket, which three requests would add up to.
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_millis(600), "{took:?}");
    let sent = mock.llm_requests();
    assert_eq!(sent.len(), 3);
    for (i, r) in sent.iter().enumerate() {
        // One connection, pooled between the requests: each one corked and uncorked again.
        assert_eq!(r["conn_request"], i + 1, "{r}");
        assert_eq!(
            r["segments"], 1,
            "request {i} came in several segments: {r}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A stale pooled connection to a single instance

/// The mock's records of the request whose user message is `text`.
fn records_of(mock: &Mock, text: &str) -> Vec<serde_json::Value> {
    mock.llm_requests()
        .into_iter()
        .filter(|r| r["body"].as_str().unwrap_or("").contains(text))
        .collect()
}

/// Request 1 leaves a pooled connection behind that the mock drops when request 2 arrives.
fn pool_a_connection_the_provider_will_drop(gw: &Gateway, mock: &Mock) {
    let r = gw.chat_with(
        "/openai",
        &[("x-mock-close-next", "true")],
        &chat_body("first"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(records_of(mock, "first")[0]["conn_request"], 1);
    // Let the gateway put the connection back into its pool.
    std::thread::sleep(std::time::Duration::from_millis(200));
}

#[test]
fn a_stale_pooled_connection_is_retried_once_on_a_fresh_connection() {
    let mock = Mock::start("stale");
    let gw = Gateway::start(&route(&mock, ""));
    pool_a_connection_the_provider_will_drop(&gw, &mock);

    let r = gw.chat("/openai", &chat_body("second"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from stale"
    );

    let first = &records_of(&mock, "first")[0];
    let second = records_of(&mock, "second");
    assert_eq!(second.len(), 2, "{second:?}");
    // It went out on the pooled connection, which the mock dropped without answering...
    assert_eq!(second[0]["conn"], first["conn"]);
    assert_eq!(second[0]["conn_request"], 2);
    assert!(second[0]["status"].is_null(), "{}", second[0]);
    // ...and again, the same request, on a connection of its own, answered once.
    assert_ne!(second[1]["conn"], first["conn"]);
    assert_eq!(second[1]["conn_request"], 1);
    assert_eq!(second[1]["status"], 200);
    assert_eq!(second[1]["body"], second[0]["body"]);
    assert_eq!(
        second[1]["headers"]["authorization"],
        "Bearer sk-configured"
    );
    // That connection is not pooled (a retry cannot be sure the next one would be fresh).
    assert_eq!(second[1]["headers"]["connection"], "close");
    let answered = second.iter().filter(|r| r["status"] == 200).count();
    assert_eq!(answered, 1);

    let lines = gw.log_lines(2);
    assert!(lines[1].contains(" 200 "), "{}", lines[1]);
}

#[test]
fn a_stale_pooled_connection_is_retried_only_once() {
    let mock = Mock::start("stale2");
    let gw = Gateway::start(&route(&mock, ""));
    pool_a_connection_the_provider_will_drop(&gw, &mock);

    // The fresh connection fails too (the mock closes it without answering): no third attempt.
    let r = gw.chat_with("/openai", &[("x-mock-close", "true")], &chat_body("second"));
    let e = r.openai_error(502);
    assert_eq!(e["code"], "upstream_closed", "{e}");
    let second = records_of(&mock, "second");
    assert_eq!(second.len(), 2, "{second:?}");
    assert_eq!(second[0]["conn_request"], 2);
    assert_eq!(second[1]["conn_request"], 1);
}

#[test]
fn a_fresh_connection_that_fails_is_not_retried() {
    let mock = Mock::start("fresh");
    let gw = Gateway::start(&route(&mock, ""));
    let r = gw.chat_with("/openai", &[("x-mock-close", "true")], &chat_body("only"));
    r.openai_error(502);
    assert_eq!(records_of(&mock, "only").len(), 1);
}

/// Send `body` to the gateway on a connection of its own and read everything until it closes.
fn raw_exchange(gw: &Gateway, headers: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "POST /openai HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

#[test]
fn a_pooled_connection_that_fails_after_the_answer_started_is_not_retried() {
    let mock = Mock::start("cut");
    let gw = Gateway::start(&route(&mock, ""));
    // An ordinary first request leaves the connection in the pool.
    assert_eq!(gw.chat("/openai", &chat_body("first")).status, 200);
    std::thread::sleep(std::time::Duration::from_millis(200));

    // On it, the answer breaks off inside the body (the head is ~120 bytes, the body ~2 KB).
    let long = "word ".repeat(400);
    let body = chat_body("second").to_string();
    let got = raw_exchange(
        &gw,
        &format!("x-mock-truncate-at: 400\r\nx-mock-content: {long}\r\n"),
        &body,
    );
    // The client got the start of the provider's answer and then the connection ended: it is
    // not given a second answer spliced behind the first.
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(!got.contains("Hello"), "{got}");
    let second = records_of(&mock, "second");
    assert_eq!(
        second.len(),
        1,
        "retried after the answer started: {second:?}"
    );
    assert_eq!(
        second[0]["conn_request"], 2,
        "the pooled connection was not used"
    );

    // A head cut after a few bytes is an answer that started too.
    let r = gw.chat("/openai", &chat_body("third"));
    assert_eq!(r.status, 200);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let r = gw.chat_with(
        "/openai",
        &[("x-mock-truncate-at", "5")],
        &chat_body("fourth"),
    );
    r.openai_error(502);
    let fourth = records_of(&mock, "fourth");
    assert_eq!(
        fourth.len(),
        1,
        "retried after bytes of the head: {fourth:?}"
    );
    assert_eq!(
        fourth[0]["conn_request"], 2,
        "the pooled connection was not used"
    );
}

#[test]
fn the_retry_after_a_stale_connection_does_not_take_another_pooled_one() {
    // Two pooled connections, both dropped by the provider: the retry must open a new one, not
    // take the second stale one.
    let mock = Mock::start("stale-pool");
    let gw = Gateway::start(&route(&mock, ""));
    let port = gw.port;
    let both: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                request(
                    port,
                    "POST",
                    "/openai",
                    &[
                        ("content-type", "application/json"),
                        ("x-mock-close-next", "true"),
                        ("x-mock-delay-ms", "300"),
                    ],
                    chat_body(&format!("pool-{i}")).to_string().as_bytes(),
                )
            })
        })
        .collect();
    for t in both {
        assert_eq!(t.join().unwrap().status, 200);
    }
    let conns: std::collections::BTreeSet<String> = mock
        .llm_requests()
        .iter()
        .map(|r| r["conn"].to_string())
        .collect();
    assert_eq!(conns.len(), 2, "the two requests shared a connection");
    std::thread::sleep(std::time::Duration::from_millis(200));

    let r = gw.chat("/openai", &chat_body("third"));
    assert_eq!(r.status, 200, "{}", r.text());
    let third = records_of(&mock, "third");
    assert_eq!(third.len(), 2, "{third:?}");
    assert_eq!(third[0]["conn_request"], 2);
    assert_eq!(third[1]["conn_request"], 1);
}
