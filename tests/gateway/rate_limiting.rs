//! ai-rate-limiting: token quotas on the real gateway. What clients see: statuses, the
//! `X-AI-*RateLimit-*` headers and their values, refusals in OpenAI's shape, and how many tokens
//! get served under a quota.
//!
//! Arithmetic used throughout: `ask()` sends `{"max_tokens":5,"messages":[{"content":"hi",
//! "role":"user"}]}`. Its reservation is the prompt estimate, `messages` is 32 bytes so 32/4 = 8,
//! plus `max_tokens` 5: `EST` = 13 tokens. The mock is told to report 7 prompt + 3 completion =
//! 10 tokens per answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

/// The reservation of `ask()` (see the module doc).
const EST: u64 = 13;
/// The header suffix of a single ai-proxy instance with provider openai-compatible.
const SINGLE: &str = "ai-proxy-openai-compatible";

fn body() -> Value {
    json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
}

#[test]
fn the_estimate_is_what_the_module_doc_says() {
    // The numbers below rest on this: 32 bytes of messages (4 bytes a token) plus max_tokens.
    assert_eq!(body()["messages"].to_string().len(), 32);
    assert_eq!(32 / 4 + 5, EST);
}

/// A mock answering 7 + 3 = 10 tokens.
fn mock10(name: &str) -> Mock {
    let m = Mock::start(name);
    m.set(json!({"prompt_tokens": 7, "completion_tokens": 3}));
    m
}

/// `routes:` with one ai-proxy route `/chat` to `mock` and `ai-rate-limiting: <rl>` (flow YAML).
fn single(mock: &Mock, rl: &str) -> String {
    single_at("chat", "/chat", mock, rl)
}

fn single_at(id: &str, uri: &str, mock: &Mock, rl: &str) -> String {
    format!("routes:\n{}", route_item(id, uri, mock, rl))
}

fn route_item(id: &str, uri: &str, mock: &Mock, rl: &str) -> String {
    format!(
        "  - id: {id}\n    uri: {uri}\n    plugins:\n      ai-proxy:\n        provider: openai-compatible\n        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n        override: {{ endpoint: \"{}\" }}\n      ai-rate-limiting: {rl}\n",
        mock.chat_url()
    )
}

/// A route `/chat` with ai-proxy-multi over `(name, mock, priority)` (model `model-<name>`) and
/// `ai-rate-limiting: <rl>`; `extra` adds ai-proxy-multi fields (indented 8).
fn multi(extra: &str, instances: &[(&str, &Mock, i64)], rl: &str) -> String {
    let mut s = format!(
        "routes:\n  - id: multi\n    uri: /chat\n    plugins:\n      ai-rate-limiting: {rl}\n      ai-proxy-multi:\n{extra}        instances:\n"
    );
    for (name, mock, priority) in instances {
        s.push_str(&format!(
            "          - name: {name}\n            provider: openai-compatible\n            weight: 1\n            priority: {priority}\n            auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n            options: {{ model: model-{name} }}\n            override: {{ endpoint: \"{}\" }}\n",
            mock.chat_url()
        ));
    }
    s
}

fn ask(gw: &Gateway, path: &str) -> Resp {
    gw.chat(path, &body())
}

/// `(Limit, Remaining, Reset)` of an instance's headers.
fn quota(r: &Resp, instance: &str) -> Option<(u64, u64, u64)> {
    let h = |kind: &str| {
        r.header(&format!("x-ai-ratelimit-{kind}-{instance}"))
            .map(|v| v.parse::<u64>().unwrap())
    };
    Some((h("limit")?, h("remaining")?, h("reset")?))
}

/// `(Limit, Remaining, Reset)` of a rule's headers.
fn rule_quota(r: &Resp, prefix: &str) -> Option<(u64, u64, u64)> {
    let h = |kind: &str| {
        r.header(&format!("x-ai-{prefix}-ratelimit-{kind}"))
            .map(|v| v.parse::<u64>().unwrap())
    };
    Some((h("limit")?, h("remaining")?, h("reset")?))
}

