//! Route matching as APISIX users configure it: exact before prefix, longest prefix, priority,
//! methods, hosts, vars on the JSON body (seed 004), uris/paths lists, plain upstream routes.

use serde_json::json;

use crate::harness::*;

/// An ai-proxy route to `mock` that sets the model to `model` (so answers say which route served).
fn ai_route(id: &str, matcher: &str, mock: &Mock, model: &str) -> String {
    format!(
        r#"
  - id: {id}
{matcher}
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth: {{ header: {{ Authorization: "Bearer k" }} }}
        options: {{ model: {model} }}
        override: {{ endpoint: "{}" }}
"#,
        mock.chat_url()
    )
}

fn served_by(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["model"].as_str().unwrap().to_string()
}

#[test]
fn exact_uri_beats_prefix_and_longer_prefix_beats_shorter() {
    let mock = Mock::start("r1");
    let routes = [
        ai_route("prefix-short", "    uri: /v1/*", &mock, "short"),
        ai_route("prefix-long", "    uri: /v1/chat/*", &mock, "long"),
        ai_route("exact", "    uri: /v1/chat/completions", &mock, "exact"),
    ];
    let gw = Gateway::start(&format!("routes:{}", routes.concat()));
    assert_eq!(
        served_by(&gw.chat("/v1/chat/completions", &chat_body("hi"))),
        "exact"
    );
    assert_eq!(
        served_by(&gw.chat("/v1/chat/other", &chat_body("hi"))),
        "long"
    );
    assert_eq!(
        served_by(&gw.chat("/v1/embeddings", &chat_body("hi"))),
        "short"
    );
    // `/v1/*` is a prefix of paths under /v1/, not /v1 itself.
    gw.chat("/v1", &chat_body("hi")).openai_error(404);
}

#[test]
fn priority_breaks_ties_between_the_same_uri() {
    let mock = Mock::start("r2");
    let routes = [
        ai_route("low", "    uri: /chat\n    priority: 1", &mock, "low"),
        ai_route("high", "    uri: /chat\n    priority: 10", &mock, "high"),
    ];
    let gw = Gateway::start(&format!("routes:{}", routes.concat()));
    assert_eq!(served_by(&gw.chat("/chat", &chat_body("hi"))), "high");
}

#[test]
fn methods_and_hosts_must_match_else_404() {
    let mock = Mock::start("r3");
    let routes = [
        ai_route(
            "get-only",
            "    uri: /get-only\n    methods: [GET]",
            &mock,
            "g",
        ),
        ai_route(
            "hosted",
            "    uri: /hosted\n    hosts: [api.example.com, \"*.corp.example\"]",
            &mock,
            "h",
        ),
    ];
    let gw = Gateway::start(&format!("routes:{}", routes.concat()));
    let e = gw.chat("/get-only", &chat_body("hi")).openai_error(404);
    assert_eq!(e["code"], "route_not_found");
    // Host check (the harness sends Host: 127.0.0.1 unless told otherwise).
    gw.chat("/hosted", &chat_body("hi")).openai_error(404);
    let ok = gw.chat_with(
        "/hosted",
        &[("Host", "api.example.com:9080")],
        &chat_body("hi"),
    );
    assert_eq!(served_by(&ok), "h");
    let ok = gw.chat_with("/hosted", &[("Host", "llm.corp.example")], &chat_body("hi"));
    assert_eq!(served_by(&ok), "h");
}

#[test]
fn vars_route_on_the_model_in_the_json_body() {
    // Seed 004: "Use separate routes with vars matching on request body fields".
    let openai = Mock::start("openai");
    let deepseek = Mock::start("deepseek");
    let routes = [
        ai_route("gpt4", "    uri: /v1/chat/completions\n    vars: [[\"post_arg.model\", \"==\", \"gpt-4\"]]", &openai, "gpt-4"),
        ai_route("ds", "    uri: /v1/chat/completions\n    vars: [[\"post_arg.model\", \"==\", \"deepseek-chat\"]]", &deepseek, "deepseek-chat"),
        ai_route("team", "    uri: /v1/chat/completions\n    vars: [[\"http_x_team\", \"in\", [\"a\", \"b\"]], [\"post_arg.metadata.tier\", \">=\", 2]]", &openai, "team-model"),
    ];
    let gw = Gateway::start(&format!("routes:{}", routes.concat()));
    let body = |m: &str| json!({"model": m, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        served_by(&gw.chat("/v1/chat/completions", &body("gpt-4"))),
        "gpt-4"
    );
    assert_eq!(
        served_by(&gw.chat("/v1/chat/completions", &body("deepseek-chat"))),
        "deepseek-chat"
    );
    assert_eq!(deepseek.llm_requests().len(), 1);
    gw.chat("/v1/chat/completions", &body("llama"))
        .openai_error(404);
    let team = json!({"model": "x", "metadata": {"tier": 3}, "messages": []});
    assert_eq!(
        served_by(&gw.chat_with("/v1/chat/completions", &[("X-Team", "b")], &team)),
        "team-model"
    );
    gw.chat_with("/v1/chat/completions", &[("X-Team", "c")], &team)
        .openai_error(404);
    // The body used for matching is the body sent upstream, in full.
    let sent: serde_json::Value =
        serde_json::from_str(openai.last()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["metadata"]["tier"], 3);
}

#[test]
fn uris_and_paths_lists_and_disabled_routes() {
    let mock = Mock::start("r5");
    let routes = [
        ai_route("many", "    uris: [/a, /b/*]", &mock, "uris"),
        ai_route("api7", "    paths: [/openai]", &mock, "paths"),
        ai_route("off", "    uri: /off\n    status: 0", &mock, "off"),
    ];
    let gw = Gateway::start(&format!("routes:{}", routes.concat()));
    assert_eq!(served_by(&gw.chat("/a", &chat_body("hi"))), "uris");
    assert_eq!(served_by(&gw.chat("/b/c", &chat_body("hi"))), "uris");
    assert_eq!(served_by(&gw.chat("/openai", &chat_body("hi"))), "paths");
    gw.chat("/off", &chat_body("hi")).openai_error(404);
    gw.chat("/nowhere", &chat_body("hi")).openai_error(404);
}

#[test]
fn plain_upstream_routes_proxy_any_request() {
    let echo = Mock::start("echo");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: plain
    uri: /anything/*
    upstream:
      type: roundrobin
      nodes:
        "127.0.0.1:{}": 1
"#,
        echo.port
    ));
    let r = request(
        gw.port,
        "GET",
        "/anything/x?a=1",
        &[("X-Custom", "yes")],
        b"",
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["url"], "/anything/x?a=1");
    assert_eq!(v["headers"]["x-custom"], "yes");
    assert!(r.header("x-request-id").is_some());
    // Not JSON, not an LLM call: streamed through untouched.
    let r = gw.post(
        "/anything/upload",
        &[("content-type", "text/plain")],
        b"plain text body",
    );
    assert_eq!(r.json()["data"], "plain text body");
    let lines = gw.log_lines(2);
    assert!(lines[1].contains(" traditional_http "), "{}", lines[1]);
}

#[test]
fn a_plain_route_chosen_by_the_body_still_gets_the_body() {
    let echo = Mock::start("echo2");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: by-body
    uri: /anything
    vars: [["post_arg.kind", "==", "raw"]]
    upstream:
      nodes:
        "127.0.0.1:{}": 1
"#,
        echo.port
    ));
    let body = json!({"kind": "raw", "payload": "x".repeat(200_000)});
    let r = gw.chat("/anything", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["json"], body);
    gw.chat("/anything", &json!({"kind": "other"}))
        .openai_error(404);
}
