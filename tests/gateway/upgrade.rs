//! Zero-downtime upgrade, proven: a steady request loop and long SSE streams in flight while
//! `aigate -u` takes the listeners over from the running process (SIGQUIT), twice in a row: no
//! failed request, no cut stream, every stream logged once with its usage. And SIGTERM lets
//! in-flight streams finish within the grace period.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

struct Setup {
    dir: std::path::PathBuf,
    port: u16,
    /// The metrics listener: it must pass to the new process like the data plane's.
    metrics_port: u16,
    config: std::path::PathBuf,
}

fn setup(mock: &Mock) -> Setup {
    let dir = scratch_dir();
    let port = free_port();
    let metrics_port = free_port();
    let d = dir.display();
    let text = format!(
        "server:\n  threads: 2\n  pid_file: {d}/aigate.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: 5\n  graceful_shutdown_timeout_seconds: 10\n\
         gateway:\n  listen: 127.0.0.1:{port}\n  metrics: {{ listen: \"127.0.0.1:{metrics_port}\" }}\n  data_dir: {d}/data\n  access_log:\n    path: {d}/access.log\n    format: '$request_uri $status $llm_total_tokens'\n\
         routes:\n  - id: chat\n    uri: /chat/*\n    plugins:\n      ai-proxy:\n        provider: openai-compatible\n        auth: {{ header: {{ Authorization: \"Bearer k\" }} }}\n        override: {{ endpoint: \"{}\" }}\n",
        mock.chat_url()
    );
    let config = dir.join("config.yaml");
    std::fs::write(&config, text).unwrap();
    Setup {
        dir,
        port,
        metrics_port,
        config,
    }
}

fn spawn(s: &Setup, upgrade: bool, n: usize) -> Child {
    let mut cmd = Command::new(AIGATE);
    cmd.arg("-c").arg(&s.config);
    if upgrade {
        cmd.arg("-u");
    }
    cmd.env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(s.dir.join(format!("error-{n}.log"))).unwrap())
        .spawn()
        .expect("start aigate")
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// Wait (bounded) for a process to exit; its exit status.
fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process {} still running",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Client threads sending requests on fresh connections until told to stop: (sent, failures).
fn steady_loop(port: u16, stop: Arc<AtomicBool>) -> Vec<JoinHandle<(usize, Vec<String>)>> {
    (0..3)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut sent, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let r = request(
                        port,
                        "POST",
                        &format!("/chat/loop-{t}"),
                        &[("content-type", "application/json")],
                        chat_body("hi").to_string().as_bytes(),
                    );
                    sent += 1;
                    if r.status != 200 {
                        failed.push(format!("{} {}", r.status, r.text()));
                    }
                }
                (sent, failed)
            })
        })
        .collect()
}

/// A stream of `chunks` events `delay_ms` apart on `/chat/stream-<i>`.
fn stream(port: u16, i: usize, chunks: u32, delay_ms: u32) -> JoinHandle<Resp> {
    std::thread::spawn(move || {
        let mut body = chat_body("tell me a story");
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        request(
            port,
            "POST",
            &format!("/chat/stream-{i}"),
            &[
                ("content-type", "application/json"),
                ("x-mock-chunks", &chunks.to_string()),
                ("x-mock-chunk-delay-ms", &delay_ms.to_string()),
            ],
            body.to_string().as_bytes(),
        )
    })
}

fn assert_whole_stream(r: &Resp, i: usize) {
    assert_eq!(r.status, 200, "stream {i}: {}", r.text());
    let text = r.text();
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "stream {i} was cut: {text}"
    );
    assert!(
        text.contains("\"usage\""),
        "stream {i} has no usage: {text}"
    );
}

