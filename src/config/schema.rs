//! The configuration file's shape, as serde types.
//!
//! Resource objects (routes, services, plugin configs) are APISIX's JSON objects verbatim, so a
//! route body from an APISIX admin-API curl call pastes into `routes:` unchanged. Every struct
//! denies unknown fields: a misspelt key is an error with its path, never a silently ignored
//! setting. Semantic checks that serde cannot express live in `config::validate`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole `config.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Pingora's own `ServerConf`, passed through (checked for unknown keys separately).
    #[serde(default)]
    pub server: Option<serde_yaml::Value>,
    #[serde(default)]
    pub gateway: GatewayConf,
    #[serde(default)]
    pub routes: Vec<RouteConf>,
    #[serde(default)]
    pub services: Vec<ServiceConf>,
    #[serde(default)]
    pub consumers: Vec<ConsumerConf>,
    /// APISIX upstream objects that routes and services name by `upstream_id`.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConf>,
}

/// An APISIX consumer: who requests come from once an authentication plugin identified them.
/// Its `plugins` apply to its requests (over the route's); an authentication plugin's entry in
/// them (`key-auth: {key}`) is one of its credentials, as is each of `credentials`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConf {
    pub username: String,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub plugins: Option<PluginsConf>,
    /// APISIX's credentials (`/consumers/{username}/credentials/{id}`), inline.
    #[serde(default)]
    pub credentials: Option<Vec<CredentialConf>>,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
}

/// One credential of a consumer: an authentication plugin's config (`key-auth: {key}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConf {
    pub id: Id,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    pub plugins: PluginsConf,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConf {
    #[serde(default = "default_listen")]
    pub listen: OneOrMany<String>,
    #[serde(default)]
    pub admin: Option<AdminConf>,
    /// Prometheus metrics on their own listener (absent: off).
    #[serde(default)]
    pub metrics: Option<MetricsConf>,
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    /// Where the admin API's resources are kept for a cluster (absent: `data_dir`).
    #[serde(default)]
    pub store: Option<StoreConf>,
    #[serde(default)]
    pub access_log: AccessLogConf,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body_size")]
    pub max_body_size: u64,
    /// Seconds to receive a request's whole header (from its first byte).
    #[serde(default)]
    pub client_header_timeout: Option<f64>,
    /// Seconds allowed between two reads of a request body.
    #[serde(default)]
    pub client_body_timeout: Option<f64>,
    /// Seconds to receive a request's whole body (from the end of its header).
    #[serde(default)]
    pub client_body_total_timeout: Option<f64>,
    /// Seconds an idle keep-alive connection is kept open.
    #[serde(default)]
    pub keepalive_timeout: Option<f64>,
    /// Seconds a write to a client may stall (a client that stops reading).
    #[serde(default)]
    pub send_timeout: Option<f64>,
    /// Largest request header (request line and all fields), bytes.
    #[serde(default)]
    pub max_header_size: Option<u64>,
    /// Most client connections open at once; beyond it new ones are closed at once.
    #[serde(default)]
    pub max_connections: Option<u64>,
    #[serde(default)]
    pub dns: DnsConf,
    /// All request bodies held in memory at once, in bytes; absent = no budget.
    #[serde(default)]
    pub max_inflight_body_bytes: Option<u64>,
    /// Add `X-AIGate-Overhead-Us` (the gateway's own time before the answer) to answers.
    #[serde(default)]
    pub debug_headers: bool,
}

/// `gateway.store`: resources kept in etcd (v3), shared by every node on the same prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConf {
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    /// Seconds: the longest one etcd call may take.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

/// `gateway.dns`: how provider and upstream names are resolved.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConf {
    /// `ip` or `ip:port` (default port 53); absent = the system's `/etc/resolv.conf`.
    #[serde(default)]
    pub nameservers: Option<Vec<String>>,
    /// Seconds one look-up may take, retries included.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Seconds: answers are kept at least this long whatever their TTL...
    #[serde(default)]
    pub min_ttl: Option<f64>,
    /// ...and at most this long.
    #[serde(default)]
    pub max_ttl: Option<f64>,
    /// Seconds a failed look-up is remembered before the name is asked again.
    #[serde(default)]
    pub error_ttl: Option<f64>,
}

