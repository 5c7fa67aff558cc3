//! The access log as operators read it: the default nginx-combined-plus-LLM format field by field,
//! every variable of a custom format, `request_type`, the `logging.summaries`/`payloads` JSON,
//! credentials never reaching a log, and the `-` (stdout) and `off` targets.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

/// An ai-proxy route to `mock` whose options set the model to `model`; `extra` is more YAML under
/// `ai-proxy:` (6 spaces of indent).
fn ai_route(id: &str, uri: &str, mock: &Mock, model: &str, extra: &str) -> String {
    format!(
        r#"
  - id: {id}
    uri: {uri}
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth: {{ header: {{ Authorization: "Bearer k" }} }}
        options: {{ model: {model} }}
        override: {{ endpoint: "{}" }}
{extra}"#,
        mock.chat_url()
    )
}

/// A plain route (no plugin) to the mock's `/anything` echo.
fn plain_route(id: &str, mock: &Mock) -> String {
    format!(
        r#"
  - id: {id}
    uri: /anything/*
    upstream:
      nodes:
        "127.0.0.1:{}": 1
"#,
        mock.port
    )
}

/// The line carrying this request id (lines are written in completion order, so tests find
/// their line by id rather than by position).
fn line_for(gw: &Gateway, n: usize, request_id: &str) -> String {
    let lines = gw.log_lines(n);
    let found: Vec<&String> = lines.iter().filter(|l| l.contains(request_id)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one line with {request_id} in:\n{}",
        lines.join("\n")
    );
    found[0].clone()
}

fn rid(r: &Resp) -> String {
    r.header("x-request-id").expect("X-Request-Id").to_string()
}

/// `$request_time`-style seconds with millisecond precision.
fn secs(v: &str) -> f64 {
    assert!(
        regex::Regex::new(r"^\d+\.\d{3}$").unwrap().is_match(v),
        "not seconds.millis: {v:?}"
    );
    v.parse().unwrap()
}

fn check_time_local(v: &str) -> chrono::DateTime<chrono::FixedOffset> {
    assert!(
        regex::Regex::new(r"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}$")
            .unwrap()
            .is_match(v),
        "not nginx $time_local: {v:?}"
    );
    let t = chrono::DateTime::parse_from_str(v, "%d/%b/%Y:%H:%M:%S %z").unwrap();
    let age = (now_ms() / 1000) as i64 - t.timestamp();
    assert!(
        (-2..60).contains(&age),
        "$time_local {v} is {age} s away from now"
    );
    t
}

/// The JSON value following ` NAME=` in a line (`summary`, `payload`), if present.
fn appended_json(line: &str, name: &str) -> Option<Value> {
    let marker = format!(" {name}=");
    let at = line.find(&marker)?;
    let rest = &line[at + marker.len()..];
    let v = serde_json::Deserializer::from_str(rest)
        .into_iter::<Value>()
        .next()?;
    Some(v.unwrap_or_else(|e| panic!("{name}= is not JSON ({e}): {line}")))
}

// ---------------------------------------------------------------------------------------------
// 1. The default format

#[test]
fn default_format_has_one_line_per_request_with_what_the_client_saw() {
    let mock = Mock::start("al1");
    let gw = Gateway::start(&format!(
        "routes:{}",
        ai_route(
            "chat-main",
            "/v1/chat/completions",
            &mock,
            "upstream-model",
            ""
        )
    ));

    // 1: slow provider, 4 answer pieces, the client's model is replaced by the route's options.
    let body = json!({"model": "client-model", "messages": [{"role": "user", "content": "one two three four five"}]});
    let r1 = gw.chat_with(
        "/v1/chat/completions",
        &[
            ("user-agent", "aigate-tests/1.0 (default format)"),
            ("referer", "http://example.test/page"),
            ("x-mock-delay-ms", "250"),
            ("x-mock-chunks", "4"),
        ],
        &body,
    );
    assert_eq!(r1.status, 200, "{}", r1.text());
    let sent: Value = serde_json::from_str(mock.last()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["model"], "upstream-model");
    // 2: the client's own X-Request-Id is kept; no model in the body.
    let r2 = gw.chat_with(
        "/v1/chat/completions",
        &[("x-request-id", "trace-abc-123")],
        &chat_body("hi"),
    );
    assert_eq!(r2.status, 200);
    assert_eq!(rid(&r2), "trace-abc-123");
    // 3: one more, so "one line per request" is checked over several.
    let r3 = gw.chat("/v1/chat/completions", &chat_body("a b"));
    assert_eq!(r3.status, 200);

    let line = line_for(&gw, 3, &rid(&r1));
    let f = log_fields(&line);
    assert_eq!(f.len(), 22, "{line}");
    assert_eq!(&f[0..3], &["127.0.0.1", "-", "-"], "{line}");
    check_time_local(&f[3]);
    assert_eq!(f[4], "POST /v1/chat/completions HTTP/1.1", "{line}");
    assert_eq!(f[5], "200");
    assert_eq!(f[6], r1.body.len().to_string(), "$body_bytes_sent: {line}");
    assert_eq!(f[7], "http://example.test/page");
    assert_eq!(f[8], "aigate-tests/1.0 (default format)");
    let request_time = secs(&f[9]);
    assert!(
        request_time >= 0.25,
        "$request_time {request_time} < the provider's 250 ms delay"
    );
    assert_eq!(
        f[10],
        format!("127.0.0.1:{}", mock.port),
        "$upstream_addr: {line}"
    );
    assert_eq!(f[11], "200", "$upstream_status");
    let upstream_time = secs(&f[12]);
    assert!(
        upstream_time >= 0.25 && upstream_time <= request_time,
        "$upstream_response_time {upstream_time} vs {request_time}"
    );
    assert_eq!(f[13], rid(&r1));
    assert_eq!(f[13].len(), 32, "generated request ids are 32 hex digits");
    assert_eq!(f[14], "chat-main");
    assert_eq!(f[15], "ai_chat");
    assert_eq!(f[16], "client-model", "$request_llm_model");
    assert_eq!(
        f[17], "upstream-model",
        "$llm_model is the model sent upstream"
    );
    assert!(
        regex::Regex::new(r"^\d+$").unwrap().is_match(&f[18]),
        "TTFT is an integer of ms: {line}"
    );
    let ttft: f64 = f[18].parse().unwrap();
    assert!(
        ttft >= 250.0 && ttft <= request_time * 1000.0 + 1.0,
        "TTFT {ttft} ms, request {request_time} s"
    );
    let usage = &r1.json()["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(5), Some(4))
    );
    assert_eq!(&f[19..22], &["5", "4", "9"], "tokens: {line}");

    let line = line_for(&gw, 3, "trace-abc-123");
    let f = log_fields(&line);
    assert_eq!(f[8], "-", "no User-Agent");
    assert_eq!(f[7], "-", "no Referer");
    assert_eq!(f[16], "-", "the client named no model");
    assert_eq!(f[17], "upstream-model");
    assert!(f[18].parse::<u64>().unwrap() < 250, "{line}");
    assert_eq!(&f[19..22], &["1", "3", "4"], "{line}");

    let line = line_for(&gw, 3, &rid(&r3));
    assert_eq!(&log_fields(&line)[19..22], &["2", "3", "5"], "{line}");

    // Exactly three lines, nothing more turns up later.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(gw.access_log().lines().count(), 3, "{}", gw.access_log());
}

#[test]
fn failed_requests_are_logged_with_the_status_the_client_got() {
    let mock = Mock::start("al2");
    let dead = closed_port();
    let down = format!(
        r#"
  - id: down
    uri: /down
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth: {{ header: {{ Authorization: "Bearer k" }} }}
        override: {{ endpoint: "http://127.0.0.1:{dead}/v1/chat/completions" }}
"#
    );
    let routes = format!("routes:{}{down}", ai_route("up", "/up", &mock, "m", ""));
    let gw = Gateway::start(&routes);
    let r500 = gw.chat_with("/up", &[("x-mock-status", "500")], &chat_body("hi"));
    assert_eq!(r500.status, 500);
    let r502 = gw.chat("/down", &chat_body("hi"));
    r502.openai_error(502);
    let r404 = gw.chat("/nowhere", &chat_body("hi"));
    r404.openai_error(404);
    let r400 = gw.post("/up", &[("content-type", "application/json")], b"{not json");
    r400.openai_error(400);

    let f = log_fields(&line_for(&gw, 4, &rid(&r500)));
    assert_eq!(
        (f[5].as_str(), f[11].as_str(), f[14].as_str()),
        ("500", "500", "up")
    );
    assert_eq!(f[6], r500.body.len().to_string());
    assert_eq!(&f[19..22], &["-", "-", "-"], "no usage in an error answer");

    let f = log_fields(&line_for(&gw, 4, &rid(&r502)));
    assert_eq!(
        (f[5].as_str(), f[14].as_str(), f[15].as_str()),
        ("502", "down", "ai_chat")
    );
    assert_eq!(f[6], r502.body.len().to_string());
    assert_eq!(&f[18..22], &["-", "-", "-", "-"]);

    let f = log_fields(&line_for(&gw, 4, &rid(&r404)));
    assert_eq!(f[4], "POST /nowhere HTTP/1.1");
    assert_eq!(
        (
            f[5].as_str(),
            f[10].as_str(),
            f[11].as_str(),
            f[14].as_str()
        ),
        ("404", "-", "-", "-")
    );
    assert_eq!(f[6], r404.body.len().to_string());

    let f = log_fields(&line_for(&gw, 4, &rid(&r400)));
    assert_eq!(
        (f[5].as_str(), f[10].as_str(), f[14].as_str()),
        ("400", "-", "up")
    );
    assert_eq!(
        mock.llm_requests().len(),
        1,
        "only the 500 reached the provider"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Every variable of a custom format

const ALL_VARS: &str = "$remote_addr|$time_local|$time_iso8601|$request_method|$uri|$request_line|$status|$body_bytes_sent|$request_time|$upstream_addr|$upstream_status|$upstream_response_time|$http_x_custom|$route_id|$consumer_name|$request_id|$request_type|$llm_time_to_first_token|$llm_model|$llm_response_model|$request_llm_model|$llm_prompt_tokens|$llm_completion_tokens|$llm_total_tokens|$llm_instance|$llm_attempts";

#[test]
fn custom_format_renders_every_documented_variable() {
    let mock = Mock::start("al3");
    let resources = format!(
        "routes:{}{}",
        ai_route("llm", "/v1/chat/completions", &mock, "sent-model", ""),
        plain_route("plain", &mock)
    );
    let gw = Gateway::start_with(
        &resources,
        GatewayOpts {
            log_format: Some(ALL_VARS),
            ..Default::default()
        },
    );

    let body = json!({"model": "asked-model", "messages": [{"role": "user", "content": "count these four words"}]});
    let r = gw.chat_with(
        "/v1/chat/completions?trace=1",
        &[
            ("x-custom", "hello-custom"),
            ("x-mock-model", "reported-model"),
            ("x-mock-delay-ms", "120"),
            ("x-mock-chunks", "2"),
        ],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let plain = request(gw.port, "GET", "/anything/echo?q=1", &[], b"");
    assert_eq!(plain.status, 200);

    let line = line_for(&gw, 2, &rid(&r));
    let v: Vec<&str> = line.split('|').collect();
    assert_eq!(v.len(), 26, "{line}");
    assert_eq!(v[0], "127.0.0.1");
    let local = check_time_local(v[1]);
    let iso = chrono::DateTime::parse_from_rfc3339(v[2])
        .unwrap_or_else(|e| panic!("$time_iso8601 {:?}: {e}", v[2]));
    assert!(
        regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$")
            .unwrap()
            .is_match(v[2]),
        "{}",
        v[2]
    );
    assert_eq!(
        iso.timestamp(),
        local.timestamp(),
        "both times are the request's start"
    );
    assert_eq!(v[3], "POST");
    assert_eq!(v[4], "/v1/chat/completions", "$uri has no query");
    assert_eq!(v[5], "POST /v1/chat/completions?trace=1 HTTP/1.1");
    assert_eq!(v[6], "200");
    assert_eq!(v[7], r.body.len().to_string());
    let request_time = secs(v[8]);
    assert!(request_time >= 0.12);
    assert_eq!(v[9], format!("127.0.0.1:{}", mock.port));
    assert_eq!(v[10], "200");
    let upstream_time = secs(v[11]);
    assert!(
        upstream_time >= 0.12 && upstream_time <= request_time,
        "{line}"
    );
    assert_eq!(v[12], "hello-custom", "$http_x_custom reads X-Custom");
    assert_eq!(v[13], "llm");
    assert_eq!(v[14], "-", "no consumer");
    assert_eq!(v[15], rid(&r));
    assert_eq!(v[16], "ai_chat");
    let ttft: u64 = v[17].parse().unwrap_or_else(|_| panic!("TTFT {:?}", v[17]));
    assert!(ttft >= 120, "{line}");
    assert_eq!(v[18], "sent-model", "$llm_model: sent upstream");
    assert_eq!(
        v[19], "reported-model",
        "$llm_response_model: reported by the provider"
    );
    assert_eq!(v[20], "asked-model", "$request_llm_model: the client's");
    assert_eq!(&v[21..24], &["4", "2", "6"]);
    assert!(
        v[24].contains("openai-compatible"),
        "$llm_instance {:?}",
        v[24]
    );
    assert_eq!(v[25], "1", "$llm_attempts");

    // A plain request: the LLM variables and the absent header are `-`.
    let line = line_for(&gw, 2, &rid(&plain));
    let v: Vec<&str> = line.split('|').collect();
    assert_eq!(v.len(), 26, "{line}");
    assert_eq!(
        (v[3], v[4], v[5]),
        ("GET", "/anything/echo", "GET /anything/echo?q=1 HTTP/1.1")
    );
    assert_eq!(v[7], plain.body.len().to_string());
    assert_eq!(v[9], format!("127.0.0.1:{}", mock.port));
    assert_eq!(
        (v[12], v[13], v[14], v[16]),
        ("-", "plain", "-", "traditional_http")
    );
    for (i, name) in [
        (17, "ttft"),
        (18, "model"),
        (19, "response model"),
        (20, "request model"),
        (21, "prompt"),
        (22, "completion"),
        (23, "total"),
        (24, "instance"),
        (25, "attempts"),
    ] {
        assert_eq!(v[i], "-", "{name} on a plain route: {line}");
    }
}

#[test]
fn an_unknown_variable_in_the_format_fails_the_config_check() {
    let dir = std::env::temp_dir();
    let good = config_text(
        9,
        &dir,
        "routes: []",
        &GatewayOpts {
            log_format: Some(ALL_VARS),
            ..Default::default()
        },
    );
    let (ok, out) = check_config(&good, &[]);
    assert!(ok, "every documented variable is accepted: {out}");
    let bad = config_text(
        9,
        &dir,
        "routes: []",
        &GatewayOpts {
            log_format: Some("$remote_addr $llm_tokenz"),
            ..Default::default()
        },
    );
    let (ok, out) = check_config(&bad, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("gateway.access_log.format") && out.contains("llm_tokenz"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. request_type

#[test]
fn request_type_is_traditional_http_ai_chat_or_ai_stream() {
    let mock = Mock::start("al4");
    let resources = format!(
        "routes:{}{}",
        ai_route("llm", "/v1/chat/completions", &mock, "m", ""),
        plain_route("plain", &mock)
    );
    let gw = Gateway::start(&resources);

    let plain = request(gw.port, "GET", "/anything/x?y=1", &[], b"");
    assert_eq!(plain.status, 200);
    let echoed: Value = plain.json();
    assert_eq!(
        echoed["url"], "/anything/x?y=1",
        "the mock's echo served it"
    );
    let chat = gw.chat("/v1/chat/completions", &chat_body("hello"));
    assert_eq!(chat.status, 200);
    let mut stream_req = chat_body("hello there");
    stream_req["stream"] = json!(true);
    let stream = gw.chat("/v1/chat/completions", &stream_req);
    assert_eq!(stream.status, 200);
    assert_eq!(stream.sse_data().last().map(String::as_str), Some("[DONE]"));

    let f = log_fields(&line_for(&gw, 3, &rid(&plain)));
    assert_eq!(
        (f[4].as_str(), f[14].as_str(), f[15].as_str()),
        ("GET /anything/x?y=1 HTTP/1.1", "plain", "traditional_http")
    );
    assert_eq!(f[10], format!("127.0.0.1:{}", mock.port));
    assert_eq!(
        &f[16..22],
        &["-", "-", "-", "-", "-", "-"],
        "no LLM fields on a plain route"
    );

    let f = log_fields(&line_for(&gw, 3, &rid(&chat)));
    assert_eq!((f[14].as_str(), f[15].as_str()), ("llm", "ai_chat"));

    let line = line_for(&gw, 3, &rid(&stream));
    let f = log_fields(&line);
    assert_eq!((f[14].as_str(), f[15].as_str()), ("llm", "ai_stream"));
    assert_eq!(&f[19..22], &["2", "3", "5"], "{line}");
    assert_eq!(
        f[6],
        stream.body.len().to_string(),
        "$body_bytes_sent of a stream = the event bytes the client got: {line}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. logging.summaries / logging.payloads

#[test]
fn summaries_and_payloads_are_appended_only_when_configured() {
    let mock = Mock::start("al5");
    let routes = [
        ai_route(
            "sum",
            "/sum",
            &mock,
            "m-sum",
            "        logging: { summaries: true }\n",
        ),
        ai_route(
            "pay",
            "/pay",
            &mock,
            "m-pay",
            "        logging: { payloads: true }\n",
        ),
        ai_route(
            "both",
            "/both",
            &mock,
            "m-both",
            "        logging: { summaries: true, payloads: true }\n",
        ),
        ai_route("none", "/none", &mock, "m-none", ""),
        ai_route(
            "off",
            "/off",
            &mock,
            "m-off",
            "        logging: { summaries: false, payloads: false }\n",
        ),
    ];
    let gw = Gateway::start(&format!("routes:{}", routes.concat()));
    let messages = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is up"}]);
    let chat = |path: &str, stream: bool, content: &str, extra: &[(&str, &str)]| {
        let mut h = vec![("x-mock-content", content)];
        h.extend_from_slice(extra);
        let r = gw.chat_with(
            path,
            &h,
            &json!({"model": "client-model", "messages": messages, "stream": stream}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r
    };
    let sum = chat("/sum", false, "summary only", &[("x-mock-delay-ms", "100")]);
    let pay_json = chat("/pay", false, "the json answer", &[]);
    let pay_stream = chat("/pay", true, "the streamed answer here", &[]);
    let both = chat("/both", true, "both at once", &[]);
    let none_json = chat("/none", false, "nothing extra", &[]);
    let none_stream = chat("/none", true, "nothing extra", &[]);
    let off = chat("/off", false, "nothing extra", &[]);
    let sum_failed = gw.chat_with(
        "/sum",
        &[("x-mock-status", "503")],
        &json!({"model": "client-model", "messages": messages}),
    );
    assert_eq!(sum_failed.status, 503);
    let n = 8;

    // summaries only
    let line = line_for(&gw, n, &rid(&sum));
    assert!(
        line.contains(" summary={") && !line.contains("payload="),
        "{line}"
    );
    assert_eq!(
        log_fields(&line[..line.find(" summary=").unwrap()]).len(),
        22,
        "the default fields come first: {line}"
    );
    let s = appended_json(&line, "summary").unwrap();
    assert_eq!(s["request_model"], "client-model", "{s}");
    assert_eq!(s["model"], "m-sum", "{s}");
    // prompt: "be brief what is up" = 5 words; completion: 2 pieces.
    assert_eq!(
        (
            s["prompt_tokens"].as_u64(),
            s["completion_tokens"].as_u64(),
            s["total_tokens"].as_u64()
        ),
        (Some(5), Some(2), Some(7)),
        "{s}"
    );
    let duration = s["duration"]
        .as_u64()
        .unwrap_or_else(|| panic!("duration: {s}"));
    assert!(
        (100..10_000).contains(&duration),
        "duration {duration} ms with a 100 ms provider delay"
    );
    assert_eq!(s["status"], 200, "{s}");

    // A failed call is summarised too, with the status the client got and no tokens.
    let line = line_for(&gw, n, &rid(&sum_failed));
    let s = appended_json(&line, "summary").unwrap_or_else(|| panic!("no summary: {line}"));
    assert_eq!(
        (
            s["status"].as_u64(),
            s["total_tokens"].as_u64(),
            s["model"].as_str()
        ),
        (Some(503), Some(0), Some("m-sum")),
        "{s}"
    );

    // payloads only, JSON answer and stream
    for (r, answer) in [
        (&pay_json, "the json answer"),
        (&pay_stream, "the streamed answer here"),
    ] {
        let line = line_for(&gw, n, &rid(r));
        assert!(
            line.contains(" payload={") && !line.contains("summary="),
            "{line}"
        );
        let p = appended_json(&line, "payload").unwrap();
        assert_eq!(p["request"], messages, "{p}");
        assert_eq!(p["response"], answer, "{p}");
    }

    // both: summary first, then payload
    let line = line_for(&gw, n, &rid(&both));
    let (si, pi) = (
        line.find(" summary={").expect(&line),
        line.find(" payload={").expect(&line),
    );
    assert!(si < pi, "{line}");
    let s = appended_json(&line, "summary").unwrap();
    assert_eq!(
        (
            s["model"].as_str(),
            s["total_tokens"].as_u64(),
            s["status"].as_u64()
        ),
        (Some("m-both"), Some(8), Some(200)),
        "{s}"
    );
    assert_eq!(
        appended_json(&line, "payload").unwrap()["response"],
        "both at once"
    );

    // neither
    for r in [&none_json, &none_stream, &off] {
        let line = line_for(&gw, n, &rid(r));
        assert!(
            !line.contains("summary=") && !line.contains("payload="),
            "{line}"
        );
        assert_eq!(log_fields(&line).len(), 22, "{line}");
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Credentials never reach a log

/// Every credential-bearing variable, and the request line/query that may carry `?key=`.
const SECRET_FORMAT: &str = r#"$remote_addr "$request_line" $status "$args" "$request_uri" "$http_authorization" "$http_apikey" "$http_x_api_key" "$http_api_key" "$http_cookie" "$arg_key" "$arg_apikey" $route_id $request_id $upstream_status"#;

const UPSTREAM_ENV_KEY: &str = "sk-SECRET-env-upstream-1111";
const UPSTREAM_AZURE_KEY: &str = "sk-SECRET-api-key-header-2222";
const UPSTREAM_QUERY_KEY: &str = "sk-SECRET-auth-query-3333";
const CLIENT_BEARER: &str = "client-SECRET-bearer-4444";
const CLIENT_APIKEY: &str = "client-SECRET-apikey-5555";
const CLIENT_X_API_KEY: &str = "client-SECRET-xapikey-6666";
const CLIENT_QUERY_KEY: &str = "client-SECRET-query-key-7777";
const CLIENT_QUERY_APIKEY: &str = "client-SECRET-query-apikey-8888";
const CLIENT_COOKIE: &str = "client-SECRET-cookie-9999";

fn all_secrets() -> [&'static str; 9] {
    [
        UPSTREAM_ENV_KEY,
        UPSTREAM_AZURE_KEY,
        UPSTREAM_QUERY_KEY,
        CLIENT_BEARER,
        CLIENT_APIKEY,
        CLIENT_X_API_KEY,
        CLIENT_QUERY_KEY,
        CLIENT_QUERY_APIKEY,
        CLIENT_COOKIE,
    ]
}

fn assert_no_secret(what: &str, text: &str) {
    for s in all_secrets() {
        assert!(!text.contains(s), "{s} leaked into {what}:\n{text}");
        // Not even a recognisable part of it.
        let tail = &s[s.len() - 9..];
        assert!(
            !text.contains(tail),
            "part of {s} ({tail}) leaked into {what}:\n{text}"
        );
    }
}

fn secret_route(id: &str, uri: &str, endpoint: &str, extra: &str) -> String {
    format!(
        r#"
  - id: {id}
    uri: {uri}
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth:
          header:
            Authorization: "Bearer ${{AL_UPSTREAM_KEY}}"
            api-key: "{UPSTREAM_AZURE_KEY}"
          query:
            key: "{UPSTREAM_QUERY_KEY}"
        options: {{ model: m }}
        override: {{ endpoint: "{endpoint}" }}
{extra}"#
    )
}

#[test]
fn secrets_never_reach_the_access_log_or_the_error_log() {
    let mock = Mock::start("al6");
    let dead = closed_port();
    let resources = format!(
        "routes:{}{}{}{}",
        secret_route(
            "ok",
            "/ok",
            &mock.chat_url(),
            "        logging: { summaries: true, payloads: true }\n"
        ),
        secret_route(
            "down",
            "/down",
            &format!("http://127.0.0.1:{dead}/v1/chat/completions"),
            ""
        ),
        secret_route("slow", "/slow", &mock.chat_url(), "        timeout: 300\n"),
        plain_route("plain", &mock),
    );
    let gw = Gateway::start_with(
        &resources,
        GatewayOpts {
            log_format: Some(SECRET_FORMAT),
            // aigate's default error-log level (the harness uses warn).
            env: vec![
                ("AL_UPSTREAM_KEY", UPSTREAM_ENV_KEY.to_string()),
                ("RUST_LOG", "info".to_string()),
            ],
            ..Default::default()
        },
    );
    let bearer = format!("Bearer {CLIENT_BEARER}");
    let cookie = format!("session={CLIENT_COOKIE}");
    let creds: Vec<(&str, &str)> = vec![
        ("content-type", "application/json"),
        ("authorization", &bearer),
        ("apikey", CLIENT_APIKEY),
        ("x-api-key", CLIENT_X_API_KEY),
        ("cookie", &cookie),
    ];
    let q = format!("key={CLIENT_QUERY_KEY}&apikey={CLIENT_QUERY_APIKEY}&x=1");
    let send = |method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]| {
        let mut h = creds.clone();
        h.extend_from_slice(extra);
        request(gw.port, method, &format!("{path}?{q}"), &h, body)
    };
    let chat = chat_body("my secret question").to_string();
    let mut stream = chat_body("my secret question");
    stream["stream"] = json!(true);
    let stream = stream.to_string();

    let ok = send("POST", "/ok", &[], chat.as_bytes());
    assert_eq!(ok.status, 200, "{}", ok.text());
    // The upstream credentials really were in play.
    let up = mock.last();
    assert_eq!(
        up["headers"]["authorization"],
        format!("Bearer {UPSTREAM_ENV_KEY}")
    );
    assert!(
        up["path"].as_str().unwrap().contains(UPSTREAM_QUERY_KEY),
        "{up}"
    );
    let streamed = send("POST", "/ok", &[], stream.as_bytes());
    assert_eq!(streamed.status, 200);
    let failed = send("POST", "/ok", &[("x-mock-status", "500")], chat.as_bytes());
    assert_eq!(failed.status, 500);
    let unreachable = send("POST", "/down", &[], chat.as_bytes());
    assert_eq!(unreachable.status, 502, "{}", unreachable.text());
    let timed_out = send(
        "POST",
        "/slow",
        &[("x-mock-delay-ms", "2000")],
        chat.as_bytes(),
    );
    assert_eq!(timed_out.status, 504, "{}", timed_out.text());
    let plain = send("GET", "/anything/p", &[], b"");
    assert_eq!(plain.status, 200);
    let no_route = send("POST", "/nowhere", &[], chat.as_bytes());
    assert_eq!(no_route.status, 404);
    let bad_json = send("POST", "/ok", &[], b"{\"messages\": ");
    assert_eq!(bad_json.status, 400);
    let all = [
        &ok,
        &streamed,
        &failed,
        &unreachable,
        &timed_out,
        &plain,
        &no_route,
        &bad_json,
    ];
    // (The plain route's echo upstream hands the client its own credentials back: that is the
    // upstream's business. Everything the gateway itself answers must be clean.)
    for r in [
        &ok,
        &streamed,
        &failed,
        &unreachable,
        &timed_out,
        &no_route,
        &bad_json,
    ] {
        assert_no_secret("a response to the client", &r.text());
    }

    let lines = gw.log_lines(all.len());
    assert_eq!(lines.len(), all.len(), "{lines:?}");
    let redacted = "[REDACTED]";
    let rq = format!("key={redacted}&apikey={redacted}&x=1");
    for r in all {
        let line = line_for(&gw, all.len(), &rid(r));
        let f = log_fields(line.split(" summary=").next().unwrap());
        assert_eq!(f.len(), 15, "{line}");
        let method = if std::ptr::eq(r, &plain) {
            "GET"
        } else {
            "POST"
        };
        assert!(
            f[1].starts_with(&format!("{method} /")) && f[1].ends_with(&format!("?{rq} HTTP/1.1")),
            "$request_line: {line}"
        );
        assert_eq!(f[3], rq, "$args: {line}");
        assert!(f[4].ends_with(&format!("?{rq}")), "$request_uri: {line}");
        assert_eq!(&f[5..8], &[redacted; 3], "credential headers: {line}");
        assert_eq!(f[8], "-", "no api-key header was sent: {line}");
        assert_eq!(f[9], redacted, "$http_cookie: {line}");
        assert_eq!(&f[10..12], &[redacted; 2], "$arg_key $arg_apikey: {line}");
    }
    let log = gw.access_log();
    assert!(
        log.contains("my secret question"),
        "payload logging is on for /ok, so the check above had something to see"
    );
    assert_no_secret("access.log", &log);

    // Give the error log a moment (Pingora logs proxy failures after the response).
    std::thread::sleep(Duration::from_millis(300));
    let errors = gw.error_log();
    assert!(
        errors.contains("listening on"),
        "RUST_LOG=info writes something: {errors}"
    );
    assert_no_secret("error.log", &errors);

    // And a config error: an env-provided key in a field of the wrong type is not echoed.
    let bad = config_text(
        9,
        &gw.dir,
        &secret_route(
            "r",
            "/r",
            &mock.chat_url(),
            "        timeout: ${AL_UPSTREAM_KEY}\n",
        )
        .replacen("\n  - id", "routes:\n  - id", 1),
        &GatewayOpts::default(),
    );
    let (ok_cfg, out) = check_config(&bad, &[("AL_UPSTREAM_KEY", UPSTREAM_ENV_KEY)]);
    assert!(
        !ok_cfg && out.contains("routes[0].plugins.ai-proxy.timeout"),
        "{out}"
    );
    assert_no_secret("the -t output", &out);
}

/// At `RUST_LOG=debug` Pingora traces every request it proxies, client headers included (a
/// debugging aid). The credentials the gateway itself adds from config must still not show up:
/// auth header values are marked sensitive for that reason, and `auth.query` values deserve the
/// same.
#[test]
fn configured_credentials_stay_out_of_a_debug_error_log() {
    let mock = Mock::start("al9");
    let gw = Gateway::start_with(
        &format!("routes:{}", secret_route("ok", "/ok", &mock.chat_url(), "")),
        GatewayOpts {
            env: vec![
                ("AL_UPSTREAM_KEY", UPSTREAM_ENV_KEY.to_string()),
                ("RUST_LOG", "debug".to_string()),
            ],
            ..Default::default()
        },
    );
    let r = gw.chat("/ok", &chat_body("hi"));
    assert_eq!(r.status, 200);
    let up = mock.last();
    assert!(
        up["path"].as_str().unwrap().contains(UPSTREAM_QUERY_KEY),
        "{up}"
    );
    assert_eq!(up["headers"]["api-key"], UPSTREAM_AZURE_KEY);
    gw.log_lines(1);
    let errors = gw.error_log();
    assert!(errors.contains("DEBUG"), "debug tracing is on");
    for s in [UPSTREAM_ENV_KEY, UPSTREAM_AZURE_KEY, UPSTREAM_QUERY_KEY] {
        let hits: Vec<&str> = errors.lines().filter(|l| l.contains(s)).collect();
        assert!(
            hits.is_empty(),
            "configured credential {s} is in the debug error log:\n{}",
            hits.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 6. `path: "-"` and `path: off`

/// An aigate this test spawns itself (the harness always logs to a file).
struct OwnGateway {
    child: std::process::Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Drop for OwnGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn own_gateway(resources: &str, access_log_path: &str) -> OwnGateway {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut last_err = String::new();
    // Like the harness: a parallel test may take the free port first, so retry on a new one.
    for _ in 0..3 {
        let dir = std::env::temp_dir().join(format!(
            "aigate-al-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let text = config_text(port, &dir, resources, &GatewayOpts::default());
        let file_line = format!("path: {}/access.log", dir.display());
        assert!(text.contains(&file_line));
        let text = text.replace(&file_line, &format!("path: \"{access_log_path}\""));
        std::fs::write(dir.join("config.yaml"), text).unwrap();
        let child = Command::new(AIGATE)
            .arg("-c")
            .arg(dir.join("config.yaml"))
            .current_dir(&dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("error.log")).unwrap())
            .spawn()
            .unwrap();
        let mut gw = OwnGateway { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = gw.child.id().to_string();
        loop {
            if let Ok(Some(_)) = gw.child.try_wait() {
                last_err = std::fs::read_to_string(gw.dir.join("error.log")).unwrap_or_default();
                break;
            }
            let ours =
                std::fs::read_to_string(gw.dir.join("aigate.pid")).is_ok_and(|p| p.trim() == pid);
            if ours && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Someone else's listener on our port would answer too; ours is the one still
                // alive a moment later (a failed bind ends the process).
                std::thread::sleep(Duration::from_millis(150));
                if gw.child.try_wait().is_ok_and(|s| s.is_none()) {
                    return gw;
                }
                continue;
            }
            assert!(Instant::now() < deadline, "aigate did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("aigate failed to start: {last_err}");
}

/// Files the gateway created in its directory besides the config and its own bookkeeping.
fn stray_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| {
            !["config.yaml", "error.log", "aigate.pid", "upgrade.sock"].contains(&n.as_str())
        })
        .collect()
}

#[test]
fn access_log_dash_writes_the_lines_to_stdout() {
    let mock = Mock::start("al7");
    let mut gw = own_gateway(
        &format!(
            "routes:{}{}",
            ai_route("llm", "/chat", &mock, "m", ""),
            plain_route("plain", &mock)
        ),
        "-",
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = gw.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let chat = request(
        gw.port,
        "POST",
        "/chat",
        &[("content-type", "application/json")],
        chat_body("one two").to_string().as_bytes(),
    );
    assert_eq!(chat.status, 200);
    let plain = request(gw.port, "GET", "/anything/z", &[], b"");
    assert_eq!(plain.status, 200);
    let mut got = Vec::new();
    while got.len() < 2 {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(l) => got.push(l),
            Err(_) => panic!("stdout has {} lines, expected 2: {got:?}", got.len()),
        }
    }
    let chat_line = got
        .iter()
        .find(|l| l.contains(&rid(&chat)))
        .unwrap_or_else(|| panic!("{got:?}"));
    let f = log_fields(chat_line);
    assert_eq!(f.len(), 22, "default format on stdout: {chat_line}");
    assert_eq!(
        (f[4].as_str(), f[5].as_str(), f[15].as_str()),
        ("POST /chat HTTP/1.1", "200", "ai_chat")
    );
    assert_eq!(&f[19..22], &["2", "3", "5"]);
    let plain_line = got
        .iter()
        .find(|l| l.contains(&rid(&plain)))
        .unwrap_or_else(|| panic!("{got:?}"));
    assert!(
        plain_line.contains("\"GET /anything/z HTTP/1.1\" 200 ")
            && plain_line.contains(" traditional_http "),
        "{plain_line}"
    );
    // Only log lines on stdout, and no file named "-" or anything else.
    assert!(
        rx.recv_timeout(Duration::from_millis(400)).is_err(),
        "unexpected extra stdout output"
    );
    assert_eq!(stray_files(&gw.dir), Vec::<String>::new());
}

#[test]
fn access_log_off_writes_nothing_anywhere() {
    let mock = Mock::start("al8");
    let mut gw = own_gateway(
        &format!("routes:{}", ai_route("llm", "/chat", &mock, "m", "")),
        "off",
    );
    for _ in 0..3 {
        let r = request(
            gw.port,
            "POST",
            "/chat",
            &[("content-type", "application/json")],
            chat_body("hi").to_string().as_bytes(),
        );
        assert_eq!(r.status, 200);
    }
    // The writer flushes at least every 200 ms; wait well past that, then stop the gateway.
    std::thread::sleep(Duration::from_millis(700));
    let _ = gw.child.kill();
    let _ = gw.child.wait();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut gw.child.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(out, "", "nothing on stdout");
    assert_eq!(
        stray_files(&gw.dir),
        Vec::<String>::new(),
        "no log file (not even one named \"off\" or logs/access.log)"
    );
    let errors = std::fs::read_to_string(gw.dir.join("error.log")).unwrap_or_default();
    assert!(
        !errors.contains("POST /chat"),
        "access lines do not go to the error log either: {errors}"
    );
}

#[test]
fn queued_lines_are_written_on_graceful_shutdown() {
    let mock = Mock::start("shutdown");
    let mut gw = Gateway::start(&format!("routes:{}", ai_route("r", "/r", &mock, "m", "")));
    for i in 0..25 {
        assert_eq!(gw.chat("/r", &chat_body(&format!("line {i}"))).status, 200);
    }
    // No waiting for the writer: the lines still in its queue must survive SIGTERM.
    let status = gw.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(gw.access_log().lines().count(), 25, "{}", gw.access_log());
}

/// Lines of a file (0 when it does not exist).
fn lines_in(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn logrotate_by_rename_or_sigusr1_loses_no_line() {
    let mock = Mock::start("m");
    let gw = Gateway::start_with(
        &format!("routes:{}", ai_route("r", "/chat", &mock, "m1", "")),
        GatewayOpts {
            log_format: Some("$request_uri $status"),
            ..Default::default()
        },
    );
    let log = gw.dir.join("access.log");
    let send = |tag: &str, n: usize| {
        for i in 0..n {
            let r = gw.chat(&format!("/chat?{tag}={i}"), &chat_body("hi"));
            assert_eq!(r.status, 200);
        }
    };
    let wait_total = |files: &[&std::path::Path], want: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n: usize = files.iter().map(|f| lines_in(f).len()).sum();
            if n >= want || Instant::now() > deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    send("a", 5);
    assert_eq!(wait_total(&[&log], 5), 5);

    // logrotate without a signal: the file is renamed; the writer notices within a second and
    // opens a new one. Lines written meanwhile land in the renamed file.
    let rotated = gw.dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    send("b", 3);
    std::thread::sleep(Duration::from_millis(1500));
    send("c", 4);
    assert_eq!(wait_total(&[&log, &rotated], 12), 12);
    let fresh = lines_in(&log);
    assert!(fresh.iter().all(|l| l.contains("c=")), "{fresh:?}");
    assert_eq!(fresh.len(), 4, "{fresh:?}");

    // With SIGUSR1 (logrotate's postrotate), the next lines go to the new file at once.
    let rotated2 = gw.dir.join("access.log.2");
    std::fs::rename(&log, &rotated2).unwrap();
    let ok = Command::new("kill")
        .args(["-USR1", &gw.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    std::thread::sleep(Duration::from_millis(200));
    send("d", 5);
    assert_eq!(wait_total(&[&log, &rotated, &rotated2], 17), 17);
    let fresh = lines_in(&log);
    assert_eq!(fresh.len(), 5, "{fresh:?}");
    assert!(fresh.iter().all(|l| l.contains("d=")), "{fresh:?}");
    // The gateway is still up and logging to the new file.
    assert!(
        gw.error_log().lines().all(|l| !l.contains("ERROR")),
        "{}",
        gw.error_log()
    );
}
