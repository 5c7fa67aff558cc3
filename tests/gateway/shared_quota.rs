//! ai-rate-limiting with `policy: redis` on the real gateway: two aigate processes counting
//! against one quota in a real `redis-server`, and what clients see when that Redis dies and
//! comes back, with and without `allow_degradation`.
//!
//! Every answer from the mock is 7 + 3 = 10 tokens; a request reserves 13 (see
//! rate_limiting.rs) until its answer replaces the reservation by the real 10.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::redis_server::RedisServer;

/// `redis_timeout` in these tests (ms).
const TIMEOUT_MS: u64 = 300;
/// What a request may take beyond `redis_timeout` on a busy 2-core machine.
const MARGIN: Duration = Duration::from_millis(1500);

fn mock10() -> Mock {
    let m = Mock::start("m");
    m.set(json!({"prompt_tokens": 7, "completion_tokens": 3}));
    m
}

fn body() -> Value {
    json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
}

/// One ai-proxy route `/chat` (id `chat`) with a 30-token minute shared through `redis`.
fn route(mock: &Mock, redis: &RedisServer, extra: &str) -> String {
    format!(
        "routes:
  - id: chat
    uri: /chat
    plugins:
      ai-proxy:
        provider: openai-compatible
        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}
        override: {{ endpoint: \"{}\" }}
      ai-rate-limiting:
        limit: 30
        time_window: 60
        policy: redis
        redis_host: 127.0.0.1
        redis_port: {}
        redis_timeout: {TIMEOUT_MS}
{extra}",
        mock.chat_url(),
        redis.port
    )
}

/// Sum of every quota counter in `redis` (each test has a Redis of its own).
fn counted(redis: &RedisServer) -> i64 {
    let keys: Vec<String> = redis.command(&["KEYS", "aigate:quota:*"]);
    keys.iter().map(|k| redis.counter(k)).sum()
}

/// Wait until the counters in Redis add up to `want` (settles are sent in the background).
fn wait_counted(redis: &RedisServer, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = counted(redis);
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "Redis counts {n}, not {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ask(gw: &Gateway) -> (Resp, Duration) {
    let t = Instant::now();
    let r = gw.chat("/chat", &body());
    (r, t.elapsed())
}

#[test]
fn two_gateways_on_one_redis_serve_one_quota_between_them() {
    let (mock, redis) = (mock10(), RedisServer::start());
    let config = route(&mock, &redis, "");
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    // 30 tokens a minute for the route, whichever node serves it: three answers, then no more.
    let mut statuses = Vec::new();
    for (i, gw) in [&a, &b, &a, &b, &a].into_iter().enumerate() {
        statuses.push(ask(gw).0.status);
        if i < 3 {
            // The next node sees this answer's real cost, not its reservation.
            wait_counted(&redis, 10 * (i as i64 + 1));
        }
    }
    assert_eq!(statuses, [200, 200, 200, 503, 503]);
    assert_eq!(mock.llm_requests().len(), 3);
    wait_counted(&redis, 30);
    // What the refusal says is the shared state: nothing left on either node.
    let (r, _) = ask(&b);
    assert_eq!(
        r.header("x-ai-ratelimit-remaining-ai-proxy-openai-compatible"),
        Some("0")
    );
}

#[test]
fn redis_down_with_degradation_each_node_counts_alone_then_shares_again() {
    let (mock, mut redis) = (mock10(), RedisServer::start());
    let gw = Gateway::start(&route(&mock, &redis, "        allow_degradation: true\n"));
    assert_eq!(ask(&gw).0.status, 200);
    wait_counted(&redis, 10);

    redis.kill();
    // The node counts on its own from zero: three more answers fit its own 30 tokens, the
    // fourth does not. None waits much past redis_timeout.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (r, took) = ask(&gw);
        assert!(
            took < Duration::from_millis(TIMEOUT_MS) + MARGIN,
            "{took:?}"
        );
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 200, 503]);
    let log = gw.error_log();
    let outage: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("is unavailable"))
        .collect();
    assert_eq!(
        outage.len(),
        1,
        "one line per outage, not per request:\n{log}"
    );
    assert!(
        outage[0].contains(&format!("redis 127.0.0.1:{}", redis.port)),
        "{log}"
    );
    assert!(outage[0].contains("allow_degradation"), "{log}");

    // Back (empty, as a restarted Redis without persistence is): the node finds it within
    // about a second (until then its own spent count refuses) and counts there again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = ask(&gw).0.status;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(Instant::now() < deadline, "never served from Redis again");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_counted(&redis, 10);
    let log = gw.error_log();
    assert!(log.contains("is available again"), "{log}");
}

#[test]
fn redis_down_without_degradation_refuses_within_the_timeout_and_recovers() {
    let (mock, mut redis) = (mock10(), RedisServer::start());
    let gw = Gateway::start(&route(&mock, &redis, ""));
    assert_eq!(ask(&gw).0.status, 200);

    redis.kill();
    for _ in 0..3 {
        let (r, took) = ask(&gw);
        assert!(
            took < Duration::from_millis(TIMEOUT_MS) + MARGIN,
            "{took:?}"
        );
        // The plugin's rejected code (503 by default), saying why.
        let e = r.openai_error(503);
        assert_eq!(e["code"], "quota_store_unavailable");
        assert_eq!(
            e["message"],
            "the token quota could not be checked (its store is unavailable); retry later"
        );
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(
        mock.llm_requests().len(),
        1,
        "an unchecked request never reaches the provider"
    );
    let log = gw.error_log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("is unavailable:"))
            .count(),
        1,
        "one line per outage, not per request:\n{log}"
    );
    assert!(log.contains("allow_degradation is off"), "{log}");
    assert!(!log.contains("ERROR"), "a refusal is not an error:\n{log}");

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (r, _) = ask(&gw);
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "Redis never picked up again");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_counted(&redis, 10);
}

#[test]
fn a_redis_password_never_reaches_a_log_or_an_answer() {
    let (mock, mut redis) = (
        mock10(),
        RedisServer::start_with(&["--requirepass", "s3cret-pw"]),
    );
    let gw = Gateway::start(&route(&mock, &redis, "        redis_password: s3cret-pw\n"));
    assert_eq!(ask(&gw).0.status, 200);
    wait_counted_auth(&redis, 10);
    redis.kill();
    let (r, _) = ask(&gw);
    assert_eq!(r.status, 503);
    assert!(!r.text().contains("s3cret-pw"));
    let wrong = Gateway::start(&route(
        &mock,
        &redis,
        "        redis_password: not-the-s3cret-pw\n",
    ));
    redis.restart();
    let (r, _) = ask(&wrong);
    assert_eq!(r.status, 503, "{}", r.text());
    for log in [gw.error_log(), wrong.error_log()] {
        assert!(!log.contains("s3cret-pw"), "{log}");
    }
}

/// `wait_counted` for a Redis that wants a password.
fn wait_counted_auth(redis: &RedisServer, want: i64) {
    let mut c = redis.client(Some("s3cret-pw"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("aigate:quota:*")
            .query(&mut c)
            .unwrap();
        let mut n = 0i64;
        for k in keys {
            let v: Option<i64> = redis::cmd("GET").arg(&k).query(&mut c).unwrap();
            n += v.unwrap_or(0);
        }
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "Redis counts {n}, not {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
