//! Streaming: include_usage injection, the usage-only event, token counting over every SSE edge
//! case, and proof that events reach the client while the provider is still generating.

use serde_json::json;

use crate::harness::*;

fn route(mock: &Mock) -> String {
    chat_route(
        &mock.chat_url(),
        "sk-upstream",
        &["options: { model: stream-model }"],
    )
}

fn stream_body(include_usage: Option<bool>) -> serde_json::Value {
    let mut b =
        json!({"messages": [{"role": "user", "content": "tell me a story"}], "stream": true});
    if let Some(u) = include_usage {
        b["stream_options"] = json!({"include_usage": u});
    }
    b
}

/// Fields of the default access log format, from the end: total, completion, prompt tokens.
fn logged_tokens(line: &str) -> (String, String, String) {
    let f = log_fields(line);
    let n = f.len();
    (f[n - 3].clone(), f[n - 2].clone(), f[n - 1].clone())
}

#[test]
fn gateway_asks_for_usage_and_hides_the_usage_event_the_client_did_not_ask_for() {
    let mock = Mock::start("s1");
    let gw = Gateway::start(&route(&mock));
    let r = gw.chat("/v1/chat/completions", &stream_body(None));
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    for d in &data[..data.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        assert!(
            !v["choices"].as_array().unwrap().is_empty(),
            "usage-only event leaked: {d}"
        );
    }
    // The provider was asked for usage...
    let sent: serde_json::Value =
        serde_json::from_str(mock.last()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["model"], "stream-model");
    // ...and the tokens were counted: prompt = 4 words, completion = 3 pieces.
    let lines = gw.log_lines(1);
    assert_eq!(
        logged_tokens(&lines[0]),
        ("4".into(), "3".into(), "7".into()),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(" ai_stream "), "{}", lines[0]);
}

#[test]
fn client_that_asked_for_usage_gets_the_usage_event() {
    let mock = Mock::start("s2");
    let gw = Gateway::start(&route(&mock));
    let r = gw.chat("/v1/chat/completions", &stream_body(Some(true)));
    let data = r.sse_data();
    let usage: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 7);
    let lines = gw.log_lines(1);
    assert_eq!(logged_tokens(&lines[0]).2, "7");
}

#[test]
fn tokens_are_counted_across_every_sse_edge_case() {
    let mock = Mock::start("s3");
    let gw = Gateway::start(&route(&mock));
    let cases: &[&[(&str, &str)]] = &[
        &[("x-mock-split", "true")],
        &[("x-mock-crlf", "true"), ("x-mock-split", "true")],
        &[("x-mock-comments", "true")],
        &[("x-mock-coalesce", "true")],
        &[("x-mock-usage", "inline")],
        &[
            ("x-mock-chunks", "40"),
            ("x-mock-split", "true"),
            ("x-mock-crlf", "true"),
            ("x-mock-comments", "true"),
        ],
    ];
    for (i, headers) in cases.iter().enumerate() {
        let r = gw.chat_with("/v1/chat/completions", headers, &stream_body(None));
        assert_eq!(r.status, 200);
        let data = r.sse_data();
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "case {i}");
        let content: String = data[..data.len() - 1]
            .iter()
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert!(content.starts_with("Hello from s3"), "case {i}: {content}");
        let lines = gw.log_lines(i + 1);
        let completion = if i == 5 { "40" } else { "3" };
        let (p, c, _) = logged_tokens(&lines[i]);
        assert_eq!(
            (p.as_str(), c.as_str()),
            ("4", completion),
            "case {i}: {}",
            lines[i]
        );
    }
}

/// The gateway's estimate when the provider's usage never arrives: prompt ≈ the prompt's JSON
/// bytes / 4, completion = events that carried content.
fn estimated_prompt(body: &serde_json::Value) -> u64 {
    (body["messages"].to_string().len() as u64 / 4).max(1)
}

