//! The README's seed examples, replayed against `conf/examples/seeds.yaml` and the mock, so the
//! documentation stays true.

use serde_json::json;

use crate::harness::*;

const SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/examples/seeds.yaml");

fn start() -> (Mock, Gateway) {
    let mock = Mock::start("mock");
    let gw = Gateway::start_file(SEEDS, &[("MOCK_ADDR", format!("127.0.0.1:{}", mock.port))]);
    (mock, gw)
}

fn sent_body(mock: &Mock) -> serde_json::Value {
    serde_json::from_str(mock.last()["body"].as_str().unwrap()).unwrap()
}

#[test]
fn seed_000_openai_route() {
    let (mock, gw) = start();
    let r = gw.chat(
        "/openai",
        &json!({"messages": [
            { "role": "system", "content": "You are a computer scientist." },
            { "role": "user", "content": "Explain in one sentence what a Turing machine is." }
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17})
    );
    assert_eq!(
        mock.last()["headers"]["authorization"],
        "Bearer sk-proj-demo"
    );
}

#[test]
fn seed_001_older_schema_and_azure() {
    let (mock, gw) = start();
    let body = json!({"messages": [
        { "role": "system", "content": "You are a mathematician" },
        { "role": "user", "content": "What is 1+1?" }
    ]});
    let r = gw.chat_with("/anything-llm", &[("Host", "api.openai.com:443")], &body);
    assert_eq!(r.json()["model"], "gpt-4");
    let sent = sent_body(&mock);
    assert_eq!(
        (sent["max_tokens"].clone(), sent["temperature"].clone()),
        (json!(512), json!(1.0))
    );

    let r = gw.chat(
        "/azure",
        &json!({"messages": [{"role": "user", "content": "Write me a 50-word introduction for Apache APISIX."}],
                "max_tokens": 800, "temperature": 0.7, "stop": null}),
    );
    assert_eq!(r.status, 200);
    let last = mock.last();
    assert_eq!(
        last["path"],
        "/openai/deployments/gpt-4/chat/completions?api-version=2024-02-15-preview"
    );
    assert_eq!(
        last["headers"]["api-key"],
        "57cha9ee8e8a89a12c0aha174f180f4"
    );
    let sent = sent_body(&mock);
    assert_eq!(
        (sent["max_tokens"].clone(), sent["temperature"].clone()),
        (json!(512), json!(1.0))
    );
}

#[test]
fn seed_001_passthrough() {
    let (_mock, gw) = start();
    let r = gw.chat_with(
        "/anything",
        &[("Host", "api.openai.com:443")],
        &json!({"messages": [
            { "role": "system", "content": "You are a mathematician" },
            { "role": "user", "content": "What is 1+1?" }
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["url"], "/anything");
    assert_eq!(v["json"]["object"], "chat.completion");
    assert_eq!(v["json"]["model"], "gpt-4");
    assert_eq!(v["headers"]["host"], "api.openai.com:443");
}

#[test]
fn seed_002_openai_compatible() {
    let (_mock, gw) = start();
    let body = json!({"messages": [{ "role": "user", "content": "Hello, how are you?" }]});
    assert_eq!(
        gw.chat("/custom-llm", &body).json()["model"],
        "your-model-name"
    );
    assert_eq!(
        gw.chat("/vllm", &body).json()["model"],
        "meta-llama/Llama-3.1-8B-Instruct"
    );
}

#[test]
fn seed_004_vars_routing_services_embeddings_and_streaming() {
    let (mock, gw) = start();
    let ask = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "What is 1+1?"}]});
    assert_eq!(
        gw.chat("/v1/chat/completions", &ask("deepseek-chat"))
            .json()["model"],
        "deepseek-chat"
    );
    assert_eq!(mock.last()["path"], "/chat/completions");
    assert_eq!(
        gw.chat("/v1/chat/completions", &ask("gpt-4")).json()["model"],
        "gpt-4"
    );
    assert_eq!(sent_body(&mock)["max_tokens"], 1024);
    gw.chat("/v1/chat/completions", &ask("llama"))
        .openai_error(404);

    let r = gw.chat("/v1/embeddings", &json!({"input": "hello world"}));
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["usage"], json!({"prompt_tokens": 2, "total_tokens": 2}));

    let mut streaming = ask("gpt-4");
    streaming["stream"] = json!(true);
    let r = gw.chat("/v1/chat/completions", &streaming);
    assert_eq!(r.sse_data().last().map(String::as_str), Some("[DONE]"));
}

fn models(gw: &Gateway, path: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = gw.chat(
                path,
                &json!({"messages": [{ "role": "user", "content": "What is 1+1?" }]}),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["model"].as_str().unwrap().to_string()
        })
        .collect()
}

fn count(v: &[String], m: &str) -> usize {
    v.iter().filter(|x| *x == m).count()
}

#[test]
fn seed_000_multi_model_routing() {
    let (_mock, gw) = start();
    let m = models(&gw, "/openai-multi", 10);
    assert_eq!(
        (count(&m, "gpt-4o-mini"), count(&m, "gpt-4o")),
        (8, 2),
        "{m:?}"
    );
}

