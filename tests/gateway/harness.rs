//! Test harness: the real `aigate` binary and the real `aigate-mock` LLM server as child
//! processes on free loopback ports, and a small HTTP/1.1 client that shows exactly what a client
//! sees (status, headers, body, and when each piece of a stream arrived).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const AIGATE: &str = env!("CARGO_BIN_EXE_aigate");
pub const MOCK: &str = env!("CARGO_BIN_EXE_aigate-mock");

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port nothing listens on (for "provider unreachable").
pub fn closed_port() -> u16 {
    free_port()
}

pub fn scratch_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "aigate-test-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        now_ms()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------------------------------------
// The mock LLM server

pub struct Mock {
    pub port: u16,
    /// The HTTPS listener's port (mocks started with `start_tls`).
    pub tls_port: Option<u16>,
    pub name: String,
    /// The address it listens on (127.0.0.1 unless started with `start_at`).
    pub ip: std::net::IpAddr,
    child: Child,
}

impl Mock {
    pub fn start(name: &str) -> Mock {
        Self::start_with(name, &[])
    }

    pub fn start_with(name: &str, args: &[&str]) -> Mock {
        Self::spawn(name, "127.0.0.1:0", args, false)
    }

    /// A mock listening on `listen` (e.g. `[::1]:8000`, or another loopback address).
    pub fn start_at(name: &str, listen: &str, args: &[&str]) -> Mock {
        Self::spawn(name, listen, args, false)
    }

    /// A mock that also serves HTTPS with this certificate chain and key (PEM files); the control
    /// API stays reachable over plain HTTP on `port`.
    pub fn start_tls(
        name: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
        args: &[&str],
    ) -> Mock {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let mut all = vec!["--tls-listen", "127.0.0.1:0", "--tls-cert", cert];
        all.extend(["--tls-key", key]);
        all.extend_from_slice(args);
        Self::spawn(name, "127.0.0.1:0", &all, true)
    }

    fn spawn(name: &str, listen: &str, args: &[&str], tls: bool) -> Mock {
        let mut child = Command::new(MOCK)
            .args(["--listen", listen, "--name", name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aigate-mock");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut read_addr = |expected: &str| -> std::net::SocketAddr {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert!(
                line.starts_with(expected),
                "aigate-mock printed {line:?}, expected {expected:?}"
            );
            line.trim().rsplit(' ').next().unwrap().parse().unwrap()
        };
        let addr = read_addr("aigate-mock listening on ");
        let tls_port = tls.then(|| read_addr("aigate-mock tls listening on ").port());
        Mock {
            port: addr.port(),
            tls_port,
            name: name.to_string(),
            ip: addr.ip(),
            child,
        }
    }

