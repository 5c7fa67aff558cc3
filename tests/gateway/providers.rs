//! Providers: every driver's request rewrite as the provider sees it on the wire (endpoint path and
//! query, Host, auth, body with the plugin's options, dropped headers), embeddings, Vertex AI's
//! `:predict` conversion, GCP service-account auth (the signed JWT, the token cache, early
//! refresh, env fallback, failures), and the older `model: {provider, name, options}` schema.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

const PRIVATE_KEY: &str = include_str!("../fixtures/gcp-test-key.pkcs8.pem");
const PUBLIC_KEY: &str = include_str!("../fixtures/gcp-test-key.pub.pem");
const SA_EMAIL: &str = "aigate-test@test-project.iam.gserviceaccount.com";
const SA_KEY_ID: &str = "0123456789abcdef-test-kid";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

// ---------------------------------------------------------------------------------------------
// Helpers

/// The body the mock recorded, parsed.
fn sent_body(rec: &Value) -> Value {
    let text = rec["body"].as_str().unwrap();
    serde_json::from_str(text).unwrap_or_else(|e| panic!("upstream body is not JSON ({e}): {text}"))
}

fn header<'a>(rec: &'a Value, name: &str) -> Option<&'a str> {
    rec["headers"][name].as_str()
}

/// `(prompt, completion, total)` tokens: the last three fields of the default access log format.
fn logged_tokens(line: &str) -> (String, String, String) {
    let f = log_fields(line);
    let n = f.len();
    (f[n - 3].clone(), f[n - 2].clone(), f[n - 1].clone())
}

/// `$llm_model` of the default format (before ttft and the three token fields).
fn logged_llm_model(line: &str) -> String {
    let f = log_fields(line);
    f[f.len() - 5].clone()
}

/// `application/x-www-form-urlencoded` decoding.
fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap(),
                );
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// A form body as (name, value) pairs in order.
fn form_pairs(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// A service account key file, as Google issues them (extra fields included).
fn service_account(email: &str, token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": SA_KEY_ID,
        "private_key": PRIVATE_KEY,
        "client_email": email,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
    })
    .to_string()
}

/// A JSON string is also a valid YAML double-quoted scalar.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The token calls a mock received.
fn token_calls(mock: &Mock) -> Vec<Value> {
    mock.requests()
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap_or("").ends_with("/token"))
        .collect()
}

/// Check one recorded token call: a form POST of a JWT bearer grant whose assertion is an RS256 JWT
/// signed by the fixture key with Google's claims. Returns the claims.
fn verify_token_call(call: &Value, email: &str, token_uri: &str) -> Value {
    assert_eq!(call["method"], "POST");
    assert_eq!(
        header(call, "content-type"),
        Some("application/x-www-form-urlencoded"),
        "{call}"
    );
    let body = call["body"].as_str().unwrap();
    assert_eq!(
        header(call, "content-length"),
        Some(body.len().to_string().as_str())
    );
    let pairs = form_pairs(body);
    let names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["grant_type", "assertion"], "{body}");
    assert_eq!(pairs[0].1, JWT_GRANT);
    let jwt = &pairs[1].1;

    let head = jsonwebtoken::decode_header(jwt).expect("the assertion is a JWT");
    assert_eq!(head.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(head.kid.as_deref(), Some(SA_KEY_ID));
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[token_uri]);
    v.set_issuer(&[email]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &v)
        .expect("the JWT verifies with the public key")
        .claims;
    assert_eq!(claims["iss"], email);
    assert_eq!(claims["aud"], token_uri);
    assert_eq!(claims["scope"], SCOPE);
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 3600, "{claims}");
    let now = now_ms() / 1000;
    assert!(
        iat + 60 >= now && iat <= now + 5,
        "iat {iat} is not now ({now})"
    );

    // The signature really covers the claims: a token with a changed payload must not verify.
    let parts: Vec<&str> = jwt.split('.').collect();
    let forged_payload = {
        let mut p = parts[1].to_string();
        let last = p.pop().unwrap();
        p.push(if last == 'A' { 'B' } else { 'A' });
        p
    };
    let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert!(jsonwebtoken::decode::<Value>(&forged, &key, &v).is_err());
    claims
}

// ---------------------------------------------------------------------------------------------
// 1. Every provider's rewrite

struct Rewrite<'a> {
    provider: &'a str,
    /// Path and query of `override.endpoint` on the mock.
    endpoint: &'a str,
    /// The `auth:` object, YAML flow style.
    auth: &'a str,
    /// The request target the provider must receive.
    target: &'a str,
    /// The header the key must arrive in and its value (the client sends its own, to be replaced).
    key_header: Option<(&'a str, &'a str)>,
    /// Azure: `model` is removed from the body.
    drops_model: bool,
}