#[test]
fn seed_002_hybrid_route_prefers_the_higher_priority_number() {
    let (mock, gw) = start();
    // cloud-fallback (priority 2) is preferred; its endpoint is down in the demo, so the request
    // falls back to the self-hosted instance.
    let m = models(&gw, "/hybrid", 2);
    assert_eq!(m, vec!["meta-llama/Llama-3.1-8B-Instruct"; 2]);
    assert_eq!(
        mock.last()["headers"]["authorization"],
        "Bearer placeholder"
    );
}

#[test]
fn seed_003_load_balancing_priority_max_tokens_embeddings() {
    let (mock, gw) = start();
    let m = models(&gw, "/multi/lb", 10);
    assert_eq!(
        (count(&m, "gpt-4"), count(&m, "deepseek-chat")),
        (8, 2),
        "{m:?}"
    );

    // Priority 1 serves while its quota lasts (the mock's default answers are small).
    assert_eq!(models(&gw, "/multi/priority", 2), vec!["gpt-4"; 2]);

    for _ in 0..2 {
        let r = gw.chat(
            "/multi/max-tokens",
            &json!({"messages": [{ "role": "user", "content": "Explain Newtons law" }]}),
        );
        let sent = sent_body(&mock);
        let want = if r.json()["model"] == "gpt-4" {
            50
        } else {
            100
        };
        assert_eq!(sent["max_tokens"], want);
    }

    let paths: Vec<String> = (0..2)
        .map(|_| {
            let r = gw.chat("/multi/embeddings", &json!({"input": "hello world"}));
            assert_eq!(r.json()["object"], "list");
            mock.last()["path"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(paths.contains(&"/v1/embeddings".to_string()), "{paths:?}");
    assert!(
        paths.iter().any(|p| p.starts_with("/openai/deployments/")),
        "{paths:?}"
    );
}

#[test]
fn seed_003_health_checks() {
    let (mock, gw) = start();
    assert_eq!(count(&models(&gw, "/multi/health", 4), "model-2"), 2);
    mock.set(json!({"health_status": 500}));
    // A healthy instance is probed every healthy.interval (2 s): three failed probes take up to
    // about 6 s, then only llm-instance-1 serves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(9);
    loop {
        let m = models(&gw, "/multi/health", 4);
        if m == vec!["model-1"; 4] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "instance 2 still serving: {m:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// The seed's answer: 23 prompt + 8 completion = 31 tokens, over the 10-token quotas.
fn seed_usage(mock: &Mock) {
    mock.set(json!({"prompt_tokens": 23, "completion_tokens": 8}));
}

fn ask_as(gw: &Gateway, path: &str, key: &str) -> Resp {
    gw.chat_with(
        path,
        &[("apikey", key)],
        &json!({"messages": [
            { "role": "system", "content": "You are a mathematician" },
            { "role": "user", "content": "What is 1+1?" }
        ]}),
    )
}

fn model_of(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["model"].as_str().unwrap().to_string()
}

#[test]
fn seed_003_instance_priority_and_rate_limiting() {
    let (mock, gw) = start();
    seed_usage(&mock);
    let r = gw.chat(
        "/multi/priority",
        &json!({"messages": [
            { "role": "system", "content": "You are a mathematician" },
            { "role": "user", "content": "What is 1+1?" }
        ]}),
    );
    assert_eq!(model_of(&r), "gpt-4");
    assert_eq!(r.header("x-ai-ratelimit-limit-openai-instance"), Some("10"));
    // 31 tokens spent a 10-token quota: within the minute, DeepSeek serves.
    assert_eq!(models(&gw, "/multi/priority", 3), vec!["deepseek-chat"; 3]);
}

#[test]
fn seed_003_load_balance_and_rate_limit_by_consumers() {
    let (mock, gw) = start();
    seed_usage(&mock);
    let no_key = gw.chat(
        "/multi/consumers",
        &json!({"messages": [{ "role": "user", "content": "What is 1+1?" }]}),
    );
    assert_eq!(no_key.status, 401, "{}", no_key.text());

    // The two instances take turns. Once openai-instance has served johndoe, his 10 tokens there
    // are spent: all his requests in the minute go to deepseek-instance.
    let john = |_| model_of(&ask_as(&gw, "/multi/consumers", "john-key"));
    let before: Vec<String> = (0..2).map(john).collect();
    assert!(before.contains(&"gpt-4".to_string()), "{before:?}");
    assert_eq!(
        (0..4).map(john).collect::<Vec<_>>(),
        vec!["deepseek-chat"; 4]
    );

    // janedoe's quota is her own, on deepseek-instance: johndoe's spending does not touch it, and
    // once deepseek-instance has served her, she goes to openai-instance.
    let jane = |_| model_of(&ask_as(&gw, "/multi/consumers", "jane-key"));
    let mut seen = Vec::new();
    while !seen.contains(&"deepseek-chat".to_string()) {
        assert!(
            seen.len() < 4,
            "deepseek-instance never served janedoe: {seen:?}"
        );
        seen.push(jane(0));
    }
    assert_eq!((0..4).map(jane).collect::<Vec<_>>(), vec!["gpt-4"; 4]);
}