impl Default for GatewayConf {
    fn default() -> Self {
        GatewayConf {
            listen: default_listen(),
            admin: None,
            metrics: None,
            store: None,
            data_dir: default_data_dir(),
            access_log: AccessLogConf::default(),
            max_body_size: default_max_body_size(),
            client_header_timeout: None,
            client_body_timeout: None,
            client_body_total_timeout: None,
            keepalive_timeout: None,
            send_timeout: None,
            max_header_size: None,
            max_connections: None,
            dns: DnsConf::default(),
            max_inflight_body_bytes: None,
            debug_headers: false,
        }
    }
}

fn default_listen() -> OneOrMany<String> {
    OneOrMany::One("0.0.0.0:9080".into())
}
fn default_data_dir() -> String {
    "./data".into()
}
pub const DEFAULT_MAX_BODY_SIZE: u64 = 16 * 1024 * 1024;
fn default_max_body_size() -> u64 {
    DEFAULT_MAX_BODY_SIZE
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConf {
    /// `ip:port` of the admin API (default 127.0.0.1:9180).
    #[serde(default)]
    pub listen: Option<String>,
    /// The `X-API-KEY` every admin request must carry. Required off loopback.
    #[serde(default)]
    pub key: Option<String>,
    /// Client addresses or CIDRs allowed to use the admin API (absent: any).
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Show provider and consumer secrets as `******` in GET answers.
    #[serde(default)]
    pub redact_secrets: bool,
}

/// `gateway.metrics`: `GET /metrics` in Prometheus's text format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConf {
    /// `ip:port` of the metrics listener (default 127.0.0.1:9091, APISIX's).
    #[serde(default)]
    pub listen: Option<String>,
    /// Put in front of every metric name (default `aigate_`; `apisix_` keeps APISIX's names).
    #[serde(default)]
    pub metric_prefix: Option<String>,
    /// Distinct model names used as label values; later ones are counted as `other`.
    #[serde(default)]
    pub max_model_labels: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConf {
    /// A file path, `-` for stdout, `off` for none.
    #[serde(default = "default_access_log_path")]
    pub path: String,
    #[serde(default)]
    pub format: Option<String>,
}

impl Default for AccessLogConf {
    fn default() -> Self {
        AccessLogConf {
            path: default_access_log_path(),
            format: None,
        }
    }
}
fn default_access_log_path() -> String {
    "logs/access.log".into()
}

/// A YAML/JSON value that may be given as one item or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// APISIX ids are strings or integers.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
#[serde(untagged)]
pub enum Id {
    Str(String),
    Int(u64),
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Str(s) => f.write_str(s),
            Id::Int(i) => write!(f, "{i}"),
        }
    }
}

/// An APISIX route object.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConf {
    pub id: Id,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// 1 = enabled (default), 0 = disabled.
    #[serde(default)]
    pub status: Option<u8>,
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub uris: Option<Vec<String>>,
    /// API7 Enterprise's name for `uris`.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub remote_addr: Option<String>,
    #[serde(default)]
    pub remote_addrs: Option<Vec<String>>,
    #[serde(default)]
    pub vars: Option<serde_json::Value>,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub service_id: Option<Id>,
    #[serde(default)]
    pub plugins: Option<PluginsConf>,
    #[serde(default)]
    pub upstream: Option<UpstreamConf>,
    /// An upstream object by id (instead of an inline `upstream`).
    #[serde(default)]
    pub upstream_id: Option<Id>,
    #[serde(default)]
    pub timeout: Option<TimeoutConf>,
    #[serde(default)]
    pub enable_websocket: Option<bool>,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
}

/// An APISIX service object: plugins and an upstream shared by the routes that name it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConf {
    pub id: Id,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub plugins: Option<PluginsConf>,
    #[serde(default)]
    pub upstream: Option<UpstreamConf>,
    /// An upstream object by id (instead of an inline `upstream`).
    #[serde(default)]
    pub upstream_id: Option<Id>,
    #[serde(default)]
    pub enable_websocket: Option<bool>,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
}

