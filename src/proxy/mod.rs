//! The Pingora glue: one `ProxyHttp` implementation whose hooks only hand over to the module that
//! owns each decision (`request` routes and validates, `outbound` talks to the upstream,
//! `response` watches the answer, `logging` renders the access log).

pub mod body_budget;
pub mod ctx;
pub mod errors;
pub mod fallback;
pub mod logging;
pub mod outbound;
pub mod replay;
pub mod request;
pub mod response;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::observability::access_log::AccessLog;
use crate::observability::request_id;
use crate::runtime::Store;
use ctx::RequestCtx;
use request::Verdict;

/// How long an unread request body is drained after the gateway refused the request.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Gateway {
    pub store: Arc<Store>,
    pub access_log: Arc<AccessLog>,
    pub max_body_size: u64,
    /// `gateway.client_body_total_timeout`: the whole body must arrive within this, counted
    /// from the end of the request header.
    pub body_total_timeout: Duration,
    /// `gateway.max_inflight_body_bytes`: all buffered request bodies together.
    pub body_budget: Option<Arc<body_budget::BodyBudget>>,
    /// `gateway.debug_headers`: answers carry the gateway's own time (`X-AIGate-Overhead-Us`).
    pub debug_headers: bool,
}

/// Keep the gateway's own error for `fail_to_proxy` (it answers with its type and code) and
/// hand Pingora the status-carrying error it needs.
fn remember(ctx: &mut RequestCtx, e: errors::GatewayError) -> Box<Error> {
    let pe = e.to_pingora();
    ctx.error = Some(e);
    pe
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the context inside each request's future, which it boxes by
    /// moving it, whole, onto the heap (a `memcpy` of its full size per request). Inline, the
    /// ~450-byte context took ~1.3 KB of that 14.7 KB future (laid out in several of its
    /// states); boxed, it is one small allocation and a pointer (callgrind: -1.5k bytes
    /// copied, -1.7k instructions per ai-proxy request).
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Box<RequestCtx> {
        let mut ctx = Box::new(RequestCtx::new());
        ctx.max_body_size = self.max_body_size;
        ctx
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        let given = session
            .req_header()
            .headers
            .get(&request_id::HEADER)
            .map(|v| v.as_bytes());
        ctx.request_id = request_id::from_client(given).unwrap_or_else(request_id::generate);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        match request::run(self, session, ctx).await {
            Verdict::Proxy => Ok(false),
            Verdict::Responded => Ok(true),
            Verdict::Reject(err) => {
                let ds = &mut session.downstream_session;
                if ctx.close_connection {
                    // The body could not be read (bad framing, too slow): where the next
                    // request would start is unknown, so the connection ends with this answer.
                    ds.set_keepalive(None);
                } else if !ds.is_body_done() {
                    // Refused before its body was read (413, wrong Content-Type). Closing under a
                    // client that is still sending would reset the connection and could lose the
                    // answer, so the rest of the body is drained (time-bounded) first.
                    ds.set_total_drain_timeout(Some(DRAIN_TIMEOUT));
                    if ds.body_bytes_read() == 0 {
                        // Untouched body: Pingora drains it on reuse and keeps the connection.
                        ds.set_close_on_response_before_downstream_finish(false);
                    } else {
                        // Partly read (a chunked body over the limit): Pingora cannot reuse the
                        // connection, and says `Connection: close`; drain before it closes.
                        ctx.drain_before_close = true;
                    }
                }
                // Boxed: the error path's write stays out of every request's future.
                Box::pin(errors::respond_with(
                    session,
                    &ctx.request_id,
                    &err.error,
                    &err.headers,
                ))
                .await;
                ctx.error = Some(err.error);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let mut peer = outbound::select_peer(ctx)
            .await
            .map_err(|e| remember(ctx, e))?;
        fallback::fresh_connection(&mut peer, ctx);
        Ok(peer)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        outbound::cork_for_held_body(peer, fd, ctx);
        // A multi-address name may have connected to another address than the peer's nominal one.
        if peer.options.custom_l4.is_some() {
            if let Some(a) = crate::net::connect::peer_of(fd) {
                ctx.upstream_addr = Some(a);
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        outbound::shape_request(session, upstream_request, ctx)
            .await
            .map_err(|e| remember(ctx, e))
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // A body streamed to a plain upstream: Pingora bounds each read (client_body_timeout);
        // the whole body's time is bounded here, as each piece arrives.
        if !end_of_stream && ctx.started.elapsed() > self.body_total_timeout {
            return Err(Error::explain(
                pingora_error::ErrorType::ReadTimedout,
                "request body not received within client_body_total_timeout",
            )
            .into_down());
        }
        outbound::swap_body(body, end_of_stream, ctx);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(retry) = fallback::on_status(upstream_response.status.as_u16(), ctx) {
            return Err(retry);
        }
        response::on_upstream_header(upstream_response, ctx);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        e: Box<Error>,
    ) -> Box<Error> {
        fallback::on_transport_error(session, e, ctx, false)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        fallback::on_transport_error(session, e, ctx, client_reused)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if response::on_client_header(upstream_response, ctx) {
            replay::hold_header(session, &ctx.replay);
        }
        if let Some(chain) = ctx.plugins.chain.clone() {
            chain.header_filter(upstream_response, &mut ctx.plugins);
        }
        if self.debug_headers {
            let _ = upstream_response.insert_header(
                "x-aigate-overhead-us",
                response::overhead_us(ctx).to_string(),
            );
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        response::on_body(body, end_of_stream, ctx).map_err(|e| remember(ctx, e))?;
        if end_of_stream {
            // The answer is complete, its last bytes still here: plugins that account for it do
            // so now, so a client that asks again right after reading it sees the result.
            response::settle_usage(ctx);
            if let Some(chain) = ctx.plugins.chain.clone() {
                chain.answer_end(&mut ctx.plugins);
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        match outbound::classify_failure(e, ctx) {
            None => {
                ctx.client_gone = true;
                FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                }
            }
            Some(err) => {
                let code = err.status;
                // Once the answer has started, the only honest signal left is closing the stream.
                let fresh = session.response_written().is_none();
                if fresh {
                    // With the headers plugins set (a quota's, also on its own refusal).
                    errors::respond_with(
                        session,
                        &ctx.request_id,
                        &err,
                        &ctx.plugins.response_headers,
                    )
                    .await;
                }
                ctx.error = Some(err);
                FailToProxy {
                    error_code: code,
                    can_reuse_downstream: fresh,
                }
            }
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        replay::restore(session, &mut ctx.replay);
        if ctx.drain_before_close {
            let _ = session.downstream_session.drain_request_body().await;
        }
        response::settle_usage(ctx);
        let now = Instant::now();
        ctx.plugins.outcome = logging::LogView { session, ctx, now }.outcome();
        match ctx.plugins.chain.clone() {
            Some(chain) => chain.log(&mut ctx.plugins).await,
            None => {
                if let Some(m) = crate::observability::metrics::global() {
                    m.count_unrouted(ctx.plugins.outcome.status);
                }
            }
        }
        if self.access_log.enabled() {
            let view = logging::LogView { session, ctx, now };
            self.access_log.log(&view);
        }
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &Self::CTX,
        _e: &Error,
        _context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        // ai-proxy-multi falling back is planned behaviour, logged at info by `fallback`; the
        // access log records the instance that served and the number of attempts.
        ctx.plugins
            .llm
            .as_ref()
            .is_some_and(|l| l.multi().is_some())
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, e: &Error) -> bool {
        // A plugin's refusal (a spent quota) is the gateway working as configured: a line per
        // refused request would flood the error log exactly when clients push hardest.
        if ctx.refused {
            return true;
        }
        // A client that hangs up is not a gateway error: the access log records it as 499.
        e.esource() == &pingora_error::ErrorSource::Downstream
            && matches!(
                e.etype(),
                pingora_error::ErrorType::ConnectionClosed
                    | pingora_error::ErrorType::ReadError
                    | pingora_error::ErrorType::WriteError
            )
    }

    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        // Pingora puts this in its error log; the query can carry a credential, so it is left out.
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        format!("{} {}, Host: {host}", req.method, req.uri.path())
    }
}
