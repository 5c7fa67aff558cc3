//! A client's own credentials never reach a provider: for every provider kind, through ai-proxy,
//! every attempt of ai-proxy-multi and passthrough's first hop, the provider gets the configured
//! auth and none of the client's `Authorization`, `Proxy-Authorization`, `x-api-key`, `api-key`,
//! `x-goog-api-key`, `apikey`, `Cookie` or query string, while its other headers still pass.
//! Bring your own key (`forward_client_authorization`) sends the client's `Authorization` instead
//! of the configured credentials, and nothing else of the client's.

use serde_json::{json, Value};

use crate::harness::*;

const PRIVATE_KEY: &str = include_str!("../fixtures/gcp-test-key.pkcs8.pem");

/// Every client secret below contains this, so one search of a recorded request finds any leak.
const MARK: &str = "client-SECRET";

/// The credentials a client sends (all must be stripped), and its query.
const CLIENT_CREDENTIALS: &[(&str, &str)] = &[
    ("Authorization", "Bearer client-SECRET-authorization"),
    ("Proxy-Authorization", "Basic client-SECRET-proxy"),
    ("x-api-key", "client-SECRET-x-api-key"),
    ("api-key", "client-SECRET-api-key"),
    ("x-goog-api-key", "client-SECRET-goog"),
    ("apikey", "client-SECRET-key-auth"),
    ("Cookie", "session=client-SECRET-cookie; theme=dark"),
];
const CLIENT_QUERY: &str = "?key=client-SECRET-q-key&api-key=client-SECRET-q-api-key&x=1";

/// Client headers that are not credentials and must still reach the provider.
const KEPT: &[(&str, &str)] = &[
    ("OpenAI-Organization", "org-kept"),
    ("OpenAI-Project", "proj-kept"),
    ("anthropic-beta", "tools-2024-04-04"),
    ("anthropic-version", "2023-06-01"),
    ("User-Agent", "cred-test/1.0"),
    ("X-Custom-Trace", "trace-kept"),
];

fn client_headers() -> Vec<(&'static str, &'static str)> {
    CLIENT_CREDENTIALS.iter().chain(KEPT).copied().collect()
}

fn header<'a>(rec: &'a Value, name: &str) -> Option<&'a str> {
    rec["headers"][name].as_str()
}

/// A service account key file whose token endpoint is `token_uri`.
fn service_account(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "private_key_id": "cred-test-kid",
        "private_key": PRIVATE_KEY,
        "client_email": "cred-test@test-project.iam.gserviceaccount.com",
        "token_uri": token_uri,
    })
    .to_string()
}

/// One provider kind as configured against the mock.
struct Kind {
    provider: &'static str,
    /// Path and query of `override.endpoint`.
    endpoint: &'static str,
    /// The `auth:` object, YAML flow style (`{token}` = the mock's token URI for vertex-ai).
    auth: String,
    /// The request target the provider must get (the endpoint's, plus `auth.query`).
    target: &'static str,
    /// The header carrying the configured key and its exact value (the mock joins repeated
    /// headers with ", ", so equality also proves the client's value was not added next to it).
    key: Option<(&'static str, &'static str)>,
}

