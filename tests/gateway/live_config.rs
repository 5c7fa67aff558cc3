//! Live configuration without the admin API: SIGHUP re-reads the config file and applies it
//! through the same path as every other change, with the running state kept.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

/// An ai-proxy route `uri` -> `mock`, answering as model `model`.
fn route(id: &str, uri: &str, mock: &Mock, model: &str) -> String {
    format!(
        "  - id: {id}\n    uri: {uri}\n    plugins:\n      ai-proxy:\n        provider: openai-compatible\n        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n        options: {{ model: {model} }}\n        override: {{ endpoint: \"{}\" }}\n",
        mock.chat_url()
    )
}

fn rewrite(gw: &Gateway, resources: &str) {
    let text = config_text(gw.port, &gw.dir, resources, &GatewayOpts::default());
    std::fs::write(gw.dir.join("config.yaml"), text).unwrap();
}

fn hup(gw: &Gateway) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn model(gw: &Gateway, path: &str) -> (u16, String) {
    let r = gw.chat(path, &chat_body("hi"));
    let m = if r.status == 200 {
        r.json()["model"].as_str().unwrap_or("").to_string()
    } else {
        String::new()
    };
    (r.status, m)
}

/// Wait until `path` answers `want` (the reload happens in the background).
fn wait_for(gw: &Gateway, path: &str, want: (u16, &str)) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = model(gw, path);
        if got.0 == want.0 && got.1 == want.1 {
            return;
        }
        assert!(Instant::now() < deadline, "{path}: {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_applies_a_changed_file_and_refuses_a_bad_one() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&format!("routes:\n{}", route("a", "/a", &mock, "one")));
    assert_eq!(model(&gw, "/a"), (200, "one".into()));
    assert_eq!(model(&gw, "/b").0, 404);

    rewrite(
        &gw,
        &format!(
            "routes:\n{}{}",
            route("a", "/a", &mock, "two"),
            route("b", "/b", &mock, "bee")
        ),
    );
    hup(&gw);
    wait_for(&gw, "/b", (200, "bee"));
    assert_eq!(model(&gw, "/a"), (200, "two".into()));

    // A file that does not compile changes nothing, and says why with the field's path.
    rewrite(
        &gw,
        &format!(
            "routes:\n{}    plugins:\n      ai-proxi: {{}}\n",
            "  - id: a\n    uri: /a\n"
        ),
    );
    hup(&gw);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gw.error_log().contains("not applied") {
        assert!(Instant::now() < deadline, "{}", gw.error_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        gw.error_log().contains("routes[0].plugins.ai-proxi"),
        "{}",
        gw.error_log()
    );
    assert_eq!(model(&gw, "/a"), (200, "two".into()));
    assert_eq!(model(&gw, "/b"), (200, "bee".into()));
    // Removing a route: 404 by the next request after the reload.
    rewrite(&gw, &format!("routes:\n{}", route("a", "/a", &mock, "two")));
    hup(&gw);
    wait_for(&gw, "/b", (404, ""));
}

#[test]
fn an_instance_cooling_down_stays_out_across_an_unrelated_change() {
    let good = Mock::start("good");
    let bad = Mock::start("bad");
    bad.set(json!({"status": 500}));
    let multi = format!(
        "  - id: multi\n    uri: /multi\n    plugins:\n      ai-proxy-multi:\n        fallback_strategy: http_5xx\n        instances:\n          - name: good\n            provider: openai-compatible\n            weight: 1\n            auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n            options: {{ model: good }}\n            override: {{ endpoint: \"{}\" }}\n          - name: bad\n            provider: openai-compatible\n            weight: 1\n            auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n            options: {{ model: bad }}\n            override: {{ endpoint: \"{}\" }}\n            checks: {{ passive: {{ unhealthy: {{ http_failures: 2 }} }} }}\n",
        good.chat_url(),
        bad.chat_url()
    );
    let gw = Gateway::start(&format!("routes:\n{multi}"));
    // Every request succeeds (falling back to `good`) until `bad` has failed twice and cools down.
    for _ in 0..6 {
        assert_eq!(model(&gw, "/multi"), (200, "good".into()));
    }
    let failed = bad.llm_requests().len();
    assert_eq!(failed, 2, "bad is out after its second failure");

    // An unrelated route appears; the multi route's compiled objects and health are kept.
    rewrite(
        &gw,
        &format!("routes:\n{multi}{}", route("other", "/other", &good, "x")),
    );
    hup(&gw);
    wait_for(&gw, "/other", (200, "x"));
    for _ in 0..6 {
        assert_eq!(model(&gw, "/multi"), (200, "good".into()));
    }
    assert_eq!(
        bad.llm_requests().len(),
        failed,
        "the instance cooling down got no request after the change"
    );
}

#[test]
fn requests_under_a_steady_load_never_fail_while_the_file_is_reloaded() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&format!("routes:\n{}", route("a", "/a", &mock, "v0")));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = gw.port;
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = request(
                        port,
                        "POST",
                        "/a",
                        &[("content-type", "application/json")],
                        chat_body("hi").to_string().as_bytes(),
                    );
                    assert_eq!(r.status, 200, "{}", r.text());
                    n += 1;
                }
                n
            })
        })
        .collect();
    for v in 1..=5 {
        let want = format!("v{v}");
        rewrite(&gw, &format!("routes:\n{}", route("a", "/a", &mock, &want)));
        hup(&gw);
        wait_for(&gw, "/a", (200, &want));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(total > 10, "{total}");
}

