//! The access log: nginx-style `$variable` formats, one line per request.
//!
//! The format is compiled once into literal and variable segments. The line is rendered in
//! Pingora's `logging` hook (cheap string pushes) and handed over a bounded channel to a writer
//! thread, so a slow disk never stalls a request: when the channel is full the line is dropped and
//! counted instead. Headers that carry credentials render as `[REDACTED]`, whatever the format.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

/// nginx's `combined` format followed by the LLM fields.
pub const DEFAULT_FORMAT: &str = concat!(
    r#"$remote_addr - $remote_user [$time_local] "$request_line" $status $body_bytes_sent "$http_referer" "$http_user_agent""#,
    r#" $request_time $upstream_addr $upstream_status $upstream_response_time $request_id $route_id"#,
    r#" $request_type "$request_llm_model" "$llm_model" $llm_time_to_first_token $llm_prompt_tokens $llm_completion_tokens $llm_total_tokens"#,
);

/// Header names whose values are credentials.
const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "api-key",
    "apikey",
    "x-api-key",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    RemoteAddr,
    RemoteUser,
    TimeLocal,
    TimeIso8601,
    Msec,
    RequestMethod,
    Uri,
    RequestUri,
    Args,
    RequestLine,
    Scheme,
    ServerProtocol,
    Host,
    Status,
    BodyBytesSent,
    RequestLength,
    RequestTime,
    UpstreamAddr,
    UpstreamStatus,
    UpstreamResponseTime,
    RouteId,
    ConsumerName,
    RequestId,
    RequestType,
    LlmTimeToFirstToken,
    LlmModel,
    LlmResponseModel,
    RequestLlmModel,
    LlmPromptTokens,
    LlmCompletionTokens,
    LlmTotalTokens,
    LlmInstance,
    LlmAttempts,
    LlmSummary,
    LlmPayload,
    /// `$http_NAME`: NAME lower-cased with `_` for `-`, parsed once (not per line).
    Header(http::HeaderName),
    /// `$http_NAME` of a header that carries a credential: `[REDACTED]` when present (decided
    /// when the format is parsed, not per line).
    SecretHeader(http::HeaderName),
    /// `$arg_NAME`.
    Arg(String),
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        use Var::*;
        Some(match name {
            "remote_addr" => RemoteAddr,
            "remote_user" => RemoteUser,
            "time_local" => TimeLocal,
            "time_iso8601" => TimeIso8601,
            "msec" => Msec,
            "request_method" => RequestMethod,
            "uri" => Uri,
            "request_uri" => RequestUri,
            "args" | "query_string" => Args,
            "request_line" | "request" => RequestLine,
            "scheme" => Scheme,
            "server_protocol" => ServerProtocol,
            "host" => Host,
            "status" => Status,
            "body_bytes_sent" => BodyBytesSent,
            "request_length" => RequestLength,
            "request_time" => RequestTime,
            "upstream_addr" => UpstreamAddr,
            "upstream_status" => UpstreamStatus,
            "upstream_response_time" => UpstreamResponseTime,
            "route_id" => RouteId,
            "consumer_name" => ConsumerName,
            "request_id" | "apisix_request_id" => RequestId,
            "request_type" => RequestType,
            "llm_time_to_first_token" => LlmTimeToFirstToken,
            "llm_model" => LlmModel,
            "llm_response_model" => LlmResponseModel,
            "request_llm_model" => RequestLlmModel,
            "llm_prompt_tokens" => LlmPromptTokens,
            "llm_completion_tokens" => LlmCompletionTokens,
            "llm_total_tokens" => LlmTotalTokens,
            "llm_instance" => LlmInstance,
            "llm_attempts" => LlmAttempts,
            "llm_summary" => LlmSummary,
            "llm_payload" => LlmPayload,
            _ => {
                if let Some(h) = name.strip_prefix("http_") {
                    if h.is_empty() {
                        return None;
                    }
                    let name = http::HeaderName::from_bytes(h.replace('_', "-").as_bytes()).ok()?;
                    if Var::is_sensitive_header(name.as_str()) {
                        SecretHeader(name)
                    } else {
                        Header(name)
                    }
                } else if let Some(a) = name.strip_prefix("arg_") {
                    if a.is_empty() {
                        return None;
                    }
                    Arg(a.to_string())
                } else {
                    return None;
                }
            }
        })
    }

    /// Whether a header variable must be redacted.
    pub fn is_sensitive_header(name: &str) -> bool {
        SENSITIVE_HEADERS.contains(&name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Lit(String),
    Var(Var),
}

#[derive(Debug, Clone)]
pub struct Format {
    segments: Vec<Segment>,
    has_summary: bool,
    has_payload: bool,
}

/// Supplies variable values for one request.
pub trait LogSource {
    /// Append the variable's value to `out`; write nothing when unknown (rendered as `-`).
    fn write_var(&self, var: &Var, out: &mut String);
    /// Whether this request's route asked for the JSON summary / payloads.
    fn wants_summary(&self) -> bool;
    fn wants_payload(&self) -> bool;
}

impl Format {
    pub fn parse(fmt: &str) -> Result<Format, String> {
        let mut segments = Vec::new();
        let mut lit = String::new();
        let mut chars = fmt.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c != '$' {
                lit.push(c);
                continue;
            }
            let rest = &fmt[i + 1..];
            let (name, consumed) = if let Some(inner) = rest.strip_prefix('{') {
                let end = inner
                    .find('}')
                    .ok_or_else(|| format!("unterminated ${{ at offset {i}"))?;
                (&inner[..end], end + 2)
            } else {
                let end = rest
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], end)
            };
            if name.is_empty() {
                lit.push('$');
                continue;
            }
            let var = Var::parse(name).ok_or_else(|| format!("unknown variable ${name}"))?;
            if !lit.is_empty() {
                segments.push(Segment::Lit(std::mem::take(&mut lit)));
            }
            segments.push(Segment::Var(var));
            for _ in 0..consumed {
                chars.next();
            }
        }
        if !lit.is_empty() {
            segments.push(Segment::Lit(lit));
        }
        let has = |v: &Var| segments.iter().any(|s| s == &Segment::Var(v.clone()));
        Ok(Format {
            has_summary: has(&Var::LlmSummary),
            has_payload: has(&Var::LlmPayload),
            segments,
        })
    }

    /// Generic rather than `dyn`: the source's `write_var` is inlined into this loop, one
    /// `match` per variable instead of an indirect call (the line has ~20 variables).
    pub fn render<S: LogSource + ?Sized>(&self, src: &S, out: &mut String) {
        for seg in &self.segments {
            match seg {
                Segment::Lit(s) => out.push_str(s),
                Segment::Var(v) => {
                    let before = out.len();
                    src.write_var(v, out);
                    if out.len() == before {
                        out.push('-');
                    }
                }
            }
        }
        // `logging.summaries` / `logging.payloads` add their JSON even when the format does not
        // place them explicitly.
        if src.wants_summary() && !self.has_summary {
            out.push_str(" summary=");
            let before = out.len();
            src.write_var(&Var::LlmSummary, out);
            if out.len() == before {
                out.push('-');
            }
        }
        if src.wants_payload() && !self.has_payload {
            out.push_str(" payload=");
            let before = out.len();
            src.write_var(&Var::LlmPayload, out);
            if out.len() == before {
                out.push('-');
            }
        }
    }
}