/// All nine provider kinds. `token_uri` serves vertex-ai's GCP token.
fn kinds(token_uri: &str) -> Vec<Kind> {
    let bearer = |k: &str| format!(r#"{{ header: {{ Authorization: "Bearer {k}" }} }}"#);
    vec![
        Kind {
            provider: "openai",
            endpoint: "/v1/chat/completions",
            auth: bearer("sk-openai"),
            target: "/v1/chat/completions",
            key: Some(("authorization", "Bearer sk-openai")),
        },
        Kind {
            provider: "deepseek",
            endpoint: "/chat/completions",
            auth: bearer("sk-deepseek"),
            target: "/chat/completions",
            key: Some(("authorization", "Bearer sk-deepseek")),
        },
        Kind {
            provider: "aimlapi",
            endpoint: "/aiml/chat/completions",
            auth: bearer("sk-aiml"),
            target: "/aiml/chat/completions",
            key: Some(("authorization", "Bearer sk-aiml")),
        },
        Kind {
            provider: "anthropic",
            endpoint: "/anthropic/v1/chat/completions",
            auth: r#"{ header: { x-api-key: "sk-ant-configured" } }"#.into(),
            target: "/anthropic/v1/chat/completions",
            key: Some(("x-api-key", "sk-ant-configured")),
        },
        Kind {
            provider: "gemini",
            endpoint: "/v1beta/openai/chat/completions?alt=json",
            auth: r#"{ query: { key: "AIza-configured" } }"#.into(),
            target: "/v1beta/openai/chat/completions?alt=json&key=AIza-configured",
            key: None,
        },
        Kind {
            provider: "openrouter",
            endpoint: "/api/v1/chat/completions",
            auth: bearer("sk-or-v1"),
            target: "/api/v1/chat/completions",
            key: Some(("authorization", "Bearer sk-or-v1")),
        },
        Kind {
            provider: "azure-openai",
            endpoint: "/openai/deployments/gpt-4o/chat/completions?api-version=2024-02-15-preview",
            auth: r#"{ header: { api-key: "azure-configured" } }"#.into(),
            target: "/openai/deployments/gpt-4o/chat/completions?api-version=2024-02-15-preview",
            key: Some(("api-key", "azure-configured")),
        },
        Kind {
            provider: "openai-compatible",
            endpoint: "/compat/v1/chat/completions",
            auth: bearer("sk-local"),
            target: "/compat/v1/chat/completions",
            key: Some(("authorization", "Bearer sk-local")),
        },
        Kind {
            provider: "vertex-ai",
            endpoint:
                "/v1beta1/projects/p/locations/us-central1/endpoints/openapi/chat/completions",
            auth: format!(
                "{{ gcp: {{ service_account_json: {} }} }}",
                serde_json::to_string(&service_account(token_uri)).unwrap()
            ),
            target: "/v1beta1/projects/p/locations/us-central1/endpoints/openapi/chat/completions",
            key: Some(("authorization", "Bearer mock-access-token-1")),
        },
    ]
}

/// What the provider received for one call with the client's credentials: the configured key
/// only, the endpoint's target, no client secret anywhere, the other client headers kept.
#[track_caller]
fn assert_clean(rec: &Value, kind: &Kind) {
    let p = kind.provider;
    assert!(
        !rec.to_string().contains(MARK),
        "{p}: a client credential reached the provider: {rec}"
    );
    assert_eq!(rec["path"], kind.target, "{p}: {rec}");
    match kind.key {
        Some((name, value)) => assert_eq!(header(rec, name), Some(value), "{p}: {rec}"),
        None => assert_eq!(header(rec, "authorization"), None, "{p}: {rec}"),
    }
    for (name, _) in CLIENT_CREDENTIALS {
        let name = name.to_ascii_lowercase();
        if kind.key.is_none_or(|(k, _)| k != name) {
            assert_eq!(header(rec, &name), None, "{p}: {name} was forwarded: {rec}");
        }
    }
    for (name, value) in KEPT {
        assert_eq!(
            header(rec, &name.to_ascii_lowercase()),
            Some(*value),
            "{p}: {name} was not forwarded: {rec}"
        );
    }
}

#[test]
fn ai_proxy_sends_no_client_credential_to_any_provider_kind() {
    let mock = Mock::start("creds");
    let kinds = kinds(&mock.url("/token"));
    let mut routes = String::from("routes:\n");
    for k in &kinds {
        routes.push_str(&format!(
            "  - id: {p}\n    uri: /p/{p}\n    plugins:\n      ai-proxy:\n        provider: {p}\n        auth: {a}\n        options: {{ model: m-{p} }}\n        override: {{ endpoint: \"{e}\" }}\n",
            p = k.provider,
            a = k.auth,
            e = mock.url(k.endpoint),
        ));
    }
    let gw = Gateway::start(&routes);
    for k in &kinds {
        let r = gw.chat_with(
            &format!("/p/{}{CLIENT_QUERY}", k.provider),
            &client_headers(),
            &chat_body("hello"),
        );
        assert_eq!(r.status, 200, "{}: {}", k.provider, r.text());
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            "Hello from creds"
        );
        assert_clean(&mock.last(), k);
    }
    assert_eq!(mock.llm_requests().len(), kinds.len());
}

