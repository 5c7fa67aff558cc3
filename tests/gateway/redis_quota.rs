//! The Redis quota store against a real `redis-server` over TCP: several stores (standing for
//! several gateway nodes) sharing one quota, settling, Redis killed, restarted and hung, with
//! and without `allow_degradation`, Redis Cluster, and the password kept out of errors and logs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aigate::quota::degrade::DegradingStore;
use aigate::quota::redis::{RedisFields, RedisPolicy, RedisSettings, RedisStore};
use aigate::quota::{Admission, Limit, Quota, QuotaStore, Ticket};

use crate::redis_server::{
    all_logs, capture_logs, logs_with, MemStore, RedisCluster, RedisServer, Silent,
};

/// `redis_timeout` in these tests.
const TIMEOUT_MS: i64 = 400;
/// What a bounded call may take beyond `redis_timeout` on a busy 2-core machine.
const MARGIN: Duration = Duration::from_millis(600);

/// A window so long (about 100 years, aligned to Unix time like every window) that no test
/// crosses its boundary: its index is 0 until 2070.
const LONG: Duration = Duration::from_secs(100 * 365 * 86_400);

fn bound() -> Duration {
    Duration::from_millis(TIMEOUT_MS as u64) + MARGIN
}

fn limit(count: u64, window: Duration) -> Limit {
    Limit { count, window }
}

fn unique_key(name: &str) -> String {
    format!("{name}-{}", fastrand::u64(..))
}

/// The settings a plugin config `{policy: redis, redis_host: 127.0.0.1, redis_port: PORT,
/// redis_timeout: 400}` turns into, changed by `edit`.
fn settings(port: u16, edit: impl FnOnce(&mut RedisFields)) -> RedisSettings {
    let mut f = RedisFields {
        redis_host: Some("127.0.0.1".into()),
        redis_port: Some(port.into()),
        redis_timeout: Some(TIMEOUT_MS),
        ..Default::default()
    };
    edit(&mut f);
    RedisSettings::new(RedisPolicy::Redis, f).unwrap()
}

fn store(port: u16) -> RedisStore {
    RedisStore::new(settings(port, |_| {})).unwrap()
}

fn admitted(a: Admission) -> (Quota, Ticket) {
    match a {
        Admission::Admitted { quota, ticket } => (quota, ticket),
        Admission::Rejected { quota } => panic!("rejected: {quota:?}"),
    }
}

fn rejected(a: Admission) -> Quota {
    match a {
        Admission::Rejected { quota } => quota,
        Admission::Admitted { quota, .. } => panic!("admitted: {quota:?}"),
    }
}

