//! Redis for tests: a real `redis-server` child process on a free loopback port, without
//! persistence (`--save '' --appendonly no`), that a test can kill and restart on the same port;
//! a single-node or two-node Redis Cluster made of them; a TCP listener that accepts and never
//! answers (a hung Redis); a capture of the gateway library's log lines; and a small in-process
//! `QuotaStore` to degrade to. Usable from any test in this binary: a test that runs aigate
//! processes against Redis passes `RedisServer::port` into the config.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aigate::quota::{Admission, Limit, Quota, QuotaStore, StoreError, Ticket};
use async_trait::async_trait;

use crate::harness::{free_port, scratch_dir};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    /// Serves TLS only (`--port 0 --tls-port PORT`).
    tls: bool,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// With extra `redis-server` arguments (`["--requirepass", "pw"]`).
    pub fn start_with(args: &[&str]) -> RedisServer {
        Self::launch(args, false)
    }

    /// Serving TLS only on `port`, with this certificate and key (PEM files); clients need no
    /// certificate of their own.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> RedisServer {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let args = ["--tls-cert-file", cert, "--tls-key-file", key];
        Self::launch(&[&args[..], &["--tls-auth-clients", "no"]].concat(), true)
    }

    fn launch(args: &[&str], tls: bool) -> RedisServer {
        let dir = scratch_dir();
        // A free port can be taken by another test before redis-server binds it: try another.
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: dir.clone(),
                args: args.iter().map(|a| a.to_string()).collect(),
                tls,
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start; its log: {}", log_of(&dir));
    }

    /// Start on `self.port`; false when the process exited (the port was taken).
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let logfile = self.dir.join(format!("redis-{port}.log"));
        let ports = match self.tls {
            false => ["--port", &port, "--tls-port", "0"],
            true => ["--port", "0", "--tls-port", &port],
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&logfile)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-server (is it installed? .ci/run installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                eprintln!("redis-server on {port} exited: {status}");
                self.child = None;
                return false;
            }
            // A TLS server is ready when it listens (the PING check speaks plain RESP).
            let ready = match self.tls {
                false => answers(self.port),
                true => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            };
            if ready {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on {port} did not answer in 10 s");
    }

    /// SIGKILL: the server is gone at once, connections reset, data lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server could not get port {} back",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A plain connection for checking what the store wrote (with `AUTH` when `password`).
    pub fn client(&self, password: Option<&str>) -> redis::Connection {
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => self.url(),
        };
        let client = redis::Client::open(url).unwrap();
        client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    /// Run one command and return its answer.
    pub fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut self.client(None)).unwrap()
    }

    /// The value of a counter key (0 when absent).
    pub fn counter(&self, key: &str) -> i64 {
        self.command::<Option<i64>>(&["GET", key]).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        log_of(&self.dir)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

/// Anything answers `PING` (`+PONG`, or `-NOAUTH` from a server with a password).
fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 1];
    s.write_all(b"PING\r\n").is_ok()
        && matches!(s.read(&mut buf), Ok(1) if matches!(buf[0], b'+' | b'-'))
}

// ---------------------------------------------------------------------------------------------
// Redis Cluster

