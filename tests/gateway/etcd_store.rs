//! The etcd client (`aigate::sources::etcd::client`) against a real `etcd` over its HTTP/JSON
//! gateway: reads,
//! writes and deletes with revisions, watches (another client's changes in order, large values,
//! several events per response, compacted start revisions, silent streams), etcd killed,
//! restarted and hung, authentication, and a dead first endpoint.

use std::time::{Duration, Instant};

use aigate::sources::etcd::client::{EtcdClient, EtcdError, EtcdSettings, Kv, Watch, WatchEvent};
use serde_json::json;

use crate::etcd_server::{b64, EtcdServer};
use crate::harness::closed_port;
use crate::redis_server::{all_logs, capture_logs, logs_with, Silent};

/// The client's timeout in most tests.
const TIMEOUT: Duration = Duration::from_secs(2);
/// What a bounded call may take beyond its bound on a busy 2-core machine.
const MARGIN: Duration = Duration::from_millis(1500);

fn settings(endpoints: Vec<String>) -> EtcdSettings {
    EtcdSettings {
        endpoints,
        prefix: "/aigate".into(),
        timeout: TIMEOUT,
        user: None,
        password: None,
    }
}

fn client(etcd: &EtcdServer) -> EtcdClient {
    EtcdClient::new(settings(vec![etcd.url()])).unwrap()
}

fn client_with(etcd: &EtcdServer, edit: impl FnOnce(&mut EtcdSettings)) -> EtcdClient {
    let mut s = settings(vec![etcd.url()]);
    edit(&mut s);
    EtcdClient::new(s).unwrap()
}

fn root(password: &str) -> impl FnOnce(&mut EtcdSettings) + '_ {
    move |s| {
        s.user = Some("root".into());
        s.password = Some(password.into());
    }
}

/// The next batch, failing the test after `within`.
async fn next_within(w: &mut Watch, within: Duration) -> Result<Vec<WatchEvent>, EtcdError> {
    tokio::time::timeout(within, w.next())
        .await
        .expect("watch.next() did not return in time")
}

/// Batches until `n` events have arrived.
async fn batches(w: &mut Watch, n: usize) -> Vec<Vec<WatchEvent>> {
    let mut out = Vec::new();
    let mut count = 0;
    while count < n {
        let batch = next_within(w, Duration::from_secs(10)).await.unwrap();
        assert!(!batch.is_empty(), "an empty batch");
        count += batch.len();
        out.push(batch);
    }
    assert_eq!(count, n, "more events than expected: {out:?}");
    out
}

fn put(key: &str, value: &[u8], create: i64, rev: i64) -> WatchEvent {
    WatchEvent::Put(Kv {
        key: key.into(),
        value: value.to_vec(),
        create_revision: create,
        mod_revision: rev,
    })
}

fn key_of(e: &WatchEvent) -> &str {
    match e {
        WatchEvent::Put(kv) => &kv.key,
        WatchEvent::Delete { key, .. } => key,
    }
}

