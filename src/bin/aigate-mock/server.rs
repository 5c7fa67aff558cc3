//! Connections, routing, endpoint handlers and the control API.
//!
//! One task per connection reads requests one after another; each request is
//! recorded, its knobs resolved, then answered. Everything that decides *what*
//! to answer is synchronous and returns a `Reply`; only `send` touches the socket.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use pingora_core::protocols::l4::ext::get_tcp_info;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::http::{self, ReadError, Request, RespFraming, Wire};
use crate::knobs::Knobs;
use crate::openai;
use crate::record::{header_object, Recorder, Trace};
use crate::sse::{self, SseStyle};
use crate::{now_ms, unix_secs};

const JSON: &str = "application/json";

/// Process-wide state shared by all connections.
pub struct App {
    name: String,
    cli_knobs: Knobs,
    /// Swapped whole by `/_mock/config`; readers clone the Arc and let go at once.
    defaults: RwLock<Arc<Knobs>>,
    recorder: Option<Recorder>,
    chat_seq: AtomicU64,
    token_seq: AtomicU64,
    conn_seq: AtomicU64,
}

impl App {
    pub fn new(name: String, cli_knobs: Knobs, record: bool) -> Self {
        App {
            name,
            defaults: RwLock::new(Arc::new(cli_knobs.clone())),
            cli_knobs,
            recorder: record.then(Recorder::default),
            chat_seq: AtomicU64::new(0),
            token_seq: AtomicU64::new(0),
            conn_seq: AtomicU64::new(0),
        }
    }

    fn defaults(&self) -> Arc<Knobs> {
        self.defaults
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_defaults(&self, knobs: Knobs) {
        *self
            .defaults
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(knobs);
    }

    /// Header beats `/_mock/config` default beats CLI flag (the CLI flags are the
    /// initial defaults).
    fn knobs_for(&self, req: &Request) -> Result<Knobs, String> {
        let mut knobs = Knobs::clone(&self.defaults());
        for (name, value) in &req.headers {
            // x-mock-name is the mock's own response header; a request that
            // carries it back (copied by a test or a proxy) is not a typo.
            if let Some(key) = name.strip_prefix("x-mock-").filter(|k| *k != "name") {
                knobs.apply_header(key, value)?;
            }
        }
        knobs.validate()?;
        Ok(knobs)
    }
}

/// What a request is for, decided by its path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Control,
    Health,
    Echo,
    Chat,
    Embeddings,
    Predict,
    Token,
    NotFound,
}

