//! `passthrough` (seed 001, older `model:` schema): the gateway calls the LLM first, then sends the
//! LLM's answer as the body of the client's request (its method, path and query) to the route's own
//! upstream, and the client gets that upstream's reply. Mock A plays the LLM, mock B an
//! httpbin-style echo service.

use serde_json::{json, Value};

use crate::harness::*;

fn route(llm_endpoint: &str, echo: &Mock, passthrough: bool) -> String {
    format!(
        r#"
routes:
  - id: ai-proxy-route
    uri: /anything
    plugins:
      ai-proxy:
        auth:
          header:
            Authorization: "Bearer sk-llm-secret"
        model:
          provider: openai
          name: gpt-4
          options:
            max_tokens: 512
            temperature: 1.0
        override:
          endpoint: "{llm_endpoint}"
        passthrough: {passthrough}
    upstream:
      type: roundrobin
      nodes:
        "127.0.0.1:{echo_port}": 1
"#,
        echo_port = echo.port,
    )
}

fn seed_body() -> Value {
    json!({
        "messages": [
            {"role": "system", "content": "You are a mathematician"},
            {"role": "user", "content": "What is 1+1?"}
        ]
    })
}

fn sent_body(rec: &Value) -> Value {
    serde_json::from_str(rec["body"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {rec}"))
}

fn header<'a>(rec: &'a Value, name: &str) -> Option<&'a str> {
    rec["headers"][name].as_str()
}

/// `(prompt, completion, total)` from the default access log format.
fn logged_tokens(line: &str) -> (String, String, String) {
    let f = log_fields(line);
    let n = f.len();
    (f[n - 3].clone(), f[n - 2].clone(), f[n - 1].clone())
}

/// The LLM call mock A must have received for `seed_body()`.
fn assert_llm_call(llm: &Mock) {
    let reqs = llm.llm_requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let call = &reqs[0];
    assert_eq!(call["method"], "POST");
    assert_eq!(call["path"], "/v1/chat/completions");
    assert_eq!(header(call, "authorization"), Some("Bearer sk-llm-secret"));
    assert_eq!(header(call, "content-type"), Some("application/json"));
    assert_eq!(
        header(call, "host"),
        Some(format!("127.0.0.1:{}", llm.port).as_str())
    );
    assert_eq!(
        sent_body(call),
        json!({"messages": seed_body()["messages"], "model": "gpt-4", "max_tokens": 512, "temperature": 1.0})
    );
}