#[test]
fn without_usage_from_the_provider_tokens_are_estimated() {
    let mock = Mock::start("s4");
    let gw = Gateway::start(&route(&mock));
    let body = stream_body(None);
    let r = gw.chat_with("/v1/chat/completions", &[("x-mock-usage", "none")], &body);
    assert_eq!(r.status, 200);
    let lines = gw.log_lines(1);
    let p = estimated_prompt(&body);
    assert_eq!(
        logged_tokens(&lines[0]),
        (p.to_string(), "3".into(), (p + 3).to_string()),
        "{}",
        lines[0]
    );
}

#[test]
fn a_client_that_hangs_up_mid_stream_is_still_charged_and_the_provider_is_cut_off() {
    use std::io::{Read, Write};
    let mock = Mock::start("s7");
    let gw = Gateway::start(&route(&mock));
    let body = stream_body(None);
    let raw = body.to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-mock-chunks: 30\r\nx-mock-chunk-delay-ms: 100\r\nContent-Length: {}\r\n\r\n{raw}",
            raw.len()
        )
        .as_bytes(),
    )
    .unwrap();
    // Read until three content events arrived, then hang up.
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while got.matches("\"content\":\"").count() < 4 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(s);
    let lines = gw.log_lines(1);
    let (p, c, _) = logged_tokens(&lines[0]);
    assert_eq!(p, estimated_prompt(&body).to_string(), "{}", lines[0]);
    let c: u64 = c.parse().unwrap();
    assert!(
        (3..30).contains(&c),
        "completion estimate {c}: {}",
        lines[0]
    );
    // The gateway stopped reading the provider: it did not send its 30 pieces.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let sent = mock.last()["events_sent_at_ms"].as_array().unwrap().len();
    assert!(
        sent < 25,
        "the provider kept streaming to nobody: {sent} events"
    );
}

#[test]
fn events_reach_the_client_while_the_provider_is_still_generating() {
    let mock = Mock::start("s5");
    let gw = Gateway::start(&route(&mock));
    let r = gw.chat_with(
        "/v1/chat/completions",
        &[("x-mock-chunk-delay-ms", "150"), ("x-mock-chunks", "6")],
        &stream_body(None),
    );
    assert_eq!(r.status, 200);
    let first_event_at = r
        .reads
        .iter()
        .find(|(_, bytes)| String::from_utf8_lossy(bytes).contains("data: {"))
        .map(|(t, _)| *t)
        .expect("no event received");
    let sent = mock.last();
    let sent_times: Vec<u64> = sent["events_sent_at_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let last_sent = *sent_times.last().unwrap();
    assert!(sent_times.len() >= 8, "{sent_times:?}");
    // The first event arrived before the provider even wrote its last one (~1 s later).
    assert!(
        first_event_at + 500 < last_sent,
        "first event at {first_event_at}, provider's last event at {last_sent}"
    );
    // And the client saw events spread over time, not in one burst at the end.
    let event_reads: Vec<u64> = r
        .reads
        .iter()
        .filter(|(_, b)| String::from_utf8_lossy(b).contains("data:"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        event_reads.len() >= 5,
        "events arrived in {} reads",
        event_reads.len()
    );
}

#[test]
fn options_stream_true_streams_but_is_not_an_ai_stream_request() {
    let mock = Mock::start("s6");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: chat
    uri: /v1/chat/completions
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth: {{ header: {{ Authorization: "Bearer k" }} }}
        options: {{ model: m, stream: true }}
        override: {{ endpoint: "{}" }}
"#,
        mock.chat_url()
    ));
    let r = gw.chat("/v1/chat/completions", &chat_body("hi"));
    assert_eq!(r.status, 200);
    assert_eq!(r.sse_data().last().map(String::as_str), Some("[DONE]"));
    let lines = gw.log_lines(1);
    assert!(lines[0].contains(" ai_chat "), "{}", lines[0]);
    assert_eq!(logged_tokens(&lines[0]).2, "4");
}
