//! The request phase (`request_filter`): route matching, reading and validating the body, and
//! preparing the LLM call. Everything that can be refused is refused here, before anything is sent
//! upstream.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;

use super::body_budget::BodyClaim;
use super::ctx::RequestCtx;
use super::errors::GatewayError;
use super::{outbound, replay, Gateway};
use crate::error::Rejection;
use crate::llm::request::{BodyError, LlmRequest};
use crate::plugins::ctx::{PluginRequest, RequestType};
use crate::router::vars::{JsonArg, PostArgs, Value};
use crate::router::RequestView;

/// Outcome of the request phase.
pub enum Verdict {
    /// Go on to the upstream.
    Proxy,
    /// Answer this error now (with the headers a plugin's refusal carries).
    Reject(Rejection),
    /// A response was already written (passthrough relayed the provider's error).
    Responded,
}

pub async fn run(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) -> Verdict {
    let snapshot = gw.store.load();
    ctx.snapshot = Some(snapshot.clone());

    // Route on what the headers say; read the body first only if a candidate route needs it.
    let needs_body = snapshot.router.needs_body(&view(session, None));
    let mut body: Option<Bytes> = None;
    let mut parsed: Option<LlmRequest> = None;
    if needs_body && has_body(session) {
        match read_body(session, gw, ctx).await {
            Ok(b) => body = Some(b),
            Err(e) => return Verdict::Reject(e.into()),
        }
        parsed = body.clone().and_then(|b| LlmRequest::parse(b).ok());
    }
    let found = {
        let args = parsed.as_ref().map(BodyArgs);
        snapshot
            .router
            .find(&view(session, args.as_ref().map(|a| a as &dyn PostArgs)))
    };
    let Some(idx) = found else {
        return Verdict::Reject(GatewayError::not_found().into());
    };
    let route = snapshot.routes[idx].clone();
    ctx.route = Some(route.clone());

    let chain = route.chain.clone();
    ctx.plugins.chain = Some(chain.clone());
    ctx.plugins.route_id = Some(route.id.clone());
    let (client_ip, server_port) = addrs(session);

    // Authentication first: a client that may not use the route gets its 401 before the gateway
    // reads (and holds) its body.
    let to_provider = chain.serves_request();
    {
        let mut req = PluginRequest {
            header: session.req_header_mut(),
            client_ip,
            server_port,
            body: None,
            consumers: &snapshot.consumers,
            to_provider,
        };
        if let Err(r) = chain.rewrite(&mut req, &mut ctx.plugins).await {
            return Verdict::Reject(r);
        }
    }
    // The consumer's own plugins apply to its requests, over the route's of the same name.
    let chain = match ctx
        .plugins
        .consumer
        .as_ref()
        .filter(|c| !c.plugins.is_empty())
    {
        Some(c) => {
            let merged = Arc::new(chain.with_consumer(&c.plugins));
            ctx.plugins.chain = Some(merged.clone());
            merged
        }
        None => chain,
    };

    let request = if chain.needs_body() {
        match llm_body(session, gw, ctx, body, parsed).await {
            Ok(r) => {
                ctx.plugins.request_type = if r.stream() {
                    RequestType::AiStream
                } else {
                    RequestType::AiChat
                };
                Some(r)
            }
            Err(e) => return Verdict::Reject(e.into()),
        }
    } else {
        // No plugin reads the body: it streams through Pingora untouched, unless it was already
        // read for matching, in which case it is replayed as is.
        if let Some(b) = body.filter(|b| !b.is_empty()) {
            ctx.replay_body = Some(b.clone());
            ctx.replay = replay::install(session, b, ctx.body_in_retry_buffer, false);
        }
        None
    };
    {
        let mut req = PluginRequest {
            header: session.req_header_mut(),
            client_ip,
            server_port,
            body: request,
            consumers: &snapshot.consumers,
            to_provider,
        };
        if let Err(r) = chain.access(&mut req, &mut ctx.plugins).await {
            return Verdict::Reject(r);
        }
    }

    let Some(llm) = ctx.plugins.llm.as_ref() else {
        return Verdict::Proxy;
    };
    let client_body = llm.request.body().clone();
    // An embeddings answer may have to be read whole (Vertex AI `:predict`) and its header held.
    let may_hold = llm.request.is_embeddings();
    if llm.passthrough() {
        // Boxed: a whole HTTP exchange with the provider, a large future that every request's
        // `request_filter` future would otherwise carry (and copy) for the few that pass through.
        match Box::pin(outbound::passthrough_call(session, ctx)).await {
            Ok(None) => {}
            Ok(Some(())) => return Verdict::Responded,
            // With the headers plugins set (a quota's refusal carries its own).
            Err(e) => {
                return Verdict::Reject(Rejection {
                    error: e,
                    headers: std::mem::take(&mut ctx.plugins.response_headers),
                })
            }
        }
    }
    ctx.replay = replay::install(session, client_body, ctx.body_in_retry_buffer, may_hold);
    Verdict::Proxy
}

