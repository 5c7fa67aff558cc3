//! etcd for tests: a real `etcd` child process (Debian's `etcd-server`) on free loopback client
//! and peer ports with a scratch data directory, that a test can kill, pause (SIGSTOP: a hung
//! etcd) and restart on the same ports and the same data; and a tiny HTTP/1.1 client for the
//! calls the aigate client does not make (compaction, transactions, turning auth on).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{free_port, scratch_dir};

/// How long etcd may take to answer `/health` after starting (a busy 2-core machine).
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct EtcdServer {
    /// The client port (`http://127.0.0.1:PORT`).
    pub port: u16,
    pub peer_port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        Self::start_with(&[])
    }

    /// With extra `etcd` flags (`["--auth-token-ttl", "1"]`).
    pub fn start_with(args: &[&str]) -> EtcdServer {
        let dir = scratch_dir();
        // A free port can be taken by another test before etcd binds it: try others.
        for _ in 0..5 {
            let mut server = EtcdServer {
                port: free_port(),
                peer_port: free_port(),
                dir: dir.clone(),
                args: args.iter().map(|a| a.to_string()).collect(),
                child: None,
            };
            if server.spawn() {
                return server;
            }
            let _ = std::fs::remove_dir_all(dir.join("data"));
        }
        panic!("etcd did not start; its log: {}", log_of(&dir));
    }

    /// Start on `self.port`; false when the process exited (a port was taken).
    fn spawn(&mut self) -> bool {
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "default"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(["--logger", "zap", "--log-level", "warn"])
            .arg("--log-outputs")
            .arg(self.dir.join(format!("etcd-{}.log", self.port)))
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd (is etcd-server installed? .ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                eprintln!("etcd on {} exited: {status}", self.port);
                self.child = None;
                return false;
            }
            if self.healthy() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "etcd on {} not healthy in {READY_WITHIN:?}; its log: {}",
            self.port,
            self.log()
        );
    }

    fn healthy(&self) -> bool {
        matches!(
            request(self.port, "GET", "/health", "", None, Duration::from_secs(2)),
            Ok((200, body)) if body.contains(r#""health":"true""#)
        )
    }

    /// SIGKILL: gone at once, connections reset; what was committed stays in the data dir.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_WITHIN;
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "etcd could not get ports {}/{} back; its log: {}",
                self.port,
                self.peer_port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGSTOP: connections stay open and new ones are accepted by the kernel, but nothing is
    /// answered (a hung etcd or a machine gone silent).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("etcd is running").id();
        // SAFETY: a plain kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// POST a JSON body to the gateway; the answer's status and JSON (panics when etcd cannot
    /// be reached).
    pub fn post(&self, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
        let (status, text) = request(
            self.port,
            "POST",
            path,
            &body.to_string(),
            token,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("POST {path} to etcd on {}: {e}", self.port));
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// POST that must answer 200.
    pub fn post_ok(&self, path: &str, body: Value, token: Option<&str>) -> Value {
        let (status, v) = self.post(path, body, token);
        assert_eq!(status, 200, "POST {path}: {v}");
        v
    }

    /// Compacts the history up to `revision`, physically (`physical`: done when it answers).
    pub fn compact(&self, revision: i64) {
        self.post_ok(
            "/v3/kv/compaction",
            json!({"revision": revision.to_string(), "physical": true}),
            None,
        );
    }

    /// Several puts (and deletes, `value: None`) in one transaction: one revision, one watch
    /// response with all their events. Keys are full etcd keys.
    pub fn txn(&self, ops: &[(&str, Option<&[u8]>)]) -> i64 {
        let success: Vec<Value> = ops
            .iter()
            .map(|(k, v)| match v {
                Some(v) => json!({"request_put": {"key": b64(k.as_bytes()), "value": b64(v)}}),
                None => json!({"request_delete_range": {"key": b64(k.as_bytes())}}),
            })
            .collect();
        let v = self.post_ok("/v3/kv/txn", json!({ "success": success }), None);
        revision(&v)
    }

    /// Adds user `root` with `password`, grants it the root role, turns authentication on.
    pub fn enable_auth(&self, password: &str) {
        self.post_ok(
            "/v3/auth/user/add",
            json!({"name": "root", "password": password}),
            None,
        );
        self.post_ok(
            "/v3/auth/user/grant",
            json!({"user": "root", "role": "root"}),
            None,
        );
        self.post_ok("/v3/auth/enable", json!({}), None);
    }

    /// A token for `root`, as a client would get one.
    pub fn authenticate(&self, password: &str) -> String {
        let v = self.post_ok(
            "/v3/auth/authenticate",
            json!({"name": "root", "password": password}),
            None,
        );
        v["token"].as_str().unwrap().to_string()
    }

    pub fn log(&self) -> String {
        log_of(&self.dir)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `header.revision` of an answer.
pub fn revision(v: &Value) -> i64 {
    v["header"]["revision"].as_str().unwrap().parse().unwrap()
}

fn log_of(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().ends_with(".log") {
            out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    out
}

/// One HTTP/1.1 request on a new connection (`Connection: close`); the status and the body
/// (de-chunked).
fn request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n{auth}\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
