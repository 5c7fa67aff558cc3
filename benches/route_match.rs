//! Route lookup cost with 1,000 APISIX-style routes:
//! 500 exact uris (`/v1/team-N/chat/completions`), 400 prefixes of depth
//! 1..=5, and 100 routes on the shared AI endpoints that carry hosts and/or
//! vars (header and query-argument rules).
//!
//! A second group, `route_match_post_arg`, routes by the JSON body: the same 1,000 routes plus
//! eight candidates on `/ai/chat/completions` that differ by `post_arg.model` (and a ninth that
//! reads `post_arg.metadata.tenant`), against a short chat body, a 1 MiB conversation and a body
//! whose `model` is a 256 KiB array (the memory-amplification shape; no route matches it).
//!
//! Run: `cargo bench --bench route_match` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use aigate::llm::request::LlmRequest;
use aigate::proxy::request::BodyArgs;
use aigate::router::vars::{Expr, PostArgs};
use aigate::router::{MatchMode, RequestView, RouteEntry, Router};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use serde_json::json;

fn entry(id: usize, uri: String) -> RouteEntry {
    RouteEntry {
        id,
        uris: vec![uri],
        methods: None,
        hosts: Vec::new(),
        remote_addrs: Vec::new(),
        vars: None,
        priority: 0,
    }
}

fn routes() -> Vec<RouteEntry> {
    let mut out = Vec::with_capacity(1000);
    // 500 exact, POST only like real chat endpoints.
    for n in 0..500 {
        let mut e = entry(out.len(), format!("/v1/team-{n}/chat/completions"));
        e.methods = Some(vec!["POST".into()]);
        out.push(e);
    }
    // 400 prefixes of varying depth: /org-K/*, /org-K/l1-i/*, ... up to 5 levels.
    for i in 0..400 {
        let depth = 1 + i % 5;
        let mut uri = format!("/org-{}", i % 40);
        for d in 1..depth {
            uri.push_str(&format!("/l{d}-{i}"));
        }
        uri.push_str("/*");
        out.push(entry(out.len(), uri));
    }
    // 100 routes with hosts and/or vars on the shared endpoints.
    for i in 0..100 {
        let uri = if i % 2 == 0 {
            "/v1/chat/completions"
        } else {
            "/v1/embeddings"
        };
        let mut e = entry(out.len(), uri.to_string());
        if i % 4 < 2 {
            e.hosts = vec![format!("tenant-{i}.example.com")];
        }
        let vars = match i % 3 {
            0 => Some(json!([["http_x_api_key", "==", format!("key-{i}")]])),
            1 => Some(json!([
                ["arg_model", "==", format!("model-{i}")],
                ["http_x_region", "~~", "^eu-"]
            ])),
            _ if e.hosts.is_empty() => {
                Some(json!([["http_x_team", "in", [format!("t{i}"), "ops"]]]))
            }
            _ => None,
        };
        e.vars = vars.map(|v| Expr::compile(&v).expect("bench vars compile"));
        out.push(e);
    }
    out
}

struct Req {
    method: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    host: Option<&'static str>,
    headers: HeaderMap,
}

impl Req {
    fn new(method: &'static str, path: &'static str) -> Req {
        Req {
            method,
            path,
            query: None,
            host: Some("api.example.com"),
            headers: HeaderMap::new(),
        }
    }

    fn view(&self) -> RequestView<'_> {
        self.view_body(None)
    }

    fn view_body<'a>(&'a self, body: Option<&'a dyn PostArgs>) -> RequestView<'a> {
        RequestView {
            consumer: None,
            method: self.method,
            path: self.path,
            query: self.query,
            host: self.host,
            headers: &self.headers,
            remote_addr: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
            scheme: "https",
            server_port: 443,
            body,
        }
    }
}

/// `routes()` plus the model-routed candidates on `/ai/chat/completions`: eight
/// `post_arg.model == "model-K"` routes, then one on `post_arg.metadata.tenant`.
fn post_arg_routes() -> Vec<RouteEntry> {
    let mut out = routes();
    for k in 0..8 {
        let mut e = entry(out.len(), "/ai/chat/completions".to_string());
        e.methods = Some(vec!["POST".into()]);
        e.vars = Some(
            Expr::compile(&json!([["post_arg.model", "==", format!("model-{k}")]]))
                .expect("bench vars compile"),
        );
        out.push(e);
    }
    let mut e = entry(out.len(), "/ai/chat/completions".to_string());
    e.vars = Some(
        Expr::compile(&json!([["post_arg.metadata.tenant", "==", "ops"]]))
            .expect("bench vars compile"),
    );
    out.push(e);
    out
}

fn parsed(v: serde_json::Value) -> LlmRequest {
    LlmRequest::parse(Bytes::from(v.to_string())).expect("bench body parses")
}

