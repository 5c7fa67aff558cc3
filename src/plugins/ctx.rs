//! What a plugin sees of a request, and the state plugins keep for it from phase to phase.
//!
//! It lives here, with the plugins, so that plugins never depend on the proxy glue: the glue owns
//! a `PluginCtx` inside its own request context and hands it to every phase.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;

use super::ai_proxy::AiProxy;
use super::ai_proxy_multi::AiProxyMulti;
use super::ai_rate_limiting::RequestQuota;
use super::chain::Chain;
use super::consumer::{Consumer, Consumers};
use crate::llm::json_tap::JsonTap;
use crate::llm::request::LlmRequest;
use crate::llm::sse::SseTap;
use crate::llm::usage::Usage;
use crate::providers::instance::{LlmInstance, Target};
use crate::router::RequestView;

/// Per-request plugin state.
#[derive(Default)]
pub struct PluginCtx {
    /// The chain that runs for this request: the route's (and its service's) plugins.
    pub chain: Option<Arc<Chain>>,
    /// The matched route's id (counters on a route or service are per route).
    pub route_id: Option<Arc<str>>,
    /// Who the request comes from, once an authentication plugin identified it.
    pub consumer: Option<Arc<Consumer>>,
    pub request_type: RequestType,
    /// The LLM call, when an ai-proxy plugin serves the route.
    pub llm: Option<Box<LlmCall>>,
    /// Headers plugins add to the answer the client gets (also to the gateway's own errors).
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// ai-rate-limiting's reservations for this request.
    pub quota: Option<Box<RequestQuota>>,
    /// How the request ended, set by the glue before the log phase.
    pub outcome: Outcome,
    /// The gauges `prometheus` raised for this request (lowered in its log phase).
    pub measured: Measured,
}

/// How a request ended, as the log phase sees it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// The status the client got (499: it left first; 0: none).
    pub status: u16,
    /// From the request's arrival to now.
    pub total: Duration,
    /// The upstream's part of it (from the first attempt's send to the answer's end).
    pub upstream: Option<Duration>,
    /// A plain upstream route: the index of the node that served (or was tried last).
    pub upstream_node: Option<usize>,
    /// A plugin refused the request (a spent quota).
    pub refused: bool,
    /// A stale pooled connection failed and the attempt was retried on a fresh one.
    pub stale_retry: bool,
}

/// Gauges raised for a request, so the log phase lowers exactly those.
#[derive(Debug, Default, Clone, Copy)]
pub struct Measured {
    pub in_flight: bool,
    pub stream: bool,
}

/// The request as plugins see it in the request phases.
pub struct PluginRequest<'a> {
    pub header: &'a mut RequestHeader,
    pub client_ip: Option<IpAddr>,
    pub server_port: u16,
    /// The parsed JSON body, when the chain needs it (an ai-proxy plugin takes it).
    pub body: Option<LlmRequest>,
    /// The config's consumers (authentication plugins look keys up here).
    pub consumers: &'a Consumers,
    /// The request goes to an LLM provider (a third party), not to the route's own upstream.
    pub to_provider: bool,
}

impl PluginRequest<'_> {
    /// The request's variables (`vars`, hash keys), as the router reads them, with the consumer
    /// an authentication plugin identified (`$consumer_name`, `$remote_user`).
    pub fn view<'v>(&'v self, ctx: &'v PluginCtx) -> RequestView<'v> {
        let mut view = RequestView::of(self.header, self.client_ip, self.server_port, None);
        view.consumer = ctx.consumer.as_ref().map(|c| c.username.as_str());
        view
    }
}

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
    /// Keep the provider's raw `usage` object (a plugin computes a cost from its fields).
    pub keep_raw_usage: bool,
    /// The provider's raw `usage` object (JSON text), with `keep_raw_usage`.
    pub raw_usage: Option<Vec<u8>>,
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
    /// A call not yet sent: `instance` is the first attempt's (ai-proxy-multi picks per attempt).
    pub fn new(
        plugin: LlmPlugin,
        request: LlmRequest,
        instance: Arc<LlmInstance>,
        tried: Vec<bool>,
        hash_key: Option<Vec<u8>>,
    ) -> LlmCall {
        let request_model = request.model();
        LlmCall {
            plugin,
            request,
            instance,
            instance_idx: None,
            tried,
            hash_key,
            target: None,
            upstream_body: Bytes::new(),
            request_model,
            model: None,
            response_model: None,
            usage_injected: false,
            upstream_stream: false,
            tap: ResponseTap::None,
            usage: None,
            usage_estimated: false,
            keep_raw_usage: false,
            raw_usage: None,
            sent_at: None,
            first_token_at: None,
            attempts: 0,
            response_text: None,
            passthrough_body: None,
            payload_buf: None,
        }
    }

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