#[tokio::test]
async fn two_nodes_on_one_redis_share_one_quota_exactly() {
    let redis = RedisServer::start();
    let (a, b) = (store(redis.port), store(redis.port));
    let key = unique_key("shared");
    let l = limit(100, LONG);

    let (q, t1) = admitted(a.reserve(&key, l, 30).await.unwrap());
    assert_eq!((q.limit, q.remaining), (100, 70));
    assert_eq!((t1.reserved, t1.window), (30, 0));
    // B sees A's reservation.
    let (q, _) = admitted(b.reserve(&key, l, 30).await.unwrap());
    assert_eq!(q.remaining, 40);
    assert!(!b.spent(&key, l).await.unwrap());
    // Admitted while the count is below the limit, even past it (by at most this amount).
    let (q, _) = admitted(a.reserve(&key, l, 50).await.unwrap());
    assert_eq!(q.remaining, 0);
    let q = rejected(b.reserve(&key, l, 1).await.unwrap());
    assert_eq!((q.limit, q.remaining), (100, 0));
    assert!(a.spent(&key, l).await.unwrap());
    assert!(b.spent(&key, l).await.unwrap());
    // The counter in Redis, under the documented name, with its TTL: the window's end + 1 s.
    let redis_key = format!("aigate:quota:{{{key}}}:0");
    assert_eq!(redis.counter(&redis_key), 110);
    let pttl: i64 = redis.command(&["PTTL", &redis_key]);
    assert!(pttl > 0, "{pttl}");
    // Windows are aligned to Unix time: this one ends LONG after 1970.
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let expected = LONG - since_epoch;
    let off = q.reset.abs_diff(expected);
    assert!(
        off < Duration::from_secs(5),
        "{:?} vs {expected:?}",
        q.reset
    );

    // A settles its first request at 5 tokens: B sees the room it made once A's connection
    // has delivered it (A's next call, queued after the settle, has been answered).
    a.settle(t1, 5);
    assert!(!a.spent(&key, l).await.unwrap());
    let (q, _) = admitted(b.reserve(&key, l, 10).await.unwrap());
    assert_eq!(q.remaining, 5);
    assert_eq!(redis.counter(&redis_key), 95);

    // Different keys are different quotas.
    let other = unique_key("other");
    let (q, _) = admitted(b.reserve(&other, l, 1).await.unwrap());
    assert_eq!(q.remaining, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_pass_the_limit_by_at_most_one_amount() {
    let redis = RedisServer::start();
    let nodes = [store(redis.port), store(redis.port)];
    let key = unique_key("concurrent");
    let l = limit(100, LONG);
    // Both connections are up before the race starts.
    for n in &nodes {
        n.ping().await.unwrap();
    }
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (store, key) = (nodes[i % 2].clone(), key.clone());
            tokio::spawn(async move { store.reserve(&key, l, 7).await.unwrap() })
        })
        .collect();
    let mut n_admitted = 0;
    for t in tasks {
        if let Admission::Admitted { .. } = t.await.unwrap() {
            n_admitted += 1;
        }
    }
    // Admission needs the count below 100: 14 × 7 = 98 lets a 15th in (105), and nothing after.
    assert_eq!(n_admitted, 15);
    assert_eq!(redis.counter(&format!("aigate:quota:{{{key}}}:0")), 105);
}

#[tokio::test]
async fn a_settle_is_seen_by_the_next_reserve_in_the_same_window() {
    let redis = RedisServer::start();
    let a = store(redis.port);
    let l = limit(100, LONG);
    // On this single-threaded runtime a settle merely spawned would run only after the next
    // reserve was sent (and that reserve would be rejected); it is queued on the connection
    // before `settle` returns, so the reserve that follows finds the quota settled. Repeated, so
    // that a race could not pass by luck.
    for i in 0..20 {
        let key = unique_key("settle");
        let (_, t) = admitted(a.reserve(&key, l, 100).await.unwrap());
        a.settle(t, 10);
        let (q, t) = admitted(a.reserve(&key, l, 50).await.unwrap());
        assert_eq!(q.remaining, 40, "round {i}");
        // Settling to 0 releases a reservation.
        a.settle(t, 0);
        let (q, t) = admitted(a.reserve(&key, l, 80).await.unwrap());
        assert_eq!(q.remaining, 10, "round {i}");
        // A settle above the reservation charges the difference.
        a.settle(t, 90);
        let q = rejected(a.reserve(&key, l, 1).await.unwrap());
        assert_eq!(q.remaining, 0, "round {i}");
        assert_eq!(redis.counter(&format!("aigate:quota:{{{key}}}:0")), 100);
    }
}