pub fn classify(path: &str) -> Endpoint {
    // A proxy may percent-encode the colon of `:predict` (either hex case).
    let ends_with_ignore_case = |suffix: &str| {
        path.len() >= suffix.len()
            && path.as_bytes()[path.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    if path == "/_mock" || path.starts_with("/_mock/") {
        Endpoint::Control
    } else if path == "/health" {
        Endpoint::Health
    } else if path == "/anything" || path.starts_with("/anything/") {
        // Before the provider suffixes: /anything/v1/chat/completions is an echo.
        Endpoint::Echo
    } else if path.ends_with("/chat/completions") {
        Endpoint::Chat
    } else if path.ends_with("/embeddings") {
        Endpoint::Embeddings
    } else if path.ends_with(":predict") || ends_with_ignore_case("%3Apredict") {
        Endpoint::Predict
    } else if path.ends_with("/token") {
        Endpoint::Token
    } else {
        Endpoint::NotFound
    }
}

/// A decided answer, not yet written.
pub enum Reply {
    Full {
        status: u16,
        content_type: String,
        body: Vec<u8>,
        headers: Vec<(&'static str, String)>,
    },
    Stream {
        status: u16,
        events: Vec<String>,
        style: SseStyle,
    },
}

impl Reply {
    fn json_bytes(status: u16, body: Vec<u8>) -> Reply {
        Reply::Full {
            status,
            content_type: JSON.into(),
            body,
            headers: Vec::new(),
        }
    }

    fn json(status: u16, value: &Value) -> Reply {
        Reply::json_bytes(status, value.to_string().into_bytes())
    }

    fn error(status: u16, message: &str, kind: &str) -> Reply {
        Reply::json_bytes(status, openai::error_body(message, kind, status))
    }

    fn bad_request(message: &str) -> Reply {
        Reply::error(400, message, "invalid_request_error")
    }

    fn method_not_allowed(allow: &str) -> Reply {
        let mut reply = Reply::error(
            405,
            &format!("method not allowed; use {allow}"),
            "invalid_request_error",
        );
        if let Reply::Full { headers, .. } = &mut reply {
            headers.push(("allow", allow.to_string()));
        }
        reply
    }
}

/// Accepts connections forever, one task each.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                // SSE tests look at TCP write boundaries; Nagle would merge them.
                let _ = stream.set_nodelay(true);
                let fd = stream.as_raw_fd();
                tokio::spawn(serve_conn(app.clone(), stream, Some(fd)));
            }
            Err(e) => {
                // Usually EMFILE under a benchmark: back off instead of spinning on stderr.
                eprintln!("aigate-mock: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts HTTPS connections forever: the same app as `serve`, behind a TLS handshake.
pub async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, app: Arc<App>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                let (app, acceptor) = (app.clone(), acceptor.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate (a test of verification) ends the
                    // handshake with an alert: nothing to answer, and nothing worth printing.
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    if let Ok(Ok(tls)) = handshake.await {
                        // Segments are not counted under TLS: a request can arrive with the
                        // handshake's last flight, before a count could be taken.
                        serve_conn(app, tls, None).await;
                    }
                });
            }
            Err(e) => {
                eprintln!("aigate-mock: tls accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A client that connects and never finishes the handshake must not hold a task forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where one request sits, and what the connection does after its answer.
#[derive(Clone, Copy)]
struct ConnState {
    /// (connection number, place of the request on it), as recorded.
    at: (u64, u64),
    /// The previous request said `close_next`: close without answering this one.
    drop_this: bool,
    /// TCP segments with data that carried this request (see `data_segments_in`).
    segments: Option<u32>,
}

/// How many TCP segments with data the socket has received so far (Linux's
/// `tcpi_data_segs_in`, through Pingora's `get_tcp_info`; `None` elsewhere): the difference
/// across a request read says whether its header and body came in one segment. Nothing else
/// arrives between two requests on a connection (the client waits for each answer), so the count
/// at the end of one read is the start of the next.
fn data_segments_in(fd: Option<RawFd>) -> Option<u32> {
    get_tcp_info(fd?).ok().map(|info| info.tcpi_data_segs_in)
}

/// What the connection does after a request.
enum Next {
    KeepAlive,
    /// Keep it, but drop it when the next request arrives (`close_next`).
    KeepAliveThenDrop,
    Close,
}

/// `fd`: the TCP socket under `stream`, to count the segments each request came in.
async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    app: Arc<App>,
    mut stream: S,
    fd: Option<RawFd>,
) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut state = ConnState {
        at: (app.conn_seq.fetch_add(1, Ordering::Relaxed) + 1, 0),
        drop_this: false,
        segments: None,
    };
    // Counted from the connection's start, before any data: the first request may be here
    // already.
    let mut segments_seen = Some(0);
    loop {
        let req = match http::read_request(&mut stream, &mut buf).await {
            Ok(req) => req,
            Err(ReadError::Reject(status, message)) => {
                let reply = Reply::error(status, &message, "invalid_request_error");
                let _ = send(
                    &mut stream,
                    &mut Wire::closing(&app.name),
                    reply,
                    &Trace::default(),
                )
                .await;
                break;
            }
            // The client went away, cleanly or not: nobody to answer.
            Err(ReadError::Closed | ReadError::Broken) => return,
        };
        state.at.1 += 1;
        let seen = data_segments_in(fd);
        state.segments = seen
            .zip(segments_seen)
            .map(|(now, before)| now.wrapping_sub(before));
        segments_seen = seen;
        match handle(&app, &mut stream, &req, state).await {
            Ok(Next::KeepAlive) => state.drop_this = false,
            Ok(Next::KeepAliveThenDrop) => state.drop_this = true,
            Ok(Next::Close) => break,
            // Write failed: the client disconnected mid-answer.
            Err(_) => return,
        }
    }
    let _ = stream.shutdown().await;
}

/// Answers one request and says what the connection does next.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    app: &App,
    stream: &mut S,
    req: &Request,
    state: ConnState,
) -> io::Result<Next> {
    let mut wire = Wire::for_request(req, &app.name);
    let keep = |wire: &Wire| {
        if wire.keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        }
    };
    let endpoint = classify(req.path());
    if endpoint == Endpoint::Control {
        // Never recorded and never subject to knobs: tests must always be able
        // to inspect and reset a misbehaving mock.
        send(stream, &mut wire, control(app, req), &Trace::default()).await?;
        return Ok(keep(&wire));
    }

    let trace = Trace::new(
        app.recorder
            .as_ref()
            .map(|r| r.record(req, now_ms(), state.at, state.segments)),
    );
    if state.drop_this {
        // A provider that dropped this connection while it sat idle: the request arrives on a
        // socket nobody answers on any more. (Recorded, with no status, like `close`.)
        return Ok(Next::Close);
    }
    let knobs = match app.knobs_for(req) {
        Ok(knobs) => knobs,
        Err(message) => {
            send(stream, &mut wire, Reply::bad_request(&message), &trace).await?;
            return Ok(keep(&wire));
        }
    };

    // /health answers only to health_status: a config default meant to make the
    // provider slow or broken must not also knock out the gateway's health probe
    // (tests that want a failing probe say so with health_status).
    let misbehave = endpoint != Endpoint::Health;
    if misbehave && knobs.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(knobs.delay_ms)).await;
    }
    if misbehave && knobs.close {
        return Ok(Next::Close);
    }
    if misbehave && knobs.hang {
        // Keep reading so we notice when the client gives up, then let go.
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        return Ok(Next::Close);
    }

    let reply = respond(app, req, endpoint, &knobs);
    let full = matches!(reply, Reply::Full { .. });
    if let (true, true, Some(n)) = (misbehave, full, knobs.truncate_at) {
        // The answer breaks off after `n` bytes (inside the head or the body).
        let mut out = Vec::new();
        write_full(&mut out, &mut wire, reply, &trace);
        out.truncate(n);
        stream.write_all(&out).await?;
        return Ok(Next::Close);
    }
    if misbehave && full && knobs.body_delay_ms > 0 {
        // The head now, the body later: the client sees them in separate reads.
        let mut out = Vec::new();
        write_full(&mut out, &mut wire, reply, &trace);
        let head_len = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(out.len(), |i| i + 4);
        stream.write_all(&out[..head_len]).await?;
        tokio::time::sleep(Duration::from_millis(knobs.body_delay_ms)).await;
        stream.write_all(&out[head_len..]).await?;
        return Ok(keep(&wire));
    }
    send(stream, &mut wire, reply, &trace).await?;
    Ok(match keep(&wire) {
        Next::KeepAlive if misbehave && knobs.close_next => Next::KeepAliveThenDrop,
        next => next,
    })
}