#[test]
fn the_llm_answer_is_sent_on_to_the_upstream_and_the_client_gets_its_reply() {
    let llm = Mock::start("llm");
    let echo = Mock::start("echo");
    let gw = Gateway::start(&route(&llm.chat_url(), &echo, true));
    let r = gw.chat_with(
        "/anything?x=1&y=two",
        &[("Authorization", "Bearer client-token"), ("X-Trace", "t-1")],
        &seed_body(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The reply is the echo service's, not the LLM's.
    assert_eq!(r.header("x-mock-name"), Some("echo"));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert!(r.header("x-request-id").is_some());

    assert_llm_call(&llm);

    // What the upstream got: the client's method, path and query; the LLM's answer as the body.
    let reqs = echo.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let up = &reqs[0];
    // Both hops sent header and body in one TCP segment (`net::cork`): the gateway's own client
    // to the LLM, Pingora to the upstream.
    assert_eq!(llm.llm_requests()[0]["segments"], 1);
    assert_eq!(up["segments"], 1, "{up}");
    assert_eq!(up["method"], "POST");
    assert_eq!(up["path"], "/anything?x=1&y=two");
    assert_eq!(header(up, "content-type"), Some("application/json"));
    assert_eq!(
        header(up, "content-length"),
        Some(up["body_len"].as_u64().unwrap().to_string().as_str())
    );
    assert_eq!(header(up, "x-trace"), Some("t-1"));
    assert_eq!(header(up, "x-request-id"), r.header("x-request-id"));
    assert!(
        !up.to_string().contains("sk-llm-secret"),
        "the provider key reached the upstream: {up}"
    );
    let completion = sent_body(up);
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["id"], "chatcmpl-mock-1");
    assert_eq!(completion["model"], "gpt-4");
    assert_eq!(completion["system_fingerprint"], "llm");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "Hello from llm"
    );
    // 4 + 3 words, 3 pieces.
    assert_eq!(
        completion["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    );

    // The client sees the echo of exactly that.
    let got = r.json();
    assert_eq!(got["method"], "POST");
    assert_eq!(got["url"], "/anything?x=1&y=two");
    assert_eq!(got["args"], json!({"x": "1", "y": "two"}));
    assert_eq!(got["json"], completion);
    assert_eq!(got["data"], up["body"]);

    // The LLM call's tokens are logged.
    let lines = gw.log_lines(1);
    assert_eq!(lines.len(), 1);
    assert_eq!(
        logged_tokens(&lines[0]),
        ("7".into(), "3".into(), "10".into()),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(" 200 "), "{}", lines[0]);
}

#[test]
fn the_upstream_gets_the_clients_own_method_and_repeated_query() {
    let llm = Mock::start("llm");
    let echo = Mock::start("echo");
    let gw = Gateway::start(&route(&llm.chat_url(), &echo, true));
    let r = request(
        gw.port,
        "PUT",
        "/anything?a=1&a=2&q=hello%20world",
        &[("content-type", "application/json")],
        seed_body().to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_llm_call(&llm);
    let up = echo.requests().pop().expect("the upstream got nothing");
    assert_eq!(up["method"], "PUT");
    assert_eq!(up["path"], "/anything?a=1&a=2&q=hello%20world");
    let got = r.json();
    assert_eq!(got["method"], "PUT");
    assert_eq!(got["args"], json!({"a": ["1", "2"], "q": "hello world"}));
    assert_eq!(
        got["json"]["choices"][0]["message"]["content"],
        "Hello from llm"
    );
}

#[test]
fn an_llm_error_is_relayed_and_the_upstream_gets_nothing() {
    let llm = Mock::start_with("llm", &["--status", "429"]);
    let echo = Mock::start("echo");
    let gw = Gateway::start(&route(&llm.chat_url(), &echo, true));

    let r = gw.chat("/anything", &seed_body());
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"mock llm error 429","type":"mock_error","code":429}}"#
    );
    assert!(r.header("x-request-id").is_some());

    // Another status with a non-JSON body: status, body and content type as the provider sent them.
    llm.set(json!({"status": 503, "error_body": "upstream overloaded, retry later", "error_content_type": "text/plain; charset=utf-8"}));
    let r = gw.chat("/anything?z=9", &seed_body());
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.text(), "upstream overloaded, retry later");

    assert_eq!(llm.llm_requests().len(), 2);
    assert!(
        echo.requests().is_empty(),
        "the upstream was called after an LLM error: {:?}",
        echo.requests()
    );
    let lines = gw.log_lines(2);
    assert!(lines[0].contains(" 429 "), "{}", lines[0]);
    assert!(lines[1].contains(" 503 "), "{}", lines[1]);
}

#[test]
fn an_unreachable_llm_gives_a_502_and_the_upstream_gets_nothing() {
    let echo = Mock::start("echo");
    let endpoint = format!("http://127.0.0.1:{}/v1/chat/completions", closed_port());
    let gw = Gateway::start(&route(&endpoint, &echo, true));
    let r = gw.chat("/anything", &seed_body());
    let e = r.openai_error(502);
    assert!(!e.to_string().contains("sk-llm-secret"), "{e}");
    assert!(echo.requests().is_empty());
}