#[tokio::test]
async fn a_settle_after_the_window_rolled_over_charges_the_current_window() {
    let redis = RedisServer::start();
    let a = store(redis.port);
    let key = unique_key("rollover");
    let w = Duration::from_secs(2);
    let l = limit(100, w);
    // Start early in a window, so that the next one is still current when we check it.
    let (q, t) = admitted(a.reserve(&key, l, 0).await.unwrap());
    a.settle(t, 0);
    tokio::time::sleep(q.reset + Duration::from_millis(20)).await;

    let (q, t) = admitted(a.reserve(&key, l, 80).await.unwrap());
    assert_eq!(q.remaining, 20);
    assert!(q.reset <= w);
    let first = t.window;
    let first_key = format!("aigate:quota:{{{key}}}:{first}");
    assert_eq!(redis.counter(&first_key), 80);
    // The key lives a little longer than its window: to its end plus 1 s.
    let pttl: i64 = redis.command(&["PTTL", &first_key]);
    assert!(pttl > 0 && pttl <= 3000, "{pttl}");

    tokio::time::sleep(q.reset + Duration::from_millis(20)).await;
    // The request ends in the next window: its 30 tokens count there, and the lapsed
    // reservation is not subtracted from that window.
    a.settle(t, 30);
    let (q, t2) = admitted(a.reserve(&key, l, 1).await.unwrap());
    assert_eq!(t2.window, first + 1);
    assert_eq!(q.remaining, 100 - 31);
    assert_eq!(
        redis.counter(&first_key),
        80,
        "the old window is left alone"
    );
    let second_key = format!("aigate:quota:{{{key}}}:{}", first + 1);
    assert_eq!(redis.counter(&second_key), 31);
}