fn respond(app: &App, req: &Request, endpoint: Endpoint, knobs: &Knobs) -> Reply {
    match endpoint {
        // Handled before knobs are resolved; kept here so the match is total.
        Endpoint::Control => control(app, req),
        Endpoint::Health => {
            let status = knobs.health_status;
            Reply::json(
                status,
                &json!({"status": if status < 400 { "ok" } else { "unhealthy" }}),
            )
        }
        Endpoint::NotFound => Reply::error(
            404,
            &format!(
                "mock {}: no route for {} {}",
                app.name,
                req.method,
                req.path()
            ),
            "not_found_error",
        ),
        _ if knobs.status >= 400 => status_error(app, knobs),
        Endpoint::Chat => chat(app, req, knobs),
        Endpoint::Embeddings => embeddings(req, knobs),
        Endpoint::Predict => predict(req, knobs),
        Endpoint::Token => token(app, req, knobs),
        Endpoint::Echo => echo(req, knobs),
    }
}

/// Writes the reply and records its status (and event times, via `sse`).
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    wire: &mut Wire<'_>,
    reply: Reply,
    trace: &Trace,
) -> io::Result<()> {
    write_reply(stream, wire, reply, trace).await?;
    // A TLS stream may keep the tail of a write in its buffer until flushed (a no-op on TCP).
    stream.flush().await
}

