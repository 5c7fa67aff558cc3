//! Consumers and `key-auth`: who a request comes from, the 401s, where the key may come from and
//! where it must not go, the consumer's own plugins, and `$consumer_name` / `$remote_user`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

/// Consumers jack (key `jack-key`, and a second credential `jack-2`) and jill (`jill-key`).
const CONSUMERS: &str = "consumers:
  - username: jack
    plugins:
      key-auth: { key: jack-key }
    credentials:
      - id: jack-second
        plugins:
          key-auth: { key: jack-2 }
  - username: jill
    desc: another team
    labels: { team: b }
    plugins:
      key-auth: { key: jill-key }
";

/// One ai-proxy route on `/chat` behind key-auth (`key_auth` is its config, e.g. `{}`).
fn route(mock: &Mock, key_auth: &str) -> String {
    format!(
        "routes:
  - id: chat
    uri: /chat
    plugins:
      key-auth: {key_auth}
      ai-proxy:
        provider: openai-compatible
        auth: {{ header: {{ Authorization: \"Bearer sk-provider\" }} }}
        options: {{ model: route-model }}
        override: {{ endpoint: \"{}\" }}
{CONSUMERS}",
        mock.chat_url()
    )
}

fn logged(format: &'static str) -> GatewayOpts<'static> {
    GatewayOpts {
        log_format: Some(format),
        ..Default::default()
    }
}

#[test]
fn no_key_or_an_unknown_key_is_a_401_before_anything_is_read_or_sent() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&route(&mock, "{}"));
    let e = gw.chat("/chat", &chat_body("hi")).openai_error(401);
    assert_eq!(e["message"], "Missing API key in request");
    assert_eq!(e["code"], "missing_api_key");
    let e = gw
        .chat_with("/chat", &[("apikey", "nope")], &chat_body("hi"))
        .openai_error(401);
    assert_eq!(e["message"], "Invalid API key in request");
    assert_eq!(e["code"], "invalid_api_key");
    // A near miss is as wrong as a far one.
    gw.chat_with("/chat", &[("apikey", "jack-ke")], &chat_body("hi"))
        .openai_error(401);
    // Refused before the body is read: not even invalid JSON is looked at.
    let r = gw.post(
        "/chat",
        &[("content-type", "application/json")],
        b"{not json",
    );
    assert_eq!(r.openai_error(401)["code"], "missing_api_key");
    assert!(mock.llm_requests().is_empty());
}

#[test]
fn a_key_in_the_header_or_the_query_names_the_consumer_and_never_reaches_the_provider() {
    let mock = Mock::start("m");
    let gw = Gateway::start_with(
        &route(&mock, "{}"),
        logged("$status $remote_user $consumer_name"),
    );
    let r = gw.chat_with("/chat", &[("apikey", "jack-key")], &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "route-model");
    let r = gw.chat("/chat?apikey=jill-key", &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    // A consumer's second credential.
    let r = gw.chat_with("/chat", &[("apikey", "jack-2")], &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    gw.chat("/chat", &chat_body("hi")).openai_error(401);
    for rec in mock.llm_requests() {
        let text = rec.to_string();
        assert!(
            !text.contains("jack-key") && !text.contains("jill-key") && !text.contains("jack-2"),
            "{text}"
        );
        assert_eq!(rec["headers"]["authorization"], "Bearer sk-provider");
    }
    // Each request came on its own connection and a line is written after its answer was sent,
    // so lines of back-to-back requests may land in either order: compared as a set.
    let mut lines = gw.log_lines(4);
    lines.sort();
    assert_eq!(
        lines,
        vec!["200 jack jack", "200 jack jack", "200 jill jill", "401 - -"]
    );
}

#[test]
fn custom_names_and_a_custom_header_key_is_still_kept_from_the_provider() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&route(&mock, "{ header: X-Team-Key, query: team_key }"));
    // The default names no longer count.
    gw.chat_with("/chat", &[("apikey", "jack-key")], &chat_body("hi"))
        .openai_error(401);
    let r = gw.chat_with("/chat", &[("x-team-key", "jack-key")], &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.chat("/chat?team_key=jill-key", &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    // hide_credentials is false, but a provider is a third party: the key stays at the gateway.
    for rec in mock.llm_requests() {
        assert!(rec["headers"]["x-team-key"].is_null(), "{rec}");
        assert!(!rec.to_string().contains("jill-key"), "{rec}");
    }
}

#[test]
fn hide_credentials_decides_for_a_plain_upstream() {
    let echo = Mock::start("echo");
    let plain = |hide: bool| {
        format!(
            "routes:
  - id: plain
    uri: /anything
    plugins:
      key-auth: {{ hide_credentials: {hide} }}
    upstream:
      nodes:
        \"127.0.0.1:{}\": 1
{CONSUMERS}",
            echo.port
        )
    };
    // APISIX's default: the operator's own upstream gets the key.
    let gw = Gateway::start(&plain(false));
    let r = request(gw.port, "GET", "/anything?apikey=jack-key&x=1", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["args"]["apikey"], "jack-key", "{seen}");
    drop(gw);
    let gw = Gateway::start(&plain(true));
    let r = request(gw.port, "GET", "/anything?apikey=jack-key&x=1", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert!(seen["args"]["apikey"].is_null(), "{seen}");
    assert_eq!(seen["args"]["x"], "1", "{seen}");
    let r = request(gw.port, "GET", "/anything", &[("apikey", "jill-key")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["headers"]["apikey"].is_null(), "{}", r.text());
    let r = request(gw.port, "GET", "/anything", &[], b"");
    assert_eq!(r.openai_error(401)["code"], "missing_api_key");
}

#[test]
fn a_consumers_own_plugins_apply_to_its_requests() {
    let mock = Mock::start("m");
    let text = format!(
        "{}  - username: alice
    plugins:
      key-auth: {{ key: alice-key }}
      ai-proxy:
        provider: openai-compatible
        auth: {{ header: {{ Authorization: \"Bearer sk-alice\" }} }}
        options: {{ model: alice-model }}
        override: {{ endpoint: \"{}\" }}
",
        route(&mock, "{}"),
        mock.chat_url()
    );
    let gw = Gateway::start(&text);
    let model = |key: &str| {
        let r = gw.chat_with("/chat", &[("apikey", key)], &chat_body("hi"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["model"].as_str().unwrap().to_string()
    };
    assert_eq!(model("alice-key"), "alice-model");
    assert_eq!(mock.last()["headers"]["authorization"], "Bearer sk-alice");
    assert_eq!(model("jack-key"), "route-model");
    assert_eq!(
        mock.last()["headers"]["authorization"],
        "Bearer sk-provider"
    );
    assert_eq!(model("alice-key"), "alice-model");
}

#[test]
fn hash_on_consumer_keeps_each_consumer_on_one_instance() {
    let a = Mock::start("a");
    let b = Mock::start("b");
    let inst = |n: &str, m: &Mock| {
        format!(
            "          - name: {n}\n            provider: openai-compatible\n            weight: 1\n            auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n            options: {{ model: model-{n} }}\n            override: {{ endpoint: \"{}\" }}\n",
            m.chat_url()
        )
    };
    let mut consumers = String::from("consumers:\n");
    for i in 0..8 {
        consumers.push_str(&format!(
            "  - username: user{i}\n    plugins: {{ key-auth: {{ key: key-{i} }} }}\n    credentials:\n      - id: second\n        plugins: {{ key-auth: {{ key: second-{i} }} }}\n"
        ));
    }
    let text = format!(
        "routes:\n  - id: m\n    uri: /chat\n    plugins:\n      key-auth: {{}}\n      ai-proxy-multi:\n        balancer: {{ algorithm: chash, hash_on: consumer }}\n        instances:\n{}{}{consumers}",
        inst("a", &a),
        inst("b", &b)
    );
    let gw = Gateway::start(&text);
    let pick = |key: &str| {
        let r = gw.chat_with("/chat", &[("apikey", key)], &chat_body("hi"));
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["model"].as_str().unwrap().to_string()
    };
    let mut seen = std::collections::HashSet::new();
    for i in 0..8 {
        let key = format!("key-{i}");
        let first = pick(&key);
        for _ in 0..5 {
            assert_eq!(pick(&key), first, "{key}");
        }
        // A consumer's two credentials are one consumer: one instance.
        assert_eq!(pick(&format!("second-{i}")), first);
        seen.insert(first);
    }
    // Every request comes from the same address: only the consumer can spread them.
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn authentication_is_quick_and_holds_no_body() {
    // A 1 MiB body without a key: refused before it is read.
    let mock = Mock::start("m");
    let gw = Gateway::start(&route(&mock, "{}"));
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(1 << 20)}]});
    let t = Instant::now();
    let r = gw.chat("/chat", &big);
    assert_eq!(r.openai_error(401)["code"], "missing_api_key");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(mock.llm_requests().is_empty());
}

#[test]
fn consumer_config_mistakes_are_refused_with_their_path() {
    let base = "gateway:\n  listen: 127.0.0.1:9080\nroutes:\n  - id: r\n    uri: /x\n    plugins:\n      key-auth: {}\n      ai-proxy: { provider: openai, auth: { header: { Authorization: \"Bearer k\" } } }\n";
    for (consumers, path, word) in [
        (
            "consumers:\n  - username: a\n    plugins: { key-auth: { key: same } }\n  - username: b\n    plugins: { key-auth: { key: same } }\n",
            "consumers[1].plugins.key-auth.key",
            "already used by consumer \"a\"",
        ),
        (
            "consumers:\n  - username: a\n    plugins: { key-auth: { key: k1 } }\n  - username: a\n    plugins: { key-auth: { key: k2 } }\n",
            "consumers[1].username",
            "duplicate",
        ),
        (
            "consumers:\n  - username: \"a b\"\n",
            "consumers[0].username",
            "letters",
        ),
        (
            "consumers:\n  - username: a\n    plugins: { key-auth: { key: \"\" } }\n",
            "consumers[0].plugins.key-auth.key",
            "empty",
        ),
        (
            "consumers:\n  - username: a\n    plugins: { key-auth: { secret: k } }\n",
            "consumers[0].plugins.key-auth.secret",
            "unknown field",
        ),
        (
            "consumers:\n  - username: a\n    plugins: { limit-speed: {} }\n",
            "consumers[0].plugins.limit-speed",
            "unknown plugin",
        ),
        (
            "consumers:\n  - username: a\n    credentials:\n      - id: c1\n        plugins: { ai-proxy: { provider: openai, auth: {} } }\n",
            "consumers[0].credentials[0].plugins.ai-proxy",
            "not an authentication plugin",
        ),
        (
            "consumers:\n  - username: a\n    credentials:\n      - id: c1\n        plugins: { key-auth: { key: k1 } }\n      - id: c2\n        plugins: { key-auth: { key: k1 } }\n",
            "consumers[0].credentials[1].plugins.key-auth.key",
            "already used",
        ),
    ] {
        let (ok, out) = check_config(&format!("{base}{consumers}"), &[]);
        assert!(!ok, "accepted:\n{consumers}");
        assert!(out.contains(&format!(": {path}: ")), "{path}:\n{out}");
        assert!(out.contains(word), "{word}:\n{out}");
        assert!(!out.contains("k1\"") || word != "already used", "a key in the message:\n{out}");
    }
    let (ok, out) = check_config(
        &format!("{base}consumers:\n  - username: a\n    plugins: {{ key-auth: {{ key: k1 }} }}\n"),
        &[],
    );
    assert!(ok, "{out}");
    let bad_route = "gateway:\n  listen: 127.0.0.1:9080\nroutes:\n  - id: r\n    uri: /x\n    plugins:\n      key-auth: { header: \"bad header\" }\n      ai-proxy: { provider: openai, auth: {} }\n";
    let (ok, out) = check_config(bad_route, &[]);
    assert!(
        !ok && out.contains("routes[0].plugins.key-auth.header"),
        "{out}"
    );
}