#[tokio::test]
async fn redis_down_without_degradation_is_an_error_within_the_timeout_and_is_picked_up_again() {
    capture_logs();
    let mut redis = RedisServer::start();
    let (a, b) = (store(redis.port), store(redis.port));
    let key = unique_key("down");
    let l = limit(100, LONG);
    admitted(a.reserve(&key, l, 10).await.unwrap());
    admitted(b.reserve(&key, l, 10).await.unwrap());

    redis.kill();
    for _ in 0..5 {
        for s in [&a, &b] {
            let started = Instant::now();
            let e = s.reserve(&key, l, 10).await.unwrap_err();
            assert!(started.elapsed() < bound(), "{:?}", started.elapsed());
            assert!(e.0.contains(&format!("127.0.0.1:{}", redis.port)), "{e}");
            let started = Instant::now();
            s.spent(&key, l).await.unwrap_err();
            assert!(started.elapsed() < bound(), "{:?}", started.elapsed());
        }
    }
    // Each store logged the outage once, whatever the number of failed calls.
    let label = format!("redis 127.0.0.1:{}", redis.port);
    let down = logs_with(&format!("{label} is unavailable"));
    assert_eq!(down.len(), 2, "{down:#?}");
    assert!(down[0].contains("rejected"), "{}", down[0]);

    // Back on the same port (empty): the same store objects count in it again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.reserve(&key, l, 1).await.is_err() {
        assert!(Instant::now() < deadline, "the store did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admitted(a.reserve(&key, l, 30).await.unwrap());
    let (q, _) = admitted(loop {
        if let Ok(a) = b.reserve(&key, l, 0).await {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the second store did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    assert_eq!(q.remaining, 100 - 31);
    assert_eq!(logs_with(&format!("{label} is available again")).len(), 2);
}

#[tokio::test]
async fn redis_down_with_degradation_counts_locally_logs_once_and_shares_again_when_back() {
    capture_logs();
    let mut redis = RedisServer::start();
    let local = Arc::new(MemStore::default());
    let redis_store =
        RedisStore::new(settings(redis.port, |f| f.allow_degradation = Some(true))).unwrap();
    let store = DegradingStore::new(redis_store.clone(), local.clone());
    let other_node = store_b(&redis);
    let key = unique_key("degrade");
    let redis_key = format!("aigate:quota:{{{key}}}:0");
    let l = limit(100, LONG);

    // Up: counted in Redis, not locally.
    let (_, redis_ticket) = admitted(store.reserve(&key, l, 10).await.unwrap());
    assert_eq!((redis.counter(&redis_key), local.count(&key, &l)), (10, 0));

    redis.kill();
    // Down: admitted by the local store (which enforces the quota on its own), each call within
    // the bound; the calls after the first do not ask Redis.
    let mut local_tickets = Vec::new();
    for i in 0..10 {
        let started = Instant::now();
        let (q, t) = admitted(store.reserve(&key, l, 10).await.unwrap());
        assert!(started.elapsed() < bound(), "{i}: {:?}", started.elapsed());
        assert_eq!(q.remaining, 100 - 10 * (i + 1), "{i}");
        local_tickets.push(t);
    }
    assert_eq!(local.count(&key, &l), 100);
    rejected(store.reserve(&key, l, 10).await.unwrap());
    assert!(store.spent(&key, l).await.unwrap());
    // A settle goes to the store that admitted the request.
    store.settle(local_tickets.pop().unwrap(), 0);
    assert_eq!(local.count(&key, &l), 90);
    // The Redis reservation made before the outage is settled in Redis (it fails now: Redis is
    // down; nothing waits for it).
    store.settle(redis_ticket, 10);

    let label = format!("redis 127.0.0.1:{}", redis.port);
    let down = logs_with(&format!("{label} is unavailable"));
    assert_eq!(down.len(), 1, "{down:#?}");
    assert!(
        down[0].contains("counted by each gateway node"),
        "{}",
        down[0]
    );

    // Back: within a probe interval or so requests are counted in Redis again, shared with the
    // other node, without a new store.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Counted locally (or rejected there) until the probe finds Redis back.
        store.reserve(&key, l, 1).await.unwrap();
        if redis.counter(&redis_key) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never went back to Redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redis.counter(&redis_key), 1);
    let (q, _) = admitted(other_node.reserve(&key, l, 5).await.unwrap());
    assert_eq!(q.remaining, 100 - 6);
    // A local reservation made during the outage is released locally, not in Redis.
    let before = local.count(&key, &l);
    store.settle(local_tickets.pop().unwrap(), 0);
    assert_eq!(local.count(&key, &l), before - 10);
    assert_eq!(redis.counter(&redis_key), 6);
    assert_eq!(logs_with(&format!("{label} is unavailable")).len(), 1);
    assert_eq!(logs_with(&format!("{label} is available again")).len(), 1);
}

fn store_b(redis: &RedisServer) -> RedisStore {
    store(redis.port)
}

#[tokio::test]
async fn a_redis_that_never_answers_is_bounded_by_the_timeout() {
    let silent = Silent::start();
    let s = store(silent.port);
    let key = unique_key("silent");
    let l = limit(100, LONG);
    // The first call waits on the connection's handshake, the later ones on answers.
    for _ in 0..3 {
        let started = Instant::now();
        let e = s.reserve(&key, l, 1).await.unwrap_err();
        let took = started.elapsed();
        assert!(took < bound(), "{took:?}");
        assert!(e.0.contains(&format!("127.0.0.1:{}", silent.port)), "{e}");
        let started = Instant::now();
        s.spent(&key, l).await.unwrap_err();
        assert!(started.elapsed() < bound());
    }
    // Concurrent callers are each bounded too.
    let started = Instant::now();
    let calls = (0..10).map(|_| s.reserve(&key, l, 1));
    for r in futures::future::join_all(calls).await {
        r.unwrap_err();
    }
    assert!(started.elapsed() < bound());

    // With degradation the requests are admitted locally, within the same bound.
    let local = Arc::new(MemStore::default());
    let redis_store =
        RedisStore::new(settings(silent.port, |f| f.allow_degradation = Some(true))).unwrap();
    let store = DegradingStore::new(redis_store, local.clone());
    for _ in 0..3 {
        let started = Instant::now();
        admitted(store.reserve(&key, l, 1).await.unwrap());
        assert!(started.elapsed() < bound());
    }
    assert_eq!(local.count(&key, &l), 3);
}

#[tokio::test]
async fn the_password_is_never_in_an_error_or_a_log_line() {
    capture_logs();
    let right = "correct-horse-battery-4c1d";
    let wrong = "wrong-staple-9f2e";
    let redis = RedisServer::start_with(&["--requirepass", right]);
    let key = unique_key("auth");
    let l = limit(10, LONG);

    let good = RedisStore::new(settings(redis.port, |f| {
        f.redis_password = Some(right.into())
    }))
    .unwrap();
    admitted(good.reserve(&key, l, 1).await.unwrap());
    let count: i64 = redis::cmd("GET")
        .arg(format!("aigate:quota:{{{key}}}:0"))
        .query(&mut redis.client(Some(right)))
        .unwrap();
    assert_eq!(count, 1);

    // No password, a wrong one, a wrong user: refused, and the message says why without it.
    let nopass = store(redis.port);
    let e = nopass.reserve(&key, l, 1).await.unwrap_err();
    assert!(e.0.to_ascii_lowercase().contains("auth"), "{e}");
    let bad = RedisStore::new(settings(redis.port, |f| {
        f.redis_password = Some(wrong.into())
    }))
    .unwrap();
    let e = bad.reserve(&key, l, 1).await.unwrap_err();
    assert!(!e.0.contains(wrong), "{e}");
    assert!(e.0.to_ascii_lowercase().contains("auth"), "{e}");
    let user = RedisStore::new(settings(redis.port, |f| {
        f.redis_username = Some("nobody".into());
        f.redis_password = Some(right.into());
    }))
    .unwrap();
    let e = user.reserve(&key, l, 1).await.unwrap_err();
    assert!(!e.0.contains(right), "{e}");

    // Nor when the server is hung or gone.
    let silent = Silent::start();
    let hung = RedisStore::new(settings(silent.port, |f| {
        f.redis_password = Some(wrong.into())
    }))
    .unwrap();
    let e = hung.reserve(&key, l, 1).await.unwrap_err();
    assert!(!e.0.contains(wrong), "{e}");
    drop(silent);
    let e = hung.ping().await.unwrap_err();
    assert!(!e.0.contains(wrong), "{e}");

    for line in all_logs() {
        assert!(!line.contains(right) && !line.contains(wrong), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_is_one_quota_across_nodes_and_slots() {
    let cluster = RedisCluster::start(2);
    let cluster_store = || {
        RedisStore::new(
            RedisSettings::new(
                RedisPolicy::RedisCluster,
                RedisFields {
                    // One node is enough to find the others.
                    redis_cluster_nodes: Some(vec![cluster.node_list()[1].clone()]),
                    redis_cluster_name: Some("quotas".into()),
                    redis_timeout: Some(TIMEOUT_MS),
                    ..Default::default()
                },
            )
            .unwrap(),
        )
        .unwrap()
    };
    let (a, b) = (cluster_store(), cluster_store());
    assert_eq!(a.label(), "redis-cluster quotas");
    let l = limit(100, LONG);
    // Keys on both nodes: each counter lives on the node that holds its hash tag's slot (the
    // script is routed by its declared key and touches only keys of the same slot).
    let mut on_node = [None, None];
    while on_node.iter().any(Option::is_none) {
        let key = unique_key("cluster");
        let node = cluster.node_of(&format!("aigate:quota:{{{key}}}")).port;
        let i = cluster.nodes.iter().position(|n| n.port == node).unwrap();
        on_node[i].get_or_insert(key);
    }
    for (i, key) in on_node.iter().enumerate() {
        let key = key.as_ref().unwrap();
        let (q, t) = admitted(a.reserve(key, l, 60).await.unwrap());
        assert_eq!(q.remaining, 40);
        let (q, _) = admitted(b.reserve(key, l, 30).await.unwrap());
        assert_eq!(q.remaining, 10);
        // The settle is queued before the next call on the same store, so that call sees it
        // (across stores, only once it has been processed: B asks after A's answer).
        a.settle(t, 20);
        let (q, _) = admitted(a.reserve(key, l, 0).await.unwrap());
        assert_eq!(q.remaining, 50, "the settle was seen");
        let (q, _) = admitted(b.reserve(key, l, 0).await.unwrap());
        assert_eq!(q.remaining, 50);
        assert!(!a.spent(key, l).await.unwrap());
        admitted(b.reserve(key, l, 60).await.unwrap());
        assert!(a.spent(key, l).await.unwrap());
        rejected(a.reserve(key, l, 1).await.unwrap());
        let windowed = format!("aigate:quota:{{{key}}}:0");
        assert_eq!(cluster.nodes[i].counter(&windowed), 110, "node {i}");
    }
}

#[tokio::test]
async fn redis_ssl_verifies_the_server_against_the_ca_unless_told_not_to() {
    let pki = crate::tls::Pki::new();
    let (cert, key) = pki.leaf("redis", &["127.0.0.1", "localhost"]);
    let redis = RedisServer::start_tls(&cert, &key);
    let ca = std::fs::read(&pki.ca_file).unwrap();
    let l = limit(10, LONG);
    let tls_store = |verify: Option<bool>, ca: Option<Vec<u8>>| {
        let mut s = settings(redis.port, |f| {
            f.redis_ssl = Some(true);
            f.redis_ssl_verify = verify;
        });
        s.tls.as_mut().unwrap().root_ca_pem = ca;
        RedisStore::new(s).unwrap()
    };

    // Trusted through the CA (as `server.ca_file` would give it), names checked.
    let key = unique_key("tls");
    let (q, _) = admitted(tls_store(None, Some(ca)).reserve(&key, l, 4).await.unwrap());
    assert_eq!(q.remaining, 6);
    // Verified by default, and the platform's roots do not know this CA: refused, in time.
    let started = Instant::now();
    let e = tls_store(None, None).reserve(&key, l, 1).await.unwrap_err();
    assert!(started.elapsed() < bound());
    assert!(e.0.to_ascii_lowercase().contains("certificate"), "{e}");
    // redis_ssl_verify: false accepts it.
    let (q, _) = admitted(
        tls_store(Some(false), None)
            .reserve(&key, l, 1)
            .await
            .unwrap(),
    );
    assert_eq!(q.remaining, 5);
    // Plain RESP to a TLS port gets no answer it can use: an error within the bound.
    let started = Instant::now();
    store(redis.port).reserve(&key, l, 1).await.unwrap_err();
    assert!(started.elapsed() < bound());
}

/// The connections Redis has from clients other than the one asking.
fn client_connections(redis: &RedisServer) -> usize {
    let list: String = redis.command(&["CLIENT", "LIST"]);
    list.lines().count() - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_per_store_and_one_store_per_settings() {
    let redis = RedisServer::start();
    let l = limit(1_000_000, LONG);
    // Many requests, concurrent and sequential, over one multiplexed connection.
    let first = RedisStore::shared(settings(redis.port, |_| {})).unwrap();
    let calls = (0..100).map(|i| first.reserve(if i % 2 == 0 { "a" } else { "b" }, l, 1));
    for r in futures::future::join_all(calls).await {
        admitted(r.unwrap());
    }
    for _ in 0..20 {
        first.spent("a", l).await.unwrap();
    }
    assert_eq!(client_connections(&redis), 1);
    // Another config with the same settings gets the same store; other settings another one.
    let same = RedisStore::shared(settings(redis.port, |_| {})).unwrap();
    admitted(same.reserve("a", l, 1).await.unwrap());
    assert_eq!(client_connections(&redis), 1);
    let other = RedisStore::shared(settings(redis.port, |f| f.redis_timeout = Some(999))).unwrap();
    admitted(other.reserve("a", l, 1).await.unwrap());
    assert_eq!(client_connections(&redis), 2);
    // Once no config uses a store, the next one starts afresh.
    drop((first, same, other));
    let deadline = Instant::now() + Duration::from_secs(5);
    while client_connections(&redis) > 0 {
        assert!(Instant::now() < deadline, "connections left open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = RedisStore::shared(settings(redis.port, |_| {})).unwrap();
    admitted(again.reserve("a", l, 1).await.unwrap());
    assert_eq!(client_connections(&redis), 1);
}