async fn write_reply<S: AsyncWrite + Unpin>(
    stream: &mut S,
    wire: &mut Wire<'_>,
    reply: Reply,
    trace: &Trace,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(256);
    match reply {
        full @ Reply::Full { .. } => {
            write_full(&mut head, wire, full, trace);
            stream.write_all(&head).await
        }
        Reply::Stream {
            status,
            events,
            style,
        } => {
            trace.status(status);
            let headers = [
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
            ];
            if http::bodiless(status) {
                http::write_head(&mut head, wire, status, RespFraming::Bodiless, &headers);
                return stream.write_all(&head).await;
            }
            let chunked = !wire.http10;
            if !chunked {
                // HTTP/1.0 has no chunked encoding: the connection end ends the stream.
                wire.keep_alive = false;
            }
            let framing = if chunked {
                RespFraming::Chunked
            } else {
                RespFraming::UntilClose
            };
            http::write_head(&mut head, wire, status, framing, &headers);
            if wire.head_only {
                return stream.write_all(&head).await;
            }
            sse::write_stream(stream, head, &events, &style, chunked, trace).await
        }
    }
}

/// Serialises a whole (non-streamed) reply into `out` and records its status.
fn write_full(out: &mut Vec<u8>, wire: &mut Wire<'_>, reply: Reply, trace: &Trace) {
    let Reply::Full {
        status,
        content_type,
        body,
        headers,
    } = reply
    else {
        return;
    };
    trace.status(status);
    let mut all: Vec<(&str, &str)> = vec![("content-type", &content_type)];
    all.extend(headers.iter().map(|(n, v)| (*n, v.as_str())));
    let framing = if http::bodiless(status) {
        RespFraming::Bodiless
    } else {
        RespFraming::Length(body.len())
    };
    http::write_head(out, wire, status, framing, &all);
    if !wire.head_only && !http::bodiless(status) {
        out.extend_from_slice(&body);
    }
}

/// The answer of a provider that is down, rate limiting, etc.
fn status_error(app: &App, knobs: &Knobs) -> Reply {
    let status = knobs.status;
    let body = match &knobs.error_body {
        Some(body) => body.clone().into_bytes(),
        None => openai::error_body(
            &format!("mock {} error {}", app.name, status),
            "mock_error",
            status,
        ),
    };
    let content_type = knobs
        .error_content_type
        .clone()
        .unwrap_or_else(|| JSON.to_string());
    Reply::Full {
        status,
        content_type,
        body,
        headers: Vec::new(),
    }
}

fn parse_json_body(req: &Request) -> Result<Value, Reply> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(Reply::bad_request("the request body must be a JSON object")),
        Err(e) => Err(Reply::bad_request(&format!("invalid JSON body: {e}"))),
    }
}

