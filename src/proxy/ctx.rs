//! Per-request state carried through Pingora's hooks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::body_budget::Reservation;
use super::errors::GatewayError;
use super::replay::ReplayToken;
use crate::plugins::PluginCtx;
use crate::runtime::{Route, Snapshot};

pub struct RequestCtx {
    pub started: Instant,
    pub started_wall: SystemTime,
    pub request_id: String,
    pub snapshot: Option<Arc<Snapshot>>,
    pub route: Option<Arc<Route>>,
    /// The plugins' view of the request and their state (the LLM call among it).
    pub plugins: PluginCtx,
    /// A request body read by the gateway that must reach the upstream unchanged (plain route
    /// matched on `post_arg`).
    pub replay_body: Option<Bytes>,
    pub replay: ReplayToken,
    pub upstream_addr: Option<SocketAddr>,
    /// Plain upstreams: the node chosen for this attempt (for `pass_host: node`).
    pub upstream_node: Option<usize>,
    pub upstream_status: Option<u16>,
    pub upstream_started: Option<Instant>,
    pub upstream_header_at: Option<Instant>,
    pub upstream_done_at: Option<Instant>,
    /// The error the gateway answered, if it answered one.
    pub error: Option<GatewayError>,
    /// Status logged when the client went away before an answer (nginx's 499).
    pub client_gone: bool,
    /// Read the rest of a refused body before the connection is closed (see `request_filter`).
    pub drain_before_close: bool,
    /// The request body could not be read: answer, then close (no keep-alive).
    pub close_connection: bool,
    /// `gateway.max_body_size`: also bounds the provider answers the gateway reads whole.
    pub max_body_size: u64,
    /// This attempt retries a stale pooled connection on a fresh one (`fallback::on_transport_error`).
    pub stale_retry: bool,
    /// The body's share of `gateway.max_inflight_body_bytes`, held while the body is (until the
    /// request ends, when dropping the context gives it back).
    pub body_reservation: Option<Reservation>,
    /// A plugin refused the request (a spent quota): the gateway's decision, answered to the
    /// client and in the access log, not an error for the error log.
    pub refused: bool,
    /// The body the gateway read is also in Pingora's own retry buffer (`replay::keep_small_body`).
    pub body_in_retry_buffer: bool,
    /// The upstream socket corked for this attempt, until its body is written (`net::cork`).
    pub corked: Option<std::os::unix::io::RawFd>,
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            request_id: String::new(),
            snapshot: None,
            route: None,
            plugins: PluginCtx::default(),
            replay_body: None,
            replay: ReplayToken::default(),
            upstream_addr: None,
            upstream_node: None,
            upstream_status: None,
            upstream_started: None,
            upstream_header_at: None,
            upstream_done_at: None,
            error: None,
            client_gone: false,
            drain_before_close: false,
            close_connection: false,
            max_body_size: crate::config::schema::DEFAULT_MAX_BODY_SIZE,
            stale_retry: false,
            body_reservation: None,
            refused: false,
            body_in_retry_buffer: false,
            corked: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
