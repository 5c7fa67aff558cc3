//! The values of access-log variables for one finished request.

use std::cell::RefCell;
use std::fmt::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pingora_proxy::Session;

use super::ctx::RequestCtx;
use crate::observability::access_log::{LogSource, Var};

/// Query parameters whose values are credentials (key-auth's `apikey`, Gemini's `key`, ...).
const SENSITIVE_ARGS: &[&str] = &[
    "key",
    "apikey",
    "api_key",
    "api-key",
    "access_token",
    "token",
    "sig",
    "signature",
];

pub struct LogView<'a> {
    pub session: &'a Session,
    pub ctx: &'a RequestCtx,
    pub now: Instant,
}

impl LogView<'_> {
    pub fn status(&self) -> u16 {
        if let Some(resp) = self.session.response_written() {
            return resp.status.as_u16();
        }
        if let Some(e) = &self.ctx.error {
            return e.status;
        }
        if self.ctx.client_gone {
            return 499;
        }
        0
    }

    /// What the log phase of plugins sees of how the request ended.
    pub fn outcome(&self) -> crate::plugins::ctx::Outcome {
        crate::plugins::ctx::Outcome {
            status: self.status(),
            total: self.now.saturating_duration_since(self.ctx.started),
            upstream: self.upstream_time(),
            upstream_node: self.ctx.upstream_node,
            refused: self.ctx.refused,
            stale_retry: self.ctx.stale_retry,
        }
    }

    fn tokens(&self) -> Option<crate::llm::usage::Usage> {
        self.ctx.plugins.llm.as_ref().and_then(|l| l.usage)
    }

    fn ttft(&self) -> Option<Duration> {
        let llm = self.ctx.plugins.llm.as_ref()?;
        let t = llm.first_token_at?;
        let from = llm.sent_at.unwrap_or(self.ctx.started);
        Some(t.saturating_duration_since(from))
    }

    fn upstream_time(&self) -> Option<Duration> {
        let start = self.ctx.upstream_started?;
        let end = self.ctx.upstream_done_at.unwrap_or(self.now);
        Some(end.saturating_duration_since(start))
    }
}

/// Seconds with milliseconds, `1.234`.
fn secs(out: &mut String, d: Duration) {
    num(out, d.as_secs());
    let ms = d.subsec_millis();
    out.push('.');
    out.push(char::from(b'0' + (ms / 100) as u8));
    out.push(char::from(b'0' + (ms / 10 % 10) as u8));
    out.push(char::from(b'0' + (ms % 10) as u8));
}

