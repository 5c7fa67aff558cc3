//! Per-request state carried through Pingora's hooks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};

use super::body_budget::Reservation;
use super::errors::GatewayError;
use super::replay::ReplayToken;
use crate::llm::json_tap::JsonTap;
use crate::llm::request::LlmRequest;
use crate::llm::sse::SseTap;
use crate::llm::usage::Usage;
use crate::plugins::ai_proxy::AiProxy;
use crate::plugins::ai_proxy_multi::AiProxyMulti;
use crate::providers::instance::{LlmInstance, Target};
use crate::store::{Route, Snapshot};

/// APISIX's `request_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestType {
    #[default]
    TraditionalHttp,
    AiChat,
    AiStream,
}

impl RequestType {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestType::TraditionalHttp => "traditional_http",
            RequestType::AiChat => "ai_chat",
            RequestType::AiStream => "ai_stream",
        }
    }
}

/// How the upstream's answer body is watched on its way to the client.
#[derive(Default)]
pub enum ResponseTap {
    #[default]
    None,
    /// Server-sent events: usage from the final event, bytes forwarded as they come.
    Sse(Box<SseTap>),
    /// A JSON document: usage scanned as it streams past.
    Json(Box<JsonTap>),
    /// The whole answer is needed (Vertex predict → OpenAI embeddings conversion).
    Collect(BytesMut),
}

/// Which plugin serves the route.
pub enum LlmPlugin {
    Single(Arc<AiProxy>),
    Multi(Arc<AiProxyMulti>),
}

/// The LLM side of an AI request.
pub struct LlmCall {
    pub plugin: LlmPlugin,
    pub request: LlmRequest,
    /// The instance of the current attempt.
    pub instance: Arc<LlmInstance>,
    /// ai-proxy-multi: the current attempt's instance index, and which instances were tried.
    pub instance_idx: Option<usize>,
    pub tried: Vec<bool>,
    /// ai-proxy-multi `chash`: the request's key.
    pub hash_key: Option<Vec<u8>>,
    pub target: Option<Target>,
    /// The rewritten body of the current attempt.
    pub upstream_body: Bytes,
    /// The model the client asked for.
    pub request_model: Option<String>,
    /// The model sent upstream.
    pub model: Option<String>,
    /// The model the provider reported.
    pub response_model: Option<String>,
    pub usage_injected: bool,
    pub upstream_stream: bool,
    pub tap: ResponseTap,
    pub usage: Option<Usage>,
    /// `usage` is the gateway's estimate, not the provider's count.
    pub usage_estimated: bool,
    /// When the current attempt was sent to the provider.
    pub sent_at: Option<Instant>,
    /// When the first content (streaming) or the whole answer (otherwise) arrived.
    pub first_token_at: Option<Instant>,
    pub attempts: u32,
    /// Answer text for `logging.payloads`.
    pub response_text: Option<String>,
    /// Passthrough: the LLM's answer, to be sent on to the route's upstream.
    pub passthrough_body: Option<Bytes>,
    /// Bytes kept of a JSON answer for payload logging.
    pub payload_buf: Option<BytesMut>,
}

impl LlmCall {
    /// ai-proxy-multi's plugin, if that is what serves the route.
    pub fn multi(&self) -> Option<&Arc<AiProxyMulti>> {
        match &self.plugin {
            LlmPlugin::Multi(m) => Some(m),
            LlmPlugin::Single(_) => None,
        }
    }

    pub fn passthrough(&self) -> bool {
        matches!(&self.plugin, LlmPlugin::Single(p) if p.passthrough)
    }
}

pub struct RequestCtx {
    pub started: Instant,
    pub started_wall: SystemTime,
    pub request_id: String,
    pub snapshot: Option<Arc<Snapshot>>,
    pub route: Option<Arc<Route>>,
    pub request_type: RequestType,
    pub llm: Option<Box<LlmCall>>,
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
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            request_id: String::new(),
            snapshot: None,
            route: None,
            request_type: RequestType::TraditionalHttp,
            llm: None,
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
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
