//! ai-proxy-multi's fallback on Pingora's retry loop.
//!
//! An upstream 429/5xx is a normal response to Pingora, so a fallback status is turned into a
//! retryable error in `upstream_response_filter` (before anything reaches the client) while
//! another instance may still be tried; on the last attempt the answer passes through, so the
//! client gets the last provider's own status and body. Transport failures (refused, reset,
//! timed out) arrive in `fail_to_connect` / `error_while_proxy`, whose Pingora defaults never
//! retry a POST. Each retry calls `upstream_peer` again, which picks the next untried instance
//! and rewrites the body for it; the replay session hands the whole body to every attempt.

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use crate::balancer::health::Outcome;
use crate::net::peer;

/// `upstream_response_filter`: `Some(error)` to try the next instance instead of answering.
pub fn on_status(status: u16, ctx: &mut RequestCtx) -> Option<Box<Error>> {
    let elapsed = ctx.started.elapsed();
    let llm = ctx.plugins.llm.as_deref()?;
    let m = llm.multi()?;
    let idx = llm.instance_idx?;
    m.record(idx, Outcome::Status(status));
    if !m.falls_back_on(status) || !m.may_retry(llm.attempts, elapsed, &llm.tried) {
        return None;
    }
    let msg = format!(
        "instance {} answered {status}, falling back",
        m.instances[idx].llm.name
    );
    log::info!("{msg} (request {})", ctx.request_id);
    let mut e = Error::explain(ErrorType::HTTPStatus(status), msg);
    e.set_retry(true);
    Some(e)
}

fn outcome_of(e: &Error) -> Outcome {
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ReadTimedout
        | ErrorType::WriteTimedout
        | ErrorType::TLSHandshakeTimedout => Outcome::Timeout,
        _ => Outcome::ConnectFailure,
    }
}

/// `fail_to_connect` and `error_while_proxy`: decide whether the request goes to another
/// instance. `client_reused`: the failed upstream connection came from the pool.
pub fn on_transport_error(
    session: &Session,
    mut e: Box<Error>,
    ctx: &mut RequestCtx,
    client_reused: bool,
) -> Box<Error> {
    if matches!(e.etype(), ErrorType::HTTPStatus(_)) {
        return e; // a fallback status: already decided in `on_status`
    }
    let elapsed = ctx.started.elapsed();
    let answered = session.response_written().is_some();
    match ctx.plugins.llm.as_mut() {
        None => {
            // Plain upstream routes keep Pingora's rule: only idempotent requests are retried,
            // and only when the failure may be a stale pooled connection.
            if session.req_header().method.is_idempotent() && !answered {
                e.retry.decide_reuse(client_reused);
            } else {
                e.set_retry(false);
            }
        }
        Some(llm) => {
            let retry = match (llm.multi().cloned(), llm.instance_idx) {
                (Some(m), Some(idx)) if e.esource() == &ErrorSource::Upstream => {
                    m.record(idx, outcome_of(&e));
                    let retry = !answered && m.may_retry(llm.attempts, elapsed, &llm.tried);
                    if retry {
                        log::info!(
                            "instance {} failed ({}), falling back",
                            m.instances[idx].llm.name,
                            e.etype().as_str()
                        );
                    }
                    retry
                }
                // A single instance is retried only when a stale pooled connection failed.
                (None, _) => {
                    let stale = stale_connection(&e, client_reused)
                        && !answered
                        && ctx.upstream_header_at.is_none()
                        && !ctx.stale_retry;
                    if stale {
                        log::info!(
                            "instance {}: a pooled connection failed before answering ({}); retrying once on a fresh connection (request {})",
                            llm.instance.name,
                            e.etype().as_str(),
                            ctx.request_id
                        );
                        ctx.stale_retry = true;
                    }
                    stale
                }
                _ => false,
            };
            e.set_retry(retry);
        }
    }
    e
}

/// A failure of a reused connection before the answer started (see `net::peer`); for the
/// proxy it must also be the upstream's.
fn stale_connection(e: &Error, client_reused: bool) -> bool {
    client_reused && e.esource() == &ErrorSource::Upstream && peer::failed_before_answer(e)
}

/// `upstream_peer`: the retry after a stale pooled connection must not pick another pooled one
/// (a provider that dropped one idle connection has likely dropped the others too). The group
/// key is part of Pingora's pool key, so a key no pooled connection has forces a new
/// connection; that attempt says `Connection: close` (`shape_request`), so nothing is ever
/// pooled under it.
pub fn fresh_connection(p: &mut HttpPeer, ctx: &RequestCtx) {
    if ctx.stale_retry {
        p.group_key = peer::fresh_group_key();
    }
}
