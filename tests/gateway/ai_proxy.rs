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
    let lines = gw.log_lines(2);
    assert!(lines[1].contains(" trace-abc-123 "), "{}", lines[1]);

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
    let mut c = Conn::open(gw.port);
    for i in 0..20 {
        let body = chat_body(&format!("request {i}")).to_string();
        let r = c.request(
            "POST",
            "/openai",
            &[("content-type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(mock.llm_requests().len(), 20);
}
