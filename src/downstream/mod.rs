//! The client side of the data plane: which connections are served, and how long a client may
//! take.
//!
//! Pingora reads a request header with a per-read timeout and a 1 MiB cap, so a client that
//! sends a byte every few seconds keeps its connection (and up to 1 MiB of buffer) forever, and
//! an idle keep-alive connection is only bounded per read as well. It has no limit on open
//! connections either. The header read happens before any `ProxyHttp` hook, so these limits sit
//! around the proxy: `Downstream` is a Pingora `ServerApp` that receives each accepted stream,
//! and for every request on it
//!
//! 1. admits the connection only under `max_connections` (else answers 503 and closes);
//! 2. waits for the request's first byte (a new connection: `client_header_timeout`; a kept-alive
//!    one: `keepalive_timeout`, or until shutdown), then reads until the end of the header within
//!    `client_header_timeout` of the first byte and `max_header_size` bytes (else 408 / 431 and
//!    close);
//! 3. hands the bytes read to Pingora's own HTTP/1 session as its pipelined prefix (so Pingora
//!    parses the complete header without reading again) with `client_body_timeout` as the
//!    per-read body timeout and `send_timeout` as the write timeout, and runs the proxy;
//! 4. loops while Pingora hands the connection back for keep-alive.
//!
//! A client that hangs up mid-header is normal traffic: it is logged at debug, not as an error.

pub mod fdlimit;
pub mod head;
pub mod stop;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use head::HeadEnd;

/// Client-side limits (`gateway.*`), validated.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub body_total_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub send_timeout: Duration,
    pub max_header_size: usize,
    pub max_connections: usize,
}

pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BODY_TOTAL_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
/// The largest `max_header_size` accepted (Pingora's own cap is 1 MiB).
pub const MAX_HEADER_SIZE_LIMIT: usize = 512 * 1024;

/// The first read of a request header (and the buffer's first size). 1 KiB holds the header of
/// nearly every API client (an OpenAI SDK sends ~600 bytes), and it is mimalloc's largest "small"
/// size, served from its thread-local free lists; 2 KiB was a "medium" allocation, taken from its
/// page queues on every request.
const FIRST_READ: usize = 1024;

/// How the header read ended.
enum Head {
    /// The complete header (and whatever followed it in the same reads).
    Ready(BytesMut),
    /// Nothing to answer: the client left, stayed idle past its bound, or we are shutting down.
    Gone,
    TimedOut,
    TooLarge,
}

/// A Pingora `ServerApp` that enforces `ClientLimits` around an HTTP app (the proxy).
pub struct Downstream<A> {
    app: Arc<A>,
    limits: ClientLimits,
    open: AtomicUsize,
    /// When (ms since start, plus one; 0 = never) the last "limit reached" warning was logged.
    last_refusal_log: AtomicU64,
    started: Instant,
}

impl<A> Downstream<A> {
    pub fn new(app: A, limits: ClientLimits) -> Downstream<A> {
        Downstream {
            app: Arc::new(app),
            limits,
            open: AtomicUsize::new(0),
            last_refusal_log: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Count the connection in, if there is room.
    fn admit(&self) -> Option<Slot<'_>> {
        let n = self.open.fetch_add(1, Ordering::AcqRel);
        if n >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(&self.open))
    }

    fn log_refusal(&self) {
        // At most one line a second: a flood must not become a flood of log lines.
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_refusal_log.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 1000)
            && self
                .last_refusal_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!(
                "gateway.max_connections ({}) reached: refusing new connections",
                self.limits.max_connections
            );
        }
    }
}