fn check_rewrite(c: Rewrite) {
    let mock = Mock::start(c.provider);
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: r-{p}
    uri: /v1/chat/completions
    plugins:
      ai-proxy:
        provider: {p}
        auth: {auth}
        options: {{ model: {p}-model, temperature: 0.7, max_tokens: 64 }}
        override: {{ endpoint: "{ep}" }}
"#,
        p = c.provider,
        auth = c.auth,
        ep = mock.url(c.endpoint),
    ));
    let body = json!({
        "model": "client-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is two plus two"}
        ],
        "temperature": 0.1,
        "max_tokens": 5,
        "user": "u-1",
        "metadata": {"note": "naïve café ☕ — ünïcödé"}
    });
    let mut headers: Vec<(&str, &str)> = vec![
        ("Accept-Encoding", "gzip, br"),
        ("Connection", "keep-alive, X-Foo"),
        ("X-Foo", "only-for-the-next-hop"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Proxy-Connection", "keep-alive"),
        ("X-Client-Trace", "trace-123"),
    ];
    if let Some((name, _)) = c.key_header {
        headers.push((name, "Bearer client-own-key"));
    }
    // The client's query is not the provider's business: the endpoint's own query is used.
    let r = gw.chat_with("/v1/chat/completions?client=1", &headers, &body);

    // What the client sees: the mock's answer.
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(r.header("x-mock-name"), Some(c.provider));
    let answer = r.json();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        format!("Hello from {}", c.provider)
    );
    let model = if c.drops_model {
        "mock-model".to_string()
    } else {
        format!("{}-model", c.provider)
    };
    assert_eq!(answer["model"], model.as_str());
    // prompt = 2 + 5 words, completion = 3 pieces
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    );
    let request_id = r
        .header("x-request-id")
        .expect("the client gets X-Request-Id")
        .to_string();
    assert!(!request_id.is_empty());

    // What the provider got.
    let reqs = mock.llm_requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let up = &reqs[0];
    assert_eq!(up["method"], "POST");
    assert_eq!(up["path"], c.target);
    assert_eq!(
        header(up, "host"),
        Some(format!("127.0.0.1:{}", mock.port).as_str())
    );
    if let Some((name, value)) = c.key_header {
        assert_eq!(header(up, &name.to_ascii_lowercase()), Some(value), "{up}");
    }
    assert!(
        !up.to_string().contains("client-own-key"),
        "the client's key reached the provider: {up}"
    );
    assert_eq!(header(up, "content-type"), Some("application/json"));
    let body_len = up["body_len"].as_u64().unwrap();
    assert_eq!(
        header(up, "content-length"),
        Some(body_len.to_string().as_str())
    );
    assert_eq!(header(up, "transfer-encoding"), None);
    assert_eq!(header(up, "accept-encoding"), None, "{up}");
    for hop in [
        "connection",
        "x-foo",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
        "trailer",
    ] {
        assert_eq!(
            header(up, hop),
            None,
            "hop-by-hop header {hop} was forwarded: {up}"
        );
    }
    assert_eq!(
        header(up, "x-client-trace"),
        Some("trace-123"),
        "end-to-end headers are forwarded"
    );
    assert_eq!(header(up, "x-request-id"), Some(request_id.as_str()));

    let mut expected = json!({
        "messages": body["messages"],
        "temperature": 0.7,
        "max_tokens": 64,
        "user": "u-1",
        "metadata": {"note": "naïve café ☕ — ünïcödé"}
    });
    if !c.drops_model {
        expected["model"] = json!(format!("{}-model", c.provider));
    }
    assert_eq!(sent_body(up), expected);

    let lines = gw.log_lines(1);
    assert_eq!(lines.len(), 1);
    assert_eq!(
        logged_tokens(&lines[0]),
        ("7".into(), "3".into(), "10".into()),
        "{}",
        lines[0]
    );
}

#[test]
fn openai_rewrite() {
    check_rewrite(Rewrite {
        provider: "openai",
        endpoint: "/v1/chat/completions",
        auth: r#"{ header: { Authorization: "Bearer sk-openai" } }"#,
        target: "/v1/chat/completions",
        key_header: Some(("Authorization", "Bearer sk-openai")),
        drops_model: false,
    });
}

#[test]
fn deepseek_rewrite() {
    check_rewrite(Rewrite {
        provider: "deepseek",
        endpoint: "/chat/completions",
        auth: r#"{ header: { Authorization: "Bearer sk-deepseek" } }"#,
        target: "/chat/completions",
        key_header: Some(("Authorization", "Bearer sk-deepseek")),
        drops_model: false,
    });
}

#[test]
fn aimlapi_rewrite() {
    check_rewrite(Rewrite {
        provider: "aimlapi",
        endpoint: "/chat/completions?source=aigate",
        auth: r#"{ header: { Authorization: "Bearer sk-aiml" } }"#,
        target: "/chat/completions?source=aigate",
        key_header: Some(("Authorization", "Bearer sk-aiml")),
        drops_model: false,
    });
}

#[test]
fn anthropic_rewrite() {
    check_rewrite(Rewrite {
        provider: "anthropic",
        endpoint: "/v1/chat/completions",
        auth: r#"{ header: { Authorization: "Bearer sk-ant-test" } }"#,
        target: "/v1/chat/completions",
        key_header: Some(("Authorization", "Bearer sk-ant-test")),
        drops_model: false,
    });
}

