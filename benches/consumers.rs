//! key-auth's consumer lookup: one SHA-256 of the presented key and a hash-map probe, so the
//! cost should not change between 10 and 10,000 consumers.

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use aigate::plugins::consumer::{Consumer, Consumers};

fn consumers(n: usize) -> Consumers {
    let mut c = Consumers::default();
    for i in 0..n {
        let consumer = Arc::new(Consumer {
            username: format!("user-{i}"),
            desc: None,
            labels: BTreeMap::new(),
            plugins: Vec::new(),
        });
        c.add_key(
            &format!("sk-consumer-key-{i:08}-0123456789abcdef"),
            &consumer,
        )
        .unwrap();
    }
    c
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_auth_lookup");
    for n in [10, 10_000] {
        let index = consumers(n);
        let hit = format!("sk-consumer-key-{:08}-0123456789abcdef", n / 2);
        g.bench_with_input(BenchmarkId::new("hit", n), &hit, |b, k| {
            b.iter(|| criterion::black_box(index.by_key(k.as_bytes()).is_some()))
        });
        let miss = "sk-consumer-key-99999999-0123456789abcdef";
        g.bench_with_input(BenchmarkId::new("miss", n), &miss, |b, k| {
            b.iter(|| criterion::black_box(index.by_key(k.as_bytes()).is_some()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
