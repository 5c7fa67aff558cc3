//! The APISIX admin API (`gateway.admin`), over TCP against the real binary: every admin curl of
//! the seeds with its body as the shell would send it (provider endpoints and upstream nodes
//! pointed at the mock), then the data-plane request the seed shows; auth, allow, refusals with
//! APISIX's messages, PATCH, DELETE, read-only file resources, pagination, changes under load,
//! and redacted secrets.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

const KEY: &str = "edd1c9f034335f136f87ad84b625c8f1";

/// The admin API of a running gateway.
pub struct Admin {
    pub port: u16,
    pub key: String,
}

impl Admin {
    pub fn call(&self, method: &str, path: &str, body: &str) -> Resp {
        request(
            self.port,
            method,
            path,
            &[("X-API-KEY", self.key.as_str())],
            body.as_bytes(),
        )
    }

    pub fn put(&self, path: &str, body: &str) -> Resp {
        self.call("PUT", path, body)
    }

    /// PUT that must succeed (200 or 201).
    pub fn put_ok(&self, path: &str, body: &str) -> Value {
        let r = self.put(path, body);
        assert!(
            r.status == 200 || r.status == 201,
            "PUT {path}: {} {}",
            r.status,
            r.text()
        );
        r.json()
    }

    pub fn get(&self, path: &str) -> Resp {
        self.call("GET", path, "")
    }

    /// The `error_msg` of a 400.
    pub fn refused(&self, method: &str, path: &str, body: &str) -> String {
        let r = self.call(method, path, body);
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.text());
        r.json()["error_msg"].as_str().unwrap().to_string()
    }
}

/// A gateway with the admin API on a free port; `admin_extra` adds lines under `admin:`.
pub fn start_admin(resources: &str, admin_extra: &str) -> (Gateway, Admin) {
    let port = free_port();
    let extra = format!("  admin:\n    listen: 127.0.0.1:{port}\n    key: {KEY}\n{admin_extra}");
    let gw = Gateway::start_with(
        resources,
        GatewayOpts {
            gateway_extra: &extra,
            ..Default::default()
        },
    );
    wait_listening(port);
    (
        gw,
        Admin {
            port,
            key: KEY.into(),
        },
    )
}

/// What the shell makes of a seed's `-d '...'` argument: `'"$VAR"'` is the variable's value.
fn shell(body: &str) -> String {
    let env = [
        ("OPENAI_API_KEY", "sk-test-openai"),
        ("AZ_OPENAI_API_KEY", "az-test-key"),
        ("DEEPSEEK_API_KEY", "sk-test-deepseek"),
        ("TOGETHER_API_KEY", "tg-test-key"),
        ("YOUR_LLM_API_KEY", "llm-test-key"),
        ("YOUR_LLM_MODEL", "my-llm-model"),
    ];
    let mut s = body.to_string();
    for (var, val) in env {
        s = s.replace(&format!("'\"${var}\"'"), val);
    }
    assert!(!s.contains("'\"$"), "unknown variable in {s}");
    s
}

/// Real providers are out of reach: every provider endpoint becomes the mock (keeping an
/// overridden endpoint's path and query), every upstream node the mock, and the seeds'
/// `"$SERVICE_ID"` (sent literally: it is inside single quotes) the test's service.
fn to_mock(body: &str, mock: &Mock) -> String {
    let mut v: Value = serde_json::from_str(&shell(body)).expect("seed body is JSON");
    let origin = format!("http://127.0.0.1:{}", mock.port);
    let point = |inst: &mut Value| {
        let path = inst["override"]["endpoint"]
            .as_str()
            .map(|e| {
                let after_scheme = e.split_once("://").map(|(_, r)| r).unwrap_or(e);
                after_scheme[after_scheme.find('/').unwrap_or(after_scheme.len())..].to_string()
            })
            .unwrap_or_else(|| "/v1/chat/completions".into());
        inst["override"] = json!({ "endpoint": format!("{origin}{path}") });
    };
    if let Some(p) = v.get_mut("plugins").and_then(|p| p.get_mut("ai-proxy")) {
        point(p);
    }
    if let Some(insts) = v
        .get_mut("plugins")
        .and_then(|p| p.get_mut("ai-proxy-multi"))
        .and_then(|p| p.get_mut("instances"))
        .and_then(Value::as_array_mut)
    {
        insts.iter_mut().for_each(point);
    }
    if v["upstream"].get("nodes").is_some() {
        v["upstream"]["nodes"] = json!({ format!("127.0.0.1:{}", mock.port): 1 });
    }
    if v["service_id"] == "$SERVICE_ID" {
        v["service_id"] = json!("svc-1");
    }
    v.to_string()
}

fn model(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["model"].as_str().unwrap_or_default().to_string()
}

fn math() -> Value {
    json!({"messages": [
        { "role": "system", "content": "You are a mathematician" },
        { "role": "user", "content": "What is 1+1?" }
    ]})
}

fn models(gw: &Gateway, path: &str, n: usize) -> Vec<String> {
    (0..n).map(|_| model(&gw.chat(path, &math()))).collect()
}

fn count(v: &[String], m: &str) -> usize {
    v.iter().filter(|x| *x == m).count()
}

// ---------------------------------------------------------------------------------------------
// The seeds

const ROUTES_GG: &str = "/apisix/admin/routes?gateway_group_id=default";
const ROUTES: &str = "/apisix/admin/routes";