/// The JSON body an LLM call needs: checked (`Content-Type`), read (unless routing already did)
/// and parsed, or the 400/413/408 the client gets.
async fn llm_body(
    session: &mut Session,
    gw: &Gateway,
    ctx: &mut RequestCtx,
    body: Option<Bytes>,
    parsed: Option<LlmRequest>,
) -> Result<LlmRequest, GatewayError> {
    if let Some(ct) = session.req_header().headers.get(http::header::CONTENT_TYPE) {
        if !is_json(ct.as_bytes()) {
            return Err(GatewayError::bad_request(
                "invalid_content_type",
                format!(
                    "Content-Type must be application/json, got {:?}",
                    String::from_utf8_lossy(ct.as_bytes())
                ),
            ));
        }
    }
    if let Some(p) = parsed {
        return Ok(p);
    }
    let b = match body {
        Some(b) => b,
        None => read_body(session, gw, ctx).await?,
    };
    LlmRequest::parse(b).map_err(|e| {
        let code = match e {
            BodyError::Empty => "empty_body",
            BodyError::InvalidJson(_) => "invalid_json",
            BodyError::NotObject => "invalid_body",
        };
        GatewayError::bad_request(code, e.to_string())
    })
}

/// The client's IP and the port it connected to.
fn addrs(session: &Session) -> (Option<IpAddr>, u16) {
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let server_port = session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.port())
        .unwrap_or(0);
    (client_ip, server_port)
}