#[test]
fn passthrough_false_behaves_like_plain_ai_proxy() {
    let llm = Mock::start("llm");
    let echo = Mock::start("echo");
    let gw = Gateway::start(&route(&llm.chat_url(), &echo, false));
    let r = gw.chat_with(
        "/anything?x=1",
        &[("Authorization", "Bearer client-token")],
        &seed_body(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-name"), Some("llm"));
    let got = r.json();
    assert_eq!(got["object"], "chat.completion");
    assert_eq!(got["model"], "gpt-4");
    assert_eq!(got["choices"][0]["message"]["content"], "Hello from llm");
    assert_eq!(
        got["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    );
    assert_llm_call(&llm);
    assert!(
        echo.requests().is_empty(),
        "the route's upstream was called: {:?}",
        echo.requests()
    );
    let lines = gw.log_lines(1);
    assert_eq!(
        logged_tokens(&lines[0]),
        ("7".into(), "3".into(), "10".into()),
        "{}",
        lines[0]
    );
}

#[test]
fn an_unreachable_upstream_after_the_llm_call_gives_a_502() {
    let llm = Mock::start("llm");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: pt
    uri: /anything
    plugins:
      ai-proxy:
        auth: {{ header: {{ Authorization: "Bearer sk-llm-secret" }} }}
        model: {{ provider: openai, name: gpt-4, options: {{ max_tokens: 512, temperature: 1.0 }} }}
        override: {{ endpoint: "{}" }}
        passthrough: true
    upstream:
      type: roundrobin
      nodes:
        "127.0.0.1:{}": 1
"#,
        llm.chat_url(),
        closed_port()
    ));
    let r = gw.chat("/anything", &seed_body());
    let e = r.openai_error(502);
    assert!(!e.to_string().contains("sk-llm-secret"), "{e}");
    assert_llm_call(&llm);
}

#[test]
fn an_llm_answer_larger_than_max_body_size_gives_a_502_and_the_upstream_gets_nothing() {
    let llm = Mock::start("llm");
    let echo = Mock::start("echo");
    let gw = Gateway::start_with(
        &route(&llm.chat_url(), &echo, true),
        GatewayOpts {
            gateway_extra: "  max_body_size: 4096\n",
            ..Default::default()
        },
    );
    // Under the limit: the usual passthrough.
    assert_eq!(gw.chat("/anything", &seed_body()).status, 200);
    assert_eq!(echo.requests().len(), 1);

    // An answer of ~10 KB: the gateway stops reading at the limit.
    llm.set(json!({"content": "word ".repeat(2000)}));
    let r = gw.chat("/anything", &seed_body());
    let e = r.openai_error(502);
    assert_eq!(e["code"], "upstream_response_too_large", "{e}");
    assert!(e["message"].as_str().unwrap().contains("4096"), "{e}");
    assert!(r.header("x-request-id").is_some());
    assert_eq!(
        echo.requests().len(),
        1,
        "the upstream got the oversized answer"
    );
    assert!(!gw.error_log().contains("panicked"));
    // The gateway is fine afterwards.
    llm.set(json!({"content": null}));
    assert_eq!(gw.chat("/anything", &seed_body()).status, 200);
}

#[test]
fn the_llm_call_retries_a_stale_pooled_connection_once_on_a_fresh_one() {
    // passthrough's first hop is the gateway's own client: it too survives a provider that
    // dropped an idle pooled connection.
    let llm = Mock::start("pt-stale");
    let echo = Mock::start("echo");
    let gw = Gateway::start(&route(&llm.chat_url(), &echo, true));
    let r = gw.chat_with("/anything", &[("x-mock-close-next", "true")], &seed_body());
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let r = gw.chat("/anything", &seed_body());
    assert_eq!(r.status, 200, "{}", r.text());
    let calls = llm.llm_requests();
    assert_eq!(calls.len(), 3, "{calls:?}");
    // The second call went out on the pooled connection, which the mock dropped...
    assert_eq!(calls[1]["conn"], calls[0]["conn"]);
    assert!(calls[1]["status"].is_null(), "{}", calls[1]);
    // ...and again on a connection of its own, answered once, not pooled afterwards.
    assert_ne!(calls[2]["conn"], calls[0]["conn"]);
    assert_eq!(calls[2]["status"], 200);
    // (The echo service got the control header too, and dropped its own pooled connection
    // the same way: the second hop is retried as well.)
    let answered = echo
        .llm_requests()
        .iter()
        .filter(|r| r["status"] == 200)
        .count();
    assert_eq!(answered, 2);
}
