//! The plugin chain's own cost per request, as the proxy glue runs it: rewrite (key-auth), the
//! consumer's plugins merged over the route's, access (ai-proxy takes the parsed body),
//! before_attempt (ai-rate-limiting reserves), header_filter (quota headers), answer_end (the
//! reservation settled with the real usage) and log. Compared: ai-proxy alone, and key-auth +
//! ai-rate-limiting + ai-proxy with the quota on the route and on the consumer. The network and
//! routing are left out; the body is parsed in all three (the same parse the glue does once).
//! Then the same two routes with `gateway.metrics` on (the `prometheus` plugin bound to each
//! route, recording its series in the log phase): the metrics' own cost per request.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora_http::{RequestHeader, ResponseHeader};

use aigate::llm::request::LlmRequest;
use aigate::llm::usage::Usage;
use aigate::plugins::{PluginCtx, PluginRequest};
use aigate::runtime::Snapshot;

const CONFIG: &str = r#"
routes:
  - id: plain
    uri: /plain
    plugins:
      ai-proxy:
        provider: openai
        auth: { header: { Authorization: "Bearer sk-provider" } }
        options: { model: gpt-4o-mini }
  - id: chain
    uri: /chain
    plugins:
      key-auth: {}
      ai-rate-limiting: { limit: 1000000000000, time_window: 60 }
      ai-proxy:
        provider: openai
        auth: { header: { Authorization: "Bearer sk-provider" } }
        options: { model: gpt-4o-mini }
consumers:
  - username: jack
    plugins:
      key-auth: { key: jack-key-0123456789abcdef }
  - username: jill
    plugins:
      key-auth: { key: jill-key-0123456789abcdef }
      ai-rate-limiting: { limit: 1000000000000, time_window: 60 }
"#;

const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"What is 1+1?"}],"max_tokens":16}"#;

/// One request through every phase of `route`'s chain, with `key` in `apikey`.
async fn one(snapshot: &Snapshot, route: usize, key: Option<&str>) {
    let route = &snapshot.routes[route];
    let mut header = RequestHeader::build("POST", b"/chat", None).unwrap();
    header
        .insert_header("content-type", "application/json")
        .unwrap();
    if let Some(k) = key {
        header.insert_header("apikey", k).unwrap();
    }
    let mut ctx = PluginCtx {
        chain: Some(route.chain.clone()),
        route_id: Some(route.id.clone()),
        ..Default::default()
    };
    let mut chain = route.chain.clone();
    let mut req = PluginRequest {
        header: &mut header,
        client_ip: None,
        server_port: 9080,
        body: None,
        consumers: &snapshot.consumers,
        to_provider: true,
    };
    chain.rewrite(&mut req, &mut ctx).await.unwrap();
    if let Some(c) = ctx.consumer.as_ref().filter(|c| !c.plugins.is_empty()) {
        chain = Arc::new(chain.with_consumer(&c.plugins));
        ctx.chain = Some(chain.clone());
    }
    req.body = Some(LlmRequest::parse(Bytes::from_static(BODY.as_bytes())).unwrap());
    chain.access(&mut req, &mut ctx).await.unwrap();
    chain.before_attempt(&mut ctx).await.unwrap();
    let mut resp = ResponseHeader::build(200, None).unwrap();
    chain.header_filter(&mut resp, &mut ctx);
    ctx.outcome.status = 200;
    ctx.outcome.total = std::time::Duration::from_micros(900);
    ctx.outcome.upstream = Some(std::time::Duration::from_micros(800));
    ctx.llm.as_mut().unwrap().usage = Some(Usage {
        prompt_tokens: 23,
        completion_tokens: 8,
        total_tokens: 31,
    });
    chain.answer_end(&mut ctx);
    chain.log(&mut ctx).await;
    black_box(&resp);
}

fn bench(c: &mut Criterion) {
    let loaded = aigate::config::parse_str(CONFIG, &|_| None).unwrap();
    let snapshot = Snapshot::build(&loaded.file).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let chain_len = |i: usize| snapshot.routes[i].chain.plugins().len();
    assert_eq!((chain_len(0), chain_len(1)), (1, 3));

    let mut g = c.benchmark_group("plugin_chain");
    g.bench_function("ai_proxy_alone", |b| {
        b.iter(|| rt.block_on(one(&snapshot, 0, None)))
    });
    g.bench_function("key_auth_rate_limiting_ai_proxy", |b| {
        b.iter(|| rt.block_on(one(&snapshot, 1, Some("jack-key-0123456789abcdef"))))
    });
    g.bench_function("same_with_the_consumers_own_quota", |b| {
        b.iter(|| rt.block_on(one(&snapshot, 1, Some("jill-key-0123456789abcdef"))))
    });
    g.finish();

    // From here on every compiled route is measured, as with `gateway.metrics` set.
    aigate::observability::metrics::init(aigate::observability::metrics::MetricsSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        prefix: "aigate_".into(),
        max_model_labels: 100,
    })
    .unwrap();
    let measured = Snapshot::build(&loaded.file).unwrap();
    assert_eq!(measured.routes[1].chain.plugins().len(), 4);
    let mut g = c.benchmark_group("plugin_chain_with_metrics");
    g.bench_function("ai_proxy_alone", |b| {
        b.iter(|| rt.block_on(one(&measured, 0, None)))
    });
    g.bench_function("key_auth_rate_limiting_ai_proxy", |b| {
        b.iter(|| rt.block_on(one(&measured, 1, Some("jack-key-0123456789abcdef"))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