/// An object's `plugins`: plugin name → that plugin's config, checked by the plugin registry
/// (`plugins::registry`) when the config is compiled: an unknown plugin is an error there, never
/// a no-op (a route that silently lost its auth plugin would be worse than one that refuses to
/// load).
pub type PluginsConf = BTreeMap<String, serde_yaml::Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ProviderName {
    #[serde(rename = "openai")]
    OpenAi,
    #[serde(rename = "deepseek")]
    DeepSeek,
    #[serde(rename = "aimlapi")]
    AimlApi,
    #[serde(rename = "anthropic")]
    Anthropic,
    #[serde(rename = "gemini")]
    Gemini,
    #[serde(rename = "openrouter")]
    OpenRouter,
    #[serde(rename = "azure-openai")]
    AzureOpenAi,
    #[serde(rename = "openai-compatible")]
    OpenAiCompatible,
    #[serde(rename = "vertex-ai")]
    VertexAi,
}

/// `ai-proxy`: both the current schema (`provider`, `options`, ...) and the older one of
/// APISIX 3.9–3.11 (`model: {provider, name, options}`, `passthrough`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiProxyConf {
    #[serde(default)]
    pub provider: Option<ProviderName>,
    pub auth: AuthConf,
    #[serde(default)]
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(rename = "override", default)]
    pub override_: Option<OverrideConf>,
    #[serde(default)]
    pub provider_conf: Option<ProviderConf>,
    /// Milliseconds.
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub keepalive: Option<bool>,
    /// Milliseconds.
    #[serde(default)]
    pub keepalive_timeout: Option<u64>,
    #[serde(default)]
    pub keepalive_pool: Option<u32>,
    #[serde(default)]
    pub ssl_verify: Option<bool>,
    #[serde(default)]
    pub logging: Option<LoggingConf>,
    /// Older schema.
    #[serde(default)]
    pub model: Option<LegacyModelConf>,
    /// Older schema: send the LLM's answer on to the route's upstream.
    #[serde(default)]
    pub passthrough: Option<bool>,
    /// aigate: bring your own key (see `AiProxyMultiConf`).
    #[serde(default)]
    pub forward_client_authorization: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyModelConf {
    pub provider: ProviderName,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConf {
    #[serde(default)]
    pub header: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub query: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub gcp: Option<GcpAuthConf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpAuthConf {
    /// The service account key file's JSON, as a string. Falls back to env `GCP_SERVICE_ACCOUNT`.
    #[serde(default)]
    pub service_account_json: Option<String>,
    /// Upper bound on how long a token is cached, seconds.
    #[serde(default)]
    pub max_ttl: Option<u64>,
    /// Refresh this many seconds before the token expires (default 60).
    #[serde(default)]
    pub expire_early_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideConf {
    #[serde(default)]
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConf {
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConf {
    #[serde(default)]
    pub summaries: bool,
    #[serde(default)]
    pub payloads: bool,
}

/// An APISIX upstream object (used by plain routes and by `passthrough`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConf {
    #[serde(default)]
    pub id: Option<Id>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub desc: Option<String>,
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    pub nodes: Nodes,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub pass_host: Option<String>,
    #[serde(default)]
    pub upstream_host: Option<String>,
    #[serde(default)]
    pub timeout: Option<TimeoutConf>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub retry_timeout: Option<f64>,
    #[serde(default)]
    pub hash_on: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub keepalive_pool: Option<UpstreamKeepalive>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub create_time: Option<i64>,
    #[serde(default)]
    pub update_time: Option<i64>,
}

/// `nodes` is either `{"host:port": weight}` or `[{host, port, weight, priority}]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Nodes {
    Map(BTreeMap<String, u32>),
    List(Vec<NodeConf>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConf {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}
fn one() -> u32 {
    1
}

/// Seconds, as in APISIX.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConf {
    #[serde(default)]
    pub connect: Option<f64>,
    #[serde(default)]
    pub send: Option<f64>,
    #[serde(default)]
    pub read: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamKeepalive {
    #[serde(default)]
    pub size: Option<u32>,
    #[serde(default)]
    pub idle_timeout: Option<f64>,
    #[serde(default)]
    pub requests: Option<u32>,
}

/// `ai-proxy-multi`: several provider instances behind one route, with priority tiers, weighted
/// balancing, fallback and health checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiProxyMultiConf {
    pub instances: Vec<MultiInstanceConf>,
    #[serde(default)]
    pub balancer: Option<BalancerConf>,
    /// `instance_health_and_rate_limiting`, `rate_limiting`, `http_429`, `http_5xx`, or a list.
    #[serde(default)]
    pub fallback_strategy: Option<OneOrMany<String>>,
    #[serde(default)]
    pub fallback_http_statuses: Option<Vec<u16>>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub retry_on_failure_within_ms: Option<u64>,
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub keepalive: Option<bool>,
    #[serde(default)]
    pub keepalive_timeout: Option<u64>,
    #[serde(default)]
    pub keepalive_pool: Option<u32>,
    #[serde(default)]
    pub ssl_verify: Option<bool>,
    #[serde(default)]
    pub logging: Option<LoggingConf>,
    /// aigate (default false): send the client's own `Authorization` to the provider instead of
    /// the configured credentials; without one, the configured auth is used. Every other client
    /// credential is still stripped.
    #[serde(default)]
    pub forward_client_authorization: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiInstanceConf {
    pub name: String,
    pub provider: ProviderName,
    pub weight: u32,
    #[serde(default)]
    pub priority: Option<i64>,
    pub auth: AuthConf,
    #[serde(default)]
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(rename = "override", default)]
    pub override_: Option<OverrideConf>,
    #[serde(default)]
    pub provider_conf: Option<ProviderConf>,
    #[serde(default)]
    pub checks: Option<ChecksConf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalancerConf {
    /// `roundrobin` (smooth weighted, default) or `chash`.
    #[serde(default)]
    pub algorithm: Option<String>,
    /// `vars`, `header`, `cookie`, `consumer`, `vars_combinations`.
    #[serde(default)]
    pub hash_on: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksConf {
    #[serde(default)]
    pub active: Option<ActiveCheckConf>,
    #[serde(default)]
    pub passive: Option<PassiveCheckConf>,
}

/// APISIX's active health check schema.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveCheckConf {
    /// `http` (default), `https` or `tcp`.
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    /// Seconds.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub http_path: Option<String>,
    #[serde(default)]
    pub https_verify_certificate: Option<bool>,
    /// `["Name: value", ...]`.
    #[serde(default)]
    pub req_headers: Option<Vec<String>>,
    #[serde(default)]
    pub healthy: Option<ActiveHealthy>,
    #[serde(default)]
    pub unhealthy: Option<ActiveUnhealthy>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealthy {
    /// Seconds between probes of a healthy instance.
    #[serde(default)]
    pub interval: Option<f64>,
    #[serde(default)]
    pub successes: Option<u32>,
    #[serde(default)]
    pub http_statuses: Option<Vec<u16>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveUnhealthy {
    /// Seconds between probes of an unhealthy instance.
    #[serde(default)]
    pub interval: Option<f64>,
    #[serde(default)]
    pub http_failures: Option<u32>,
    #[serde(default)]
    pub tcp_failures: Option<u32>,
    #[serde(default)]
    pub timeouts: Option<u32>,
    #[serde(default)]
    pub http_statuses: Option<Vec<u16>>,
}

/// Health judged from real requests (APISIX's passive schema, plus aigate's `cooldown`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveCheckConf {
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    #[serde(default)]
    pub healthy: Option<PassiveHealthy>,
    #[serde(default)]
    pub unhealthy: Option<PassiveUnhealthy>,
    /// aigate: seconds an instance is skipped after it turned unhealthy (default 10; 0 = never).
    #[serde(default)]
    pub cooldown: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthy {
    #[serde(default)]
    pub http_statuses: Option<Vec<u16>>,
    #[serde(default)]
    pub successes: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveUnhealthy {
    #[serde(default)]
    pub http_statuses: Option<Vec<u16>>,
    #[serde(default)]
    pub http_failures: Option<u32>,
    #[serde(default)]
    pub tcp_failures: Option<u32>,
    #[serde(default)]
    pub timeouts: Option<u32>,
}