    fn control(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        Conn::open_addr(std::net::SocketAddr::new(self.ip, self.port))
            .request(method, path, headers, body)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn chat_url(&self) -> String {
        self.url("/v1/chat/completions")
    }

    /// `https://HOST:TLS_PORT/PATH` (`host` is what the gateway connects to and verifies).
    pub fn tls_url(&self, host: &str, path: &str) -> String {
        let port = self
            .tls_port
            .expect("the mock was not started with start_tls");
        format!("https://{host}:{port}{path}")
    }

    /// Every request the mock received, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        let r = self.control("GET", "/_mock/requests", &[], b"");
        serde_json::from_slice::<Value>(&r.body)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The requests the mock received, excluding token calls and health probes.
    pub fn llm_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| {
                let p = r["path"].as_str().unwrap_or("");
                !p.ends_with("/token") && p != "/health"
            })
            .collect()
    }

    pub fn last(&self) -> Value {
        self.llm_requests()
            .pop()
            .expect("the mock received no request")
    }

    pub fn set(&self, defaults: Value) {
        let r = self.control(
            "POST",
            "/_mock/config",
            &[("content-type", "application/json")],
            defaults.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway

pub struct Gateway {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

#[derive(Default)]
pub struct GatewayOpts<'a> {
    /// `gateway.access_log.format`.
    pub log_format: Option<&'a str>,
    /// Extra lines under `gateway:` (indented by the caller with 2 spaces).
    pub gateway_extra: &'a str,
    /// Extra lines under `server:` (indented by the caller with 2 spaces).
    pub server_extra: &'a str,
    pub env: Vec<(&'a str, String)>,
    /// Start the gateway with this soft `RLIMIT_NOFILE` (the hard limit stays).
    pub soft_nofile: Option<u64>,
}

/// Write a full config file around `resources` (the `routes:`/`services:` YAML).
pub fn config_text(
    port: u16,
    dir: &std::path::Path,
    resources: &str,
    opts: &GatewayOpts,
) -> String {
    let format = opts
        .log_format
        .map(|f| format!("    format: '{}'\n", f.replace('\'', "''")))
        .unwrap_or_default();
    format!(
        "server:\n  threads: 2\n  pid_file: {d}/aigate.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n{server_extra}\
         gateway:\n  listen: 127.0.0.1:{port}\n{data_dir}  access_log:\n    path: {d}/access.log\n{format}{extra}\n{resources}\n",
        d = dir.display(),
        // Each gateway keeps the admin API's changes in its own directory, unless told.
        data_dir = if opts.gateway_extra.contains("data_dir:") {
            String::new()
        } else {
            format!("  data_dir: {}/data\n", dir.display())
        },
        extra = opts.gateway_extra,
        server_extra = opts.server_extra,
    )
}

impl Gateway {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(resources: &str) -> Gateway {
        Self::start_with(resources, GatewayOpts::default())
    }

    pub fn start_with(resources: &str, opts: GatewayOpts) -> Gateway {
        Self::launch(|dir, port, cmd| {
            std::fs::write(
                dir.join("config.yaml"),
                config_text(port, dir, resources, &opts),
            )
            .unwrap();
            cmd.arg("-c").arg(dir.join("config.yaml"));
            for (k, v) in &opts.env {
                cmd.env(k, v);
            }
            if let Some(n) = opts.soft_nofile {
                use std::os::unix::process::CommandExt;
                // SAFETY: only async-signal-safe libc calls between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        let mut lim = libc::rlimit {
                            rlim_cur: 0,
                            rlim_max: 0,
                        };
                        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                        lim.rlim_cur = n.min(lim.rlim_max);
                        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                        Ok(())
                    });
                }
            }
        })
    }

    /// Start from an existing config file whose listen address and access log come from the env
    /// variables `AIGATE_LISTEN` and `AIGATE_ACCESS_LOG` (like `conf/examples/seeds.yaml`).
    pub fn start_file(path: &str, env: &[(&str, String)]) -> Gateway {
        Self::launch(|dir, port, cmd| {
            cmd.arg("-c").arg(path);
            cmd.env("AIGATE_LISTEN", format!("127.0.0.1:{port}"));
            cmd.env("AIGATE_ACCESS_LOG", dir.join("access.log"));
            for (k, v) in env {
                cmd.env(k, v);
            }
        })
    }

    /// Spawn aigate on a free port (set up by `prepare`) and wait until it listens. A parallel test
    /// can take the port between picking and binding it, so a failed start is retried.
    fn launch(prepare: impl Fn(&std::path::Path, u16, &mut Command)) -> Gateway {
        let mut last_err = String::new();
        for _ in 0..3 {
            let dir = scratch_dir();
            let port = free_port();
            let mut cmd = Command::new(AIGATE);
            cmd.env("RUST_LOG", "warn");
            prepare(&dir, port, &mut cmd);
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("error.log")).unwrap())
                .spawn()
                .expect("start aigate");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Gateway { port, dir, child };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    last_err = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("aigate did not start listening");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("aigate failed to start: {last_err}");
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(self.port, "POST", path, headers, body)
    }

    /// POST JSON with `Content-Type: application/json`.
    pub fn chat(&self, path: &str, body: &Value) -> Resp {
        self.post(
            path,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    pub fn chat_with(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Resp {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        self.post(path, &h, body.to_string().as_bytes())
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// Wait until the access log has `n` lines (it is written off the request path).
    pub fn log_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines: Vec<String> = self.access_log().lines().map(str::to_string).collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (graceful shutdown) and wait for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "aigate did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run `aigate -t` on a config; returns (success, stdout+stderr).
pub fn check_config(text: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = scratch_dir();
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(AIGATE);
    cmd.arg("-c").arg(&path).arg("-t");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Arrival time (unix ms) and bytes of each read of the body.
    pub reads: Vec<(u64, Vec<u8>)>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// The `data:` payloads of an SSE body.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split('\n')
            .filter_map(|l| {
                l.trim_end_matches('\r')
                    .strip_prefix("data:")
                    .map(|d| d.trim().to_string())
            })
            .collect()
    }

    /// Assert an OpenAI-shaped error with this status and return its `error` object.
    pub fn openai_error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        let e = v["error"].clone();
        assert!(
            e["message"].is_string() && e["type"].is_string() && !e["code"].is_null(),
            "{v}"
        );
        e
    }
}

/// A keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(port: u16) -> Conn {
        Self::open_addr(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    pub fn open_addr(addr: std::net::SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Block until the server closes the connection (or 30 s pass); true if it closed.
    pub fn wait_closed(&mut self) -> bool {
        let mut tmp = [0u8; 4096];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut head = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str("Host: 127.0.0.1\r\n");
        }
        let mut has_len = false;
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("content-length")
                || k.eq_ignore_ascii_case("transfer-encoding")
            {
                has_len = true;
            }
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !has_len && (!body.is_empty() || method == "POST") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        self.stream.write_all(&out).unwrap();
        self.read_response()
    }

    pub fn read_response(&mut self) -> Resp {
        let (status, headers) = loop {
            let (status, headers) = self.read_head();
            if status != 100 {
                break (status, headers);
            }
        };
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        let mut reads = Vec::new();
        if let Some(cl) = get("content-length") {
            let n: usize = cl.trim().parse().unwrap();
            while body.len() < n {
                if self.buf.is_empty() {
                    self.fill(&mut reads);
                }
                let take = (n - body.len()).min(self.buf.len());
                body.extend(self.buf.drain(..take));
            }
        } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let line = self.read_line(&mut reads);
                let size =
                    usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
                if size == 0 {
                    // trailers until the empty line
                    while !self.read_line(&mut reads).is_empty() {}
                    break;
                }
                while self.buf.len() < size + 2 {
                    self.fill(&mut reads);
                }
                body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
            }
        } else if status != 204 && status != 304 {
            loop {
                let mut tmp = [0u8; 65536];
                match self.stream.read(&mut tmp) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        reads.push((now_ms(), tmp[..n].to_vec()));
                        self.buf.extend_from_slice(&tmp[..n]);
                    }
                }
            }
            body = std::mem::take(&mut self.buf);
        }
        Resp {
            status,
            headers,
            body,
            reads,
        }
    }

    fn fill(&mut self, reads: &mut Vec<(u64, Vec<u8>)>) {
        let mut tmp = [0u8; 65536];
        let n = self.stream.read(&mut tmp).expect("read");
        assert!(n > 0, "connection closed early");
        reads.push((now_ms(), tmp[..n].to_vec()));
        self.buf.extend_from_slice(&tmp[..n]);
    }

    fn read_line(&mut self, reads: &mut Vec<(u64, Vec<u8>)>) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).to_string();
                self.buf.drain(..i + 2);
                return line;
            }
            self.fill(reads);
        }
    }

    fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let mut sink = Vec::new();
        let status_line = self.read_line(&mut sink);
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"))
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            let l = self.read_line(&mut sink);
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        (status, headers)
    }
}