#[test]
fn every_ai_proxy_multi_attempt_sends_no_client_credential() {
    // The nine kinds as nine instances, tried in priority order: the first eight answer 500 and
    // fall back, the ninth answers. Every attempt must be clean, each with its own key.
    let failing = Mock::start_with("failing", &["--status", "500"]);
    let ok = Mock::start("ok");
    let kinds = kinds(&ok.url("/token"));
    let mut s = String::from(
        "routes:\n  - id: multi\n    uri: /multi\n    plugins:\n      ai-proxy-multi:\n        fallback_strategy: http_5xx\n        instances:\n",
    );
    let n = kinds.len();
    for (i, k) in kinds.iter().enumerate() {
        let mock = if i + 1 == n { &ok } else { &failing };
        s.push_str(&format!(
            "          - name: {p}\n            provider: {p}\n            weight: 1\n            priority: {prio}\n            auth: {a}\n            options: {{ model: m-{p} }}\n            override: {{ endpoint: \"{e}\" }}\n",
            p = k.provider,
            prio = n - i,
            a = k.auth,
            e = mock.url(k.endpoint),
        ));
    }
    let gw = Gateway::start(&s);
    let r = gw.chat_with(
        &format!("/multi{CLIENT_QUERY}"),
        &client_headers(),
        &chat_body("hello"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-name"), Some("ok"));
    let failed = failing.llm_requests();
    assert_eq!(failed.len(), n - 1, "{failed:?}");
    for (rec, k) in failed.iter().zip(&kinds) {
        assert_clean(rec, k);
    }
    assert_clean(&ok.last(), &kinds[n - 1]);
}

fn passthrough_route(llm: &Mock, echo: &Mock, plugin_extra: &str) -> String {
    format!(
        r#"
routes:
  - id: pt
    uri: /anything
    plugins:
      ai-proxy:
        auth: {{ header: {{ Authorization: "Bearer sk-llm-configured" }} }}
        model: {{ provider: openai, name: gpt-4 }}
        override: {{ endpoint: "{}" }}
        passthrough: true
{plugin_extra}
    upstream:
      nodes:
        "127.0.0.1:{}": 1
"#,
        llm.chat_url(),
        echo.port
    )
}

#[test]
fn passthrough_first_hop_sends_no_client_credential_and_the_own_upstream_gets_everything() {
    let llm = Mock::start("llm");
    let echo = Mock::start("echo");
    let gw = Gateway::start(&passthrough_route(&llm, &echo, ""));
    let r = gw.chat_with(
        &format!("/anything{CLIENT_QUERY}"),
        &client_headers(),
        &chat_body("hello"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-name"), Some("echo"));
    let kind = Kind {
        provider: "openai (passthrough)",
        endpoint: "/v1/chat/completions",
        auth: String::new(),
        target: "/v1/chat/completions",
        key: Some(("authorization", "Bearer sk-llm-configured")),
    };
    assert_clean(&llm.last(), &kind);

    // The second hop is a plain upstream (the operator's own service): a reverse proxy that
    // forwards the client's request as it is, credentials and query included.
    let up = echo.last();
    assert_eq!(
        header(&up, "authorization"),
        Some("Bearer client-SECRET-authorization")
    );
    assert_eq!(header(&up, "x-api-key"), Some("client-SECRET-x-api-key"));
    assert_eq!(up["path"], format!("/anything{CLIENT_QUERY}"));
    assert!(!up.to_string().contains("sk-llm-configured"), "{up}");
}

#[test]
fn a_plain_upstream_route_forwards_every_client_header() {
    let svc = Mock::start("svc");
    let gw = Gateway::start(&format!(
        "routes:\n  - id: plain\n    uri: /anything\n    upstream:\n      nodes:\n        \"127.0.0.1:{}\": 1\n",
        svc.port
    ));
    let r = gw.chat_with(
        &format!("/anything{CLIENT_QUERY}"),
        &client_headers(),
        &chat_body("hello"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let up = svc.last();
    assert_eq!(up["path"], format!("/anything{CLIENT_QUERY}"));
    for (name, value) in CLIENT_CREDENTIALS.iter().chain(KEPT) {
        // Pingora strips Proxy-Authorization as a hop-by-hop header on every proxied request.
        if *name == "Proxy-Authorization" {
            continue;
        }
        assert_eq!(
            header(&up, &name.to_ascii_lowercase()),
            Some(*value),
            "{name}: {up}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bring your own key

const BYOK: &str = "        forward_client_authorization: true\n";

fn byok_route(mock: &Mock, provider: &str, auth: &str, endpoint: &str) -> String {
    format!(
        "routes:\n  - id: byok\n    uri: /byok\n    plugins:\n      ai-proxy:\n        provider: {provider}\n        auth: {auth}\n        override: {{ endpoint: \"{}\" }}\n{BYOK}",
        mock.url(endpoint)
    )
}

#[test]
fn byok_forwards_the_clients_authorization_instead_of_the_configured_one() {
    let mock = Mock::start("byok");
    let gw = Gateway::start(&byok_route(
        &mock,
        "openai",
        r#"{ header: { Authorization: "Bearer sk-configured" } }"#,
        "/v1/chat/completions",
    ));
    let r = gw.chat_with(
        &format!("/byok{CLIENT_QUERY}"),
        &client_headers(),
        &chat_body("hi"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let up = mock.last();
    assert_eq!(
        header(&up, "authorization"),
        Some("Bearer client-SECRET-authorization"),
        "{up}"
    );
    assert!(!up.to_string().contains("sk-configured"), "{up}");
    // Every other client credential is still stripped, and the query never goes.
    let without_authz = up["headers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "authorization")
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!without_authz.contains(MARK), "{up}");
    assert_eq!(up["path"], "/v1/chat/completions");
    for (name, value) in KEPT {
        assert_eq!(header(&up, &name.to_ascii_lowercase()), Some(*value));
    }

    // A client without a key of its own: the configured one is used.
    let r = gw.chat("/byok", &chat_body("no key"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        header(&mock.last(), "authorization"),
        Some("Bearer sk-configured")
    );
}

#[test]
fn byok_without_configured_auth_sends_no_key_when_the_client_has_none() {
    let mock = Mock::start("byok0");
    let gw = Gateway::start(&byok_route(
        &mock,
        "openai-compatible",
        "{}",
        "/v1/chat/completions",
    ));
    let r = gw.chat_with(
        "/byok",
        &[("Authorization", "Bearer client-own")],
        &chat_body("with"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        header(&mock.last(), "authorization"),
        Some("Bearer client-own")
    );
    let r = gw.chat_with(
        "/byok",
        &[("x-api-key", "client-SECRET-x")],
        &chat_body("none"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let up = mock.last();
    assert_eq!(header(&up, "authorization"), None, "{up}");
    assert!(!up.to_string().contains(MARK), "{up}");
}

#[test]
fn byok_replaces_every_configured_credential_header_query_and_gcp() {
    // Azure's configured key is in `api-key`: with the client's key, it is not sent as well.
    let mock = Mock::start("byok-az");
    let gw = Gateway::start(&byok_route(
        &mock,
        "azure-openai",
        r#"{ header: { api-key: "azure-configured" } }"#,
        "/openai/deployments/d/chat/completions?api-version=1",
    ));
    let r = gw.chat_with(
        "/byok",
        &[("Authorization", "Bearer entra-client-token")],
        &chat_body("az"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let up = mock.last();
    assert_eq!(
        header(&up, "authorization"),
        Some("Bearer entra-client-token")
    );
    assert_eq!(header(&up, "api-key"), None, "{up}");
    assert_eq!(
        up["path"],
        "/openai/deployments/d/chat/completions?api-version=1"
    );

    // Gemini's configured key is a query parameter: not appended either.
    let mock = Mock::start("byok-gem");
    let gw = Gateway::start(&byok_route(
        &mock,
        "gemini",
        r#"{ query: { key: "AIza-configured" } }"#,
        "/v1beta/openai/chat/completions",
    ));
    let r = gw.chat_with(
        "/byok",
        &[("Authorization", "Bearer client-gemini")],
        &chat_body("gem"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let up = mock.last();
    assert_eq!(up["path"], "/v1beta/openai/chat/completions");
    assert_eq!(header(&up, "authorization"), Some("Bearer client-gemini"));
    // ...but without a client key it is.
    gw.chat("/byok", &chat_body("gem2"));
    assert_eq!(
        mock.last()["path"],
        "/v1beta/openai/chat/completions?key=AIza-configured"
    );

    // Vertex AI with a service account: the client's key is sent and no token is fetched.
    let mock = Mock::start("byok-vx");
    let sa = serde_json::to_string(&service_account(&mock.url("/token"))).unwrap();
    let gw = Gateway::start(&byok_route(
        &mock,
        "vertex-ai",
        &format!("{{ gcp: {{ service_account_json: {sa} }} }}"),
        "/v1beta1/projects/p/locations/l/endpoints/openapi/chat/completions",
    ));
    let r = gw.chat_with(
        "/byok",
        &[("Authorization", "Bearer ya29.client")],
        &chat_body("vx"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        header(&mock.last(), "authorization"),
        Some("Bearer ya29.client")
    );
    let tokens = mock
        .requests()
        .iter()
        .filter(|r| r["path"] == "/token")
        .count();
    assert_eq!(
        tokens, 0,
        "a GCP token was fetched for a call with the client's key"
    );
}

#[test]
fn byok_on_ai_proxy_multi_sends_the_clients_key_on_every_attempt() {
    let failing = Mock::start_with("failing", &["--status", "503"]);
    let ok = Mock::start("ok");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: multi
    uri: /multi
    plugins:
      ai-proxy-multi:
        fallback_strategy: http_5xx
        forward_client_authorization: true
        instances:
          - name: first
            provider: openai
            weight: 1
            priority: 2
            auth: {{ header: {{ Authorization: "Bearer sk-first" }} }}
            override: {{ endpoint: "{}" }}
          - name: second
            provider: anthropic
            weight: 1
            priority: 1
            auth: {{ header: {{ x-api-key: "sk-second" }} }}
            override: {{ endpoint: "{}" }}
"#,
        failing.chat_url(),
        ok.chat_url()
    ));
    let r = gw.chat_with(
        "/multi",
        &[
            ("Authorization", "Bearer client-byok"),
            ("x-api-key", "client-SECRET-x"),
        ],
        &chat_body("hi"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for up in [failing.last(), ok.last()] {
        assert_eq!(header(&up, "authorization"), Some("Bearer client-byok"));
        assert_eq!(header(&up, "x-api-key"), None, "{up}");
        assert!(!up.to_string().contains("sk-first"), "{up}");
        assert!(!up.to_string().contains("sk-second"), "{up}");
    }
}

#[test]
fn byok_passthrough_first_hop() {
    let llm = Mock::start("llm");
    let echo = Mock::start("echo");
    let gw = Gateway::start(&passthrough_route(&llm, &echo, BYOK));
    let r = gw.chat_with(
        "/anything",
        &[
            ("Authorization", "Bearer client-pt"),
            ("Cookie", "c=client-SECRET"),
        ],
        &chat_body("hi"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let up = llm.last();
    assert_eq!(header(&up, "authorization"), Some("Bearer client-pt"));
    assert_eq!(header(&up, "cookie"), None, "{up}");
    assert!(!up.to_string().contains("sk-llm-configured"), "{up}");
}