/// Redis Cluster nodes, each a `redis-server --cluster-enabled yes`, the 16384 slots split
/// evenly between them, joined with `CLUSTER MEET`, ready when every node says `cluster_state:ok`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                let dir_conf = format!("nodes-{}.conf", fastrand::u64(..));
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &dir_conf,
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let per = 16384 / n;
        for (i, node) in nodes.iter().enumerate() {
            let first = i * per;
            let last = if i == n - 1 { 16383 } else { first + per - 1 };
            let _: () = node.command(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ]);
        }
        for node in &nodes[1..] {
            let _: () = node.command(&["CLUSTER", "MEET", "127.0.0.1", &nodes[0].port.to_string()]);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info: String = node.command(&["CLUSTER", "INFO"]);
                let known = info.contains(&format!("cluster_known_nodes:{n}"));
                if info.contains("cluster_state:ok") && known {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster not ready: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// `redis_cluster_nodes`: every node.
    pub fn node_list(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// The node that holds `key`'s slot.
    pub fn node_of(&self, key: &str) -> &RedisServer {
        let slot: i64 = self.nodes[0].command(&["CLUSTER", "KEYSLOT", key]);
        let per = (16384 / self.nodes.len()) as i64;
        &self.nodes[((slot / per) as usize).min(self.nodes.len() - 1)]
    }
}

// ---------------------------------------------------------------------------------------------
// A hung Redis

/// Accepts connections and reads what they send, and never answers (a Redis stuck in a long
/// command, a half-dead proxy in front of one). Stops when dropped.
pub struct Silent {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            let mut buf = [0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((s, _)) = listener.accept() {
                    s.set_nonblocking(true).unwrap();
                    conns.push(s);
                }
                // Read (so the client's writes never block), answer nothing.
                for c in &mut conns {
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Silent {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The library's log lines

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        if record.target().starts_with("aigate") {
            let line = format!("{} {}", record.level(), record.args());
            LINES.lock().unwrap().push(line);
        }
    }
    fn flush(&self) {}
}

/// Route the `log` records of code running in this test process (the aigate library) to a
/// buffer. Tests share it: filter by something only yours has (a port).
pub fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_boxed_logger(Box::new(Capture)).expect("no other logger in the test binary");
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// Captured lines that contain `needle`.
pub fn logs_with(needle: &str) -> Vec<String> {
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// Every captured line.
pub fn all_logs() -> Vec<String> {
    LINES.lock().unwrap().clone()
}

// ---------------------------------------------------------------------------------------------
// An in-process store to degrade to

/// A plain in-process `QuotaStore` (fixed windows on this process's clock), standing in for the
/// plugin's local store in store-level tests.
#[derive(Default)]
pub struct MemStore {
    counts: Mutex<HashMap<(String, u64), u64>>,
}

impl MemStore {
    fn window(limit: &Limit) -> (u64, Duration) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let w = limit.window.as_millis().max(1) as u64;
        let now = now.as_millis() as u64;
        (now / w, Duration::from_millis(w - now % w))
    }

    /// The current window's count of `key`.
    pub fn count(&self, key: &str, limit: &Limit) -> u64 {
        let (w, _) = Self::window(limit);
        let counts = self.counts.lock().unwrap();
        counts.get(&(key.to_string(), w)).copied().unwrap_or(0)
    }
}

#[async_trait]
impl QuotaStore for MemStore {
    async fn reserve(&self, key: &str, limit: Limit, amount: u64) -> Result<Admission, StoreError> {
        let (w, reset) = Self::window(&limit);
        let mut counts = self.counts.lock().unwrap();
        let count = counts.entry((key.to_string(), w)).or_default();
        let quota = |count: u64| Quota {
            limit: limit.count,
            remaining: limit.count.saturating_sub(count),
            reset,
        };
        if *count >= limit.count {
            return Ok(Admission::Rejected {
                quota: quota(*count),
            });
        }
        *count += amount;
        Ok(Admission::Admitted {
            quota: quota(*count),
            ticket: Ticket {
                key: key.into(),
                limit,
                reserved: amount,
                window: w,
            },
        })
    }

    fn settle(&self, ticket: Ticket, actual: u64) {
        let (w, _) = Self::window(&ticket.limit);
        let mut counts = self.counts.lock().unwrap();
        let count = counts.entry((ticket.key.to_string(), w)).or_default();
        if w == ticket.window {
            *count = (*count + actual).saturating_sub(ticket.reserved);
        } else {
            *count += actual;
        }
    }

    async fn spent(&self, key: &str, limit: Limit) -> Result<bool, StoreError> {
        Ok(self.count(key, &limit) >= limit.count)
    }
}