fn limit_remaining(q: Option<(u64, u64, u64)>) -> (u64, u64) {
    let (l, r, reset) = q.expect("quota headers");
    assert!((55..=60).contains(&reset), "reset {reset} of a 60 s window");
    (l, r)
}

fn served(r: &Resp) -> u64 {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["usage"]["total_tokens"].as_u64().unwrap()
}

fn ai_headers(r: &Resp) -> Vec<&(String, String)> {
    r.headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("x-ai-"))
        .collect()
}

#[test]
fn limit_30_with_10_token_answers_serves_three_then_refuses_with_the_quota_headers() {
    let mock = mock10("m");
    let gw = Gateway::start(&single(&mock, "{limit: 30, time_window: 60}"));
    let r: Vec<Resp> = (0..4).map(|_| ask(&gw, "/chat")).collect();
    let statuses: Vec<u16> = r.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 503]);
    // Remaining is what is left after this request's reservation: 30 - 13; then 30 - 10 - 13;
    // then 30 - 20 - 13 (nothing left, but 20 < 30 still admits it); the refusal says 0.
    let seen: Vec<(u64, u64)> = r
        .iter()
        .map(|r| limit_remaining(quota(r, SINGLE)))
        .collect();
    assert_eq!(seen, [(30, 17), (30, 7), (30, 0), (30, 0)]);
    for ok in &r[..3] {
        assert_eq!(served(ok), 10);
    }
    let e = r[3].openai_error(503);
    assert_eq!(e["type"], "rate_limit_error");
    assert_eq!(e["code"], "rate_limit_exceeded");
    let reset = quota(&r[3], SINGLE).unwrap().2;
    assert_eq!(
        e["message"],
        format!("the token quota of {SINGLE} is spent; it resets in {reset} s")
    );
    assert_eq!(r[3].header("retry-after"), Some(reset.to_string().as_str()));
    assert_eq!(
        mock.llm_requests().len(),
        3,
        "the refused request never reached the provider"
    );
    // A refusal is the gateway doing its job: in the access log, not an error-log line.
    let lines = gw.log_lines(4);
    assert!(lines[3].contains(" 503 "), "{lines:?}");
    let errors = gw.error_log();
    assert!(!errors.contains("ERROR"), "{errors}");
}

#[test]
fn rejected_code_and_message_and_no_headers_when_asked() {
    let mock = mock10("m");
    let gw = Gateway::start(&single(
        &mock,
        "{limit: 10, time_window: 60, rejected_code: 429, rejected_msg: 'Token quota exceeded, come back later', show_limit_quota_header: false}",
    ));
    let ok = ask(&gw, "/chat");
    assert_eq!(served(&ok), 10);
    assert!(ai_headers(&ok).is_empty(), "{:?}", ok.headers);
    let no = ask(&gw, "/chat");
    let e = no.openai_error(429);
    assert_eq!(e["message"], "Token quota exceeded, come back later");
    assert!(ai_headers(&no).is_empty(), "{:?}", no.headers);
    let retry: u64 = no.header("retry-after").unwrap().parse().unwrap();
    assert!((55..=60).contains(&retry));
}

#[test]
fn prompt_tokens_strategy_reserves_and_charges_the_prompt_only() {
    let mock = Mock::start("m");
    mock.set(json!({"prompt_tokens": 7, "completion_tokens": 100}));
    let gw = Gateway::start(&single(
        &mock,
        "{limit: 10, time_window: 60, limit_strategy: prompt_tokens}",
    ));
    // Reservation 8 (the prompt estimate); charged 7 each time.
    let r1 = ask(&gw, "/chat");
    assert_eq!(limit_remaining(quota(&r1, SINGLE)), (10, 2));
    let r2 = ask(&gw, "/chat");
    assert_eq!(limit_remaining(quota(&r2, SINGLE)), (10, 0));
    let r3 = ask(&gw, "/chat");
    assert_eq!((r1.status, r2.status, r3.status), (200, 200, 503));
}