#[test]
fn anthropic_key_in_a_custom_header() {
    check_rewrite(Rewrite {
        provider: "anthropic",
        endpoint: "/v1/chat/completions",
        auth: r#"{ header: { x-api-key: "sk-ant-custom" } }"#,
        target: "/v1/chat/completions",
        key_header: Some(("x-api-key", "sk-ant-custom")),
        drops_model: false,
    });
}

#[test]
fn gemini_rewrite_with_query_auth_merged_into_the_endpoint_query() {
    check_rewrite(Rewrite {
        provider: "gemini",
        endpoint: "/v1beta/openai/chat/completions?alt=sse",
        auth: r#"{ query: { key: "AIza-test+key/1" } }"#,
        target: "/v1beta/openai/chat/completions?alt=sse&key=AIza-test%2Bkey%2F1",
        key_header: None,
        drops_model: false,
    });
}

#[test]
fn gemini_query_auth_on_an_endpoint_without_query() {
    check_rewrite(Rewrite {
        provider: "gemini",
        endpoint: "/v1beta/openai/chat/completions",
        auth: r#"{ query: { key: "AIzaPlain" } }"#,
        target: "/v1beta/openai/chat/completions?key=AIzaPlain",
        key_header: None,
        drops_model: false,
    });
}

#[test]
fn openrouter_rewrite() {
    check_rewrite(Rewrite {
        provider: "openrouter",
        endpoint: "/api/v1/chat/completions",
        auth: r#"{ header: { Authorization: "Bearer sk-or-v1-test" } }"#,
        target: "/api/v1/chat/completions",
        key_header: Some(("Authorization", "Bearer sk-or-v1-test")),
        drops_model: false,
    });
}

#[test]
fn azure_openai_drops_model_and_sends_api_key() {
    check_rewrite(Rewrite {
        provider: "azure-openai",
        endpoint: "/openai/deployments/gpt-4o/chat/completions?api-version=2024-02-15-preview",
        auth: r#"{ header: { api-key: "azure-key-123" } }"#,
        target: "/openai/deployments/gpt-4o/chat/completions?api-version=2024-02-15-preview",
        key_header: Some(("api-key", "azure-key-123")),
        drops_model: true,
    });
}

#[test]
fn openai_compatible_rewrite_keeps_an_encoded_endpoint_query() {
    check_rewrite(Rewrite {
        provider: "openai-compatible",
        endpoint: "/v1/chat/completions?tenant=a%20b&x=1",
        auth: r#"{ header: { Authorization: "Bearer sk-local" } }"#,
        target: "/v1/chat/completions?tenant=a%20b&x=1",
        key_header: Some(("Authorization", "Bearer sk-local")),
        drops_model: false,
    });
}

#[test]
fn vertex_ai_chat_rewrite_with_override_endpoint() {
    check_rewrite(Rewrite {
        provider: "vertex-ai",
        endpoint: "/v1beta1/projects/p1/locations/us-central1/endpoints/openapi/chat/completions",
        auth: r#"{ header: { Authorization: "Bearer ya29.static-token" } }"#,
        target: "/v1beta1/projects/p1/locations/us-central1/endpoints/openapi/chat/completions",
        key_header: Some(("Authorization", "Bearer ya29.static-token")),
        drops_model: false,
    });
}

#[test]
fn header_and_query_auth_together_with_several_query_params() {
    // Both kinds at once; query params are appended in a stable order after the endpoint's own.
    check_rewrite(Rewrite {
        provider: "openai-compatible",
        endpoint: "/v1/chat/completions?api-version=1",
        auth: r#"{ header: { Authorization: "Bearer both" }, query: { key: "k1", tenant: "t 1" } }"#,
        target: "/v1/chat/completions?api-version=1&key=k1&tenant=t%201",
        key_header: Some(("Authorization", "Bearer both")),
        drops_model: false,
    });
}

#[test]
fn upgrade_header_from_the_client_is_not_forwarded_and_the_call_still_works() {
    let mock = Mock::start("upg");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: upg
    uri: /v1/chat/completions
    plugins:
      ai-proxy:
        provider: openai
        auth: {{ header: {{ Authorization: "Bearer sk" }} }}
        options: {{ model: m }}
        override: {{ endpoint: "{}" }}
"#,
        mock.chat_url()
    ));
    let r = gw.chat_with(
        "/v1/chat/completions",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
        &chat_body("hello there"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from upg"
    );
    let up = mock.last();
    assert_eq!(header(&up, "upgrade"), None, "{up}");
    assert_eq!(header(&up, "connection"), None, "{up}");
    assert_eq!(
        sent_body(&up),
        json!({"messages": [{"role": "user", "content": "hello there"}], "model": "m"})
    );
}