/// Wait (at most 10 s) until something listens on `port` (an admin API, a gateway started by
/// hand).
pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request on a fresh connection.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    Conn::open(port).request(method, path, headers, body)
}

/// `routes:` with one ai-proxy route `chat` on `/v1/chat/completions` to an OpenAI-compatible
/// `endpoint`, authenticated with `Bearer <key>`; `plugin_extra` adds plugin fields, one a line
/// (e.g. `"options: { model: m }"`).
pub fn chat_route(endpoint: &str, key: &str, plugin_extra: &[&str]) -> String {
    let mut s = format!(
        "routes:\n  - id: chat\n    uri: /v1/chat/completions\n    plugins:\n      ai-proxy:\n        provider: openai-compatible\n        auth: {{ header: {{ Authorization: \"Bearer {key}\" }} }}\n        override: {{ endpoint: \"{endpoint}\" }}\n"
    );
    for line in plugin_extra {
        s.push_str("        ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// A chat body with one user message.
pub fn chat_body(text: &str) -> Value {
    serde_json::json!({"messages": [{"role": "user", "content": text}]})
}

/// Split an access log line into whitespace-separated fields, keeping "quoted strings" and
/// [bracketed] times whole.
pub fn log_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                out.push(std::mem::take(&mut cur));
            }
            Some(_) => cur.push(c),
            None if c == '"' => quote = Some('"'),
            None if c == '[' => quote = Some(']'),
            None if c == ' ' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}