#[test]
fn completion_tokens_strategy_reserves_max_tokens_and_charges_the_completion_only() {
    let mock = Mock::start("m");
    mock.set(json!({"prompt_tokens": 100, "completion_tokens": 4}));
    let gw = Gateway::start(&single(
        &mock,
        "{limit: 10, time_window: 60, limit_strategy: completion_tokens}",
    ));
    // Reservation 5 (max_tokens); charged 4 each time: 10-5, 10-4-5, 0, then 12 >= 10.
    let seen: Vec<(u16, u64)> = (0..4)
        .map(|_| {
            let r = ask(&gw, "/chat");
            (r.status, limit_remaining(quota(&r, SINGLE)).1)
        })
        .collect();
    assert_eq!(seen, [(200, 5), (200, 1), (200, 0), (503, 0)]);
}

#[test]
fn total_tokens_default_reservation_without_max_tokens_is_the_configured_estimate() {
    let mock = mock10("m");
    let gw = Gateway::start(&single(
        &mock,
        "{limit: 1000, time_window: 60, estimated_completion_tokens: 100}",
    ));
    let b = json!({"messages": [{"role": "user", "content": "hi"}]});
    let r1 = gw.chat("/chat", &b);
    assert_eq!(limit_remaining(quota(&r1, SINGLE)), (1000, 1000 - 8 - 100));
    let r2 = gw.chat("/chat", &b);
    assert_eq!(limit_remaining(quota(&r2, SINGLE)), (1000, 1000 - 10 - 108));
}

#[test]
fn expression_strategy_charges_cost_expr_over_raw_usage_including_nested_fields() {
    let mock = Mock::start("m");
    // usage: prompt 7, completion 3, prompt_tokens_details.cached_tokens 2.
    mock.set(json!({"prompt_tokens": 7, "completion_tokens": 3, "cached_tokens": 2}));
    let gw = Gateway::start(&single(
        &mock,
        "{limit: 100, time_window: 60, limit_strategy: expression, cost_expr: 'prompt_tokens - cached_tokens + 2 * completion_tokens'}",
    ));
    // Cost 7 - 2 + 2*3 = 11. Reservation: the expression over the estimate, 8 - 0 + 2*5 = 18.
    let r1 = ask(&gw, "/chat");
    assert_eq!(limit_remaining(quota(&r1, SINGLE)), (100, 82));
    let r2 = ask(&gw, "/chat");
    assert_eq!(limit_remaining(quota(&r2, SINGLE)), (100, 100 - 11 - 18));
    // Streamed: the raw usage comes from the final SSE event, same cost.
    let mut sb = body();
    sb["stream"] = json!(true);
    let r3 = gw.chat("/chat", &sb);
    assert_eq!(r3.status, 200);
    assert!(r3.text().contains("data: [DONE]"));
    let r4 = ask(&gw, "/chat");
    assert_eq!(limit_remaining(quota(&r4, SINGLE)), (100, 100 - 33 - 18));
}

