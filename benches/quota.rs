//! ai-rate-limiting's local quota path: a reservation at admission plus its settlement when the
//! answer ends, for one hot key, for many instance keys (exact counters) and for many rule keys
//! (the shared sketch); through the `QuotaStore` trait (boxed future) as the plugin calls it; two
//! threads on one key; and `cost_expr` over a raw usage object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use aigate::quota::expr::CostExpr;
use aigate::quota::local::LocalStore;
use aigate::quota::{Admission, Limit, QuotaStore};

// Never reached: every reservation is settled, so the window's count stays near zero.
const LIMIT: Limit = Limit {
    count: 1 << 40,
    window: Duration::from_secs(60),
};

fn reserve_settle(s: &LocalStore, key: &str) {
    match s.reserve_sync(key, LIMIT, 264) {
        Admission::Admitted { ticket, .. } => s.settle(ticket, 57),
        Admission::Rejected { .. } => unreachable!(),
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("quota_local_reserve_settle");
    let exact = LocalStore::exact();
    let key = "ai-rate-limiting/route/chat/instance/openai-instance";
    g.bench_function("exact_one_key", |b| {
        b.iter(|| reserve_settle(&exact, black_box(key)))
    });

    let keys: Vec<String> = (0..1000)
        .map(|i| format!("ai-rate-limiting/route/route-{i}/global"))
        .collect();
    let mut i = 0;
    g.bench_function("exact_1000_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            reserve_settle(&exact, &keys[i])
        })
    });

    let sketch = LocalStore::sketch();
    let users: Vec<String> = (0..10_000)
        .map(|i| format!("ai-rate-limiting/route/chat/rule/user/user-{i}"))
        .collect();
    g.bench_function("sketch_10000_rule_keys", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            reserve_settle(&sketch, &users[i])
        })
    });

    let dyn_store: Arc<dyn QuotaStore> = Arc::new(LocalStore::exact());
    g.bench_function("trait_exact_one_key", |b| {
        b.iter(|| {
            let a = futures::executor::block_on(dyn_store.reserve(black_box(key), LIMIT, 264));
            if let Ok(Admission::Admitted { ticket, .. }) = a {
                dyn_store.settle(ticket, 57);
            }
        })
    });

    // Two threads on one key: the same atomic counters from two cores, no lock.
    let shared = Arc::new(LocalStore::exact());
    g.bench_function("exact_one_key_2_threads_per_op", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|sc| {
                for _ in 0..2 {
                    let s = shared.clone();
                    sc.spawn(move || {
                        for _ in 0..iters {
                            reserve_settle(&s, key);
                        }
                    });
                }
            });
            start.elapsed() / 2
        })
    });
    g.finish();

    let e = CostExpr::parse("prompt_tokens - cached_tokens + 2 * completion_tokens").unwrap();
    let raw = br#"{"prompt_tokens":1117,"completion_tokens":46,"total_tokens":1163,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"accepted_prediction_tokens":0}}"#;
    c.bench_function("cost_expr_over_openai_usage", |b| {
        b.iter(|| black_box(e.cost_of_usage(black_box(raw))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