#[test]
fn seed_000_admin_curls() {
    let mock = Mock::start("mock");
    let (gw, admin) = start_admin("", "");
    // The service the seed's "$SERVICE_ID" stands for.
    admin.put_ok(
        "/apisix/admin/services/svc-1",
        r#"{"name": "seed service"}"#,
    );

    let r = admin.put(
        ROUTES_GG,
        &to_mock(
            r#"{
"id": "openai-route",
"service_id": "$SERVICE_ID",
"paths": ["/openai"],
"plugins": {
"ai-proxy": {
"provider": "openai",
"auth": {
"header": {
"Authorization": "Bearer '"$OPENAI_API_KEY"'"
}
},
"options": {
"model": "gpt-4o"
}
}
}
}"#,
            &mock,
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["key"], "/apisix/routes/openai-route");
    assert_eq!(v["value"]["id"], "openai-route");
    assert!(v["value"]["create_time"].as_i64().unwrap() > 0);
    assert!(v["createdIndex"].as_u64().is_some() && v["modifiedIndex"].as_u64().is_some());
    // The very next data-plane request uses it.
    let r = gw.chat(
        "/openai",
        &json!({"messages": [
            { "role": "system", "content": "You are a computer scientist." },
            { "role": "user", "content": "Explain in one sentence what a Turing machine is." }
        ]}),
    );
    assert_eq!(model(&r), "gpt-4o");
    assert_eq!(
        mock.last()["headers"]["authorization"],
        "Bearer sk-test-openai"
    );

    let r = admin.put(
        ROUTES_GG,
        &to_mock(
            r#"{
"id": "openai-multi-route",
"service_id": "$SERVICE_ID",
"paths": ["/openai"],
"plugins": {
"ai-proxy-multi": {
"fallback_strategy": ["http_429", "http_5xx"],
"instances": [
{
"name": "gpt-4o-mini",
"provider": "openai",
"auth": {
"header": {
"Authorization": "Bearer '"$OPENAI_API_KEY"'"
}
},
"options": {
"model": "gpt-4o-mini"
},
"weight": 8
},
{
"name": "gpt-4o",
"provider": "openai",
"auth": {
"header": {
"Authorization": "Bearer '"$OPENAI_API_KEY"'"
}
},
"options": {
"model": "gpt-4o"
},
"weight": 2
}
]
}
}
}"#,
            &mock,
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    // Both routes have /openai; the older one wins ties, so it goes first (the guide uses one or
    // the other).
    let r = admin.call("DELETE", "/apisix/admin/routes/openai-route", "");
    assert_eq!(r.status, 200, "{}", r.text());
    let m = models(&gw, "/openai", 10);
    assert_eq!(
        (count(&m, "gpt-4o-mini"), count(&m, "gpt-4o")),
        (8, 2),
        "{m:?}"
    );
}

#[test]
fn seed_001_admin_curls() {
    let mock = Mock::start("mock");
    let (gw, admin) = start_admin("", "");
    let r = admin.put(
        ROUTES,
        &to_mock(
            r#"{
"id": "ai-proxy-route",
"uri": "/anything",
"methods": ["POST"],
"plugins": {
"ai-proxy": {
"auth": {
"header": {
"Authorization": "Bearer '"$OPENAI_API_KEY"'"
}
},
"model": {
"provider": "openai",
"name": "gpt-4",
"options": {
"max_tokens": 512,
"temperature": 1.0
}
},
"passthrough": false
}
},
"upstream": {
"type": "roundrobin",
"nodes": {
"httpbin.org": 1
}
}
}"#,
            &mock,
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = gw.chat_with("/anything", &[("Host", "api.openai.com:443")], &math());
    assert_eq!(model(&r), "gpt-4");
    let sent: Value = serde_json::from_str(mock.last()["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["max_tokens"], 512);

    // Azure: the same id, replaced (200).
    let r = admin.put(
        ROUTES,
        &to_mock(
            r#"{
"id": "ai-proxy-route",
"uri": "/anything*",
"methods": ["POST"],
"plugins": {
"ai-proxy": {
"auth": {
"header": {
"api-key": "'"$AZ_OPENAI_API_KEY"'"
}
},
"model": {
"provider": "openai",
"name": "gpt-4",
"options": {
"max_tokens": 512,
"temperature": 1.0
}
},
"override": {
"endpoint": "https://api7-auzre-openai.openai.azure.com/openai/deployments/gpt-4/chat/completions?api-version=2024-02-15-preview"
}
}
},
"upstream": {
"type": "roundrobin",
"nodes": {
"httpbin.org": 1
}
}
}"#,
            &mock,
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.chat(
        "/anything",
        &json!({"messages": [
            {"role": "system", "content": "You are an AI assistant that helps people find information."},
            {"role": "user", "content": "Write me a 50-word introduction for Apache APISIX."}
        ], "max_tokens": 800, "temperature": 0.7, "frequency_penalty": 0, "presence_penalty": 0,
           "top_p": 0.95, "stop": null}),
    );
    assert_eq!(model(&r), "gpt-4");
    let last = mock.last();
    assert_eq!(last["headers"]["api-key"], "az-test-key");
    assert!(
        last["path"]
            .as_str()
            .unwrap()
            .starts_with("/openai/deployments/gpt-4/"),
        "{last}"
    );

    // Passthrough: the answer goes on to the route's upstream (the mock echoes it back).
    let r = admin.put(
        ROUTES,
        &to_mock(
            r#"{
"id": "ai-proxy-route",
"uri": "/anything",
"methods": ["POST"],
"plugins": {
"ai-proxy": {
"auth": {
"header": {
"Authorization": "Bearer '"$OPENAI_API_KEY"'"
}
},
"model": {
"provider": "openai",
"name": "gpt-4"
},
"passthrough": true
}
},
"upstream": {
"type": "roundrobin",
"nodes": {
"httpbin.org": 1
}
}
}"#,
            &mock,
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.chat_with("/anything", &[("Host", "api.openai.com:443")], &math());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["url"], "/anything");
    assert_eq!(v["json"]["model"], "gpt-4");
}

#[test]
fn seed_002_admin_curls() {
    let mock = Mock::start("mock");
    let (gw, admin) = start_admin("", "");
    admin.put_ok(
        "/apisix/admin/services/svc-1",
        r#"{"name": "seed service"}"#,
    );
    let hello = json!({"messages": [{ "role": "user", "content": "Hello, how are you?" }]});
    let seeds = [
        (
            r#"{
"id": "custom-llm-route",
"service_id": "$SERVICE_ID",
"paths": ["/custom-llm"],
"plugins": {
"ai-proxy": {
"provider": "openai-compatible",
"auth": {
"header": {
"Authorization": "Bearer your-api-key"
}
},
"options": {
"model": "your-model-name"
},
"override": {
"endpoint": "https://your-llm-endpoint.example.com/v1/chat/completions"
}
}
}
}"#,
            "/custom-llm",
            "your-model-name",
        ),
        (
            r#"{
"id": "vllm-route",
"service_id": "$SERVICE_ID",
"paths": ["/vllm"],
"plugins": {
"ai-proxy": {
"provider": "openai-compatible",
"auth": {
"header": {
"Authorization": "Bearer placeholder"
}
},
"options": {
"model": "meta-llama/Llama-3.1-8B-Instruct"
},
"override": {
"endpoint": "http://vllm-server:8000/v1/chat/completions"
}
}
}
}"#,
            "/vllm",
            "meta-llama/Llama-3.1-8B-Instruct",
        ),
        (
            r#"{
"id": "together-ai-route",
"service_id": "$SERVICE_ID",
"paths": ["/together-ai"],
"plugins": {
"ai-proxy": {
"provider": "openai-compatible",
"auth": {
"header": {
"Authorization": "Bearer '"$TOGETHER_API_KEY"'"
}
},
"options": {
"model": "meta-llama/Llama-3.1-70B-Instruct-Turbo"
},
"override": {
"endpoint": "https://api.together.xyz/v1/chat/completions"
}
}
}
}"#,
            "/together-ai",
            "meta-llama/Llama-3.1-70B-Instruct-Turbo",
        ),
        (
            r#"{
"id": "hybrid-route",
"service_id": "$SERVICE_ID",
"paths": ["/hybrid"],
"plugins": {
"ai-proxy-multi": {
"fallback_strategy": ["http_429", "http_5xx"],
"instances": [
{
"name": "self-hosted",
"provider": "openai-compatible",
"auth": { "header": { "Authorization": "Bearer placeholder" } },
"options": { "model": "meta-llama/Llama-3.1-8B-Instruct" },
"override": { "endpoint": "http://vllm-server:8000/v1/chat/completions" },
"weight": 1,
"priority": 1
},
{
"name": "cloud-fallback",
"provider": "openai",
"auth": { "header": { "Authorization": "Bearer '"$OPENAI_API_KEY"'" } },
"options": { "model": "gpt-4o-mini" },
"weight": 1,
"priority": 2
}
]
}
}
}"#,
            "/hybrid",
            // The higher priority number is preferred (APISIX): the "fallback" serves first.
            "gpt-4o-mini",
        ),
    ];
    for (body, path, want) in seeds {
        let r = admin.put(ROUTES_GG, &to_mock(body, &mock));
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(model(&gw.chat(path, &hello)), want, "{path}");
    }
    let list = admin.get("/apisix/admin/routes").json();
    assert_eq!(list["total"], 4);
}

/// Seed 003's consumer and route bodies, in order.
const SEED_003_LB: &str = r#"{
"id": "ai-proxy-multi-route",
"uri": "/anything",
"methods": ["POST"],
"plugins": {
"ai-proxy-multi": {
"instances": [
{
"name": "openai-instance",
"provider": "openai",
"weight": 8,
"auth": {
"header": {
"Authorization": "Bearer '"$OPENAI_API_KEY"'"
}
},
"options": {
"model": "gpt-4"
}
},
{
"name": "deepseek-instance",
"provider": "deepseek",
"weight": 2,
"auth": {
"header": {
"Authorization": "Bearer '"$DEEPSEEK_API_KEY"'"
}
},
"options": {
"model": "deepseek-chat"
}
}
]
}
}
}"#;