fn has_body(session: &Session) -> bool {
    let h = &session.req_header().headers;
    h.get(http::header::TRANSFER_ENCODING).is_some()
        || h.get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// `application/json` or `application/*+json`, any case, parameters ignored (nothing allocated).
fn is_json(ct: &[u8]) -> bool {
    if ct == b"application/json" {
        return true; // nearly every request
    }
    let mime = ct.split(|b| *b == b';').next().unwrap_or(b"").trim_ascii();
    let (ty, sub) = match mime.iter().position(|b| *b == b'/') {
        Some(i) => (&mime[..i], &mime[i + 1..]),
        None => return false,
    };
    ty.eq_ignore_ascii_case(b"application")
        && (sub.eq_ignore_ascii_case(b"json")
            || (sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case(b"+json")))
}

/// Why a body could not be read.
enum BodyFailure {
    /// Refused by the gateway (413): the connection's framing is intact.
    Refused(GatewayError),
    /// The body itself is broken (bad chunk framing, a read error, too slow): after this the
    /// stream position is unknown, so the connection must close after the answer.
    Broken(GatewayError),
}

/// Read the whole request body within `client_body_total_timeout` of the request's start
/// (Pingora bounds each read by `client_body_timeout`) and within
/// `gateway.max_inflight_body_bytes`.
async fn read_body(
    session: &mut Session,
    gw: &Gateway,
    ctx: &mut RequestCtx,
) -> Result<Bytes, GatewayError> {
    let deadline = tokio::time::Instant::from_std(ctx.started + gw.body_total_timeout);
    let mut claim = BodyClaim::new(gw.body_budget.as_ref());
    let declared = crate::net::declared_length(session.req_header());
    ctx.body_in_retry_buffer = replay::keep_small_body(session, declared);
    let result = {
        let mut read = std::pin::pin!(read_whole_body(
            session,
            declared,
            gw.max_body_size,
            &mut claim
        ));
        // A small body usually came with its header and is read at once: only a read that has
        // to wait arms the deadline's timer (setting one up and tearing it down was a fifth of
        // this function's instructions under callgrind).
        match futures::poll!(read.as_mut()) {
            std::task::Poll::Ready(r) => Ok(r),
            std::task::Poll::Pending => tokio::time::timeout_at(deadline, read).await,
        }
    };
    let failure = match result {
        Ok(Ok(b)) => {
            // The reservation lives in the context as long as the body does (to the end of the
            // request); on any failure it is dropped, given back, at once.
            ctx.body_reservation = claim.into_reservation();
            return Ok(b);
        }
        Ok(Err(f)) => f,
        Err(_) => BodyFailure::Broken(body_timeout()),
    };
    match failure {
        BodyFailure::Refused(e) => Err(e),
        BodyFailure::Broken(e) => {
            ctx.close_connection = true;
            Err(e)
        }
    }
}

fn body_timeout() -> GatewayError {
    GatewayError::new(
        408,
        "invalid_request_error",
        "request_timeout",
        "the request body was not received in time",
    )
}

/// Read the whole request body, refusing it past `max` bytes. When Content-Length already says it
/// is too large the body is not read at all; Pingora drains it before reusing the connection, so
/// the client reads the 413 instead of a reset. The bytes are reserved in `claim` before they are
/// read (503 when the gateway holds too much already).
async fn read_whole_body(
    session: &mut Session,
    declared: Option<u64>,
    max: u64,
    claim: &mut BodyClaim,
) -> Result<Bytes, BodyFailure> {
    if declared.is_some_and(|n| n > max) {
        return Err(BodyFailure::Refused(GatewayError::too_large(max)));
    }
    claim
        .cover(declared.unwrap_or(0))
        .map_err(BodyFailure::Refused)?;
    // The gateway consumes the body itself, so it answers `Expect: 100-continue` itself and does
    // not forward the expectation.
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects {
        session
            .req_header_mut()
            .remove_header(&http::header::EXPECT);
        if session
            .downstream_session
            .write_continue_response()
            .await
            .is_err()
        {
            return Err(BodyFailure::Broken(GatewayError::bad_request(
                "body_read_error",
                "client went away",
            )));
        }
    }
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut total: u64 = 0;
    loop {
        let chunk = session
            .downstream_session
            .read_request_body()
            .await
            .map_err(|e| {
                BodyFailure::Broken(match e.etype() {
                    pingora_error::ErrorType::ReadTimedout => body_timeout(),
                    _ => GatewayError::bad_request(
                        "body_read_error",
                        "failed to read the request body (invalid framing or connection error)",
                    ),
                })
            })?;
        let Some(chunk) = chunk else { break };
        total += chunk.len() as u64;
        if total > max {
            return Err(BodyFailure::Refused(GatewayError::too_large(max)));
        }
        claim.cover(total).map_err(BodyFailure::Refused)?;
        // A body that arrives in one read is kept as is; only multi-read bodies are copied.
        match (&mut first, &mut buf) {
            (None, None) => first = Some(chunk),
            (Some(f), None) => {
                let mut b = BytesMut::with_capacity(
                    declared
                        .map(|n| n as usize)
                        .unwrap_or(f.len() * 2)
                        .max(f.len() + chunk.len()),
                );
                b.extend_from_slice(f);
                b.extend_from_slice(&chunk);
                buf = Some(b);
                first = None;
            }
            (_, Some(b)) => b.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, buf) {
        (Some(f), None) => f,
        (_, Some(b)) => b.freeze(),
        (None, None) => Bytes::new(),
    })
}

fn view<'a>(session: &'a Session, body: Option<&'a dyn PostArgs>) -> RequestView<'a> {
    let (client_ip, server_port) = addrs(session);
    RequestView::of(session.req_header(), client_ip, server_port, body)
}

/// `post_arg.*` over the parsed body. Public for the route-matching benchmark.
pub struct BodyArgs<'a>(pub &'a LlmRequest);

impl PostArgs for BodyArgs<'_> {
    /// The whole value decoded, for callers that need a value rather than a comparison
    /// (ai-proxy-multi hash keys); the router compares the JSON text instead.
    fn post_arg(&self, path: &[&str]) -> Option<Value<'_>> {
        Value::from_json(serde_json::from_str(self.0.lookup(path)?).ok()?)
    }

    fn post_arg_json(&self, path: &[&str]) -> JsonArg<'_> {
        match self.0.lookup(path) {
            Some(json) => JsonArg::Found(json),
            None => JsonArg::Absent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn is_json_accepts_json_types_only() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ",
            "application/vnd.api+json",
            "application/merge-patch+JSON;x=1",
        ] {
            assert!(is_json(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "text/plain",
            "application/jsonx",
            "application/+json",
            "text/json",
            "application",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=+json",
        ] {
            assert!(!is_json(bad.as_bytes()), "{bad}");
        }
    }
}