enum Target {
    Stdout,
    File(String),
}

/// The writing half, shared by all workers.
pub struct AccessLog {
    format: Format,
    tx: Option<SyncSender<String>>,
    rx: Mutex<Option<Receiver<String>>>,
    target: Option<Target>,
    dropped: AtomicU64,
    stop: Arc<AtomicBool>,
    /// Set on SIGUSR1: the writer reopens the file (logrotate's `postrotate`).
    reopen: Arc<AtomicBool>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

const QUEUE: usize = 65_536;

impl AccessLog {
    /// `path`: a file, `-` (stdout) or `off`. Opening the file is checked here, so an unwritable
    /// log path is a startup error rather than silently lost logs.
    pub fn new(path: &str, format: Format) -> Result<AccessLog, String> {
        let target = match path {
            "off" | "" => None,
            "-" => Some(Target::Stdout),
            p => {
                open_append(p)?;
                Some(Target::File(p.to_string()))
            }
        };
        let (tx, rx) = match target {
            Some(_) => {
                let (tx, rx) = sync_channel(QUEUE);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        Ok(AccessLog {
            format,
            tx,
            rx: Mutex::new(rx),
            target,
            dropped: AtomicU64::new(0),
            stop: Arc::new(AtomicBool::new(false)),
            reopen: Arc::new(AtomicBool::new(false)),
            writer: Mutex::new(None),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn log<S: LogSource + ?Sized>(&self, src: &S) {
        let Some(tx) = &self.tx else { return };
        let mut line = String::with_capacity(384);
        self.format.render(src, &mut line);
        line.push('\n');
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(10_000)
                {
                    log::warn!("access log queue full; dropping lines (disk too slow?)");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Write everything still queued and stop the writer. Called once the server has stopped
    /// serving; the background service cannot be relied on for this, because its task is
    /// cancelled when Pingora shuts its runtime down.
    pub fn close(&self) {
        self.stop.store(true, Ordering::Release);
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn open_append(path: &str) -> Result<File, String> {
    if let Some(dir) = Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| {
                format!("cannot create access log directory {}: {e}", dir.display())
            })?;
        }
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open access log {path}: {e}"))
}

/// Runs the writer thread. A Pingora background service, so it starts after daemonizing (threads
/// made before the fork would be lost) and flushes what is queued on shutdown.
pub struct AccessLogService(pub Arc<AccessLog>);

/// The writer wakes on a timer rather than per line: a sender never has to wake a parked thread
/// (a futex call and a context switch on every request), and each wake writes a whole batch.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

#[async_trait]
impl BackgroundService for AccessLogService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let log = &self.0;
        let Some(rx) = log.rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let target = match &log.target {
            Some(Target::Stdout) => None,
            Some(Target::File(p)) => Some(p.clone()),
            None => return,
        };
        let stop = log.stop.clone();
        let reopen = log.reopen.clone();
        match std::thread::Builder::new()
            .name("aigate-access-log".into())
            .spawn(move || write_loop(rx, target, &stop, &reopen))
        {
            Ok(h) => {
                if let Ok(mut w) = log.writer.lock() {
                    *w = Some(h);
                }
            }
            Err(e) => log::error!("cannot start the access log writer: {e}"),
        }
        // SIGUSR1 asks for a reopen (logrotate); a renamed file is also noticed on its own.
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = signal(SignalKind::user_defined1()).ok();
        loop {
            tokio::select! {
                Some(()) = async { match usr1.as_mut() { Some(s) => s.recv().await, None => None } } => {
                    log.reopen.store(true, Ordering::Release);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// How often the writer checks whether its file was renamed or removed (logrotate without
/// `copytruncate` or a signal): lines written meanwhile go to the renamed file, none is lost.
const RENAME_CHECK: Duration = Duration::from_secs(1);

/// The file's identity (device, inode), to notice it was renamed away.
fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// The writer's output and the identity of the file behind it (`None` for stdout).
type Output = (Box<dyn Write>, Option<(u64, u64)>);

/// Open `path` for the writer: the buffered writer and the file's identity.
fn open_writer(path: &str) -> Result<Output, String> {
    let f = open_append(path)?;
    let id = f.metadata().ok().map(|m| identity(&m));
    Ok((Box::new(BufWriter::with_capacity(64 * 1024, f)), id))
}

fn write_loop(rx: Receiver<String>, path: Option<String>, stop: &AtomicBool, reopen: &AtomicBool) {
    let (mut out, mut id): Output = match &path {
        None => (Box::new(BufWriter::new(std::io::stdout())), None),
        Some(p) => match open_writer(p) {
            Ok(w) => w,
            Err(e) => {
                log::error!("{e}");
                return;
            }
        },
    };
    let mut checked = std::time::Instant::now();
    loop {
        if let Some(p) = &path {
            let asked = reopen.swap(false, Ordering::AcqRel);
            let moved = checked.elapsed() >= RENAME_CHECK && {
                checked = std::time::Instant::now();
                std::fs::metadata(p).ok().map(|m| identity(&m)) != id
            };
            if asked || moved {
                let _ = out.flush();
                match open_writer(p) {
                    Ok((w, i)) => {
                        out = w;
                        id = i;
                    }
                    // Keep writing where we were rather than lose lines.
                    Err(e) => log::error!("access log reopen: {e}"),
                }
            }
        }
        // Read the flag before draining, so lines queued before a stop are still written.
        let stopping = stop.load(Ordering::Acquire);
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    let _ = out.write_all(line.as_bytes());
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote {
            let _ = out.flush();
        }
        if stopping {
            return;
        }
        std::thread::sleep(FLUSH_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Src;
    impl LogSource for Src {
        fn write_var(&self, var: &Var, out: &mut String) {
            match var {
                Var::Status => out.push_str("200"),
                Var::Header(h) if h == "user-agent" => out.push_str("curl"),
                Var::SecretHeader(_) => out.push_str("[REDACTED]"),
                Var::LlmSummary => out.push_str("{\"a\":1}"),
                _ => {}
            }
        }
        fn wants_summary(&self) -> bool {
            true
        }
        fn wants_payload(&self) -> bool {
            false
        }
    }

    #[test]
    fn renders_vars_literals_and_dashes() {
        let f = Format::parse("$status \"$http_user_agent\" ${route_id}x $$ $").unwrap();
        let mut s = String::new();
        f.render(&Src, &mut s);
        assert_eq!(s, "200 \"curl\" -x $$ $ summary={\"a\":1}");
    }

    #[test]
    fn unknown_variable_is_an_error() {
        assert!(Format::parse("$nope").unwrap_err().contains("$nope"));
        assert!(Format::parse(DEFAULT_FORMAT).is_ok());
    }

    #[test]
    fn sensitive_headers() {
        assert!(Var::is_sensitive_header("authorization"));
        assert!(!Var::is_sensitive_header("user-agent"));
        let f = Format::parse("$http_x_api_key $http_user_agent").unwrap();
        assert!(matches!(&f.segments[0], Segment::Var(Var::SecretHeader(h)) if h == "x-api-key"));
        assert!(matches!(&f.segments[2], Segment::Var(Var::Header(h)) if h == "user-agent"));
    }
}