#[test]
fn per_instance_quotas_and_the_shared_top_level_counter_on_ai_proxy_multi() {
    let (a, b, c) = (mock10("a"), mock10("b"), mock10("c"));
    let gw = Gateway::start(&multi(
        "",
        &[("a", &a, 0), ("b", &b, 0), ("c", &c, 0)],
        "{limit: 25, time_window: 60, instances: [{name: a, limit: 20, time_window: 60}]}",
    ));
    // Equal weights: a, b, c, a, b, c, a. a has its own 20; b and c share one counter of 25,
    // reported under each one's name.
    let r: Vec<Resp> = (0..7).map(|_| ask(&gw, "/chat")).collect();
    let statuses: Vec<u16> = r.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 503, 503]);
    let models: Vec<String> = r[..5]
        .iter()
        .map(|r| r.json()["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        models,
        ["model-a", "model-b", "model-c", "model-a", "model-b"]
    );
    assert_eq!(limit_remaining(quota(&r[0], "a")), (20, 7));
    assert_eq!(limit_remaining(quota(&r[1], "b")), (25, 12));
    // c's counter already holds b's 10 tokens: one counter.
    assert_eq!(limit_remaining(quota(&r[2], "c")), (25, 2));
    assert_eq!(limit_remaining(quota(&r[3], "a")), (20, 0));
    assert_eq!(limit_remaining(quota(&r[4], "b")), (25, 0));
    // Without a quota fallback, a spent instance that is picked is refused.
    assert_eq!(limit_remaining(quota(&r[5], "c")), (25, 0));
    assert_eq!(limit_remaining(quota(&r[6], "a")), (20, 0));
    // Each answer carries only the headers of the instance that served it.
    assert!(quota(&r[0], "b").is_none() && quota(&r[1], "a").is_none());
    assert_eq!(c.llm_requests().len(), 1);
}

#[test]
fn rules_keyed_by_a_header_count_each_user_apart_and_skip_requests_without_it() {
    let mock = mock10("m");
    let gw = Gateway::start(&single(
        &mock,
        "{rules: [{count: 20, time_window: 60, key: $http_x_user, header_prefix: user}, {count: 1000, time_window: 60, key: $remote_addr}]}",
    ));
    let as_user = |u: &str| gw.chat_with("/chat", &[("x-user", u)], &body());
    let a1 = as_user("alice");
    assert_eq!(limit_remaining(rule_quota(&a1, "user")), (20, 7));
    // The second rule has no header_prefix: its headers are named by its 1-based index.
    assert_eq!(limit_remaining(rule_quota(&a1, "2")), (1000, 1000 - 13));
    let a2 = as_user("alice");
    assert_eq!(limit_remaining(rule_quota(&a2, "user")), (20, 0));
    let b1 = as_user("bob");
    assert_eq!(
        limit_remaining(rule_quota(&b1, "user")),
        (20, 7),
        "bob has his own counter"
    );
    assert_eq!(
        limit_remaining(rule_quota(&b1, "2")),
        (1000, 1000 - 20 - 13)
    );
    let a3 = as_user("alice");
    assert_eq!(a3.status, 503, "{}", a3.text());
    assert_eq!(limit_remaining(rule_quota(&a3, "user")), (20, 0));
    assert_eq!(
        a3.openai_error(503)["message"],
        format!(
            "the token quota of rule user is spent; it resets in {} s",
            rule_quota(&a3, "user").unwrap().2
        )
    );
    // No X-User header: the user rule does not apply (the address rule still does).
    let anon = ask(&gw, "/chat");
    assert_eq!(served(&anon), 10);
    assert!(rule_quota(&anon, "user").is_none());
    assert_eq!(
        limit_remaining(rule_quota(&anon, "2")),
        (1000, 1000 - 30 - 13)
    );
    for r in [&a1, &a2, &b1] {
        assert_eq!(served(r), 10);
    }
}

#[test]
fn a_streamed_answer_is_charged_its_reported_usage() {
    let mock = mock10("m");
    let gw = Gateway::start(&single(&mock, "{limit: 100, time_window: 60}"));
    let mut sb = body();
    sb["stream"] = json!(true);
    let s = gw.chat("/chat", &sb);
    assert_eq!(s.status, 200);
    assert_eq!(limit_remaining(quota(&s, SINGLE)), (100, 87));
    // The client did not ask for usage: the event that carried it was not forwarded, yet it
    // was counted.
    assert!(!s.text().contains("\"usage\":{"), "{}", s.text());
    let next = ask(&gw, "/chat");
    assert_eq!(limit_remaining(quota(&next, SINGLE)), (100, 100 - 10 - 13));
}