/// As printed in the seed: `"fallback_strategy: "` is missing a quote (APISIX refuses it too).
const SEED_003_PRIORITY: &str = r#"{
"id": "ai-proxy-multi-route",
"uri": "/anything",
"methods": ["POST"],
"plugins": {
"ai-proxy-multi": {
"fallback_strategy: "instance_health_and_rate_limiting",
"instances": [
{
"name": "openai-instance",
"provider": "openai",
"priority": 1,
"weight": 0,
"auth": {
"header": {
"Authorization": "Bearer '"$OPENAI_API_KEY"'"
}
},
"options": {
"model": "gpt-4"
}
},
{
"name": "deepseek-instance",
"provider": "deepseek",
"priority": 0,
"weight": 0,
"auth": {
"header": {
"Authorization": "Bearer '"$DEEPSEEK_API_KEY"'"
}
},
"options": {
"model": "deepseek-chat"
}
}
]
},
"ai-rate-limiting": {
"instances": [
{
"name": "openai-instance",
"limit": 10,
"time_window": 60
}
],
"limit_strategy": "total_tokens"
}
}
}"#;

const SEED_003_JOHN: &str = r#"{
"username": "johndoe",
"plugins": {
"ai-rate-limiting": {
"instances": [
{
"name": "openai-instance",
"limit": 10,
"time_window": 60
}
],
"rejected_code": 429,
"limit_strategy": "total_tokens"
}
}
}"#;

const SEED_003_JOHN_CRED: &str = r#"{
"id": "cred-john-key-auth",
"plugins": {
"key-auth": {
"key": "john-key"
}
}
}"#;

/// As printed: the text says "create another consumer janedoe" but the body names johndoe.
const SEED_003_JANE: &str = r#"{
"username": "johndoe",
"plugins": {
"ai-rate-limiting": {
"instances": [
{
"name": "deepseek-instance",
"limit": 10,
"time_window": 60
}
],
"rejected_code": 429,
"limit_strategy": "total_tokens"
}
}
}"#;

const SEED_003_JANE_CRED: &str = r#"{
"id": "cred-jane-key-auth",
"plugins": {
"key-auth": {
"key": "jane-key"
}
}
}"#;

const SEED_003_CONSUMER_ROUTE: &str = r#"{
"id": "ai-proxy-multi-route",
"uri": "/anything",
"methods": ["POST"],
"plugins": {
"key-auth": {},
"ai-proxy-multi": {
"fallback_strategy: "instance_health_and_rate_limiting",
"instances": [
{
"name": "openai-instance",
"provider": "openai",
"weight": 0,
"auth": {
"header": {
"Authorization": "Bearer '"$OPENAI_API_KEY"'"
}
},
"options": {
"model": "gpt-4"
}
},
{
"name": "deepseek-instance",
"provider": "deepseek",
"weight": 0,
"auth": {
"header": {
"Authorization": "Bearer '"$DEEPSEEK_API_KEY"'"
}
},
"options": {
"model": "deepseek-chat"
}
}
]
}
}
}"#;

