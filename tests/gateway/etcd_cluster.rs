//! Two aigate nodes on one real etcd (`gateway.store: {type: etcd}`): a change made through one
//! node's admin API serves on the other within about a second; etcd stopped, both keep serving
//! their last good configuration; etcd back, changes propagate again; objects written to etcd by
//! hand that are not valid are skipped.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::etcd_server::{b64, EtcdServer};
use crate::harness::*;

const KEY: &str = "cluster-admin-key";
const PREFIX: &str = "/aigate-test";

struct Node {
    gw: Gateway,
    admin: u16,
}

fn node(etcd: &EtcdServer) -> Node {
    let admin = free_port();
    let extra = format!(
        "  store:\n    type: etcd\n    endpoints: [\"{}\"]\n    prefix: {PREFIX}\n    timeout: 1\n  admin:\n    listen: 127.0.0.1:{admin}\n    key: {KEY}\n",
        etcd.url()
    );
    let gw = Gateway::start_with(
        "routes: []\n",
        GatewayOpts {
            gateway_extra: &extra,
            ..Default::default()
        },
    );
    wait_listening(admin);
    Node { gw, admin }
}

impl Node {
    fn admin(&self, method: &str, path: &str, body: Value) -> Resp {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        request(
            self.admin,
            method,
            path,
            &[("X-API-KEY", KEY)],
            body.as_bytes(),
        )
    }

    fn model(&self) -> (u16, String) {
        let r = self.gw.chat("/chat", &chat_body("hi"));
        let m = if r.status == 200 {
            r.json()["model"].as_str().unwrap_or("").to_string()
        } else {
            String::new()
        };
        (r.status, m)
    }

    /// Wait until `/chat` answers `want`; how long it took.
    fn wait_for(&self, want: (u16, &str), within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.model();
            if got.0 == want.0 && got.1 == want.1 {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "still {got:?} after {within:?}, want {want:?}\n{}",
                self.gw.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn route(mock: &Mock, model: &str) -> Value {
    json!({"uri": "/chat", "plugins": {"ai-proxy": {
        "provider": "openai-compatible",
        "auth": {"header": {"Authorization": "Bearer k"}},
        "options": {"model": model},
        "override": {"endpoint": mock.chat_url()}}}})
}

fn etcd_put(etcd: &EtcdServer, key: &str, value: &str) {
    etcd.post_ok(
        "/v3/kv/put",
        json!({"key": b64(format!("{PREFIX}{key}").as_bytes()), "value": b64(value.as_bytes())}),
        None,
    );
}

#[test]
fn two_nodes_share_one_configuration_through_etcd_and_survive_its_outage() {
    let mock = Mock::start("m");
    let mut etcd = EtcdServer::start();
    let (a, b) = (node(&etcd), node(&etcd));

    // A route PUT on node a serves on a at once and on b within about a second.
    let r = a.admin("PUT", "/apisix/admin/routes/1", route(&mock, "one"));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(a.model(), (200, "one".into()));
    let took = b.wait_for((200, "one"), Duration::from_secs(3));
    assert!(took < Duration::from_secs(1), "{took:?}");
    // b's admin API shows it too, from etcd.
    let got = b.admin("GET", "/apisix/admin/routes/1", Value::Null);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.json()["value"]["plugins"]["ai-proxy"]["options"]["model"],
        "one"
    );

    // Objects written by hand that are not valid are logged and skipped; the rest still serves.
    etcd_put(&etcd, "/routes/torn", "{not json");
    etcd_put(
        &etcd,
        "/routes/bad",
        r#"{"uri": "/bad", "plugins": {"ai-proxi": {}}}"#,
    );
    etcd_put(&etcd, "/nothing/here/at/all", "{}");
    let r = b.admin(
        "PUT",
        "/apisix/admin/routes/2",
        json!({"uri": "/two", "plugins": {"ai-proxy": {
        "provider": "openai-compatible", "auth": {"header": {"Authorization": "Bearer k"}},
        "override": {"endpoint": mock.chat_url()}}}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(3);
    while a.gw.chat("/two", &chat_body("hi")).status != 200 {
        assert!(Instant::now() < deadline, "{}", a.gw.error_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in [&a, &b] {
        assert_eq!(n.model(), (200, "one".into()));
        let log = n.gw.error_log();
        assert!(log.contains("skipping /routes/torn"), "{log}");
        assert!(log.contains("ai-proxi"), "{log}");
    }

    // etcd stops: both nodes keep serving; a change cannot be made (and is not half-made).
    etcd.kill();
    for n in [&a, &b] {
        assert_eq!(n.model(), (200, "one".into()));
    }
    let r = a.admin("PUT", "/apisix/admin/routes/1", route(&mock, "lost"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(a.model(), (200, "one".into()));
    std::thread::sleep(Duration::from_millis(1500));
    for n in [&a, &b] {
        assert_eq!(n.model(), (200, "one".into()));
        assert!(
            n.gw.error_log().contains("etcd is unavailable"),
            "{}",
            n.gw.error_log()
        );
    }

    // etcd back: the nodes load it again, and a new change propagates.
    etcd.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = a.admin("PUT", "/apisix/admin/routes/1", route(&mock, "two"));
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{} {}", r.status, r.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    b.wait_for((200, "two"), Duration::from_secs(15));
    // A delete propagates too.
    assert_eq!(
        a.admin("DELETE", "/apisix/admin/routes/1", Value::Null)
            .status,
        200
    );
    b.wait_for((404, ""), Duration::from_secs(5));
}

/// An admin write made while the node's first full load from etcd is still being read or
/// compiled serves at once and stays served: the older load must not replace it (it once did, for
/// a moment, until the watch brought the write back). Many stored routes make that load long.
#[test]
fn an_admin_write_during_the_first_load_is_not_undone_by_it() {
    let mock = Mock::start("m");
    let etcd = EtcdServer::start();
    for i in 0..400 {
        let mut r = route(&mock, "stored");
        r["uri"] = json!(format!("/stored/{i}"));
        etcd_put(&etcd, &format!("/routes/s{i}"), &r.to_string());
    }
    for round in 0..3 {
        let n = node(&etcd);
        let model = format!("round-{round}");
        let r = n.admin("PUT", "/apisix/admin/routes/1", route(&mock, &model));
        assert!(matches!(r.status, 200 | 201), "{} {}", r.status, r.text());
        // Served at once, and every moment after, while the load settles.
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            assert_eq!(n.model(), (200, model.clone()), "{}", n.gw.error_log());
        }
        // And the stored routes are there too.
        assert_eq!(n.gw.chat("/stored/399", &chat_body("hi")).status, 200);
    }
}
