//! Time to the first streamed byte, for the whole-gateway benchmark (`benches/wrk/run`).
//!
//! ```text
//! ttfb --addr 127.0.0.1:9080 [--path /v1/chat/completions] [-n 200] [--warmup 20]
//!      [--header 'apikey: k']... [--model gpt-4o-mini]
//! ```
//!
//! Sends N streaming chat requests (`"stream": true`) one after the other on one kept-alive
//! connection (a new one only if the server closes it) and times, for each, from the moment the
//! request is written to the moment the first byte of the answer's *body* arrives: the first
//! SSE event, not the response header. Chunked, `Content-Length` and close-delimited answers are
//! read to their end before the next request. Prints one line:
//!
//! ```text
//! ttfb n=200 p50_us=412 p99_us=655 mean_us=431 min_us=380 max_us=900 errors=0
//! ```
//!
//! Run it against the mock directly and through each proxy: a proxy's added time to first byte
//! is its p50 minus the mock's. Plain std TCP (no HTTP library, nothing that buffers).
//! Exits 1 if any answer is not a 200 with a body.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

struct Args {
    addr: String,
    path: String,
    n: usize,
    warmup: usize,
    headers: Vec<String>,
    model: String,
}

const USAGE: &str = "usage: ttfb --addr HOST:PORT [--path P] [-n N] [--warmup W] \
                     [--header 'Name: value']... [--model M]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        addr: String::new(),
        path: "/v1/chat/completions".into(),
        n: 200,
        warmup: 20,
        headers: Vec::new(),
        model: "gpt-4o-mini".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--addr" => a.addr = value()?,
            "--path" => a.path = value()?,
            "-n" => a.n = value()?.parse().map_err(|e| format!("-n: {e}"))?,
            "--warmup" => a.warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--header" => a.headers.push(value()?),
            "--model" => a.model = value()?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.addr.is_empty() {
        return Err("--addr is required".into());
    }
    if a.n == 0 {
        return Err("-n must be at least 1".into());
    }
    Ok(a)
}

/// One HTTP/1.1 connection with a read buffer that survives between answers.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed.
    pos: usize,
}

/// What one request gave.
struct Answer {
    status: u16,
    ttfb: Duration,
    body_bytes: usize,
    keep_alive: bool,
}

impl Conn {
    fn open(addr: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
        })
    }

    /// Read more bytes into the buffer; `Ok(false)` at end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// A line ending in CRLF (returned without it), reading as needed.
    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.unread().windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.unread()[..i]).into_owned();
                self.pos += i + 2;
                return Ok(line);
            }
            if !self.fill()? {
                return Err(eof("inside a line"));
            }
        }
    }

    /// Wait until at least one unread byte is buffered; `Ok(false)` at end of stream.
    fn want_byte(&mut self) -> io::Result<bool> {
        while self.unread().is_empty() {
            if !self.fill()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Consume up to `n` buffered bytes (at least one is buffered), returning how many.
    fn take(&mut self, n: usize) -> usize {
        let k = n.min(self.unread().len());
        self.pos += k;
        k
    }

    fn request(&mut self, req: &[u8]) -> io::Result<Answer> {
        let start = Instant::now();
        self.stream.write_all(req)?;
        let status_line = self.line()?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let http10 = status_line.starts_with("HTTP/1.0");
        let mut chunked = false;
        let mut length: Option<usize> = None;
        let mut close = http10;
        loop {
            let line = self.line()?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "transfer-encoding" => chunked = value.contains("chunked"),
                "content-length" => length = value.parse().ok(),
                "connection" if value.contains("close") => close = true,
                "connection" if value.contains("keep-alive") => close = false,
                _ => {}
            }
        }
        let mut first: Option<Duration> = None;
        let mut body_bytes = 0;
        // The first body byte is seen when `want_byte` returns with it buffered.
        let mark = |first: &mut Option<Duration>| {
            if first.is_none() {
                *first = Some(start.elapsed());
            }
        };
        if chunked {
            loop {
                let size_line = self.line()?;
                let size_hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| bad(format!("bad chunk size {size_line:?}")))?;
                if size == 0 {
                    // Trailers, if any, then the blank line.
                    while !self.line()?.is_empty() {}
                    break;
                }
                let mut left = size;
                while left > 0 {
                    if !self.want_byte()? {
                        return Err(eof("inside a chunk"));
                    }
                    mark(&mut first);
                    left -= self.take(left);
                }
                body_bytes += size;
                if !self.line()?.is_empty() {
                    return Err(bad("chunk not followed by CRLF".into()));
                }
            }
        } else if let Some(len) = length {
            let mut left = len;
            while left > 0 {
                if !self.want_byte()? {
                    return Err(eof("inside the body"));
                }
                mark(&mut first);
                left -= self.take(left);
            }
            body_bytes = len;
        } else {
            // Delimited by the connection's end.
            close = true;
            while self.want_byte()? {
                mark(&mut first);
                body_bytes += self.take(usize::MAX);
            }
        }
        Ok(Answer {
            status,
            ttfb: first.unwrap_or_else(|| start.elapsed()),
            body_bytes,
            keep_alive: !close,
        })
    }
}

fn eof(at: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed {at}"),
    )
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("ttfb: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let body = format!(
        r#"{{"model":"{}","stream":true,"messages":[{{"role":"user","content":"Say hello in a few words, please."}}]}}"#,
        args.model
    );
    let host = args.addr.clone();
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nContent-Length: {}\r\n",
        args.path,
        body.len()
    );
    for h in &args.headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let req = req.into_bytes();

    let mut conn: Option<Conn> = None;
    let mut samples = Vec::with_capacity(args.n);
    let mut errors = 0usize;
    let mut first_error: Option<String> = None;
    for i in 0..args.warmup + args.n {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(&args.addr) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    eprintln!("ttfb: cannot connect to {}: {e}", args.addr);
                    return ExitCode::FAILURE;
                }
            },
        };
        match c.request(&req) {
            Ok(a) if a.status == 200 && a.body_bytes > 0 => {
                if i >= args.warmup {
                    samples.push(a.ttfb.as_micros() as u64);
                }
                if !a.keep_alive {
                    conn = None;
                }
            }
            Ok(a) => {
                errors += 1;
                first_error.get_or_insert(format!(
                    "status {} with {} body bytes",
                    a.status, a.body_bytes
                ));
                if !a.keep_alive {
                    conn = None;
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
                conn = None;
            }
        }
    }
    if samples.is_empty() {
        eprintln!(
            "ttfb: no successful answer from {}{} ({})",
            args.addr,
            args.path,
            first_error.unwrap_or_default()
        );
        return ExitCode::FAILURE;
    }
    samples.sort_unstable();
    let mean = samples.iter().sum::<u64>() / samples.len() as u64;
    println!(
        "ttfb n={} p50_us={} p99_us={} mean_us={} min_us={} max_us={} errors={}",
        samples.len(),
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        mean,
        samples[0],
        samples[samples.len() - 1],
        errors
    );
    if let Some(e) = first_error {
        eprintln!("ttfb: {errors} failed request(s), the first: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