const SEED_003_MAX_TOKENS: &str = r#"{
"id": "ai-proxy-multi-route",
"uri": "/anything",
"methods": ["POST"],
"plugins": {
"ai-proxy-multi": {
"instances": [
{
"name": "openai-instance",
"provider": "openai",
"weight": 0,
"auth": {
"header": {
"Authorization": "Bearer '"$OPENAI_API_KEY"'"
}
},
"options": {
"model": "gpt-4",
"max_tokens": 50
}
},
{
"name": "deepseek-instance",
"provider": "deepseek",
"weight": 0,
"auth": {
"header": {
"Authorization": "Bearer '"$DEEPSEEK_API_KEY"'"
}
},
"options": {
"model": "deepseek-chat",
"max_tokens": 100
}
}
]
}
}
}"#;

const SEED_003_EMBEDDINGS: &str = r#"{
"id": "ai-proxy-multi-route",
"uri": "/anything",
"methods": ["POST"],
"plugins": {
"ai-proxy-multi": {
"instances": [
{
"name": "openai-instance",
"provider": "openai",
"weight": 0,
"auth": {
"header": {
"Authorization": "Bearer '"$OPENAI_API_KEY"'"
}
},
"options": {
"model": "text-embedding-3-small"
},
"override": {
"endpoint": "https://api.openai.com/v1/embeddings"
}
},
{
"name": "az-openai-instance",
"provider": "openai-compatible",
"weight": 0,
"auth": {
"header": {
"Authorization": "Bearer '"$AZ_OPENAI_API_KEY"'"
}
},
"options": {
"model": "text-embedding-3-small"
},
"override": {
"endpoint": "https://ai-plugin-developer.openai.azure.com/openai/deployments/text-embedding-3-small/embeddings?api-version=2023-05-15"
}
}
]
}
}
}"#;

const SEED_003_HEALTH: &str = r#"{
"id": "ai-proxy-multi-route",
"uri": "/anything",
"methods": ["POST"],
"plugins": {
"ai-proxy-multi": {
"instances": [
{
"name": "llm-instance-1",
"provider": "openai-compatible",
"weight": 0,
"auth": {
"header": {
"Authorization": "Bearer '"$YOUR_LLM_API_KEY"'"
}
},
"options": {
"model": "'"$YOUR_LLM_MODEL"'"
}
},
{
"name": "llm-instance-2",
"provider": "openai-compatible",
"weight": 0,
"auth": {
"header": {
"Authorization": "Bearer '"$YOUR_LLM_API_KEY"'"
}
},
"options": {
"model": "'"$YOUR_LLM_MODEL"'"
},
"checks": {
"active": {
"type": "https",
"host": "yourhost.com",
"http_path": "/your/probe/path",
"healthy": {
"interval": 2,
"successes": 1
},
"unhealthy": {
"interval": 1,
"http_failures": 3
}
}
}
}
]
}
}
}"#;

/// The seed's one JSON typo, fixed in the test's copy.
fn fix_typo(body: &str) -> String {
    body.replace("\"fallback_strategy: \"", "\"fallback_strategy\": \"")
}

#[test]
fn seed_003_admin_curls() {
    let mock = Mock::start("mock");
    let (gw, admin) = start_admin("", "");

    // Load balance 8:2.
    assert_eq!(admin.put(ROUTES, &to_mock(SEED_003_LB, &mock)).status, 201);
    let m = models(&gw, "/anything", 10);
    assert_eq!(
        (count(&m, "gpt-4"), count(&m, "deepseek-chat")),
        (8, 2),
        "{m:?}"
    );

    // Priority and rate limiting: the seed's body is not JSON, as APISIX would say too.
    let msg = admin.refused("PUT", ROUTES, &shell(SEED_003_PRIORITY));
    assert!(msg.starts_with("invalid request body: "), "{msg}");
    let r = admin.put(ROUTES, &to_mock(&fix_typo(SEED_003_PRIORITY), &mock));
    assert_eq!(r.status, 200, "{}", r.text());
    // The seed's answer: 31 tokens, over the 10-token quota of openai-instance.
    mock.set(json!({"prompt_tokens": 23, "completion_tokens": 8}));
    assert_eq!(models(&gw, "/anything", 1), vec!["gpt-4"]);
    assert_eq!(models(&gw, "/anything", 2), vec!["deepseek-chat"; 2]);

    // Consumers and credentials.
    let r = admin.put("/apisix/admin/consumers", &shell(SEED_003_JOHN));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["key"], "/apisix/consumers/johndoe");
    assert_eq!(r.json()["value"]["username"], "johndoe");
    let r = admin.put(
        "/apisix/admin/consumers/johndoe/credentials",
        &shell(SEED_003_JOHN_CRED),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["key"],
        "/apisix/consumers/johndoe/credentials/cred-john-key-auth"
    );
    assert_eq!(r.json()["value"]["id"], "cred-john-key-auth");
    // The seed's "janedoe" body names johndoe: it replaces him, and janedoe does not exist.
    let r = admin.put("/apisix/admin/consumers", &shell(SEED_003_JANE));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin.put(
        "/apisix/admin/consumers/janedoe/credentials",
        &shell(SEED_003_JANE_CRED),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    // As the seed means it: johndoe's quota on openai-instance, janedoe's on deepseek-instance.
    admin.put_ok("/apisix/admin/consumers", &shell(SEED_003_JOHN));
    admin.put_ok(
        "/apisix/admin/consumers",
        &shell(SEED_003_JANE).replace("johndoe", "janedoe"),
    );
    admin.put_ok(
        "/apisix/admin/consumers/janedoe/credentials",
        &shell(SEED_003_JANE_CRED),
    );
    let msg = admin.refused("PUT", ROUTES, &shell(SEED_003_CONSUMER_ROUTE));
    assert!(msg.starts_with("invalid request body: "), "{msg}");
    let r = admin.put(ROUTES, &to_mock(&fix_typo(SEED_003_CONSUMER_ROUTE), &mock));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.chat("/anything", &math()).status, 401);
    let ask = |key: &str| model(&gw.chat_with("/anything", &[("apikey", key)], &math()));
    let mut john = Vec::new();
    while !john.contains(&"gpt-4".to_string()) {
        assert!(
            john.len() < 4,
            "openai-instance never served johndoe: {john:?}"
        );
        john.push(ask("john-key"));
    }
    assert_eq!(
        (0..3).map(|_| ask("john-key")).collect::<Vec<_>>(),
        vec!["deepseek-chat"; 3]
    );
    let mut jane = Vec::new();
    while !jane.contains(&"deepseek-chat".to_string()) {
        assert!(
            jane.len() < 4,
            "deepseek-instance never served janedoe: {jane:?}"
        );
        jane.push(ask("jane-key"));
    }
    assert_eq!(
        (0..3).map(|_| ask("jane-key")).collect::<Vec<_>>(),
        vec!["gpt-4"; 3]
    );

    // max_tokens per instance.
    assert_eq!(
        admin
            .put(ROUTES, &to_mock(SEED_003_MAX_TOKENS, &mock))
            .status,
        200
    );
    for _ in 0..2 {
        let r = gw.chat(
            "/anything",
            &json!({"messages": [
                { "role": "system", "content": "You are a mathematician" },
                { "role": "user", "content": "Explain Newtons law" }
            ]}),
        );
        let sent: Value = serde_json::from_str(mock.last()["body"].as_str().unwrap()).unwrap();
        let want = if model(&r) == "gpt-4" { 50 } else { 100 };
        assert_eq!(sent["max_tokens"], want);
    }

    // Embeddings.
    assert_eq!(
        admin
            .put(ROUTES, &to_mock(SEED_003_EMBEDDINGS, &mock))
            .status,
        200
    );
    for _ in 0..2 {
        let r = gw.chat("/anything", &json!({"input": "hello world"}));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["object"], "list");
        assert_eq!(r.json()["model"], "text-embedding-3-small");
    }

    // Active health checks (the probe's https against the plain mock fails: instance 1 serves).
    assert_eq!(
        admin.put(ROUTES, &to_mock(SEED_003_HEALTH, &mock)).status,
        200
    );
    assert_eq!(models(&gw, "/anything", 2), vec!["my-llm-model"; 2]);
}