fn keys(kvs: &[Kv]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

#[tokio::test]
async fn put_get_delete_roundtrip_with_revisions() {
    let etcd = EtcdServer::start();
    let c = client(&etcd);

    let (kvs, rev0) = c.get_prefix("/routes/").await.unwrap();
    assert!(kvs.is_empty());
    assert!(rev0 >= 1);
    let doc = br#"{"uri":"/v1/chat/completions","plugins":{}}"#;
    let r1 = c.put("/routes/1", doc).await.unwrap();
    assert_eq!(r1, rev0 + 1);
    let r2 = c.put("/routes/2", b"").await.unwrap();
    assert_eq!(r2, r1 + 1);
    let binary: Vec<u8> = (0..=255).collect();
    let r3 = c.put("/upstreams/1", &binary).await.unwrap();
    // Neither a sibling prefix nor a key outside the prefix is ours.
    let sibling = EtcdClient::new(EtcdSettings {
        prefix: "/aigate2".into(),
        ..settings(vec![etcd.url()])
    })
    .unwrap();
    sibling.put("/routes/9", b"x").await.unwrap();
    etcd.post_ok(
        "/v3/kv/put",
        json!({"key": b64(b"/aigateway"), "value": b64(b"x")}),
        None,
    );

    let (kvs, rev) = c.get_prefix("/routes/").await.unwrap();
    assert_eq!(rev, r3 + 2);
    assert_eq!(
        kvs,
        vec![
            Kv {
                key: "/routes/1".into(),
                value: doc.to_vec(),
                create_revision: r1,
                mod_revision: r1
            },
            Kv {
                key: "/routes/2".into(),
                value: vec![],
                create_revision: r2,
                mod_revision: r2
            },
        ]
    );
    let (all, _) = c.get_prefix("").await.unwrap();
    assert_eq!(keys(&all), ["/routes/1", "/routes/2", "/upstreams/1"]);
    assert_eq!(all[2].value, binary);
    assert_eq!(all[2].mod_revision, r3);
    // Stored under the prefix, base64 on the wire.
    let raw = etcd.post_ok(
        "/v3/kv/range",
        json!({"key": b64(b"/aigate/upstreams/1")}),
        None,
    );
    assert_eq!(raw["kvs"][0]["value"], b64(&binary));

    // An update keeps the create revision.
    let r5 = c.put("/routes/1", b"v2").await.unwrap();
    let (kvs, _) = c.get_prefix("/routes/1").await.unwrap();
    assert_eq!(
        (kvs[0].create_revision, kvs[0].mod_revision),
        (r1, r5),
        "{kvs:?}"
    );
    assert_eq!(kvs[0].value, b"v2");

    assert!(c.delete("/routes/1").await.unwrap());
    assert!(!c.delete("/routes/1").await.unwrap());
    let (kvs, rev) = c.get_prefix("/routes/").await.unwrap();
    assert_eq!(keys(&kvs), ["/routes/2"]);
    assert_eq!(rev, r5 + 1);
}

#[tokio::test]
async fn watch_sees_another_clients_changes_in_order() {
    let etcd = EtcdServer::start();
    let (a, b) = (client(&etcd), client(&etcd));
    let (_, start) = a.get_prefix("/routes/").await.unwrap();
    let mut w = a.watch("/routes/", start + 1).await.unwrap();

    // Larger than 64 KiB: many reads, and chunks that split the JSON anywhere.
    let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let r1 = b.put("/routes/1", b"one").await.unwrap();
    let r2 = b.put("/routes/big", &big).await.unwrap();
    b.put("/upstreams/1", b"not watched").await.unwrap();
    assert!(b.delete("/routes/1").await.unwrap());
    // One transaction: one revision, one etcd watch response with three events.
    let r5 = etcd.txn(&[
        ("/aigate/routes/t1", Some(b"x")),
        ("/aigate/routes/t2", Some(b"y")),
        ("/aigate/routes/big", None),
    ]);

    let got = batches(&mut w, 6).await;
    let events: Vec<WatchEvent> = got.concat();
    let r4 = r2 + 2;
    assert_eq!(
        events,
        vec![
            put("/routes/1", b"one", r1, r1),
            put("/routes/big", &big, r2, r2),
            WatchEvent::Delete {
                key: "/routes/1".into(),
                mod_revision: r4
            },
            put("/routes/t1", b"x", r5, r5),
            put("/routes/t2", b"y", r5, r5),
            WatchEvent::Delete {
                key: "/routes/big".into(),
                mod_revision: r5
            },
        ]
    );
    let txn = got
        .iter()
        .find(|b| b.iter().any(|e| key_of(e) == "/routes/t1"))
        .unwrap();
    assert!(txn.len() >= 3, "the transaction's events in one response");

    // A watch that starts in the past catches up: the same events, several per response.
    let mut late = b.watch("/routes/", start + 1).await.unwrap();
    let got = batches(&mut late, 6).await;
    assert!(got.len() < 6, "several events per response: {}", got.len());
    assert_eq!(got.concat(), events);
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_compacted() {
    let etcd = EtcdServer::start();
    let c = client(&etcd);
    let r1 = c.put("/routes/1", b"a").await.unwrap();
    c.put("/routes/1", b"b").await.unwrap();
    let r3 = c.put("/routes/2", b"c").await.unwrap();
    etcd.compact(r3);

    // etcd confirms the watch, then cancels it: from `watch` or the first `next`.
    let err = match c.watch("/routes/", r1).await {
        Err(e) => e,
        Ok(mut w) => next_within(&mut w, Duration::from_secs(10))
            .await
            .unwrap_err(),
    };
    assert_eq!(
        err,
        EtcdError::Compacted {
            compact_revision: r3
        }
    );
    assert!(err.to_string().contains("compacted"), "{err}");

    // The compaction revision itself is still there.
    let mut w = c.watch("/routes/", r3).await.unwrap();
    assert_eq!(
        next_within(&mut w, Duration::from_secs(10)).await.unwrap(),
        [put("/routes/2", b"c", r3, r3)]
    );

    // The resync the error asks for: read everything, watch from the revision after.
    let (kvs, rev) = c.get_prefix("/routes/").await.unwrap();
    assert_eq!(keys(&kvs), ["/routes/1", "/routes/2"]);
    let mut w = c.watch("/routes/", rev + 1).await.unwrap();
    let r4 = c.put("/routes/3", b"d").await.unwrap();
    assert_eq!(
        next_within(&mut w, Duration::from_secs(10)).await.unwrap(),
        [put("/routes/3", b"d", r4, r4)]
    );
}

#[tokio::test]
async fn etcd_killed_fails_within_the_timeout_and_restarted_works_again() {
    let mut etcd = EtcdServer::start();
    let c = client(&etcd);
    c.put("/routes/1", b"kept").await.unwrap();
    let (_, rev) = c.get_prefix("/routes/").await.unwrap();
    let mut w = c.watch("/routes/", rev + 1).await.unwrap();

    etcd.kill();
    // The watch's connection closes: seen at once, not after the quiet limit.
    let t = Instant::now();
    let e = next_within(&mut w, c.watch_quiet_limit() + TIMEOUT + MARGIN)
        .await
        .unwrap_err();
    assert!(matches!(e, EtcdError::Unavailable(_)), "{e:?}");
    assert!(t.elapsed() < MARGIN, "{:?}", t.elapsed());
    // A broken watch stays broken.
    assert!(next_within(&mut w, MARGIN).await.is_err());

    let t = Instant::now();
    let e = c.get_prefix("/routes/").await.unwrap_err();
    assert!(matches!(e, EtcdError::Unavailable(_)), "{e:?}");
    assert!(
        e.to_string().contains(&etcd.port.to_string()),
        "names the endpoint: {e}"
    );
    assert!(c.put("/routes/2", b"x").await.is_err());
    assert!(c.delete("/routes/1").await.is_err());
    assert!(c.watch("/routes/", 0).await.is_err());
    assert!(
        t.elapsed() < 4 * TIMEOUT + MARGIN,
        "four calls: {:?}",
        t.elapsed()
    );

    etcd.restart();
    // The same client (its pooled connections dead) works again; the data was kept.
    let (kvs, rev) = c.get_prefix("/routes/").await.unwrap();
    assert_eq!(kvs.len(), 1);
    assert_eq!(kvs[0].value, b"kept");
    let mut w = c.watch("/routes/", rev + 1).await.unwrap();
    let r = c.put("/routes/2", b"after").await.unwrap();
    assert_eq!(
        next_within(&mut w, Duration::from_secs(10)).await.unwrap(),
        [put("/routes/2", b"after", r, r)]
    );
}

#[tokio::test]
async fn etcd_hung_watch_errors_within_its_bound() {
    let etcd = EtcdServer::start();
    let timeout = Duration::from_secs(1);
    let c = client_with(&etcd, |s| s.timeout = timeout);
    let mut w = c.watch("/routes/", 0).await.unwrap();
    let quiet = c.watch_quiet_limit();
    assert_eq!(quiet, Duration::from_secs(10));

    etcd.pause();
    let t = Instant::now();
    let e = next_within(&mut w, quiet + timeout + MARGIN + Duration::from_secs(5))
        .await
        .unwrap_err();
    let elapsed = t.elapsed();
    assert!(matches!(e, EtcdError::Unavailable(_)), "{e:?}");
    assert!(elapsed >= quiet, "not before the quiet limit: {elapsed:?}");
    assert!(
        elapsed < quiet + timeout + MARGIN,
        "within quiet limit + timeout: {elapsed:?}"
    );

    // A unary call is bounded by the timeout.
    let t = Instant::now();
    let e = c.get_prefix("/routes/").await.unwrap_err();
    assert!(matches!(e, EtcdError::Unavailable(_)), "{e:?}");
    assert!(t.elapsed() >= timeout.mul_f32(0.9), "{:?}", t.elapsed());
    assert!(t.elapsed() < timeout + MARGIN, "{:?}", t.elapsed());

    etcd.resume();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.put("/routes/1", b"back").await.is_err() {
        assert!(Instant::now() < deadline, "etcd did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn idle_watch_is_reopened_after_the_quiet_limit_without_loss_or_repeat() {
    capture_logs();
    let etcd = EtcdServer::start();
    let c = client_with(&etcd, |s| s.timeout = Duration::from_secs(1));
    let quiet = c.watch_quiet_limit();
    let (_, rev) = c.get_prefix("/routes/").await.unwrap();
    let mut w = c.watch("/routes/", rev + 1).await.unwrap();

    let writer = client(&etcd);
    let task = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let early = writer.put("/routes/early", b"1").await.unwrap();
        // After the watch has been silent for the quiet limit (etcd's default progress
        // notification interval is 10 minutes, so nothing comes on its own).
        tokio::time::sleep(quiet + Duration::from_secs(2)).await;
        let late = writer.put("/routes/late", b"2").await.unwrap();
        (early, late)
    });
    let e1 = next_within(&mut w, Duration::from_secs(10)).await.unwrap();
    let t = Instant::now();
    let e2 = next_within(&mut w, quiet * 3).await.unwrap();
    assert!(t.elapsed() >= quiet, "{:?}", t.elapsed());
    let (early, late) = task.await.unwrap();
    assert_eq!(e1, [put("/routes/early", b"1", early, early)]);
    assert_eq!(e2, [put("/routes/late", b"2", late, late)]);

    let reopened = logs_with(&format!("127.0.0.1:{}/v3/watch: watch on", etcd.port));
    assert!(
        reopened.iter().any(|l| l.contains("silent for")),
        "the watch was re-opened: {reopened:?}"
    );
}

#[tokio::test]
async fn progress_notifications_keep_a_watch_on_its_connection() {
    capture_logs();
    let etcd = EtcdServer::start_with(&["--experimental-watch-progress-notify-interval", "1s"]);
    let c = client_with(&etcd, |s| s.timeout = Duration::from_secs(1));
    let quiet = c.watch_quiet_limit();
    let mut w = c.watch("/routes/", 0).await.unwrap();

    let writer = client(&etcd);
    let task = tokio::spawn(async move {
        tokio::time::sleep(quiet + Duration::from_secs(2)).await;
        writer.put("/routes/late", b"2").await.unwrap()
    });
    let got = next_within(&mut w, quiet * 3).await.unwrap();
    let late = task.await.unwrap();
    assert_eq!(got, [put("/routes/late", b"2", late, late)]);
    let reopened = logs_with(&format!("127.0.0.1:{}/v3/watch: watch on", etcd.port));
    assert!(reopened.is_empty(), "{reopened:?}");
}

#[tokio::test]
async fn auth_wrong_password_fails_and_the_right_one_works() {
    capture_logs();
    let mut etcd = EtcdServer::start();
    etcd.enable_auth("root-Pa55");

    let wrong = "wrong-Pa55";
    let c = client_with(&etcd, root(wrong));
    for e in [
        c.get_prefix("/").await.unwrap_err(),
        c.put("/routes/1", b"x").await.unwrap_err(),
        c.watch("/routes/", 0).await.unwrap_err(),
    ] {
        assert!(matches!(e, EtcdError::Auth(_)), "{e:?}");
        assert!(!e.to_string().contains(wrong), "{e}");
        assert!(!format!("{e:?}").contains(wrong), "{e:?}");
    }
    // No credentials at all.
    let anonymous = client(&etcd);
    let e = anonymous.get_prefix("/").await.unwrap_err();
    assert!(matches!(e, EtcdError::Auth(_)), "{e:?}");
    let e = anonymous.watch("/routes/", 0).await.unwrap_err();
    assert!(matches!(e, EtcdError::Auth(_)), "{e:?}");

    let c = client_with(&etcd, root("root-Pa55"));
    let (_, rev) = c.get_prefix("/routes/").await.unwrap();
    let mut w = c.watch("/routes/", rev + 1).await.unwrap();
    let r = c.put("/routes/1", b"x").await.unwrap();
    assert_eq!(
        next_within(&mut w, Duration::from_secs(10)).await.unwrap(),
        [put("/routes/1", b"x", r, r)]
    );

    // A restarted etcd has forgotten every token: the client authenticates again by itself.
    etcd.restart();
    let (kvs, rev) = c.get_prefix("/routes/").await.unwrap();
    assert_eq!(keys(&kvs), ["/routes/1"]);
    let mut w = c.watch("/routes/", rev + 1).await.unwrap();
    assert!(c.delete("/routes/1").await.unwrap());
    assert!(matches!(
        &next_within(&mut w, Duration::from_secs(10)).await.unwrap()[..],
        [WatchEvent::Delete { key, .. }] if key == "/routes/1"
    ));

    for line in all_logs() {
        assert!(
            !line.contains(wrong) && !line.contains("root-Pa55"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn auth_expired_token_is_renewed_once() {
    let etcd = EtcdServer::start_with(&["--auth-token-ttl", "1"]);
    etcd.enable_auth("root-Pa55");
    let c = client_with(&etcd, root("root-Pa55"));
    c.put("/routes/1", b"x").await.unwrap();
    let probe = etcd.authenticate("root-Pa55");

    tokio::time::sleep(Duration::from_secs(3)).await;
    // Tokens this old are refused...
    let (status, body) = etcd.post(
        "/v3/kv/range",
        json!({"key": b64(b"/aigate/routes/1")}),
        Some(&probe),
    );
    assert_eq!(status, 401, "{body}");
    // ...and the client gets a new one and retries.
    let (kvs, _) = c.get_prefix("/routes/").await.unwrap();
    assert_eq!(keys(&kvs), ["/routes/1"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut w = c.watch("/routes/", 0).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = c.put("/routes/2", b"y").await.unwrap();
    assert_eq!(
        next_within(&mut w, Duration::from_secs(10)).await.unwrap(),
        [put("/routes/2", b"y", r, r)]
    );
}

#[tokio::test]
async fn a_dead_first_endpoint_is_skipped() {
    let etcd = EtcdServer::start();
    // Refuses connections.
    let c = EtcdClient::new(settings(vec![
        format!("http://127.0.0.1:{}", closed_port()),
        etcd.url(),
    ]))
    .unwrap();
    let t = Instant::now();
    let r = c.put("/routes/1", b"x").await.unwrap();
    let (kvs, rev) = c.get_prefix("/routes/").await.unwrap();
    assert_eq!(kvs[0].mod_revision, r);
    let mut w = c.watch("/routes/", rev + 1).await.unwrap();
    assert!(c.delete("/routes/1").await.unwrap());
    assert_eq!(
        next_within(&mut w, Duration::from_secs(10))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(t.elapsed() < 4 * TIMEOUT, "{:?}", t.elapsed());

    // Accepts connections and never answers: the second endpoint still gets its share of the
    // timeout, and is remembered.
    let silent = Silent::start();
    let c = EtcdClient::new(settings(vec![
        format!("http://127.0.0.1:{}", silent.port),
        etcd.url(),
    ]))
    .unwrap();
    let t = Instant::now();
    c.put("/routes/2", b"y").await.unwrap();
    let first = t.elapsed();
    assert!(
        first >= TIMEOUT / 2 && first < TIMEOUT + MARGIN,
        "{first:?}"
    );
    // Each call would wait TIMEOUT / 2 on the silent one first if it were not.
    let t = Instant::now();
    c.get_prefix("/routes/").await.unwrap();
    assert!(t.elapsed() < TIMEOUT / 2, "remembered: {:?}", t.elapsed());
    let t = Instant::now();
    c.watch("/routes/", 0).await.unwrap();
    assert!(t.elapsed() < TIMEOUT / 2, "remembered: {:?}", t.elapsed());

    // Every endpoint dead: one error, within the timeout.
    let c = EtcdClient::new(settings(vec![
        format!("http://127.0.0.1:{}", silent.port),
        format!("http://127.0.0.1:{}", closed_port()),
    ]))
    .unwrap();
    let t = Instant::now();
    let e = c.get_prefix("/").await.unwrap_err();
    assert!(matches!(e, EtcdError::Unavailable(_)), "{e:?}");
    assert!(t.elapsed() < TIMEOUT + MARGIN, "{:?}", t.elapsed());
}