/// One admitted connection; leaving the count when dropped, on every path.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Downstream<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_slot) = self.admit() else {
            self.log_refusal();
            answer(
                &mut stream,
                503,
                "server_busy",
                "too many connections; retry later",
            )
            .await;
            return None;
        };
        let l = &self.limits;
        // One registration for the server's shutdown for the connection's life: see `stop`.
        let mut stop_rx = shutdown.clone();
        let mut changed = std::pin::pin!(stop_rx.changed());
        let mut stop = stop::Stop::new(shutdown, changed.as_mut());
        let mut idle = l.header_timeout;
        let mut first = true;
        // One idle timer for the connection's life, not one per request: see `read_head`.
        let mut idle_timer = std::pin::pin!(tokio::time::sleep(idle));
        loop {
            let head = read_head(&mut stream, idle, idle_timer.as_mut(), l, &mut stop, first).await;
            first = false;
            let buf = match head {
                Head::Ready(buf) => buf,
                Head::Gone => return None,
                Head::TimedOut => {
                    answer(
                        &mut stream,
                        408,
                        "request_timeout",
                        "request header not received in time",
                    )
                    .await;
                    return None;
                }
                Head::TooLarge => {
                    let msg = format!("request header exceeds {} bytes", l.max_header_size);
                    answer(&mut stream, 431, "request_header_too_large", &msg).await;
                    return None;
                }
            };
            let mut session = ServerSession::new_http1(stream);
            session.set_pipelined_prefix(buf);
            if stop.now() {
                session.set_keepalive(None);
            } else {
                // Pingora only needs to know that keep-alive is on; the idle wait is ours.
                session.set_keepalive(Some(l.keepalive_timeout.as_secs().max(1)));
            }
            session.set_read_timeout(Some(l.body_timeout));
            session.set_write_timeout(Some(l.send_timeout));
            let reused = self.app.process_new_http(session, shutdown).await?;
            // Persistent settings carry nothing aigate uses (no pipelining, no per-connection
            // request limit, no connection context).
            stream = reused.consume().0;
            idle = l.keepalive_timeout;
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

/// Read one request header. `idle`: how long to wait for its first byte. `first`: the
/// connection's first request: a client that just connected has a request on its way, so it is
/// read and served even when the server is shutting down (a hand-off's last accepted connections
/// would otherwise be closed unanswered); only an idle keep-alive connection is closed then.
///
/// The idle wait uses the connection's one timer, `idle_timer`, lazily: it is moved only when
/// it would fire after this wait's deadline, and when it fires before it (it was set for an
/// earlier wait) it is set again. A keep-alive connection busy with requests therefore touches
/// tokio's timer wheel about once per idle period rather than twice per request (registering a
/// timer for each wait and removing it when the request came was ~0.3 µs a request under perf).
/// The header deadline after the first byte is an ordinary timeout: rarely needed, as a header
/// nearly always arrives in one read.
async fn read_head(
    stream: &mut Stream,
    idle: Duration,
    mut idle_timer: std::pin::Pin<&mut tokio::time::Sleep>,
    l: &ClientLimits,
    stop: &mut stop::Stop<'_>,
    first: bool,
) -> Head {
    if !first && stop.now() {
        return Head::Gone;
    }
    // Most headers are a few hundred bytes: one small allocation, grown only for big ones.
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    let mut end = HeadEnd::default();
    // Set at the header's first byte: the header deadline runs from there.
    let mut deadline: Option<Instant> = None;
    loop {
        // Never hold more than the limit (plus one byte, to tell "at" from "over"): this also
        // keeps what Pingora gets below its own 1 MiB header cap, whatever followed the header.
        let filled = buf.len();
        let room = (l.max_header_size + 1).saturating_sub(filled);
        if room == 0 {
            return Head::TooLarge;
        }
        // Reads double in size, starting small. They go into the buffer's spare capacity as it
        // is (`read_buf`), without zeroing it first.
        let want = room.min(filled.max(FIRST_READ));
        buf.reserve(want);
        let mut into = (&mut buf).limit(want);
        let mut read = std::pin::pin!(stream.read_buf(&mut into));
        let result = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        log::debug!("request header not complete after {:?}", l.header_timeout);
                        return Head::TimedOut;
                    }
                }
            }
            // Waiting for a request: an idle keep-alive connection closes when the server shuts
            // down; a request that has started is read to the end and served.
            None => {
                let idle_until = tokio::time::Instant::now() + idle;
                if idle_timer.deadline() > idle_until {
                    idle_timer.as_mut().reset(idle_until);
                }
                loop {
                    tokio::select! {
                        biased;
                        r = &mut read => break r,
                        () = idle_timer.as_mut() => {
                            if tokio::time::Instant::now() >= idle_until {
                                return Head::Gone;
                            }
                            // Set for an earlier wait: wait on to this one's deadline.
                            idle_timer.as_mut().reset(idle_until);
                        }
                        () = stop.wait(), if !first => return Head::Gone,
                    }
                }
            }
        };
        match result {
            Ok(0) | Err(_) => {
                if deadline.is_some() {
                    log::debug!("client closed the connection mid-header ({filled} bytes)");
                }
                return Head::Gone;
            }
            Ok(_) => {
                if let Some(end_at) = end.feed(&buf[filled..]) {
                    if end_at > l.max_header_size {
                        return Head::TooLarge;
                    }
                    return Head::Ready(buf);
                }
                if buf.len() > l.max_header_size {
                    return Head::TooLarge;
                }
                if deadline.is_none() && end.started() {
                    deadline = Some(Instant::now() + l.header_timeout);
                }
            }
        }
    }
}

/// Best effort: a short JSON error and close. The client may not be reading; this never waits
/// long.
async fn answer(stream: &mut Stream, status: u16, code: &str, message: &str) {
    let reason = match status {
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let kind = if status == 503 {
        "api_error"
    } else {
        "invalid_request_error"
    };
    let body =
        serde_json::json!({"error": {"message": message, "type": kind, "code": code}}).to_string();
    let retry = if status == 503 {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        stream.write_all(resp.as_bytes()).await?;
        stream.flush().await
    })
    .await;
}