/// The model reported back: tests tell upstreams apart by the model they configured.
fn model<'a>(knobs: &'a Knobs, body: &'a Value) -> &'a str {
    knobs
        .model
        .as_deref()
        .or_else(|| body.get("model").and_then(Value::as_str))
        .unwrap_or(openai::DEFAULT_MODEL)
}

fn chat(app: &App, req: &Request, knobs: &Knobs) -> Reply {
    let body = match parse_json_body(req) {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let pieces = openai::content_pieces(knobs.content.as_deref(), knobs.chunks, &app.name);
    let mut usage = openai::Usage::new(
        knobs
            .prompt_tokens
            .unwrap_or_else(|| openai::prompt_tokens(&body)),
        knobs.completion_tokens.unwrap_or(pieces.len() as u64),
    );
    usage.prompt_tokens_details = knobs
        .cached_tokens
        .map(|cached_tokens| openai::PromptTokensDetails { cached_tokens });
    let id = format!(
        "chatcmpl-mock-{}",
        app.chat_seq.fetch_add(1, Ordering::Relaxed) + 1
    );
    let completion = openai::Completion {
        id: &id,
        created: unix_secs(),
        model: model(knobs, &body),
        fingerprint: &app.name,
        pieces: &pieces,
        usage,
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true);
        Reply::Stream {
            status: knobs.status,
            events: openai::stream_events(&completion, include_usage, knobs.usage),
            style: SseStyle::from_knobs(knobs),
        }
    } else {
        Reply::json_bytes(
            knobs.status,
            openai::completion_body(&completion, knobs.usage),
        )
    }
}

fn embeddings(req: &Request, knobs: &Knobs) -> Reply {
    let body = match parse_json_body(req) {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let inputs = match openai::embedding_inputs(body.get("input")) {
        Ok(inputs) => inputs,
        Err(message) => return Reply::bad_request(&message),
    };
    let prompt_tokens = knobs
        .prompt_tokens
        .unwrap_or_else(|| inputs.iter().map(|i| i.tokens).sum::<u64>().max(1));
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    Reply::json_bytes(
        knobs.status,
        openai::embeddings_body(
            &inputs,
            knobs.dims,
            model(knobs, &body),
            base64,
            prompt_tokens,
        ),
    )
}

fn predict(req: &Request, knobs: &Knobs) -> Reply {
    let result = parse_json_body(req).and_then(|body| {
        openai::predict_body(&body, knobs.dims).map_err(|m| Reply::bad_request(&m))
    });
    match result {
        Ok(body) => Reply::json_bytes(knobs.status, body),
        Err(reply) => reply,
    }
}

/// Google's OAuth token endpoint, as used for service-account JWT grants. The
/// counter lets tests see how many times the gateway fetched a token.
fn token(app: &App, req: &Request, knobs: &Knobs) -> Reply {
    if req.method != "POST" {
        return Reply::method_not_allowed("POST");
    }
    let n = app.token_seq.fetch_add(1, Ordering::Relaxed) + 1;
    Reply::json(
        knobs.status,
        &json!({"access_token": format!("mock-access-token-{n}"), "expires_in": knobs.token_ttl, "token_type": "Bearer"}),
    )
}

/// httpbin's /anything, for routes that proxy to a plain HTTP upstream.
fn echo(req: &Request, knobs: &Knobs) -> Reply {
    // A struct rather than json!() so the fields come out in httpbin's order.
    #[derive(serde::Serialize)]
    struct Echo<'a, H: serde::Serialize> {
        method: &'a str,
        url: &'a str,
        args: Map<String, Value>,
        headers: H,
        data: std::borrow::Cow<'a, str>,
        json: Value,
    }
    let headers = http::joined_headers(&req.headers);
    let echo = Echo {
        method: &req.method,
        url: &req.target,
        args: query_args(req.query()),
        headers: header_object(&headers),
        data: String::from_utf8_lossy(&req.body),
        json: serde_json::from_slice(&req.body).unwrap_or(Value::Null),
    };
    Reply::json_bytes(knobs.status, serde_json::to_vec(&echo).unwrap_or_default())
}