#[test]
fn what_the_admin_api_wrote_survives_a_restart_on_the_same_data_dir() {
    let mock = Mock::start("m");
    let data = scratch_dir().join("data");
    let start = || {
        let port = free_port();
        let extra = format!(
            "  data_dir: {}\n  admin:\n    listen: 127.0.0.1:{port}\n    key: k-123456\n",
            data.display()
        );
        let gw = Gateway::start_with(
            "routes: []\n",
            GatewayOpts {
                gateway_extra: &extra,
                ..Default::default()
            },
        );
        wait_listening(port);
        (gw, port)
    };
    let admin = |port: u16, method: &str, path: &str, body: serde_json::Value| {
        request(
            port,
            method,
            path,
            &[("X-API-KEY", "k-123456")],
            body.to_string().as_bytes(),
        )
    };
    let (gw, port) = start();
    let r = admin(
        port,
        "PUT",
        "/apisix/admin/routes/1",
        json!({"uri": "/chat", "plugins": {
            "key-auth": {},
            "ai-proxy": {"provider": "openai-compatible",
                         "auth": {"header": {"Authorization": "Bearer k"}},
                         "options": {"model": "kept"},
                         "override": {"endpoint": mock.chat_url()}}}}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin(
        port,
        "PUT",
        "/apisix/admin/consumers",
        json!({"username": "jack"}),
    );
    assert!(r.status == 201 || r.status == 200, "{}", r.text());
    let r = admin(
        port,
        "PUT",
        "/apisix/admin/consumers/jack/credentials/c1",
        json!({"plugins": {"key-auth": {"key": "jack-key"}}}),
    );
    assert!(r.status == 201 || r.status == 200, "{}", r.text());
    let before = admin(port, "GET", "/apisix/admin/routes/1", json!(null)).json();
    let ask = |gw: &Gateway| gw.chat_with("/chat", &[("apikey", "jack-key")], &chat_body("hi"));
    assert_eq!(ask(&gw).json()["model"], "kept");
    // The file on disk is whole (written atomically), with no temporary left behind.
    assert!(data.join("resources.json").exists());
    assert!(!data.join(".resources.json.tmp").exists());
    drop(gw);

    let (gw, port) = start();
    assert_eq!(ask(&gw).json()["model"], "kept");
    let after = admin(port, "GET", "/apisix/admin/routes/1", json!(null)).json();
    assert_eq!(after["value"], before["value"]);
    assert_eq!(after["createdIndex"], before["createdIndex"]);
    // Deleting is kept too.
    assert_eq!(
        admin(port, "DELETE", "/apisix/admin/routes/1", json!(null)).status,
        200
    );
    drop(gw);
    let (gw, _) = start();
    assert_eq!(ask(&gw).status, 404);
}

#[test]
fn a_request_in_flight_finishes_on_the_configuration_it_started_with() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&format!("routes:\n{}", route("a", "/a", &mock, "old")));
    let port = gw.port;
    // A stream of 10 events, 100 ms apart: it is still running when the route goes away.
    let inflight = std::thread::spawn(move || {
        let mut body = chat_body("hi");
        body["stream"] = json!(true);
        request(
            port,
            "POST",
            "/a",
            &[
                ("content-type", "application/json"),
                ("x-mock-chunks", "10"),
                ("x-mock-chunk-delay-ms", "100"),
            ],
            body.to_string().as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    rewrite(&gw, &format!("routes:\n{}", route("b", "/b", &mock, "new")));
    hup(&gw);
    wait_for(&gw, "/b", (200, "new"));
    assert_eq!(
        model(&gw, "/a").0,
        404,
        "the route is gone for new requests"
    );
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(text.contains("\"model\":\"old\""), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[test]
fn an_id_both_in_the_file_and_the_data_dir_refuses_to_start_naming_it() {
    let mock = Mock::start("m");
    let dir = scratch_dir();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let stored = json!({"version": 1, "index": 3, "resources": [
        {"kind": "routes", "id": "a", "value": {"id": "a", "uri": "/x", "upstream": {"nodes": {"127.0.0.1:9": 1}}},
         "created_index": 3, "modified_index": 3}
    ]});
    std::fs::write(data.join("resources.json"), stored.to_string()).unwrap();
    let text = config_text(
        free_port(),
        &dir,
        &format!("routes:\n{}", route("a", "/a", &mock, "m")),
        &GatewayOpts::default(),
    );
    let config = dir.join("config.yaml");
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(AIGATE)
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.data_dir")
            && err.contains("route \"a\" is both in the config file and in the store"),
        "{err}"
    );
}

#[test]
fn debug_headers_report_the_gateways_own_time_without_the_providers() {
    let mock = Mock::start("m");
    let on = Gateway::start_with(
        &format!("routes:\n{}", route("a", "/a", &mock, "m")),
        GatewayOpts {
            gateway_extra: "  debug_headers: true\n",
            ..Default::default()
        },
    );
    // The provider takes 300 ms; the gateway's own share is a small part of the total.
    let t = Instant::now();
    let r = on.chat_with("/a", &[("x-mock-delay-ms", "300")], &chat_body("hi"));
    let total = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    let us: u64 = r
        .header("x-aigate-overhead-us")
        .expect("the overhead header")
        .parse()
        .unwrap();
    assert!(total >= Duration::from_millis(300), "{total:?}");
    assert!(us < 100_000, "{us} us of {total:?}");
    // Off by default.
    let off = Gateway::start(&format!("routes:\n{}", route("a", "/a", &mock, "m")));
    assert_eq!(
        off.chat("/a", &chat_body("hi"))
            .header("x-aigate-overhead-us"),
        None
    );
}
