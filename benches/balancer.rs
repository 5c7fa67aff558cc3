//! Instance selection for ai-proxy-multi: 100 instances in 3 priority tiers, smooth weighted
//! round robin and consistent hashing, with every instance usable and with the top tier down
//! (so each pick walks to the next tier).

use criterion::{criterion_group, criterion_main, Criterion};

use aigate::balancer::tiered::{Algorithm, Member, TieredBalancer};

fn members() -> Vec<Member> {
    (0..100)
        .map(|i| Member {
            name: format!("instance-{i}"),
            priority: [10, 5, 0][i % 3],
            weight: 1 + (i % 7) as u32,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let m = members();
    let top_tier_down = |i: usize| !i.is_multiple_of(3);
    let mut g = c.benchmark_group("balancer_100_instances_3_tiers");

    let rr = TieredBalancer::new(&m, Algorithm::RoundRobin);
    g.bench_function("roundrobin_all_healthy", |b| {
        b.iter(|| criterion::black_box(rr.pick(None, |_| true)))
    });
    g.bench_function("roundrobin_top_tier_down", |b| {
        b.iter(|| criterion::black_box(rr.pick(None, top_tier_down)))
    });

    let ch = TieredBalancer::new(&m, Algorithm::Chash);
    let keys: Vec<String> = (0..1024).map(|i| format!("user-{i}")).collect();
    let mut k = 0usize;
    g.bench_function("chash_all_healthy", |b| {
        b.iter(|| {
            k = (k + 1) % keys.len();
            criterion::black_box(ch.pick(Some(keys[k].as_bytes()), |_| true))
        })
    });
    g.bench_function("chash_top_tier_down", |b| {
        b.iter(|| {
            k = (k + 1) % keys.len();
            criterion::black_box(ch.pick(Some(keys[k].as_bytes()), top_tier_down))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
