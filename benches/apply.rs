//! Applying one configuration change with 10,000 routes loaded: a route's model changes and
//! `Store::apply` checks it, compiles it, reuses the 9,999 other compiled routes, rebuilds the
//! router index and swaps the snapshot. It must not rebuild the world.

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

use aigate::resources::{Change, Kind, Resources};
use aigate::runtime::Store;

const N: usize = 10_000;

fn route(i: usize, model: &str) -> serde_json::Value {
    json!({
        "uri": format!("/r{i}/chat"),
        "methods": ["POST"],
        "plugins": {"ai-proxy": {
            "provider": "openai",
            "auth": {"header": {"Authorization": "Bearer sk-bench"}},
            "options": {"model": model}
        }}
    })
}

fn bench(c: &mut Criterion) {
    let mut resources = Resources::default();
    for i in 0..N {
        resources
            .apply(Change::Put {
                kind: Kind::Routes,
                id: i.to_string(),
                value: route(i, "gpt-4o"),
            })
            .unwrap();
    }
    let started = std::time::Instant::now();
    let store = Store::new(resources).unwrap();
    eprintln!("compiling {N} routes from scratch: {:?}", started.elapsed());
    assert_eq!(store.load().routes.len(), N);

    let mut g = c.benchmark_group("apply");
    g.sample_size(20);
    let mut v = 0u64;
    g.bench_function("one_route_changed_of_10000", |b| {
        b.iter(|| {
            v += 1;
            store
                .apply(
                    vec![Change::Put {
                        kind: Kind::Routes,
                        id: "5000".into(),
                        value: route(5000, &format!("m{v}")),
                    }],
                    |_| Ok(()),
                )
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