#[test]
fn two_upgrades_in_a_row_under_load_drop_nothing_and_cut_no_stream() {
    let mock = Mock::start("m");
    let s = setup(&mock);
    let mut old = spawn(&s, false, 0);
    wait_listening(s.port);

    let stop = Arc::new(AtomicBool::new(false));
    let loops = steady_loop(s.port, stop.clone());
    let streams_done = Arc::new(AtomicUsize::new(0));
    let mut streams = Vec::new();
    let mut n = 0;
    for round in 1..=2 {
        // Long streams (2.4 s) in flight on the old process when it hands over.
        for _ in 0..3 {
            streams.push((n, stream(s.port, n, 12, 200)));
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(400));
        let new = spawn(&s, true, round);
        // The new process waits on upgrade_sock for the listeners; the old sends them on SIGQUIT.
        std::thread::sleep(Duration::from_millis(500));
        signal(&old, libc::SIGQUIT);
        // The old one finishes its streams, then exits (grace period 5 s).
        let status = wait_exit(&mut old, Duration::from_secs(20));
        assert!(status.success(), "old process exited with {status}");
        old = new;
        // The metrics listener came over too, and it is the new process's.
        let r = request(s.metrics_port, "GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200);
        assert!(r.text().contains("aigate_http_status{"), "{}", r.text());
    }
    // The last process still serves, then everything stops.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failed) = (0, Vec::new());
    for l in loops {
        let (s, f) = l.join().unwrap();
        sent += s;
        failed.extend(f);
    }
    for (i, h) in streams {
        assert_whole_stream(&h.join().unwrap(), i);
        streams_done.fetch_add(1, Ordering::Relaxed);
    }
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(sent > 50, "only {sent} requests sent");
    assert_eq!(streams_done.load(Ordering::Relaxed), 6);

    // Every stream is in the access log exactly once, with its tokens.
    signal(&old, libc::SIGTERM);
    wait_exit(&mut old, Duration::from_secs(20));
    let log = std::fs::read_to_string(s.dir.join("access.log")).unwrap();
    for i in 0..6 {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with(&format!("/chat/stream-{i} ")))
            .collect();
        assert_eq!(lines.len(), 1, "stream {i}: {lines:?}");
        let tokens: u64 = lines[0].rsplit(' ').next().unwrap().parse().unwrap_or(0);
        assert!(tokens > 0, "{}", lines[0]);
    }
    let logged = log.lines().filter(|l| l.starts_with("/chat/loop-")).count();
    assert_eq!(logged, sent, "every loop request logged once");
}

#[test]
fn sigterm_lets_streams_in_flight_finish_within_the_grace_period() {
    let mock = Mock::start("m");
    let s = setup(&mock);
    let mut gw = spawn(&s, false, 0);
    wait_listening(s.port);
    let streams: Vec<_> = (0..3).map(|i| stream(s.port, i, 10, 200)).collect();
    std::thread::sleep(Duration::from_millis(400));
    let t = Instant::now();
    signal(&gw, libc::SIGTERM);
    let status = wait_exit(&mut gw, Duration::from_secs(20));
    let took = t.elapsed();
    assert!(status.success(), "{status}");
    // The streams in flight (2 s) finished whole; the process left after the grace period (5 s:
    // Pingora waits it in full) and well within its shutdown timeout.
    for (i, h) in streams.into_iter().enumerate() {
        assert_whole_stream(&h.join().unwrap(), i);
    }
    assert!(took < Duration::from_secs(9), "{took:?}");
}

/// An idle keep-alive connection closes as soon as shutdown starts, so its client reconnects (to
/// the new process, after an upgrade) at once, not after its `keepalive_timeout` (75 s here) or
/// the grace period (5 s). A connection waits for shutdown on one registration for its whole
/// life (`downstream::stop`): one of these has served several requests before it idles.
#[test]
fn idle_keepalive_connections_close_as_soon_as_shutdown_starts() {
    let mock = Mock::start("m");
    let s = setup(&mock);
    let mut gw = spawn(&s, false, 0);
    wait_listening(s.port);
    let body = chat_body("hi").to_string();
    let mut conns: Vec<Conn> = (0..2).map(|_| Conn::open(s.port)).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        for j in 0..1 + i * 3 {
            let r = c.request(
                "POST",
                &format!("/chat/idle-{i}-{j}"),
                &[("content-type", "application/json")],
                body.as_bytes(),
            );
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    signal(&gw, libc::SIGTERM);
    for c in &mut conns {
        assert!(c.wait_closed(), "an idle connection was left open");
    }
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(wait_exit(&mut gw, Duration::from_secs(20)).success());
}
