//! Request bodies of any size: a 1 MiB conversation goes through whole, with an exact
//! Content-Length, on a reused connection; chunked uploads and `Expect: 100-continue`; the body
//! limit answers a readable 413.

use serde_json::json;

use crate::harness::*;

fn route(mock: &Mock, max_body: Option<u64>) -> (String, String) {
    let routes = chat_route(&mock.chat_url(), "k", &["options: { model: big-model }"]);
    let extra = max_body
        .map(|m| format!("  max_body_size: {m}\n"))
        .unwrap_or_default();
    (routes, extra)
}

/// A JSON chat body of about `size` bytes with a recognisable long message.
fn big_body(size: usize) -> (serde_json::Value, String) {
    let text: String = (0..size / 8)
        .map(|i| format!("w{:06} ", i % 1_000_000))
        .collect();
    (
        json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]}),
        text,
    )
}

fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn a_one_mib_body_reaches_the_provider_whole_on_a_reused_connection() {
    let mock = Mock::start("big");
    let (routes, _) = route(&mock, None);
    let gw = Gateway::start(&routes);
    let (body, text) = big_body(1 << 20);
    let raw = body.to_string();
    assert!(raw.len() >= 1 << 20);
    let mut c = Conn::open(gw.port);
    for i in 0..3 {
        let r = c.request(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            raw.as_bytes(),
        );
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(
            r.json()["usage"]["prompt_tokens"],
            2 + (1 << 20) / 8,
            "request {i}"
        );
    }
    let reqs = mock.llm_requests();
    assert_eq!(reqs.len(), 3);
    for sent in reqs {
        let sent_body: serde_json::Value =
            serde_json::from_str(sent["body"].as_str().unwrap()).unwrap();
        assert_eq!(sent_body["messages"][1]["content"].as_str().unwrap(), text);
        assert_eq!(sent_body["model"], "big-model");
        assert_eq!(
            sent["headers"]["content-length"],
            sent["body_len"].to_string()
        );
        assert!(sent["headers"].get("transfer-encoding").is_none());
    }
}

#[test]
fn chunked_uploads_and_expect_continue() {
    let mock = Mock::start("chunked");
    let (routes, _) = route(&mock, None);
    let gw = Gateway::start(&routes);
    let (body, text) = big_body(300_000);
    let raw = body.to_string();

    let mut c = Conn::open(gw.port);
    let mut req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend(chunked(raw.as_bytes(), 7_000));
    c.send_raw(&req);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = mock.last();
    let sent_body: serde_json::Value =
        serde_json::from_str(sent["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent_body["messages"][1]["content"].as_str().unwrap(), text);
    assert_eq!(
        sent["headers"]["content-length"],
        sent["body_len"].to_string()
    );

    // Expect: 100-continue: the gateway says 100 before the client sends the body, and does not
    // pass the expectation on (it already has the body).
    use std::io::{Read, Write};
    let mut first = [0u8; 25];
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        raw.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.read_exact(&mut first).unwrap();
    assert!(
        String::from_utf8_lossy(&first).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    s.write_all(raw.as_bytes()).unwrap();
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&rest).contains("\"usage\"") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        rest.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&rest).contains("200 OK"));
    assert!(mock.last()["headers"].get("expect").is_none());
}

#[test]
fn bodies_over_the_limit_get_a_readable_413() {
    let mock = Mock::start("limit");
    let (routes, extra) = route(&mock, Some(100_000));
    let gw = Gateway::start_with(
        &routes,
        GatewayOpts {
            gateway_extra: &extra,
            ..Default::default()
        },
    );
    let (body, _) = big_body(200_000);
    let raw = body.to_string();

    // Declared too large: refused before reading; the client reads the answer, the unread body is
    // drained, and the connection serves the next request.
    let mut c = Conn::open(gw.port);
    let r = c.request(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        raw.as_bytes(),
    );
    let e = r.openai_error(413);
    assert_eq!(e["code"], "request_too_large");
    let ok = c.request(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        chat_body("next").to_string().as_bytes(),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());

    // Chunked, growing past the limit.
    let mut c = Conn::open(gw.port);
    let mut req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend(chunked(raw.as_bytes(), 16_000));
    c.send_raw(&req);
    let r = c.read_response();
    r.openai_error(413);
    // A partly read chunked body cannot be resumed on this connection: the gateway says so, then
    // reads the rest before closing, so the client is not reset.
    assert_eq!(r.header("connection"), Some("close"));

    // Under the limit is fine; nothing too large ever reached the provider.
    let (small, _) = big_body(50_000);
    assert_eq!(gw.chat("/v1/chat/completions", &small).status, 200);
    assert_eq!(mock.llm_requests().len(), 2);
}

#[test]
fn the_default_limit_is_16_mib() {
    let mock = Mock::start("deflimit");
    let (routes, _) = route(&mock, None);
    let gw = Gateway::start(&routes);
    let too_big = vec![b' '; 16 * 1024 * 1024 + 1];
    gw.post(
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        &too_big,
    )
    .openai_error(413);
}