/// Query parameters like httpbin shows them: a repeated key becomes an array.
pub fn query_args(query: &str) -> Map<String, Value> {
    let mut args = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (percent_decode(key), Value::String(percent_decode(value)));
        match args.get_mut(&key) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
            None => {
                args.insert(key, value);
            }
        }
    }
    args
}

/// `application/x-www-form-urlencoded` decoding; malformed escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn control(app: &App, req: &Request) -> Reply {
    let route = &req.path()["/_mock".len()..];
    match (req.method.as_str(), route) {
        ("GET" | "HEAD", "/requests") => Reply::json_bytes(
            200,
            app.recorder
                .as_ref()
                .map_or_else(|| b"[]".to_vec(), Recorder::to_json),
        ),
        ("DELETE", "/requests") => {
            let cleared = app.recorder.as_ref().map_or(0, Recorder::clear);
            Reply::json(200, &json!({"cleared": cleared}))
        }
        (_, "/requests") => Reply::method_not_allowed("GET, DELETE"),
        ("GET" | "HEAD", "/config") => Reply::json(200, &config_json(&app.defaults())),
        ("POST" | "PUT" | "PATCH", "/config") => {
            let patch = match serde_json::from_slice::<Value>(&req.body) {
                Ok(patch) => patch,
                Err(e) => return Reply::bad_request(&format!("invalid JSON body: {e}")),
            };
            // Read-modify-write under no lock: concurrent config posts are a test
            // bug anyway, and the last one wins whole.
            match app.defaults().patched(&app.cli_knobs, &patch) {
                Ok(knobs) => {
                    let shown = config_json(&knobs);
                    app.set_defaults(knobs);
                    Reply::json(200, &shown)
                }
                Err(message) => Reply::bad_request(&message),
            }
        }
        ("DELETE", "/config") => {
            app.set_defaults(app.cli_knobs.clone());
            Reply::json(200, &config_json(&app.cli_knobs))
        }
        (_, "/config") => Reply::method_not_allowed("GET, POST, DELETE"),
        _ => Reply::error(
            404,
            &format!("no control endpoint {}", req.path()),
            "not_found_error",
        ),
    }
}