/// A number, without going through `fmt` (a log line has a dozen).
fn num(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// An address as text. IPv4, the common case, is written digit by digit (`itoa` per octet, or
/// a stack buffer that then has to pass `from_utf8`, cost ~100 instructions an address).
fn ip(out: &mut String, a: std::net::IpAddr) {
    match a {
        std::net::IpAddr::V4(v4) => {
            out.reserve(15);
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if o >= 100 {
                    out.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    out.push(char::from(b'0' + o / 10 % 10));
                }
                out.push(char::from(b'0' + o % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[derive(Clone, Copy)]
enum TimeFormat {
    /// nginx's `$time_local`: `26/Nov/2026:11:57:39 +0000`.
    Local,
    /// `$time_iso8601`: `2026-11-26T11:57:39+00:00`.
    Iso8601,
}

/// A log time, to the second. Formatting it (local time zone, strftime) cost more than the rest
/// of the line (perf under wrk), and every line of one second has the same text: each thread
/// formats it once per second per format and copies it after.
fn write_time(out: &mut String, t: SystemTime, format: TimeFormat) {
    thread_local! {
        static LAST: RefCell<[(u64, String); 2]> = const { RefCell::new([(0, String::new()), (0, String::new())]) };
    }
    let second = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        let (at, text) = &mut last[format as usize];
        if *at != second || text.is_empty() {
            text.clear();
            let local: chrono::DateTime<chrono::Local> = t.into();
            let pattern = match format {
                TimeFormat::Local => "%d/%b/%Y:%H:%M:%S %z",
                TimeFormat::Iso8601 => "%Y-%m-%dT%H:%M:%S%:z",
            };
            let _ = write!(text, "{}", local.format(pattern));
            *at = second;
        }
        out.push_str(text);
    });
}

/// The query string with credential values replaced.
fn redacted_query(q: &str, out: &mut String) {
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) if SENSITIVE_ARGS.contains(&k.to_ascii_lowercase().as_str()) => {
                out.push_str(k);
                out.push_str("=[REDACTED]");
            }
            _ => out.push_str(pair),
        }
    }
}

impl LogSource for LogView<'_> {
    fn write_var(&self, var: &Var, out: &mut String) {
        let req = self.session.req_header();
        let ctx = self.ctx;
        match var {
            Var::RemoteAddr => {
                if let Some(a) = self.session.client_addr().and_then(|a| a.as_inet()) {
                    ip(out, a.ip());
                }
            }
            Var::RemoteUser | Var::ConsumerName => {
                if let Some(c) = &ctx.plugins.consumer {
                    out.push_str(&c.username);
                }
            }
            Var::TimeLocal => write_time(out, ctx.started_wall, TimeFormat::Local),
            Var::TimeIso8601 => write_time(out, ctx.started_wall, TimeFormat::Iso8601),
            Var::Msec => {
                if let Ok(d) = ctx.started_wall.duration_since(std::time::UNIX_EPOCH) {
                    secs(out, d);
                }
            }
            Var::RequestMethod => out.push_str(req.method.as_str()),
            Var::Uri => out.push_str(req.uri.path()),
            Var::RequestUri => {
                out.push_str(req.uri.path());
                if let Some(q) = req.uri.query() {
                    out.push('?');
                    redacted_query(q, out);
                }
            }
            Var::Args => {
                if let Some(q) = req.uri.query() {
                    redacted_query(q, out);
                }
            }
            Var::RequestLine => {
                out.push_str(req.method.as_str());
                out.push(' ');
                self.write_var(&Var::RequestUri, out);
                out.push(' ');
                out.push_str(version(req.version));
            }
            Var::Scheme => out.push_str("http"),
            Var::ServerProtocol => out.push_str(version(req.version)),
            Var::Host => {
                if let Some(h) = req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                {
                    out.push_str(h);
                }
            }
            Var::Status => {
                let s = self.status();
                if s != 0 {
                    num(out, s);
                }
            }
            Var::BodyBytesSent => {
                num(out, self.session.as_downstream().body_bytes_sent());
            }
            Var::RequestLength => {
                num(out, self.session.as_downstream().body_bytes_read());
            }
            Var::RequestTime => secs(out, self.now.saturating_duration_since(ctx.started)),
            Var::UpstreamAddr => {
                if let Some(a) = ctx.upstream_addr {
                    ip(out, a.ip());
                    out.push(':');
                    num(out, a.port());
                }
            }
            Var::UpstreamStatus => {
                if let Some(s) = ctx.upstream_status {
                    num(out, s);
                }
            }
            Var::UpstreamResponseTime => {
                if let Some(d) = self.upstream_time() {
                    secs(out, d);
                }
            }
            Var::RouteId => {
                if let Some(r) = &ctx.route {
                    out.push_str(&r.id);
                }
            }
            Var::RequestId => out.push_str(&ctx.request_id),
            Var::RequestType => out.push_str(ctx.plugins.request_type.as_str()),
            Var::LlmTimeToFirstToken => {
                if let Some(d) = self.ttft() {
                    num(out, d.as_millis() as u64);
                }
            }
            Var::LlmModel => {
                if let Some(m) = ctx.plugins.llm.as_ref().and_then(|l| l.model.as_deref()) {
                    out.push_str(m);
                }
            }
            Var::LlmResponseModel => {
                if let Some(m) = ctx
                    .plugins
                    .llm
                    .as_ref()
                    .and_then(|l| l.response_model.as_deref())
                {
                    out.push_str(m);
                }
            }
            Var::RequestLlmModel => {
                if let Some(m) = ctx
                    .plugins
                    .llm
                    .as_ref()
                    .and_then(|l| l.request_model.as_deref())
                {
                    out.push_str(m);
                }
            }
            Var::LlmPromptTokens => {
                if let Some(u) = self.tokens() {
                    num(out, u.prompt_tokens);
                }
            }
            Var::LlmCompletionTokens => {
                if let Some(u) = self.tokens() {
                    num(out, u.completion_tokens);
                }
            }
            Var::LlmTotalTokens => {
                if let Some(u) = self.tokens() {
                    num(out, u.total_tokens);
                }
            }
            Var::LlmInstance => {
                if let Some(l) = &ctx.plugins.llm {
                    out.push_str(&l.instance.name);
                }
            }
            Var::LlmAttempts => {
                if let Some(l) = &ctx.plugins.llm {
                    num(out, l.attempts);
                }
            }
            Var::LlmSummary => {
                let Some(l) = &ctx.plugins.llm else { return };
                let u = l.usage.unwrap_or_default();
                let v = serde_json::json!({
                    "request_model": l.request_model,
                    "model": l.model,
                    "response_model": l.response_model,
                    "instance": l.instance.name,
                    "attempts": l.attempts,
                    "duration": self.now.saturating_duration_since(ctx.started).as_millis() as u64,
                    "upstream_response_time": self.upstream_time().map(|d| d.as_millis() as u64),
                    "time_to_first_token": self.ttft().map(|d| d.as_millis() as u64),
                    "prompt_tokens": u.prompt_tokens,
                    "completion_tokens": u.completion_tokens,
                    "total_tokens": u.total_tokens,
                    "usage_estimated": l.usage_estimated,
                    "status": self.status(),
                });
                out.push_str(&v.to_string());
            }
            Var::LlmPayload => {
                let Some(l) = &ctx.plugins.llm else { return };
                let request: serde_json::Value = l
                    .request
                    .prompt_json()
                    .and_then(|p| serde_json::from_str(p).ok())
                    .unwrap_or(serde_json::Value::Null);
                let v = serde_json::json!({ "request": request, "response": l.response_text });
                out.push_str(&v.to_string());
            }
            Var::Header(name) => {
                if let Some(v) = req.headers.get(name) {
                    out.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
            }
            Var::SecretHeader(name) => {
                if req.headers.contains_key(name) {
                    out.push_str("[REDACTED]");
                }
            }
            Var::Arg(name) => {
                let Some(q) = req.uri.query() else { return };
                for pair in q.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if k == name {
                        if SENSITIVE_ARGS.contains(&k.to_ascii_lowercase().as_str()) {
                            out.push_str("[REDACTED]");
                        } else {
                            out.push_str(v);
                        }
                        return;
                    }
                }
            }
        }
    }

    fn wants_summary(&self) -> bool {
        self.ctx
            .plugins
            .llm
            .as_ref()
            .is_some_and(|l| l.instance.logging.summaries)
    }

    fn wants_payload(&self) -> bool {
        self.ctx
            .plugins
            .llm
            .as_ref()
            .is_some_and(|l| l.instance.logging.payloads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let mut addrs: Vec<IpAddr> = Vec::new();
        for o in 0..=255u8 {
            addrs.push(Ipv4Addr::new(o, 0, 255 - o, o.wrapping_mul(7)).into());
            addrs.push(Ipv4Addr::new(9, o, 99, 100).into());
        }
        addrs.push(Ipv6Addr::LOCALHOST.into());
        addrs.push(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into());
        for a in addrs {
            let mut s = String::from("x");
            ip(&mut s, a);
            assert_eq!(s, format!("x{a}"));
        }
    }

    #[test]
    fn log_times_are_formatted_per_second_and_follow_the_clock() {
        let at = |secs: u64, f| {
            let mut s = String::new();
            write_time(&mut s, UNIX_EPOCH + Duration::from_secs(secs), f);
            s
        };
        let direct = |secs: u64, pattern: &str| {
            let t: chrono::DateTime<chrono::Local> =
                (UNIX_EPOCH + Duration::from_secs(secs)).into();
            t.format(pattern).to_string()
        };
        for secs in [
            1_795_694_483,
            1_795_694_483,
            1_795_694_484,
            0,
            1_795_694_483,
        ] {
            assert_eq!(
                at(secs, TimeFormat::Local),
                direct(secs, "%d/%b/%Y:%H:%M:%S %z")
            );
            assert_eq!(
                at(secs, TimeFormat::Iso8601),
                direct(secs, "%Y-%m-%dT%H:%M:%S%:z")
            );
        }
    }

    #[test]
    fn query_credentials_are_redacted() {
        let mut s = String::new();
        redacted_query("a=1&apikey=secret&KEY=x&b", &mut s);
        assert_eq!(s, "a=1&apikey=[REDACTED]&KEY=[REDACTED]&b");
    }
}