fn bench_post_arg(c: &mut Criterion) {
    let router = Router::new(post_arg_routes()).expect("bench routes build");
    let req = Req::new("POST", "/ai/chat/completions");

    // A realistic chat request for the seventh candidate.
    let chat = parsed(json!({
        "model": "model-6",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}
        ],
        "temperature": 0.7,
        "metadata": {"tenant": "ops"}
    }));
    // A 1 MiB conversation, model last.
    let turns: Vec<serde_json::Value> = (0..1024)
        .map(|i| {
            json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
                   "content": "x".repeat(1000)})
        })
        .collect();
    let large = parsed(json!({"messages": turns, "model": "model-6"}));
    // `model` a 256 KiB array of small strings: no candidate matches.
    let items: Vec<String> = (0..32 * 1024)
        .map(|i| format!("m{:04}", i % 10_000))
        .collect();
    let array = parsed(json!({"model": items, "messages": [{"role": "user", "content": "hi"}]}));

    let find = |body: &LlmRequest| {
        let args = BodyArgs(body);
        router.find(&req.view_body(Some(&args)))
    };
    assert_eq!(find(&chat), Some(1006));
    assert_eq!(find(&large), Some(1006));
    assert_eq!(find(&array), None);

    let mut g = c.benchmark_group("route_match_post_arg");
    g.bench_function("chat_body", |b| b.iter(|| find(black_box(&chat))));
    g.bench_function("large_conversation_1mib", |b| {
        b.iter(|| find(black_box(&large)))
    });
    g.sample_size(10);
    g.bench_function("model_array_256kib", |b| b.iter(|| find(black_box(&array))));
    g.finish();
}

fn bench(c: &mut Criterion) {
    let router = Router::new(routes()).expect("bench routes build");
    let host_uri = Router::with_mode(routes(), MatchMode::HostUri).expect("bench routes build");

    let exact = Req::new("POST", "/v1/team-417/chat/completions");
    // Deepest prefix (/org-4/l1-204/l2-204/l3-204/l4-204/*) plus a tail.
    let deep = Req::new(
        "GET",
        "/org-4/l1-204/l2-204/l3-204/l4-204/models/gpt-4o/versions",
    );
    // The 48th candidate on /v1/chat/completions; every earlier one is
    // checked (hosts and vars) and fails first.
    let mut vars = Req::new("POST", "/v1/chat/completions");
    vars.query = Some("model=model-94&stream=true");
    vars.headers
        .insert("x-region", HeaderValue::from_static("eu-west-1"));
    let miss = Req::new("GET", "/nothing/here/at/all");
    // A host route: tenant-96 is the last hosted route on that uri.
    let mut host = Req::new("POST", "/v1/chat/completions");
    host.host = Some("Tenant-96.example.com:443");
    host.headers
        .insert("x-api-key", HeaderValue::from_static("key-96"));

    // Sanity: the scenarios hit what they claim.
    assert_eq!(router.find(&exact.view()), Some(417));
    assert_eq!(router.find(&deep.view()), Some(704));
    assert_eq!(router.find(&vars.view()), Some(994));
    assert_eq!(router.find(&miss.view()), None);
    assert_eq!(router.find(&host.view()), Some(996));
    assert_eq!(host_uri.find(&host.view()), Some(996));

    let mut g = c.benchmark_group("route_match");
    g.bench_function("exact_hit", |b| {
        b.iter(|| router.find(black_box(&exact.view())))
    });
    g.bench_function("deep_prefix_hit", |b| {
        b.iter(|| router.find(black_box(&deep.view())))
    });
    g.bench_function("vars_hit", |b| {
        b.iter(|| router.find(black_box(&vars.view())))
    });
    g.bench_function("miss", |b| b.iter(|| router.find(black_box(&miss.view()))));
    g.bench_function("host_vars_hit", |b| {
        b.iter(|| router.find(black_box(&host.view())))
    });
    g.bench_function("host_vars_hit_host_uri_mode", |b| {
        b.iter(|| host_uri.find(black_box(&host.view())))
    });
    g.bench_function("needs_body_exact", |b| {
        b.iter(|| router.needs_body(black_box(&exact.view())))
    });
    g.finish();
}

/// The lookup does not grow with the number of routes: N exact routes plus N/2 prefixes, for
/// N = 10 and N = 10,000, looking up the last exact route and a prefix.
fn bench_scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match_scale");
    for n in [10usize, 10_000] {
        let mut entries = Vec::with_capacity(n + n / 2);
        for i in 0..n {
            entries.push(entry(
                entries.len(),
                format!("/v1/team-{i}/chat/completions"),
            ));
        }
        for i in 0..n / 2 {
            entries.push(entry(entries.len(), format!("/org-{i}/l1-{i}/*")));
        }
        let router = Router::new(entries).expect("bench routes build");
        // `Req` borrows its path for the whole run.
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let exact = Req::new("POST", leak(format!("/v1/team-{}/chat/completions", n - 1)));
        let prefix = Req::new(
            "GET",
            leak(format!("/org-{}/l1-{}/models", n / 2 - 1, n / 2 - 1)),
        );
        assert_eq!(router.find(&exact.view()), Some(n - 1));
        assert_eq!(router.find(&prefix.view()), Some(n + n / 2 - 1));
        g.bench_function(format!("exact_{n}_routes"), |b| {
            b.iter(|| router.find(black_box(&exact.view())))
        });
        g.bench_function(format!("prefix_{n}_routes"), |b| {
            b.iter(|| router.find(black_box(&prefix.view())))
        });
    }
    g.finish();
}

criterion_group!(benches, bench, bench_post_arg, bench_scale);
criterion_main!(benches);