#[test]
fn a_client_that_hangs_up_mid_stream_is_charged_the_estimate_of_what_was_generated() {
    let mock = mock10("m");
    let gw = Gateway::start(&single(&mock, "{limit: 1000, time_window: 60}"));
    // No max_tokens: the stream's reservation is 8 + 256 = 264.
    let b = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}).to_string();
    let mut s = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-mock-chunks: 50\r\nx-mock-chunk-delay-ms: 100\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"content\":\"Hello") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(
        head.contains("x-ai-ratelimit-remaining-ai-proxy-openai-compatible: 736"),
        "{head}"
    );
    drop(s);
    // The request is over (and charged) once its access log line is written.
    assert_eq!(gw.log_lines(1).len(), 1);
    let next = ask(&gw, "/chat");
    let (_, remaining) = limit_remaining(quota(&next, SINGLE));
    // Charged: the prompt estimate 8 plus one token per content event seen before the hang-up
    // (a few of the 50), not the 264 reserved, not nothing, not the 57 a full answer costs.
    let charged = 1000 - EST - remaining;
    assert!((8 + 1..8 + 10).contains(&charged), "charged {charged}");
}

#[test]
fn fifty_concurrent_clients_overshoot_a_small_quota_by_at_most_one_request() {
    let mock = Mock::start("m");
    // Each answer costs exactly its reservation: 8 prompt + 5 completion (= max_tokens), and
    // takes 300 ms, so all 50 requests are in flight together.
    mock.set(json!({"prompt_tokens": 8, "completion_tokens": 5, "delay_ms": 300}));
    let gw = Gateway::start(&single(&mock, "{limit: 100, time_window: 60}"));
    let results: Vec<Resp> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..50).map(|_| sc.spawn(|| ask(&gw, "/chat"))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<&Resp> = results.iter().filter(|r| r.status == 200).collect();
    assert!(
        results.iter().all(|r| r.status == 200 || r.status == 503),
        "{:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let tokens: u64 = ok.iter().map(|r| served(r)).sum();
    // Admitted while used + reserved < 100: everything in flight counts, so the tokens served
    // stop within one request (13) past the limit. Without reservations all 50 (650 tokens)
    // would have been admitted.
    assert!(
        (100..=100 + EST).contains(&tokens),
        "served {tokens} tokens in {} answers",
        ok.len()
    );
    assert_eq!(mock.llm_requests().len(), ok.len());
}

#[test]
fn rate_limiting_fallback_skips_a_spent_instance_and_refuses_when_all_are_spent() {
    let (hi, lo) = (mock10("hi"), mock10("lo"));
    let gw = Gateway::start_with(&multi(
        "        fallback_strategy: instance_health_and_rate_limiting\n",
        &[("hi", &hi, 1), ("lo", &lo, 0)],
        "{instances: [{name: hi, limit: 10, time_window: 60}, {name: lo, limit: 10, time_window: 60}], rejected_code: 429, rejected_msg: all spent}",
    ), GatewayOpts {
        log_format: Some("$status $llm_instance $llm_attempts"),
        ..Default::default()
    });
    let r1 = ask(&gw, "/chat");
    assert_eq!(r1.json()["model"], "model-hi");
    // hi is spent: skipped at pick time, the lower tier serves, and the answer says why.
    let r2 = ask(&gw, "/chat");
    assert_eq!(r2.json()["model"], "model-lo");
    assert_eq!(limit_remaining(quota(&r2, "hi")), (10, 0));
    assert_eq!(limit_remaining(quota(&r2, "lo")), (10, 0));
    // Both spent: the configured refusal.
    let r3 = ask(&gw, "/chat");
    assert_eq!(r3.openai_error(429)["message"], "all spent");
    assert_eq!(limit_remaining(quota(&r3, "hi")), (10, 0));
    assert_eq!(limit_remaining(quota(&r3, "lo")), (10, 0));
    assert_eq!((hi.llm_requests().len(), lo.llm_requests().len()), (1, 1));
    // A skipped instance is not an attempt: lo served at the first.
    assert_eq!(gw.log_lines(3)[..2], ["200 hi 1", "200 lo 1"]);
}

#[test]
fn an_attempt_that_falls_back_gives_its_reservation_back() {
    let (a, b) = (mock10("a"), mock10("b"));
    a.set(json!({"status": 500}));
    let gw = Gateway::start(&multi(
        "        fallback_strategy: [http_5xx]\n",
        &[("a", &a, 1), ("b", &b, 0)],
        "{instances: [{name: a, limit: 100, time_window: 60}, {name: b, limit: 100, time_window: 60}]}",
    ));
    let r = ask(&gw, "/chat");
    assert_eq!(r.json()["model"], "model-b");
    assert!(
        quota(&r, "a").is_none(),
        "only the serving instance's headers"
    );
    assert_eq!(limit_remaining(quota(&r, "b")), (100, 87));
    a.set(json!({"status": 200}));
    let r = ask(&gw, "/chat");
    assert_eq!(r.json()["model"], "model-a");
    assert_eq!(
        limit_remaining(quota(&r, "a")),
        (100, 87),
        "nothing left of the failed attempt"
    );
}

#[test]
fn a_request_that_fails_before_an_answer_is_not_charged() {
    let gw = Gateway::start(&format!(
        "routes:\n  - id: chat\n    uri: /chat\n    plugins:\n      ai-proxy:\n        provider: openai-compatible\n        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n        override: {{ endpoint: \"http://127.0.0.1:{}/v1/chat/completions\" }}\n      ai-rate-limiting: {{limit: 100, time_window: 60}}\n",
        closed_port()
    ));
    for i in 0..3 {
        let r = ask(&gw, "/chat");
        r.openai_error(502);
        // Every attempt found the whole quota: the failures gave their reservations back (in
        // the log phase, which has run once the access log line is there).
        assert_eq!(limit_remaining(quota(&r, SINGLE)), (100, 87));
        assert_eq!(gw.log_lines(i + 1).len(), i + 1);
    }
}

#[test]
fn two_routes_with_the_same_config_and_two_routes_of_one_service_never_share_a_counter() {
    let mock = mock10("m");
    let rl = "{limit: 10, time_window: 60}";
    let cfg = format!(
        "routes:\n{}{}  - id: s1\n    uri: /s1\n    service_id: svc\n  - id: s2\n    uri: /s2\n    service_id: svc\nservices:\n  - id: svc\n    plugins:\n      ai-proxy:\n        provider: openai-compatible\n        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n        override: {{ endpoint: \"{}\" }}\n      ai-rate-limiting: {rl}\n",
        route_item("r1", "/r1", &mock, rl),
        route_item("r2", "/r2", &mock, rl),
        mock.chat_url()
    );
    let gw = Gateway::start(&cfg);
    for path in ["/r1", "/s1"] {
        assert_eq!(ask(&gw, path).status, 200);
        assert_eq!(ask(&gw, path).status, 503, "{path} is spent");
    }
    for path in ["/r2", "/s2"] {
        let r = ask(&gw, path);
        assert_eq!(served(&r), 10, "{path} has its own counter");
        assert_eq!(limit_remaining(quota(&r, SINGLE)), (10, 0));
        assert_eq!(ask(&gw, path).status, 503);
    }
}

/// Routes `/r1` and `/r2` behind key-auth with `ai-rate-limiting: {limit: 60}`; consumer jack
/// (key `jack-key`) has his own `{limit: 20}`, jill (`jill-key`) has none.
fn consumer_quotas(mock: &Mock) -> String {
    let route = |id: &str| {
        format!(
            "  - id: {id}\n    uri: /{id}\n    plugins:\n      key-auth: {{}}\n      ai-proxy:\n        provider: openai-compatible\n        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n        override: {{ endpoint: \"{}\" }}\n      ai-rate-limiting: {{limit: 60, time_window: 60}}\n",
            mock.chat_url()
        )
    };
    format!(
        "routes:\n{}{}consumers:\n  - username: jack\n    plugins:\n      key-auth: {{ key: jack-key }}\n      ai-rate-limiting: {{limit: 20, time_window: 60, rejected_code: 429}}\n  - username: jill\n    plugins:\n      key-auth: {{ key: jill-key }}\n",
        route("r1"),
        route("r2")
    )
}

#[test]
fn a_consumers_quota_replaces_the_routes_and_follows_the_consumer_across_routes() {
    let mock = mock10("m");
    let gw = Gateway::start(&consumer_quotas(&mock));
    let as_ = |who: &str, path: &str| gw.chat_with(path, &[("apikey", who)], &body());
    // jack's own 20 tokens, counted for him whichever route he uses: one answer on each route
    // (10 + 10), then his 429 on both.
    let r = as_("jack-key", "/r1");
    assert_eq!(served(&r), 10);
    assert_eq!(limit_remaining(quota(&r, SINGLE)), (20, 7));
    let r = as_("jack-key", "/r2");
    assert_eq!(served(&r), 10);
    assert_eq!(limit_remaining(quota(&r, SINGLE)), (20, 0));
    for path in ["/r1", "/r2"] {
        let no = as_("jack-key", path);
        assert_eq!(no.openai_error(429)["code"], "rate_limit_exceeded");
    }
    // jill has no quota of her own: the route's 60 applies, per route, untouched by jack.
    for path in ["/r1", "/r2"] {
        let r = as_("jill-key", path);
        assert_eq!(served(&r), 10);
        assert_eq!(limit_remaining(quota(&r, SINGLE)), (60, 47));
    }
    assert_eq!(mock.llm_requests().len(), 4);
}

#[test]
fn a_rule_keyed_by_consumer_name_counts_each_consumer_apart() {
    let mock = mock10("m");
    let gw = Gateway::start(&format!(
        "routes:\n  - id: chat\n    uri: /chat\n    plugins:\n      key-auth: {{}}\n      ai-proxy:\n        provider: openai-compatible\n        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n        override: {{ endpoint: \"{}\" }}\n      ai-rate-limiting:\n        rules: [{{count: 10, time_window: 60, key: $remote_user, header_prefix: user}}]\nconsumers:\n  - username: jack\n    plugins: {{ key-auth: {{ key: jack-key }} }}\n  - username: jill\n    plugins: {{ key-auth: {{ key: jill-key }} }}\n",
        mock.chat_url()
    ));
    let as_ = |who: &str| gw.chat_with("/chat", &[("apikey", who)], &body());
    for who in ["jack-key", "jill-key"] {
        let r = as_(who);
        assert_eq!(served(&r), 10, "{who}");
        assert_eq!(limit_remaining(rule_quota(&r, "user")), (10, 0));
        assert_eq!(as_(who).status, 503, "{who} spent their own 10");
    }
}

#[test]
fn passthrough_routes_are_counted_and_refused_too() {
    let llm = mock10("llm");
    let echo = Mock::start("echo");
    let gw = Gateway::start(&format!(
        "routes:\n  - id: pt\n    uri: /anything\n    plugins:\n      ai-rate-limiting: {{limit: 10, time_window: 60}}\n      ai-proxy:\n        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n        model: {{ provider: openai, name: gpt-4 }}\n        override: {{ endpoint: \"{}\" }}\n        passthrough: true\n    upstream:\n      type: roundrobin\n      nodes:\n        \"127.0.0.1:{}\": 1\n",
        llm.chat_url(),
        echo.port
    ));
    let ok = ask(&gw, "/anything");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(limit_remaining(quota(&ok, "ai-proxy-openai")), (10, 0));
    let no = ask(&gw, "/anything");
    no.openai_error(503);
    assert_eq!(limit_remaining(quota(&no, "ai-proxy-openai")), (10, 0));
    assert_eq!(llm.llm_requests().len(), 1);
    assert_eq!(echo.requests().len(), 1);
}

#[test]
fn config_errors_name_their_path() {
    let mock = Mock::start("m");
    for (rl, want) in [
        ("{limit: 10}", "routes[0].plugins.ai-rate-limiting.time_window: is required with limit"),
        (
            "{limit: 10, time_window: 60, rules: [{count: 1, time_window: 1, key: $remote_addr}]}",
            "routes[0].plugins.ai-rate-limiting.rules: cannot be combined with limit, time_window or instances",
        ),
        (
            "{limit: 10, time_window: 60, limit_strategy: expression, cost_expr: 'prompt_tokens * (2'}",
            "routes[0].plugins.ai-rate-limiting.cost_expr: invalid cost_expr: missing )",
        ),
        (
            "{limit: 10, time_window: 60, rejected_code: 600}",
            "routes[0].plugins.ai-rate-limiting.rejected_code: must be between 200 and 599, not 600",
        ),
        (
            "{limit: 10, time_window: 60, policy: redis, redis_host: 127.0.0.1, redis_port: 0}",
            "routes[0].plugins.ai-rate-limiting.redis_port: must be a port between 1 and 65535, not 0",
        ),
        (
            "{instances: [{name: openai-instance, limit: 10, time_window: 60}]}",
            "routes[0].plugins.ai-rate-limiting.instances[0].name: \"openai-instance\" is not an instance of this route's ai-proxy (its instances: ai-proxy-openai-compatible)",
        ),
    ] {
        let port = free_port();
        let text = config_text(port, &scratch_dir(), &single(&mock, rl), &GatewayOpts::default());
        let (ok, out) = check_config(&text, &[]);
        assert!(!ok, "{rl} was accepted");
        assert!(out.contains(want), "{rl}:\n{out}");
    }
    // Checked against the route's whole chain, naming where the plugin was written.
    let typo = "{instances: [{name: a, limit: 1, time_window: 1}, {name: typo, limit: 1, time_window: 1}]}";
    let on_service = format!(
        "{}services:\n  - id: svc\n    plugins:\n      ai-rate-limiting: {typo}\n",
        multi(
            "",
            &[("a", &mock, 0), ("b", &mock, 0)],
            "{limit: 1, time_window: 1}"
        )
        .replace(
            "    plugins:\n      ai-rate-limiting: {limit: 1, time_window: 1}\n",
            "    service_id: svc\n    plugins:\n"
        )
    );
    for (resources, want) in [
        (
            multi("", &[("a", &mock, 0), ("b", &mock, 0)], typo),
            "routes[0].plugins.ai-rate-limiting.instances[1].name: \"typo\" is not an instance of this route's ai-proxy-multi (its instances: a, b)",
        ),
        (
            on_service,
            "services[0].plugins.ai-rate-limiting.instances[1].name: \"typo\" is not an instance",
        ),
        (
            format!(
                "routes:\n  - id: plain\n    uri: /x\n    plugins:\n      ai-rate-limiting: {{limit: 1, time_window: 1}}\n    upstream: {{ nodes: {{ \"127.0.0.1:{}\": 1 }} }}\n",
                mock.port
            ),
            "routes[0].plugins.ai-rate-limiting: counts LLM tokens: the route needs ai-proxy or ai-proxy-multi",
        ),
    ] {
        let text = config_text(free_port(), &scratch_dir(), &resources, &GatewayOpts::default());
        let (ok, out) = check_config(&text, &[]);
        assert!(!ok, "{resources} was accepted");
        assert!(out.contains(want), "{resources}:\n{out}");
    }
    // A consumer's instance quota is not tied to one route: any names load.
    let consumer = format!(
        "{}consumers:\n  - username: jack\n    plugins:\n      key-auth: {{ key: k }}\n      ai-rate-limiting: {typo}\n",
        single(&mock, "{limit: 1, time_window: 1}")
    );
    let text = config_text(
        free_port(),
        &scratch_dir(),
        &consumer,
        &GatewayOpts::default(),
    );
    let (ok, out) = check_config(&text, &[]);
    assert!(ok, "{out}");
}
