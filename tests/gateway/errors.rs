//! Every error a client can get from the gateway itself: a JSON body in OpenAI's error shape
//! with the right status, and the gateway keeps serving afterwards.

use std::time::{Duration, Instant};

use crate::harness::*;

fn route(endpoint: &str, timeout_ms: u64) -> String {
    chat_route(endpoint, "k", &[&format!("timeout: {timeout_ms}")])
}

#[test]
fn bad_requests_are_400_with_a_reason() {
    let mock = Mock::start("e1");
    let gw = Gateway::start(&route(&mock.chat_url(), 5000));
    let p = "/v1/chat/completions";
    let e = gw
        .post(p, &[("content-type", "text/plain")], b"{}")
        .openai_error(400);
    assert_eq!(e["code"], "invalid_content_type");
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(
        gw.post(p, &[("content-type", "application/json")], b"")
            .openai_error(400)["code"],
        "empty_body"
    );
    assert_eq!(
        gw.post(
            p,
            &[("content-type", "application/json")],
            b"{\"messages\": ["
        )
        .openai_error(400)["code"],
        "invalid_json"
    );
    for not_object in ["[1,2]", "42", "\"text\"", "null"] {
        let e = gw
            .post(
                p,
                &[("content-type", "application/json")],
                not_object.as_bytes(),
            )
            .openai_error(400);
        assert!(
            e["message"].as_str().unwrap().contains("JSON object"),
            "{not_object}: {e}"
        );
    }
    // Content-Type is optional, and parameters on it are fine.
    assert_eq!(
        gw.post(p, &[], chat_body("hi").to_string().as_bytes())
            .status,
        200
    );
    assert_eq!(
        gw.post(
            p,
            &[("content-type", "application/json; charset=utf-8")],
            chat_body("hi").to_string().as_bytes()
        )
        .status,
        200
    );
    assert_eq!(
        mock.llm_requests().len(),
        2,
        "bad requests must not reach the provider"
    );
}

#[test]
fn no_route_is_404() {
    let mock = Mock::start("e2");
    let gw = Gateway::start(&route(&mock.chat_url(), 5000));
    let e = request(gw.port, "GET", "/nope", &[], b"").openai_error(404);
    assert_eq!(e["code"], "route_not_found");
}

#[test]
fn unreachable_providers_are_502() {
    let gw = Gateway::start(&route(
        &format!("http://127.0.0.1:{}/v1/chat/completions", closed_port()),
        5000,
    ));
    let e = gw
        .chat("/v1/chat/completions", &chat_body("hi"))
        .openai_error(502);
    assert_eq!(e["code"], "upstream_unreachable");
    let gw = Gateway::start(&route(
        "http://no-such-host.invalid/v1/chat/completions",
        5000,
    ));
    gw.chat("/v1/chat/completions", &chat_body("hi"))
        .openai_error(502);
    let lines = gw.log_lines(1);
    assert!(lines[0].contains("\" 502 "), "{}", lines[0]);
}

#[test]
fn a_provider_that_hangs_up_is_502() {
    let mock = Mock::start("e3");
    let gw = Gateway::start(&route(&mock.chat_url(), 5000));
    let e = gw
        .chat_with(
            "/v1/chat/completions",
            &[("x-mock-close", "true")],
            &chat_body("hi"),
        )
        .openai_error(502);
    assert!(!e["message"].as_str().unwrap().is_empty());
    assert_eq!(
        gw.chat("/v1/chat/completions", &chat_body("hi")).status,
        200
    );
}

#[test]
fn a_slow_provider_is_504_after_the_plugin_timeout() {
    let mock = Mock::start("e4");
    let gw = Gateway::start(&route(&mock.chat_url(), 300));
    let t = Instant::now();
    let e = gw
        .chat_with(
            "/v1/chat/completions",
            &[("x-mock-delay-ms", "3000")],
            &chat_body("hi"),
        )
        .openai_error(504);
    let took = t.elapsed();
    assert_eq!(e["code"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(2500),
        "took {took:?}"
    );
    // Slow but within the timeout is fine.
    assert_eq!(
        gw.chat_with(
            "/v1/chat/completions",
            &[("x-mock-delay-ms", "100")],
            &chat_body("hi")
        )
        .status,
        200
    );
}

#[test]
fn a_stream_that_stalls_past_the_timeout_is_cut_off() {
    let mock = Mock::start("e5");
    let gw = Gateway::start(&route(&mock.chat_url(), 400));
    let mut body = chat_body("hi");
    body["stream"] = serde_json::json!(true);
    let t = Instant::now();
    let mut c = Conn::open(gw.port);
    let raw = body.to_string();
    c.send_raw(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-mock-chunk-delay-ms: 2000\r\nContent-Length: {}\r\n\r\n{raw}",
            raw.len()
        )
        .as_bytes(),
    );
    // The answer started (200, first event), then the provider went quiet longer than the
    // timeout: the gateway ends the stream instead of hanging.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.read_response()));
    assert!(
        t.elapsed() < Duration::from_millis(1900),
        "took {:?}",
        t.elapsed()
    );
    if let Ok(r) = r {
        assert_eq!(r.status, 200);
        assert!(!r.text().contains("[DONE]"));
    }
}

#[test]
fn failing_providers_never_take_the_gateway_down() {
    let mock = Mock::start("e6");
    let gw = Gateway::start(&route(&mock.chat_url(), 2000));
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let port = gw.port;
            std::thread::spawn(move || {
                let h: &[(&str, &str)] = match i % 4 {
                    0 => &[("x-mock-close", "true")],
                    1 => &[("x-mock-status", "500")],
                    2 => &[("x-mock-split", "true")],
                    _ => &[],
                };
                let mut headers = vec![("content-type", "application/json")];
                headers.extend_from_slice(h);
                request(
                    port,
                    "POST",
                    "/v1/chat/completions",
                    &headers,
                    chat_body("x").to_string().as_bytes(),
                )
                .status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        8,
        "{statuses:?}"
    );
    assert_eq!(
        gw.chat("/v1/chat/completions", &chat_body("still up"))
            .status,
        200
    );
}
