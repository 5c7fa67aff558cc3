//! Prometheus metrics (`gateway.metrics`): what a scrape of `GET /metrics` shows after real
//! requests through the real gateway: answers by route, status, consumer and instance; tokens;
//! fallbacks; quota refusals; latency, overhead and time-to-first-token histograms; in-flight
//! requests and streams while they are in flight; instance health; bounded model labels.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

/// A gateway with metrics on a free port; `(gateway, metrics port)`.
fn start(resources: &str, metrics_extra: &str) -> (Gateway, u16) {
    let mport = free_port();
    let extra = format!("  metrics:\n    listen: 127.0.0.1:{mport}\n{metrics_extra}");
    let gw = Gateway::start_with(
        resources,
        GatewayOpts {
            gateway_extra: &extra,
            ..Default::default()
        },
    );
    wait_listening(mport);
    (gw, mport)
}

fn scrape(port: u16) -> String {
    let r = request(port, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    r.text()
}

/// Scrape once `total` answers are counted in `http_status`. A request's metrics are recorded in
/// its log phase, which runs just after the client got the answer; `http_status` is recorded
/// last, so once it counts a request, everything else of that request is in too.
fn scrape_after(port: u16, total: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = scrape(port);
        let counted: f64 = t
            .lines()
            .filter(|l| {
                l.starts_with("aigate_http_status{") || l.starts_with("apisix_http_status{")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        if counted >= total {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{counted} of {total} answers counted:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of the series `name{labels}` (labels in Prometheus's order: sorted by name).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

fn body() -> Value {
    json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
}

fn instance(name: &str, mock: &Mock, priority: i64) -> String {
    format!(
        "          - name: {name}\n            provider: openai-compatible\n            weight: 1\n            priority: {priority}\n            auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n            options: {{ model: model-{name} }}\n            override: {{ endpoint: \"{}\" }}\n",
        mock.chat_url()
    )
}

#[test]
fn a_scrape_shows_answers_tokens_fallbacks_refusals_and_latencies() {
    // `down` is preferred (priority 2) and answers 500: every request falls back to `up`.
    let down = Mock::start_with("down", &["--status", "500"]);
    let up = Mock::start("up");
    up.set(json!({"prompt_tokens": 7, "completion_tokens": 3}));
    let resources = format!(
        "routes:\n  - id: chat\n    uri: /chat\n    plugins:\n      key-auth: {{}}\n      ai-rate-limiting: {{ limit: 30, time_window: 60, limit_strategy: total_tokens }}\n      ai-proxy-multi:\n        fallback_strategy: [http_5xx]\n        instances:\n{}{}consumers:\n  - username: john\n    plugins: {{ key-auth: {{ key: john-key }} }}\n  - username: jane\n    plugins: {{ key-auth: {{ key: jane-key }} }}\n",
        instance("down", &down, 2),
        instance("up", &up, 1),
    );
    let (gw, mport) = start(&resources, "");
    let ask = |key: &str| {
        gw.post(
            "/chat",
            &[("content-type", "application/json"), ("apikey", key)],
            body().to_string().as_bytes(),
        )
    };
    // 30 tokens a minute at 10 per answer: three answers, then the quota refuses.
    let statuses: Vec<u16> = (0..4).map(|_| ask("john-key").status).collect();
    assert_eq!(statuses, [200, 200, 200, 503]);
    assert_eq!(ask("wrong").status, 401);
    assert_eq!(gw.chat("/nowhere", &body()).status, 404);

    let t = scrape_after(mport, 6.0);
    let s = |series: &str| must(&t, series);
    assert_eq!(
        s(r#"aigate_http_status{code="200",consumer="john",node="up",route="chat",service=""}"#),
        3.0
    );
    // Refused by `up`'s quota (`down` is cooling down by then, see below).
    assert_eq!(
        s(r#"aigate_http_status{code="503",consumer="john",node="up",route="chat",service=""}"#),
        1.0
    );
    assert_eq!(
        s(r#"aigate_http_status{code="401",consumer="",node="",route="chat",service=""}"#),
        1.0
    );
    assert_eq!(
        s(r#"aigate_http_status{code="404",consumer="",node="",route="",service=""}"#),
        1.0
    );
    assert_eq!(
        s(
            r#"aigate_llm_prompt_tokens{consumer="john",llm_model="model-up",node="up",route="chat",service=""}"#
        ),
        21.0
    );
    assert_eq!(
        s(
            r#"aigate_llm_completion_tokens{consumer="john",llm_model="model-up",node="up",route="chat",service=""}"#
        ),
        9.0
    );
    // Each served request tried `down` first.
    assert_eq!(
        s(r#"aigate_llm_fallbacks_total{node="down",route="chat",service=""}"#),
        3.0
    );
    assert_eq!(
        s(r#"aigate_llm_fallbacks_total{node="up",route="chat",service=""}"#),
        0.0
    );
    assert_eq!(
        s(r#"aigate_llm_quota_rejections_total{route="chat",service=""}"#),
        1.0
    );
    // Request time and overhead: the four requests `up` took (the refused one too); upstream
    // time and time to first token: the three it answered.
    for (h, n) in [
        (
            r#"aigate_http_latency_count{node="up",route="chat",service="",type="request"}"#,
            4.0,
        ),
        (
            r#"aigate_gateway_overhead_count{node="up",route="chat",service=""}"#,
            4.0,
        ),
        (
            r#"aigate_http_latency_count{node="up",route="chat",service="",type="upstream"}"#,
            3.0,
        ),
        (
            r#"aigate_llm_time_to_first_token_count{node="up",route="chat",service=""}"#,
            3.0,
        ),
    ] {
        assert_eq!(s(h), n, "{h}");
    }
    let total = s(r#"aigate_http_latency_sum{node="up",route="chat",service="",type="request"}"#);
    let overhead = s(r#"aigate_gateway_overhead_sum{node="up",route="chat",service=""}"#);
    assert!(
        overhead > 0.0 && overhead < total,
        "overhead {overhead} ms of {total} ms"
    );
    assert_eq!(
        s(
            r#"aigate_http_latency_bucket{node="up",route="chat",service="",type="request",le="60000"}"#
        ),
        4.0
    );
    assert_eq!(
        s(r#"aigate_http_requests_in_flight{route="chat",service=""}"#),
        0.0
    );
    // `down` answered 500 three times: ai-proxy-multi's passive check has it cooling down.
    assert_eq!(s(r#"aigate_upstream_status{node="up",route="chat"}"#), 1.0);
    assert_eq!(
        s(r#"aigate_upstream_status{node="down",route="chat"}"#),
        0.0
    );
    // Nothing a client sent becomes a label: not the path of the 404, not the wrong key.
    assert!(!t.contains("nowhere") && !t.contains("wrong"), "{t}");
    // The listener serves /metrics only.
    assert_eq!(request(mport, "GET", "/", &[], b"").status, 404);
    assert_eq!(request(mport, "POST", "/metrics", &[], b"").status, 405);
}

#[test]
fn in_flight_requests_and_streams_are_gauges_while_they_last() {
    let mock = Mock::start("slow");
    let (gw, mport) = start(&chat_route(&mock.chat_url(), "k", &[]), "");
    let port = gw.port;
    // A stream of 10 events 150 ms apart: ~1.5 s in flight.
    let stream = std::thread::spawn(move || {
        request(
            port,
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                ("x-mock-chunks", "10"),
                ("x-mock-chunk-delay-ms", "150"),
            ],
            json!({"stream": true, "messages": [{"role": "user", "content": "hi"}]})
                .to_string()
                .as_bytes(),
        )
    });
    let flight = r#"aigate_http_requests_in_flight{route="chat",service=""}"#;
    let streams = r#"aigate_llm_active_streams{route="chat",service=""}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = scrape(mport);
        if value(&t, streams) == Some(1.0) {
            assert_eq!(must(&t, flight), 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "the stream never showed:\n{t}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = stream.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("[DONE]"));
    let t = scrape_after(mport, 1.0);
    assert_eq!(must(&t, flight), 0.0);
    assert_eq!(must(&t, streams), 0.0);
    let ttft = must(
        &t,
        r#"aigate_llm_time_to_first_token_sum{node="ai-proxy-openai-compatible",route="chat",service=""}"#,
    );
    let total = must(
        &t,
        r#"aigate_http_latency_sum{node="ai-proxy-openai-compatible",route="chat",service="",type="request"}"#,
    );
    // The first token came long before the stream's end.
    assert!(
        ttft < 500.0 && total > 1000.0,
        "ttft {ttft} ms, total {total} ms"
    );
}

#[test]
fn model_labels_are_bounded_and_names_can_replace_ids() {
    let mock = Mock::start("m");
    mock.set(json!({"prompt_tokens": 1, "completion_tokens": 1}));
    // No model in the config: the client's goes upstream and would be the label.
    let resources = format!(
        "routes:\n  - id: r1\n    name: chat-route\n    uri: /v1/chat/completions\n    service_id: s1\n    plugins:\n      ai-proxy:\n        provider: openai-compatible\n        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n        override: {{ endpoint: \"{}\" }}\nservices:\n  - id: s1\n    name: chat-service\n    plugins:\n      prometheus: {{ prefer_name: true }}\n",
        mock.chat_url()
    );
    let (gw, mport) = start(&resources, "    max_model_labels: 2\n");
    for model in ["m1", "m2", "m3", "m4", "m1"] {
        let r = gw.chat(
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_eq!(r.status, 200);
    }
    let t = scrape_after(mport, 5.0);
    let series = |model: &str| {
        format!(
            r#"aigate_llm_prompt_tokens{{consumer="",llm_model="{model}",node="ai-proxy-openai-compatible",route="chat-route",service="chat-service"}}"#
        )
    };
    assert_eq!(must(&t, &series("m1")), 2.0);
    assert_eq!(must(&t, &series("m2")), 1.0);
    assert_eq!(must(&t, &series("other")), 2.0);
    assert!(!t.contains("m3") && !t.contains("m4"), "{t}");
    assert!(!t.contains(r#"route="r1""#), "{t}");
}

#[test]
fn prefix_and_plain_upstream_nodes() {
    let mock = Mock::start("plain");
    let addr = mock
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let resources = format!(
        "routes:\n  - id: plain\n    uri: /anything/*\n    upstream:\n      nodes:\n        \"{addr}\": 1\n"
    );
    let (gw, mport) = start(&resources, "    metric_prefix: apisix_\n");
    assert_eq!(gw.post("/anything/x", &[], b"").status, 200);
    let t = scrape_after(mport, 1.0);
    let series = format!(
        r#"apisix_http_status{{code="200",consumer="",node="{addr}",route="plain",service=""}}"#
    );
    assert_eq!(must(&t, &series), 1.0);
    assert!(!t.contains("aigate_"), "{t}");
}

#[test]
fn prometheus_without_a_listener_or_on_a_consumer_is_refused() {
    let route = "routes:\n  - id: r\n    uri: /x\n    upstream: { nodes: { \"127.0.0.1:1\": 1 } }\n    plugins:\n      prometheus: {}\n";
    let (ok, out) = check_config(&format!("gateway:\n  listen: 127.0.0.1:1\n{route}"), &[]);
    assert!(!ok);
    assert!(
        out.contains("routes[0].plugins.prometheus") && out.contains("gateway.metrics"),
        "{out}"
    );
    let (ok, out) = check_config(
        &format!(
            "gateway:\n  listen: 127.0.0.1:1\n  metrics: {{ listen: 127.0.0.1:2 }}\n{route}consumers:\n  - username: a\n    plugins:\n      key-auth: {{ key: k }}\n      prometheus: {{}}\n"
        ),
        &[],
    );
    assert!(!ok);
    assert!(out.contains("consumers[0].plugins.prometheus"), "{out}");
    let (ok, out) = check_config(
        &format!("gateway:\n  listen: 127.0.0.1:1\n  metrics: {{ listen: 127.0.0.1:2, metric_prefix: \"9x\" }}\n{route}"),
        &[],
    );
    assert!(!ok);
    assert!(out.contains("gateway.metrics.metric_prefix"), "{out}");
    let (ok, out) = check_config(
        &format!("gateway:\n  listen: 127.0.0.1:1\n  metrics: {{ listen: 127.0.0.1:1 }}\n{route}"),
        &[],
    );
    assert!(!ok);
    assert!(out.contains("gateway.metrics.listen"), "{out}");
    let (ok, out) = check_config(
        &format!("gateway:\n  listen: 127.0.0.1:1\n  metrics: {{ listen: 127.0.0.1:2 }}\n{route}"),
        &[],
    );
    assert!(ok, "{out}");
}