fn config_json(knobs: &Knobs) -> Value {
    serde_json::to_value(knobs).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_by_path_suffix() {
        use Endpoint::*;
        let cases = [
            ("/v1/chat/completions", Chat),
            ("/openai/deployments/gpt/chat/completions", Chat),
            ("/v1beta/openai/chat/completions", Chat),
            (
                "/v1/projects/p/locations/l/endpoints/openapi/chat/completions",
                Chat,
            ),
            ("/v1/embeddings", Embeddings),
            (
                "/v1/projects/p/locations/l/publishers/google/models/text-embedding-004:predict",
                Predict,
            ),
            ("/v1/models/m%3Apredict", Predict),
            ("/token", Token),
            ("/oauth2/v4/token", Token),
            ("/anything", Echo),
            ("/anything/v1/chat/completions", Echo),
            ("/anythingelse", NotFound),
            ("/health", Health),
            ("/_mock/requests", Control),
            ("/", NotFound),
        ];
        for (path, expected) in cases {
            assert_eq!(classify(path), expected, "{path}");
        }
    }

    /// End-to-end over real TCP: a server on a free port, raw requests in.
    mod wire {
        use super::super::*;
        use std::net::SocketAddr;
        use tokio::io::AsyncWriteExt;
        use tokio::net::TcpStream;

        async fn start(cli: Knobs) -> SocketAddr {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve(listener, Arc::new(App::new("t".into(), cli, true))));
            addr
        }

        /// Sends `raw` (which should ask for `Connection: close`) and reads to EOF.
        async fn exchange(addr: SocketAddr, raw: &str) -> String {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(raw.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            conn.read_to_end(&mut out).await.unwrap();
            String::from_utf8(out).unwrap()
        }

        fn post(path: &str, headers: &str, body: &str) -> String {
            format!("POST {path} HTTP/1.1\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len())
        }

        fn get(path: &str) -> String {
            format!("GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n")
        }

        fn status_and_body(response: &str) -> (u16, &str) {
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            (head[9..12].parse().unwrap(), body)
        }

        fn dechunk(mut body: &str) -> String {
            let mut out = String::new();
            loop {
                let (size, rest) = body.split_once("\r\n").unwrap();
                let size = usize::from_str_radix(size, 16).unwrap();
                if size == 0 {
                    return out;
                }
                out.push_str(&rest[..size]);
                body = &rest[size + 2..];
            }
        }

        #[tokio::test]
        async fn chat_answer_is_recorded() {
            let addr = start(Knobs::default()).await;
            let body =
                r#"{"model":"gpt-x","messages":[{"role":"user","content":"three little words"}]}"#;
            let response = exchange(
                addr,
                &post("/v1/chat/completions?v=1", "X-Dup: a\r\nX-Dup: b\r\n", body),
            )
            .await;
            let (status, json) = status_and_body(&response);
            assert_eq!(status, 200);
            assert!(response.contains("x-mock-name: t\r\n"));
            assert!(response.contains(&format!("content-length: {}\r\n", json.len())));
            let json: Value = serde_json::from_str(json).unwrap();
            assert_eq!(json["model"], "gpt-x");
            assert_eq!(json["choices"][0]["message"]["content"], "Hello from t");
            assert_eq!(
                json["usage"],
                json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
            );

            let log = exchange(addr, &get("/_mock/requests")).await;
            let log: Value = serde_json::from_str(status_and_body(&log).1).unwrap();
            assert_eq!(
                log.as_array().unwrap().len(),
                1,
                "control requests are not recorded"
            );
            assert_eq!(log[0]["path"], "/v1/chat/completions?v=1");
            assert_eq!(log[0]["headers"]["x-dup"], "a, b");
            assert_eq!(log[0]["body"], body);
            assert_eq!(log[0]["status"], 200);
        }

        #[tokio::test]
        async fn header_beats_config_beats_cli() {
            let addr = start(Knobs {
                status: 502,
                ..Knobs::default()
            })
            .await;
            let chat = |headers: &'static str| post("/v1/chat/completions", headers, "{}");
            assert_eq!(status_and_body(&exchange(addr, &chat("")).await).0, 502);
            let set = exchange(
                addr,
                &post("/_mock/config", "", r#"{"status":429,"health_status":500}"#),
            )
            .await;
            assert_eq!(status_and_body(&set).0, 200);
            let limited = exchange(addr, &chat("")).await;
            assert_eq!(
                status_and_body(&limited),
                (
                    429,
                    r#"{"error":{"message":"mock t error 429","type":"mock_error","code":429}}"#
                )
            );
            assert_eq!(
                status_and_body(&exchange(addr, &chat("x-mock-status: 200\r\n")).await).0,
                200
            );
            assert_eq!(
                status_and_body(&exchange(addr, &get("/health")).await).0,
                500
            );
            exchange(
                addr,
                "DELETE /_mock/config HTTP/1.1\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert_eq!(status_and_body(&exchange(addr, &chat("")).await).0, 502);
            assert_eq!(
                status_and_body(&exchange(addr, &chat("x-mock-bogus: 1\r\n")).await).0,
                400
            );
        }

        #[tokio::test]
        async fn close_and_hang_send_nothing() {
            let addr = start(Knobs::default()).await;
            let closed = exchange(
                addr,
                &post("/v1/chat/completions", "x-mock-close: true\r\n", "{}"),
            )
            .await;
            assert_eq!(closed, "");

            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(post("/v1/chat/completions", "x-mock-hang: true\r\n", "{}").as_bytes())
                .await
                .unwrap();
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut byte)).await;
            assert!(read.is_err(), "a hanging mock must not answer");
        }

        #[tokio::test]
        async fn close_next_drops_the_next_request_on_the_same_connection() {
            let addr = start(Knobs::default()).await;
            let keep_alive = |headers: &str| {
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\n{headers}Content-Length: 2\r\n\r\n{{}}"
                )
            };
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(keep_alive("x-mock-close-next: true\r\n").as_bytes())
                .await
                .unwrap();
            let mut buf = vec![0u8; 65536];
            let n = conn.read(&mut buf).await.unwrap();
            let first = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(first.starts_with("HTTP/1.1 200"), "{first}");
            assert!(!first.contains("connection: close"), "{first}");
            // The next request on it is read, recorded, and answered by a close.
            conn.write_all(keep_alive("").as_bytes()).await.unwrap();
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
            // A new connection is answered as usual.
            let again = exchange(addr, &post("/v1/chat/completions", "", "{}")).await;
            assert_eq!(status_and_body(&again).0, 200);

            let log = exchange(addr, &get("/_mock/requests")).await;
            let log: Value = serde_json::from_str(status_and_body(&log).1).unwrap();
            let at: Vec<(u64, u64, Value)> = log
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["conn"].as_u64().unwrap(),
                        r["conn_request"].as_u64().unwrap(),
                        r["status"].clone(),
                    )
                })
                .collect();
            assert_eq!(
                at,
                vec![(1, 1, json!(200)), (1, 2, Value::Null), (2, 1, json!(200))]
            );
        }

        #[tokio::test]
        async fn split_stream_reassembles_and_records_event_times() {
            let addr = start(Knobs::default()).await;
            let body = r#"{"stream":true,"stream_options":{"include_usage":true}}"#;
            let split = exchange(
                addr,
                &post(
                    "/v1/chat/completions",
                    "x-mock-split: true\r\nx-mock-chunks: 1\r\n",
                    body,
                ),
            )
            .await;
            let plain = exchange(
                addr,
                &post("/v1/chat/completions", "x-mock-chunks: 1\r\n", body),
            )
            .await;
            let (split, plain) = (
                dechunk(status_and_body(&split).1),
                dechunk(status_and_body(&plain).1),
            );
            // Same events apart from the id and `created` (the split answer
            // takes long enough to cross a second boundary).
            let events = |stream: &str| -> Vec<Value> {
                stream
                    .split("\n\n")
                    .filter_map(|e| e.strip_prefix("data: "))
                    .map(|data| {
                        let mut event = serde_json::from_str(data).unwrap_or(json!(data));
                        if let Some(fields) = event.as_object_mut() {
                            fields.remove("id");
                            fields.remove("created");
                        }
                        event
                    })
                    .collect()
            };
            assert_eq!(events(&split), events(&plain));
            assert_eq!(plain.matches("data: ").count(), 5);
            assert!(plain.ends_with("data: [DONE]\n\n"));

            let log = exchange(addr, &get("/_mock/requests")).await;
            let log: Value = serde_json::from_str(status_and_body(&log).1).unwrap();
            let times: Vec<u64> =
                serde_json::from_value(log[0]["events_sent_at_ms"].clone()).unwrap();
            assert_eq!(times.len(), 5);
            // Three pieces with 10 ms pauses, plus 10 ms between events.
            assert!(times.windows(2).all(|w| w[1] - w[0] >= 29), "{times:?}");
        }
    }

    #[test]
    fn query_args_like_httpbin() {
        let args = query_args("a=1&b=x+y%21&a=2&flag&bad=%zz%4");
        assert_eq!(
            Value::Object(args),
            json!({"a": ["1", "2"], "b": "x y!", "flag": "", "bad": "%zz%4"})
        );
    }
}