#[test]
fn seed_004_services_and_vars_through_the_admin_api() {
    let mock = Mock::start("mock");
    let (gw, admin) = start_admin("", "");
    let service = to_mock(
        r#"{
"id": "standard-ai-proxy",
"name": "Standard AI Proxy",
"plugins": {
"ai-proxy": {
"provider": "openai",
"auth": {
"header": {
"Authorization": "Bearer sk-global-key"
}
},
"options": {
"model": "gpt-4"
}
}
}
}"#,
        &mock,
    );
    let r = admin.put("/apisix/admin/services", &service);
    assert_eq!(r.status, 201, "{}", r.text());
    admin.put_ok(
        "/apisix/admin/routes/svc-route",
        r#"{"uri": "/svc", "service_id": "standard-ai-proxy"}"#,
    );
    assert_eq!(models(&gw, "/svc", 1), vec!["gpt-4"]);
    let gpt4 = to_mock(
        r#"{
"id": "openai-gpt4",
"uri": "/v1/chat/completions",
"methods": ["POST"],
"vars": [["post_arg.model", "==", "gpt-4"]],
"plugins": {
"ai-proxy": {
"provider": "openai",
"auth": { "header": { "Authorization": "Bearer sk-openai-key" } },
"options": { "model": "gpt-4" }
}
}
}"#,
        &mock,
    );
    admin.put_ok(ROUTES, &gpt4);
    let ask = |m: &str| {
        gw.chat(
            "/v1/chat/completions",
            &json!({"model": m, "messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    assert_eq!(model(&ask("gpt-4")), "gpt-4");
    assert_eq!(ask("other").status, 404);
}

// ---------------------------------------------------------------------------------------------
// Access

#[test]
fn the_key_is_required_and_compared_exactly() {
    let (_gw, admin) = start_admin("", "");
    for headers in [
        vec![],
        vec![("X-API-KEY", "wrong")],
        vec![("X-API-KEY", &KEY[..31])],
    ] {
        let r = request(admin.port, "GET", ROUTES, &headers, b"");
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.json(), json!({"error_msg": "failed to check token"}));
    }
    // A refused PUT changes nothing.
    let r = request(
        admin.port,
        "PUT",
        "/apisix/admin/upstreams/u1",
        &[("X-API-KEY", "wrong")],
        br#"{"nodes": {"127.0.0.1:1": 1}}"#,
    );
    assert_eq!(r.status, 401);
    assert_eq!(admin.get("/apisix/admin/upstreams").json()["total"], 0);
    assert_eq!(admin.get(ROUTES).status, 200);
}

#[test]
fn clients_outside_allow_are_refused() {
    let (_gw, admin) = start_admin("", "    allow: [10.0.0.0/8, \"192.168.1.1\"]\n");
    let r = admin.get(ROUTES);
    assert_eq!(r.status, 403);
    assert_eq!(r.json(), json!({"error_msg": "IP address not allowed"}));
    let (_gw, admin) = start_admin("", "    allow: [10.0.0.0/8, 127.0.0.0/8]\n");
    assert_eq!(admin.get(ROUTES).status, 200);
}

#[test]
fn no_key_on_loopback_needs_no_key() {
    let port = free_port();
    let extra = format!("  admin:\n    listen: 127.0.0.1:{port}\n");
    let _gw = Gateway::start_with(
        "",
        GatewayOpts {
            gateway_extra: &extra,
            ..Default::default()
        },
    );
    wait_listening(port);
    assert_eq!(request(port, "GET", ROUTES, &[], b"").status, 200);
}

#[test]
fn admin_config_is_checked() {
    let base =
        |admin: &str| format!("gateway:\n  listen: 127.0.0.1:9080\n  admin:\n{admin}routes: []\n");
    let (ok, out) = check_config(&base("    listen: 0.0.0.0:9180\n"), &[]);
    assert!(!ok);
    assert!(
        out.contains(
            "gateway.admin.key: required when gateway.admin.listen is not a loopback address"
        ),
        "{out}"
    );
    let (ok, out) = check_config(&base("    listen: 0.0.0.0:9180\n    key: \"\"\n"), &[]);
    assert!(!ok && out.contains("gateway.admin.key"), "{out}");
    let (ok, out) = check_config(
        &base("    listen: 0.0.0.0:9180\n    key: very-secret-admin-key\n    allow: [10.0.0.0/8, 10.0.0.0/99]\n"),
        &[],
    );
    assert!(!ok);
    assert!(out.contains("gateway.admin.allow[1]"), "{out}");
    assert!(!out.contains("very-secret-admin-key"), "{out}");
    let (ok, out) = check_config(
        &base("    listen: nowhere\n    key: very-secret-admin-key\n"),
        &[],
    );
    assert!(!ok && out.contains("gateway.admin.listen"), "{out}");
    assert!(!out.contains("very-secret-admin-key"), "{out}");
    let (ok, out) = check_config(
        &base(
            "    listen: 0.0.0.0:9180\n    key: very-secret-admin-key\n    redact_secrets: true\n",
        ),
        &[],
    );
    assert!(ok, "{out}");
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[test]
fn bad_objects_are_refused_with_apisix_messages() {
    let mock = Mock::start("mock");
    let (_gw, admin) = start_admin("", "");
    let ep = mock.chat_url();
    let proxy = |extra: &str| {
        format!(
            r#"{{"uri": "/x", "plugins": {{"ai-proxy": {{"provider": "openai", "auth": {{"header": {{"Authorization": "Bearer k"}}}}, "override": {{"endpoint": "{ep}"}}{extra}}}}}}}"#
        )
    };
    let route = "/apisix/admin/routes/r1";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "PUT",
            r#"{"uri": "/x", "plugins": {"no-such-plugin": {}}}"#.into(),
            "failed to check the configuration of plugin no-such-plugin err: ",
        ),
        (
            "PUT",
            r#"{"uri": "/x", "plugins": {"ai-proxy": {"provider": "nope", "auth": {}}}}"#.into(),
            "failed to check the configuration of plugin ai-proxy err: provider: ",
        ),
        (
            "PUT",
            proxy("").replace(r#""uri": "/x", "#, ""),
            "invalid configuration: ",
        ),
        (
            "PUT",
            proxy("").replace(
                r#""uri": "/x""#,
                r#""uri": "/x", "vars": [["arg_a", "~~~", "b"]]"#,
            ),
            "invalid configuration: vars: ",
        ),
        (
            "PUT",
            proxy("").replace(r#""uri": "/x""#, r#""uri": "/x", "methods": ["FETCH"]"#),
            "invalid configuration: methods[0]: ",
        ),
        (
            "PUT",
            proxy("").replace(r#""uri": "/x""#, r#""uri": "/x", "service_id": "nope""#),
            "failed to fetch service info by service id [nope]",
        ),
        (
            "PUT",
            r#"{"uri": "/x", "upstream": {"nodes": "not nodes"}}"#.into(),
            "invalid configuration: upstream",
        ),
        (
            "PUT",
            proxy(r#"}, "ai-rate-limiting": {"time_window": 60"#),
            "failed to check the configuration of plugin ai-rate-limiting err: ",
        ),
        (
            "PUT",
            proxy("").replace(r#""uri""#, r#""id": "r2", "uri""#),
            "invalid configuration: wrong id",
        ),
        ("PUT", "{\"uri\": \"/x\",".into(), "invalid request body: "),
        ("PUT", "".into(), "invalid request body: "),
        ("PUT", "[1, 2]".into(), "invalid configuration: "),
        (
            "PUT",
            r#"{"uri": 5}"#.into(),
            "invalid configuration: uri: ",
        ),
        (
            "PUT",
            r#"{"uri": "/x", "plugins": {"ai-proxy": {"provider": "openai", "auth": 5}}}"#.into(),
            "failed to check the configuration of plugin ai-proxy err: auth: ",
        ),
        (
            "POST",
            r#"{"id": "x", "uri": "/x"}"#.into(),
            "wrong route id, do not need it",
        ),
    ];
    for (method, body, want) in cases {
        let path = if method == "POST" { ROUTES } else { route };
        let msg = admin.refused(method, path, &body);
        assert!(
            msg.starts_with(want) || msg.contains(want),
            "{body}\n  -> {msg}\n  want {want}"
        );
    }
    // Consumers and credentials.
    admin.put_ok("/apisix/admin/consumers/jack", "{}");
    let msg = admin.refused(
        "PUT",
        "/apisix/admin/consumers/jack/credentials/c1",
        r#"{"plugins": {"key-auth": {"key": 5}}}"#,
    );
    assert!(
        msg.starts_with("failed to check the configuration of plugin key-auth err: key"),
        "{msg}"
    );
    let msg = admin.refused("PUT", "/apisix/admin/consumers", r#"{"desc": "no name"}"#);
    assert!(msg.contains("username"), "{msg}");
    let msg = admin.refused("PUT", "/apisix/admin/consumers/bad%20name", "{}");
    assert!(msg.contains("invalid id"), "{msg}");
    // Nothing of that was stored.
    assert_eq!(admin.get(ROUTES).json()["total"], 0);
    // An upstream in use cannot go.
    admin.put_ok(
        "/apisix/admin/upstreams/u1",
        &format!(r#"{{"nodes": {{"127.0.0.1:{}": 1}}}}"#, mock.port),
    );
    admin.put_ok(route, r#"{"uri": "/x", "upstream_id": "u1"}"#);
    let msg = admin.refused("DELETE", "/apisix/admin/upstreams/u1", "");
    assert!(msg.contains("route \"r1\" is still using it"), "{msg}");

    // Unknown paths, ids and methods.
    assert_eq!(admin.get("/apisix/admin/nothing").status, 404);
    assert_eq!(admin.get("/elsewhere").status, 404);
    let r = admin.get("/apisix/admin/routes/nope");
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"message": "Key not found"}))
    );
    let r = admin.call("DELETE", "/apisix/admin/routes/nope", "");
    assert_eq!(
        (r.status, r.json()),
        (404, json!({"message": "Key not found"}))
    );
    assert_eq!(admin.call("DELETE", ROUTES, "").status, 405);
    assert_eq!(
        admin.call("POST", "/apisix/admin/routes/r1", "{}").status,
        405
    );
    // Too large: refused on the declared length, before the body is read.
    let mut c = Conn::open(admin.port);
    c.send_raw(
        format!(
            "PUT {route} HTTP/1.1\r\nHost: x\r\nX-API-KEY: {KEY}\r\nContent-Length: {}\r\n\r\n",
            5 << 20
        )
        .as_bytes(),
    );
    assert_eq!(c.read_response().status, 413);
}

// ---------------------------------------------------------------------------------------------
// Changes

#[test]
fn patch_whole_and_sub_path_then_delete() {
    let mock = Mock::start("mock");
    let (gw, admin) = start_admin("", "");
    let ep = mock.chat_url();
    let plugins = |m: &str| {
        format!(
            r#"{{"ai-proxy": {{"provider": "openai-compatible", "auth": {{"header": {{"Authorization": "Bearer k"}}}}, "options": {{"model": "{m}"}}, "override": {{"endpoint": "{ep}"}}}}}}"#
        )
    };
    let r = admin.put(
        "/apisix/admin/routes/1",
        &format!(
            r#"{{"uri": "/a", "desc": "first", "plugins": {}}}"#,
            plugins("m1")
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    assert_eq!(models(&gw, "/a", 1), vec!["m1"]);

    // Merge patch: desc removed (null), uri changed, the rest kept.
    let r = admin.call(
        "PATCH",
        "/apisix/admin/routes/1",
        r#"{"uri": "/b", "desc": null}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["value"]["uri"], "/b");
    assert!(v["value"].get("desc").is_none());
    assert_eq!(v["value"]["plugins"]["ai-proxy"]["options"]["model"], "m1");
    assert_eq!(v["createdIndex"], created["createdIndex"]);
    assert!(v["modifiedIndex"].as_u64() > created["modifiedIndex"].as_u64());
    assert_eq!(v["value"]["create_time"], created["value"]["create_time"]);
    assert_eq!(gw.chat("/a", &math()).status, 404);
    assert_eq!(models(&gw, "/b", 1), vec!["m1"]);

    // Sub-path: the plugins object replaced whole.
    let r = admin.call("PATCH", "/apisix/admin/routes/1/plugins", &plugins("m2"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(models(&gw, "/b", 1), vec!["m2"]);
    let r = admin.call("PATCH", "/apisix/admin/routes/1/uri", r#""/c""#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"]["uri"], "/c");
    assert_eq!(models(&gw, "/c", 1), vec!["m2"]);
    // A bad patch changes nothing.
    let msg = admin.refused(
        "PATCH",
        "/apisix/admin/routes/1/plugins",
        r#"{"ai-proxy": {}}"#,
    );
    assert!(
        msg.starts_with("failed to check the configuration of plugin ai-proxy"),
        "{msg}"
    );
    assert_eq!(models(&gw, "/c", 1), vec!["m2"]);
    assert_eq!(
        admin.call("PATCH", "/apisix/admin/routes/9", "{}").status,
        404
    );

    let r = admin.call("DELETE", "/apisix/admin/routes/1", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"deleted": "1", "key": "/apisix/routes/1"}));
    assert_eq!(gw.chat("/c", &math()).status, 404);
    assert_eq!(admin.get("/apisix/admin/routes/1").status, 404);

    // POST makes a new id; credentials are listed under their consumer.
    let r = admin.call(
        "POST",
        ROUTES,
        &format!(r#"{{"uri": "/p", "plugins": {}}}"#, plugins("m3")),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["value"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.json()["key"], format!("/apisix/routes/{id}"));
    assert_eq!(models(&gw, "/p", 1), vec!["m3"]);
    admin.put_ok("/apisix/admin/consumers/jack", "{}");
    admin.put_ok(
        "/apisix/admin/consumers/jack/credentials/c1",
        r#"{"plugins": {"key-auth": {"key": "jack-key"}}}"#,
    );
    admin.put_ok("/apisix/admin/consumers/jill", "{}");
    admin.put_ok(
        "/apisix/admin/consumers/jill/credentials/c1",
        r#"{"plugins": {"key-auth": {"key": "jill-key"}}}"#,
    );
    let l = admin.get("/apisix/admin/consumers/jack/credentials").json();
    assert_eq!(l["total"], 1);
    assert_eq!(l["list"][0]["key"], "/apisix/consumers/jack/credentials/c1");
    let r = admin
        .get("/apisix/admin/consumers/jill/credentials/c1")
        .json();
    assert_eq!(r["value"]["plugins"]["key-auth"]["key"], "jill-key");
    // A consumer's credentials go with it.
    assert_eq!(
        admin
            .call("DELETE", "/apisix/admin/consumers/jack", "")
            .status,
        200
    );
    assert_eq!(
        admin
            .get("/apisix/admin/consumers/jack/credentials/c1")
            .status,
        404
    );
}

#[test]
fn config_file_resources_are_read_only_but_listed() {
    let mock = Mock::start("mock");
    let (gw, admin) = start_admin(&chat_route(&mock.chat_url(), "file-key", &[]), "");
    let l = admin.get(ROUTES).json();
    assert_eq!(l["total"], 1);
    let item = &l["list"][0];
    assert_eq!(item["key"], "/apisix/routes/chat");
    assert_eq!(item["value"]["id"], "chat");
    assert_eq!(item["value"]["uri"], "/v1/chat/completions");
    assert_eq!(item["origin"], "config_file");
    assert_eq!(admin.get("/apisix/admin/routes/chat").status, 200);
    for (method, path) in [
        ("PUT", "/apisix/admin/routes/chat"),
        ("PATCH", "/apisix/admin/routes/chat"),
        ("DELETE", "/apisix/admin/routes/chat"),
    ] {
        let msg = admin.refused(method, path, r#"{"uri": "/other"}"#);
        assert!(msg.contains("defined in the config file"), "{msg}");
    }
    assert_eq!(
        gw.chat("/v1/chat/completions", &chat_body("hi")).status,
        200
    );
}

#[test]
fn list_pagination() {
    let (_gw, admin) = start_admin("", "");
    for i in 0..12 {
        admin.put_ok(
            &format!("/apisix/admin/upstreams/u{i:02}"),
            r#"{"nodes": {"127.0.0.1:1": 1}}"#,
        );
    }
    let ids = |q: &str| -> (u64, Vec<String>) {
        let v = admin.get(&format!("/apisix/admin/upstreams{q}")).json();
        let ids = v["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["value"]["id"].as_str().unwrap().to_string())
            .collect();
        (v["total"].as_u64().unwrap(), ids)
    };
    assert_eq!(ids("").1.len(), 12);
    assert_eq!(
        ids("?page=1&page_size=5"),
        (12, (0..5).map(|i| format!("u{i:02}")).collect())
    );
    assert_eq!(
        ids("?page=3&page_size=5"),
        (12, vec!["u10".into(), "u11".into()])
    );
    assert_eq!(ids("?page=4&page_size=5"), (12, vec![]));
    assert_eq!(admin.get("/apisix/admin/upstreams?page_size=0").status, 400);
    assert_eq!(admin.get("/apisix/admin/upstreams?page=x").status, 400);
    let v = admin
        .get("/apisix/admin/upstreams?page=1&page_size=1")
        .json();
    assert_eq!(v["list"][0]["key"], "/apisix/upstreams/u00");
    assert!(v["list"][0]["createdIndex"].as_u64().is_some());
}

#[test]
fn plugins_list_and_one_plugin() {
    let (_gw, admin) = start_admin("", "");
    let names = admin.get("/apisix/admin/plugins/list").json();
    for n in ["key-auth", "ai-proxy", "ai-proxy-multi", "ai-rate-limiting"] {
        assert!(names.as_array().unwrap().contains(&json!(n)), "{names}");
    }
    let p = admin.get("/apisix/admin/plugins/ai-proxy").json();
    assert_eq!(p["name"], "ai-proxy");
    assert_eq!(p["priority"], 999);
    assert_eq!(admin.get("/apisix/admin/plugins/nope").status, 404);
}

#[test]
fn changes_under_a_steady_request_loop() {
    let mock = Mock::start("mock");
    let (gw, admin) = start_admin("", "");
    let ep = mock.chat_url();
    let route = |m: &str| {
        format!(
            r#"{{"uri": "/loop", "plugins": {{"ai-proxy": {{"provider": "openai-compatible", "auth": {{"header": {{"Authorization": "Bearer k"}}}}, "options": {{"model": "{m}"}}, "override": {{"endpoint": "{ep}"}}}}}}}}"#
        )
    };
    admin.put_ok("/apisix/admin/routes/loop", &route("v0"));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let port = gw.port;
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = request(
                        port,
                        "POST",
                        "/loop",
                        &[("content-type", "application/json")],
                        chat_body("hi").to_string().as_bytes(),
                    );
                    if r.status != 200 {
                        failures.push(format!("{} {}", r.status, r.text()));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();
    for i in 1..=10 {
        let want = format!("v{i}");
        let r = admin.put("/apisix/admin/routes/loop", &route(&want));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(models(&gw, "/loop", 1), vec![want]);
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(done.load(Ordering::Relaxed) > 20, "the loop barely ran");
}

#[test]
fn redact_secrets_masks_keys_in_answers() {
    let mock = Mock::start("mock");
    let (gw, admin) = start_admin("", "    redact_secrets: true\n");
    let ep = mock.chat_url();
    let r = admin.put(
        "/apisix/admin/routes/1",
        &format!(
            r#"{{"uri": "/r", "plugins": {{"key-auth": {{}}, "ai-proxy": {{"provider": "openai-compatible", "auth": {{"header": {{"Authorization": "Bearer sk-very-secret"}}, "query": {{"key": "q-secret"}}}}, "options": {{"model": "m"}}, "override": {{"endpoint": "{ep}"}}}}}}}}"#
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(!r.text().contains("sk-very-secret"), "{}", r.text());
    admin.put_ok("/apisix/admin/consumers/jack", "{}");
    admin.put_ok(
        "/apisix/admin/consumers/jack/credentials/c1",
        r#"{"plugins": {"key-auth": {"key": "jack-secret-key"}}}"#,
    );
    let v = admin.get("/apisix/admin/routes/1").json();
    let auth = &v["value"]["plugins"]["ai-proxy"]["auth"];
    assert_eq!(auth["header"]["Authorization"], "******");
    assert_eq!(auth["query"]["key"], "******");
    assert_eq!(v["value"]["plugins"]["ai-proxy"]["options"]["model"], "m");
    let c = admin.get("/apisix/admin/consumers/jack/credentials").text();
    assert!(
        !c.contains("jack-secret-key") && c.contains("******"),
        "{c}"
    );
    // Stored as given: the data plane still uses the real values.
    let r = gw.chat_with("/r", &[("apikey", "jack-secret-key")], &chat_body("hi"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        mock.last()["headers"]["authorization"],
        "Bearer sk-very-secret"
    );
    // A PATCH with the mask would store it: values round-trip only without redaction (README).

    // Without redact_secrets, GET shows values as stored.
    let (_gw2, admin2) = start_admin("", "");
    admin2.put_ok("/apisix/admin/consumers/jack", "{}");
    admin2.put_ok(
        "/apisix/admin/consumers/jack/credentials/c1",
        r#"{"plugins": {"key-auth": {"key": "jack-secret-key"}}}"#,
    );
    let c = admin2
        .get("/apisix/admin/consumers/jack/credentials/c1")
        .json();
    assert_eq!(c["value"]["plugins"]["key-auth"]["key"], "jack-secret-key");
}

#[test]
fn the_admin_key_and_bodies_stay_out_of_the_error_log() {
    let mock = Mock::start("mock");
    let (gw, admin) = start_admin("", "");
    let r = admin.put(
        "/apisix/admin/routes/1",
        &to_mock(
            r#"{"uri": "/s", "plugins": {"ai-proxy": {"provider": "openai", "auth": {"header": {"Authorization": "Bearer sk-log-secret"}}}}}"#,
            &mock,
        ),
    );
    assert_eq!(r.status, 201);
    assert_eq!(
        admin
            .put("/apisix/admin/routes/1", "{not json sk-log-secret")
            .status,
        400
    );
    let log = gw.error_log();
    assert!(!log.contains(KEY), "{log}");
    assert!(!log.contains("sk-log-secret"), "{log}");
}

#[test]
fn expect_100_continue_is_answered() {
    let (_gw, admin) = start_admin("", "");
    let body = r#"{"nodes": {"127.0.0.1:1": 1}}"#;
    let mut c = Conn::open(admin.port);
    c.send_raw(
        format!(
            "PUT /apisix/admin/upstreams/u1 HTTP/1.1\r\nHost: x\r\nX-API-KEY: {KEY}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(body.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(admin.get("/apisix/admin/upstreams/u1").status, 200);
}