#[test]
fn the_client_gets_the_providers_error_status_and_body() {
    let mock = Mock::start("err");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: err
    uri: /v1/chat/completions
    plugins:
      ai-proxy:
        provider: deepseek
        auth: {{ header: {{ Authorization: "Bearer sk" }} }}
        override: {{ endpoint: "{}" }}
"#,
        mock.url("/chat/completions")
    ));
    let r = gw.chat_with(
        "/v1/chat/completions",
        &[("x-mock-status", "429")],
        &chat_body("hi"),
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"mock err error 429","type":"mock_error","code":429}}"#
    );
    assert_eq!(mock.llm_requests().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Embeddings through an OpenAI-style endpoint

#[test]
fn embeddings_to_openai_compatible_are_proxied_and_counted() {
    let mock = Mock::start("emb");
    let reference = Mock::start("ref");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: emb
    uri: /v1/embeddings
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth: {{ header: {{ Authorization: "Bearer sk-emb" }} }}
        options: {{ model: text-embedding-3-small }}
        override: {{ endpoint: "{}" }}
"#,
        mock.url("/v1/embeddings?api-version=2")
    ));
    let body = json!({"input": ["the quick brown fox", "jumps"], "model": "client-model", "dimensions": 8});
    let r = gw.chat_with(
        "/v1/embeddings",
        &[("Authorization", "Bearer client")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let up = mock.last();
    assert_eq!(up["method"], "POST");
    assert_eq!(up["path"], "/v1/embeddings?api-version=2");
    assert_eq!(header(&up, "authorization"), Some("Bearer sk-emb"));
    assert_eq!(
        header(&up, "host"),
        Some(format!("127.0.0.1:{}", mock.port).as_str())
    );
    assert_eq!(
        header(&up, "content-length"),
        Some(up["body_len"].as_u64().unwrap().to_string().as_str())
    );
    let expected_body = json!({"input": ["the quick brown fox", "jumps"], "model": "text-embedding-3-small", "dimensions": 8});
    assert_eq!(sent_body(&up), expected_body);

    // The client gets exactly what the provider answered (the same request straight to an
    // identical mock gives the same vectors).
    let direct = request(
        reference.port,
        "POST",
        "/v1/embeddings",
        &[("content-type", "application/json")],
        expected_body.to_string().as_bytes(),
    );
    let got = r.json();
    assert_eq!(got, direct.json());
    assert_eq!(got["object"], "list");
    assert_eq!(got["data"].as_array().unwrap().len(), 2);
    assert_eq!(got["data"][1]["index"], 1);
    assert_eq!(got["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(got["usage"], json!({"prompt_tokens": 5, "total_tokens": 5}));

    let lines = gw.log_lines(1);
    assert_eq!(
        logged_tokens(&lines[0]),
        ("5".into(), "0".into(), "5".into()),
        "{}",
        lines[0]
    );
    assert_eq!(
        logged_llm_model(&lines[0]),
        "text-embedding-3-small",
        "{}",
        lines[0]
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Vertex AI with a GCP service account

fn vertex_route(mock: &Mock, gcp: &str) -> String {
    format!(
        r#"
routes:
  - id: vertex
    uri: /v1/chat/completions
    plugins:
      ai-proxy:
        provider: vertex-ai
        auth:
          gcp: {gcp}
        options: {{ model: google/gemini-2.0-flash }}
        override: {{ endpoint: "{ep}" }}
"#,
        ep = mock.url("/v1beta1/projects/test-project/locations/us-central1/endpoints/openapi/chat/completions"),
    )
}

fn gcp_conf(sa: &str, extra: &str) -> String {
    format!("{{ service_account_json: {}{extra} }}", yaml_str(sa))
}

#[test]
fn vertex_ai_service_account_signs_a_jwt_and_sends_the_access_token() {
    let mock = Mock::start("vx1");
    let token_uri = mock.url("/token");
    let gw = Gateway::start(&vertex_route(
        &mock,
        &gcp_conf(&service_account(SA_EMAIL, &token_uri), ""),
    ));
    let r = gw.chat_with(
        "/v1/chat/completions",
        &[("Authorization", "Bearer client-own-key")],
        &chat_body("hello vertex"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from vx1"
    );
    assert_eq!(r.json()["model"], "google/gemini-2.0-flash");

    let up = mock.last();
    assert_eq!(
        up["path"],
        "/v1beta1/projects/test-project/locations/us-central1/endpoints/openapi/chat/completions"
    );
    assert_eq!(
        header(&up, "authorization"),
        Some("Bearer mock-access-token-1")
    );
    assert_eq!(
        sent_body(&up),
        json!({"messages": [{"role": "user", "content": "hello vertex"}], "model": "google/gemini-2.0-flash"})
    );

    let calls = token_calls(&mock);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["path"], "/token");
    assert_eq!(
        header(&calls[0], "host"),
        Some(format!("127.0.0.1:{}", mock.port).as_str())
    );
    verify_token_call(&calls[0], SA_EMAIL, &token_uri);
    // The token was fetched before the provider was called.
    assert!(calls[0]["seq"].as_u64() < up["seq"].as_u64());
}

#[test]
fn vertex_ai_token_is_cached_across_requests_and_a_burst() {
    let mock = Mock::start("vx2");
    let token_uri = mock.url("/token");
    let gw = Gateway::start(&vertex_route(
        &mock,
        &gcp_conf(&service_account(SA_EMAIL, &token_uri), ""),
    ));
    // A burst on a cold cache: one token call, every request waits for it.
    let port = gw.port;
    let threads: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let body = chat_body(&format!("burst {i}")).to_string();
                request(
                    port,
                    "POST",
                    "/v1/chat/completions",
                    &[("content-type", "application/json")],
                    body.as_bytes(),
                )
            })
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for _ in 0..3 {
        assert_eq!(
            gw.chat("/v1/chat/completions", &chat_body("again")).status,
            200
        );
    }
    let llm = mock.llm_requests();
    assert_eq!(llm.len(), 9);
    for up in &llm {
        assert_eq!(
            header(up, "authorization"),
            Some("Bearer mock-access-token-1"),
            "{up}"
        );
    }
    assert_eq!(token_calls(&mock).len(), 1);
}

#[test]
fn vertex_ai_token_is_refreshed_expire_early_secs_before_it_expires() {
    // expires_in 62 s, refreshed 60 s early: cached for 2 s.
    let mock = Mock::start_with("vx3", &["--token-ttl", "62"]);
    let token_uri = mock.url("/token");
    let gw = Gateway::start(&vertex_route(
        &mock,
        &gcp_conf(
            &service_account(SA_EMAIL, &token_uri),
            ", expire_early_secs: 60",
        ),
    ));
    let auth_of_next = || {
        let r = gw.chat("/v1/chat/completions", &chat_body("tick"));
        assert_eq!(r.status, 200, "{}", r.text());
        header(&mock.last(), "authorization").unwrap().to_string()
    };
    assert_eq!(auth_of_next(), "Bearer mock-access-token-1");
    assert_eq!(auth_of_next(), "Bearer mock-access-token-1");
    assert_eq!(token_calls(&mock).len(), 1);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(auth_of_next(), "Bearer mock-access-token-2");
    assert_eq!(auth_of_next(), "Bearer mock-access-token-2");
    let calls = token_calls(&mock);
    assert_eq!(calls.len(), 2);
    // A fresh JWT for the second grant.
    let c1 = verify_token_call(&calls[0], SA_EMAIL, &token_uri);
    let c2 = verify_token_call(&calls[1], SA_EMAIL, &token_uri);
    assert!(
        c2["iat"].as_u64().unwrap() >= c1["iat"].as_u64().unwrap() + 2,
        "{c1} {c2}"
    );
}

#[test]
fn vertex_ai_token_cache_is_capped_by_max_ttl() {
    // The token is valid for an hour, but max_ttl 1 caches it for one second only.
    let mock = Mock::start("vx4");
    let token_uri = mock.url("/token");
    let gw = Gateway::start(&vertex_route(
        &mock,
        &gcp_conf(&service_account(SA_EMAIL, &token_uri), ", max_ttl: 1"),
    ));
    assert_eq!(gw.chat("/v1/chat/completions", &chat_body("a")).status, 200);
    assert_eq!(
        header(&mock.last(), "authorization"),
        Some("Bearer mock-access-token-1")
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(gw.chat("/v1/chat/completions", &chat_body("b")).status, 200);
    assert_eq!(
        header(&mock.last(), "authorization"),
        Some("Bearer mock-access-token-2")
    );
    assert_eq!(token_calls(&mock).len(), 2);
}

#[test]
fn vertex_ai_service_account_from_env_when_the_config_has_none() {
    let mock = Mock::start("vx5");
    let token_uri = mock.url("/token");
    let email = "from-env@test-project.iam.gserviceaccount.com";
    let gw = Gateway::start_with(
        &vertex_route(&mock, "{}"),
        GatewayOpts {
            env: vec![("GCP_SERVICE_ACCOUNT", service_account(email, &token_uri))],
            ..Default::default()
        },
    );
    let r = gw.chat("/v1/chat/completions", &chat_body("env account"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        header(&mock.last(), "authorization"),
        Some("Bearer mock-access-token-1")
    );
    let calls = token_calls(&mock);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        verify_token_call(&calls[0], email, &token_uri)["iss"],
        email
    );
}

/// The client's 502 must not carry the key, the JWT or the token endpoint's secrets.
fn assert_no_secrets(text: &str) {
    let key_line = PRIVATE_KEY.lines().nth(1).unwrap();
    assert!(
        !text.contains(key_line),
        "private key material leaked: {text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    assert!(!text.contains("eyJ"), "a JWT leaked: {text}");
    assert!(!text.contains("assertion"), "{text}");
}

#[test]
fn vertex_ai_unreachable_token_endpoint_gives_a_502_without_secrets() {
    let mock = Mock::start("vx6");
    let token_uri = format!("http://127.0.0.1:{}/token", closed_port());
    let gw = Gateway::start(&vertex_route(
        &mock,
        &gcp_conf(&service_account(SA_EMAIL, &token_uri), ""),
    ));
    let r = gw.chat("/v1/chat/completions", &chat_body("no token"));
    r.openai_error(502);
    assert_no_secrets(&r.text());
    assert!(r.header("x-request-id").is_some());
    assert!(
        mock.llm_requests().is_empty(),
        "the provider was called without a token"
    );
    assert_no_secrets(&gw.error_log());
    let lines = gw.log_lines(1);
    assert!(lines[0].contains(" 502 "), "{}", lines[0]);
}

#[test]
fn vertex_ai_token_endpoint_refusing_the_grant_gives_a_502_and_is_retried_next_time() {
    let llm = Mock::start("vx7");
    let token = Mock::start_with("tok", &["--status", "401"]);
    let token_uri = token.url("/token");
    let gw = Gateway::start(&vertex_route(
        &llm,
        &gcp_conf(&service_account(SA_EMAIL, &token_uri), ""),
    ));
    let r = gw.chat("/v1/chat/completions", &chat_body("refused"));
    r.openai_error(502);
    assert_no_secrets(&r.text());
    assert!(llm.llm_requests().is_empty());
    assert_eq!(token_calls(&token).len(), 1);
    verify_token_call(&token_calls(&token)[0], SA_EMAIL, &token_uri);

    // A failure is not cached: once the token endpoint recovers, the next request works.
    // (The mock numbers only the tokens it issued.)
    token.set(json!({"status": 200}));
    let r = gw.chat("/v1/chat/completions", &chat_body("recovered"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        header(&llm.last(), "authorization"),
        Some("Bearer mock-access-token-1")
    );
    assert_eq!(token_calls(&token).len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 4. Vertex AI embeddings through `:predict`

const PREDICT_PATH: &str = "/v1/projects/test-project/locations/us-central1/publishers/google/models/text-embedding-005:predict";

fn vertex_embeddings_gateway(mock: &Mock, auth: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
routes:
  - id: vx-emb
    uri: /v1/embeddings
    plugins:
      ai-proxy:
        provider: vertex-ai
        auth: {auth}
        options: {{ model: text-embedding-005 }}
        override: {{ endpoint: "{}" }}
"#,
        mock.url(PREDICT_PATH)
    ))
}

#[test]
fn vertex_ai_embeddings_go_to_predict_and_come_back_in_openai_shape() {
    let mock = Mock::start("vxe");
    let reference = Mock::start("ref");
    let gw =
        vertex_embeddings_gateway(&mock, r#"{ header: { Authorization: "Bearer ya29.emb" } }"#);
    let inputs = ["hello world", "one two three", "x"];
    let r = gw.chat(
        "/v1/embeddings",
        &json!({"input": inputs, "model": "client-model"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let up = mock.last();
    assert_eq!(up["method"], "POST");
    assert_eq!(up["path"], PREDICT_PATH);
    assert_eq!(header(&up, "authorization"), Some("Bearer ya29.emb"));
    assert_eq!(header(&up, "content-type"), Some("application/json"));
    assert_eq!(
        header(&up, "content-length"),
        Some(up["body_len"].as_u64().unwrap().to_string().as_str())
    );
    let instances = json!({"instances": [{"content": "hello world"}, {"content": "one two three"}, {"content": "x"}]});
    assert_eq!(sent_body(&up), instances);

    // The vectors the provider computed, from an identical mock.
    let direct = request(
        reference.port,
        "POST",
        PREDICT_PATH,
        &[("content-type", "application/json")],
        instances.to_string().as_bytes(),
    )
    .json();
    let got = r.json();
    assert_eq!(got["object"], "list");
    assert_eq!(got["model"], "text-embedding-005");
    let data = got["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert_eq!(
            d["embedding"], direct["predictions"][i]["embeddings"]["values"],
            "item {i}"
        );
        assert_eq!(d["embedding"].as_array().unwrap().len(), 8);
    }
    // 2 + 3 + 1 words, as the mock's statistics.token_count say.
    assert_eq!(got["usage"]["prompt_tokens"], 6);
    assert_eq!(got["usage"]["total_tokens"], 6);

    let lines = gw.log_lines(1);
    assert_eq!(
        logged_tokens(&lines[0]),
        ("6".into(), "0".into(), "6".into()),
        "{}",
        lines[0]
    );
}

#[test]
fn vertex_ai_embeddings_of_a_single_string() {
    let mock = Mock::start("vxs");
    let gw =
        vertex_embeddings_gateway(&mock, r#"{ header: { Authorization: "Bearer ya29.emb" } }"#);
    let r = gw.chat(
        "/v1/embeddings",
        &json!({"input": "a single sentence here"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        sent_body(&mock.last()),
        json!({"instances": [{"content": "a single sentence here"}]})
    );
    let got = r.json();
    assert_eq!(got["data"].as_array().unwrap().len(), 1);
    assert_eq!(got["usage"]["prompt_tokens"], 4);
}

#[test]
fn vertex_ai_embeddings_with_a_service_account() {
    let mock = Mock::start("vxg");
    let token_uri = mock.url("/token");
    let gw = vertex_embeddings_gateway(
        &mock,
        &format!(
            "{{ gcp: {} }}",
            gcp_conf(&service_account(SA_EMAIL, &token_uri), "")
        ),
    );
    let r = gw.chat("/v1/embeddings", &json!({"input": ["alpha beta"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["prompt_tokens"], 2);
    let up = mock.last();
    assert_eq!(up["path"], PREDICT_PATH);
    assert_eq!(
        header(&up, "authorization"),
        Some("Bearer mock-access-token-1")
    );
    assert_eq!(token_calls(&mock).len(), 1);
}

#[test]
fn vertex_ai_chat_on_the_same_route_still_goes_to_the_endpoint_as_chat() {
    // A `messages` body on vertex-ai is a chat call: no predict conversion.
    let mock = Mock::start("vxc");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: vx-chat
    uri: /v1/chat/completions
    plugins:
      ai-proxy:
        provider: vertex-ai
        auth: {{ header: {{ Authorization: "Bearer ya29.chat" }} }}
        override: {{ endpoint: "{}" }}
"#,
        mock.url("/v1beta1/projects/p/locations/europe-west4/endpoints/openapi/chat/completions")
    ));
    let body = json!({"model": "google/gemini-2.0-flash", "messages": [{"role": "user", "content": "three word prompt"}]});
    let r = gw.chat("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!(got["object"], "chat.completion");
    assert_eq!(
        got["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
    );
    let up = mock.last();
    assert_eq!(
        up["path"],
        "/v1beta1/projects/p/locations/europe-west4/endpoints/openapi/chat/completions"
    );
    assert_eq!(sent_body(&up), body);
}

// ---------------------------------------------------------------------------------------------
// 5. Both schemas

#[test]
fn older_model_schema_sends_the_same_body_as_the_current_schema() {
    let mock = Mock::start("schema");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: legacy
    uri: /legacy
    plugins:
      ai-proxy:
        auth: {{ header: {{ Authorization: "Bearer sk" }} }}
        model:
          provider: openai
          name: gpt-4
          options: {{ max_tokens: 512, temperature: 1.0 }}
        override: {{ endpoint: "{ep}" }}
  - id: current
    uri: /current
    plugins:
      ai-proxy:
        provider: openai
        auth: {{ header: {{ Authorization: "Bearer sk" }} }}
        options: {{ model: gpt-4, max_tokens: 512, temperature: 1.0 }}
        override: {{ endpoint: "{ep}" }}
"#,
        ep = mock.chat_url()
    ));
    let body = json!({
        "model": "client-model",
        "messages": [{"role": "system", "content": "You are a mathematician"}, {"role": "user", "content": "What is 1+1?"}],
        "max_tokens": 800,
        "top_p": 0.95
    });
    let a = gw.chat("/legacy", &body);
    let b = gw.chat("/current", &body);
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(a.json()["model"], "gpt-4");
    assert_eq!(b.json()["model"], "gpt-4");
    let reqs = mock.llm_requests();
    assert_eq!(reqs.len(), 2);
    let expected = json!({
        "messages": body["messages"],
        "model": "gpt-4",
        "max_tokens": 512,
        "temperature": 1.0,
        "top_p": 0.95
    });
    assert_eq!(sent_body(&reqs[0]), expected);
    assert_eq!(sent_body(&reqs[1]), expected);
    assert_eq!(reqs[0]["body_len"], reqs[1]["body_len"]);
    assert_eq!(reqs[0]["path"], reqs[1]["path"]);
    assert_eq!(
        header(&reqs[0], "authorization"),
        header(&reqs[1], "authorization")
    );
    let lines = gw.log_lines(2);
    for l in &lines {
        assert_eq!(logged_llm_model(l), "gpt-4", "{l}");
        // 4 + 3 words, 3 pieces
        assert_eq!(
            logged_tokens(l),
            ("7".into(), "3".into(), "10".into()),
            "{l}"
        );
    }
}

#[test]
fn top_level_options_win_over_the_older_model_options_and_name() {
    let mock = Mock::start("win");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: both
    uri: /v1/chat/completions
    plugins:
      ai-proxy:
        auth: {{ header: {{ Authorization: "Bearer sk" }} }}
        model:
          provider: openai-compatible
          name: legacy-model
          options: {{ temperature: 0.2, max_tokens: 10, top_p: 0.5, response_format: {{ type: json_object }} }}
        options: {{ model: top-model, temperature: 0.9, stop: [END, STOP] }}
        override: {{ endpoint: "{}" }}
"#,
        mock.chat_url()
    ));
    let r = gw.chat("/v1/chat/completions", &json!({"model": "client", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "top-model");
    assert_eq!(
        sent_body(&mock.last()),
        json!({
            "messages": [{"role": "user", "content": "hi"}],
            "model": "top-model",
            "temperature": 0.9,
            "max_tokens": 10,
            "top_p": 0.5,
            "response_format": {"type": "json_object"},
            "stop": ["END", "STOP"]
        })
    );
    let lines = gw.log_lines(1);
    assert_eq!(logged_llm_model(&lines[0]), "top-model", "{}", lines[0]);
}

#[test]
fn vertex_ai_embeddings_report_the_clients_model_when_options_have_none() {
    let mock = Mock::start("vxm");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: vx-emb
    uri: /v1/embeddings
    plugins:
      ai-proxy:
        provider: vertex-ai
        auth: {{ header: {{ Authorization: "Bearer ya29.emb" }} }}
        override: {{ endpoint: "{}" }}
"#,
        mock.url(PREDICT_PATH)
    ));
    let r = gw.chat(
        "/v1/embeddings",
        &json!({"input": ["four words right here"], "model": "text-embedding-005"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!(got["model"], "text-embedding-005");
    assert_eq!(got["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
    // The model is named by the URL; the predict body carries only the instances.
    assert_eq!(
        sent_body(&mock.last()),
        json!({"instances": [{"content": "four words right here"}]})
    );
}

#[test]
fn vertex_ai_predict_error_reaches_the_client_unchanged() {
    let mock = Mock::start("vxerr");
    let gw =
        vertex_embeddings_gateway(&mock, r#"{ header: { Authorization: "Bearer ya29.emb" } }"#);
    let r = gw.chat_with(
        "/v1/embeddings",
        &[("x-mock-status", "429")],
        &json!({"input": ["rate limited"]}),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.text(),
        r#"{"error":{"message":"mock vxerr error 429","type":"mock_error","code":429}}"#
    );
    assert_eq!(mock.last()["path"], PREDICT_PATH);
}

#[test]
fn vertex_ai_routes_with_the_same_service_account_share_one_token() {
    let mock = Mock::start("vxshare");
    let token_uri = mock.url("/token");
    let gcp = gcp_conf(&service_account(SA_EMAIL, &token_uri), "");
    let gw = Gateway::start(&format!(
        r#"
routes:
  - id: chat
    uri: /v1/chat/completions
    plugins:
      ai-proxy:
        provider: vertex-ai
        auth: {{ gcp: {gcp} }}
        override: {{ endpoint: "{chat}" }}
  - id: emb
    uri: /v1/embeddings
    plugins:
      ai-proxy:
        provider: vertex-ai
        auth: {{ gcp: {gcp} }}
        override: {{ endpoint: "{predict}" }}
"#,
        chat = mock.url("/v1beta1/projects/test-project/locations/us-central1/endpoints/openapi/chat/completions"),
        predict = mock.url(PREDICT_PATH),
    ));
    assert_eq!(
        gw.chat("/v1/chat/completions", &chat_body("first route"))
            .status,
        200
    );
    assert_eq!(
        gw.chat("/v1/embeddings", &json!({"input": "second route"}))
            .status,
        200
    );
    let llm = mock.llm_requests();
    assert_eq!(llm.len(), 2);
    for up in &llm {
        assert_eq!(
            header(up, "authorization"),
            Some("Bearer mock-access-token-1"),
            "{up}"
        );
    }
    assert_eq!(token_calls(&mock).len(), 1);
}

#[test]
fn vertex_ai_predict_answer_larger_than_max_body_size_gives_a_502() {
    let mock = Mock::start("vxbig");
    let gw = Gateway::start_with(
        &format!(
            r#"
routes:
  - id: vx-emb
    uri: /v1/embeddings
    plugins:
      ai-proxy:
        provider: vertex-ai
        auth: {{ header: {{ Authorization: "Bearer ya29.emb" }} }}
        options: {{ model: text-embedding-005 }}
        override: {{ endpoint: "{}" }}
"#,
            mock.url(PREDICT_PATH)
        ),
        GatewayOpts {
            gateway_extra: "  max_body_size: 65536\n",
            ..Default::default()
        },
    );
    // Under the limit: converted as usual.
    let r = gw.chat("/v1/embeddings", &json!({"input": ["small"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["data"][0]["embedding"].as_array().unwrap().len(),
        8
    );

    // Vectors of 4096 dimensions for 8 inputs: far more than 64 KiB to collect. The client gets
    // the gateway's 502, not a 200 with a broken body: the header waits for the whole answer.
    let inputs: Vec<String> = (0..8).map(|i| format!("input {i}")).collect();
    let r = gw.chat_with(
        "/v1/embeddings",
        // The body after the head, so the header is known to reach the gateway's answer path
        // before the size is.
        &[("x-mock-dims", "4096"), ("x-mock-body-delay-ms", "100")],
        &json!({"input": inputs}),
    );
    let e = r.openai_error(502);
    assert_eq!(e["code"], "upstream_response_too_large", "{e}");
    assert!(e["message"].as_str().unwrap().contains("65536"), "{e}");
    assert!(r.header("x-request-id").is_some());
    assert_eq!(mock.last()["path"], PREDICT_PATH);
    assert!(!gw.error_log().contains("panicked"));
    let lines = gw.log_lines(2);
    assert!(lines[1].contains(" 502 "), "{}", lines[1]);

    // Several inputs under the limit still work, on the same gateway.
    let r = gw.chat("/v1/embeddings", &json!({"input": ["a", "b", "c"]}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 3);
}

#[test]
fn vertex_ai_predict_answer_cut_off_gives_a_502_not_a_broken_200() {
    // The header is held until the answer is complete, so a provider that breaks off mid-body is
    // reported as what it is.
    let mock = Mock::start("vxcut");
    let gw =
        vertex_embeddings_gateway(&mock, r#"{ header: { Authorization: "Bearer ya29.emb" } }"#);
    let r = gw.chat_with(
        "/v1/embeddings",
        &[("x-mock-truncate-at", "300")],
        &json!({"input": ["one", "two", "three"]}),
    );
    let e = r.openai_error(502);
    assert!(r.header("x-request-id").is_some(), "{e}");
    assert_eq!(
        gw.chat("/v1/embeddings", &json!({"input": "ok"})).status,
        200
    );
}
