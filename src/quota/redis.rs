//! The quota store shared by several gateway nodes: counters in Redis (`policy: redis`, one node)
//! or a Redis Cluster (`policy: redis-cluster`), changed only by Lua scripts run atomically on the
//! server, so every aigate node that points at the same Redis counts against one quota.
//!
//! **Windows** are fixed and aligned to Unix time: index = now / window. "Now" is Redis's `TIME`,
//! read inside each script, not the gateway's clock: gateway hosts' clocks drift apart, and two
//! nodes that disagreed on the window near a boundary would write to different counters. With one
//! clock per key (the Redis node that holds it) every node sees the same window, and `settle`
//! judges "is the reservation's window still current" by the same clock `reserve` used.
//!
//! **Keys**: `aigate:quota:{<key>}:<window index>`, expiring a second after their window ends
//! (nothing reads a window once it is over). The braces are a Redis Cluster hash tag: the script
//! is routed by `aigate:quota:{<key>}` (the only key it declares, since the window is computed on
//! the server) and the key it touches has the same tag, so both are in the same slot.
//!
//! **Connections**: one multiplexed connection per store (per node of a cluster), made on first
//! use and remade by redis-rs after a failure (`ConnectionManager`; the cluster connection keeps
//! one per node and follows slot moves), never one per request. Scripts run by `EVALSHA` and are
//! loaded once per server (`SCRIPT LOAD` after a `NOSCRIPT`).
//!
//! **Bounds**: every call waits at most `redis_timeout` in all, however the time is spent
//! (resolving, connecting, authenticating, a server that accepts and never answers); the
//! connection's own connect and response timeouts are the same value, so nothing lingers behind
//! a call that gave up. Errors never carry the password.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::{Context, Waker};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, Cmd, ConnectionAddr, ErrorKind, FromRedisValue, IntoConnectionInfo, Pipeline,
    RedisConnectionInfo, RedisFuture, Script, ServerErrorKind, TlsCertificates, TlsMode, Value,
};
use tokio::sync::OnceCell;

use super::{Admission, Limit, Quota, QuotaStore, StoreError, Ticket};
use crate::config::limits;

pub const DEFAULT_PORT: u16 = 6379;
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;

/// How long a window's key outlives its window. Nothing reads a window after it ends (a late
/// settle goes to the current one); the slack only keeps a key from expiring under a settle that
/// Redis runs in the window's last millisecond.
const EXPIRY_SLACK_MS: u64 = 1000;

/// While Redis is down (with `allow_degradation`), how often a background `PING` asks whether it
/// is back. Requests never wait for it: they count locally meanwhile.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Amounts go through Lua numbers (doubles) and Redis integers (i64): beyond 2^53 neither is
/// exact. No token count comes near it; a larger one is counted as 2^53.
const MAX_AMOUNT: u64 = 1 << 53;

// -------------------------------------------------------------------------------------------
// Settings

/// Which of ai-rate-limiting's Redis policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisPolicy {
    /// `policy: redis`: one Redis server.
    Redis,
    /// `policy: redis-cluster`: a Redis Cluster, found from `redis_cluster_nodes`.
    RedisCluster,
}

/// ai-rate-limiting's Redis fields exactly as written in a config (APISIX limit-count's flat
/// names), before validation. The plugin's config is turned into this; `RedisSettings::new`
/// checks it. Numbers are `i64` so that a negative value is reported, not wrapped.
#[derive(Clone, Default)]
pub struct RedisFields {
    pub redis_host: Option<String>,
    pub redis_port: Option<i64>,
    pub redis_username: Option<String>,
    pub redis_password: Option<String>,
    pub redis_database: Option<i64>,
    /// Milliseconds.
    pub redis_timeout: Option<i64>,
    pub redis_ssl: Option<bool>,
    pub redis_ssl_verify: Option<bool>,
    /// `["host:port", ...]`: where to start discovering the cluster.
    pub redis_cluster_nodes: Option<Vec<String>>,
    /// Required by APISIX's schema (it names the slot cache there); aigate names the cluster by it
    /// in log lines.
    pub redis_cluster_name: Option<String>,
    pub redis_cluster_ssl: Option<bool>,
    pub redis_cluster_ssl_verify: Option<bool>,
    pub allow_degradation: Option<bool>,
}

impl std::fmt::Debug for RedisFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFields")
            .field("redis_host", &self.redis_host)
            .field("redis_port", &self.redis_port)
            .field("redis_username", &self.redis_username)
            .field("redis_password", &redacted(&self.redis_password))
            .field("redis_database", &self.redis_database)
            .field("redis_timeout", &self.redis_timeout)
            .field("redis_ssl", &self.redis_ssl)
            .field("redis_ssl_verify", &self.redis_ssl_verify)
            .field("redis_cluster_nodes", &self.redis_cluster_nodes)
            .field("redis_cluster_name", &self.redis_cluster_name)
            .field("redis_cluster_ssl", &self.redis_cluster_ssl)
            .field("redis_cluster_ssl_verify", &self.redis_cluster_ssl_verify)
            .field("allow_degradation", &self.allow_degradation)
            .finish()
    }
}

/// A field that is missing or wrong. `field` is its name in the plugin's config; the plugin puts
/// its own path in front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Where the counters are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RedisNodes {
    Single {
        host: String,
        port: u16,
    },
    Cluster {
        name: String,
        nodes: Vec<(String, u16)>,
    },
}

/// Validated settings of a Redis quota store.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedisSettings {
    pub nodes: RedisNodes,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Always 0 for a cluster (a cluster has only database 0).
    pub database: i64,
    /// The longest a request waits on Redis, in all.
    pub timeout: Duration,
    /// `Some` for TLS (`redis_ssl` / `redis_cluster_ssl`).
    pub tls: Option<RedisTls>,
    /// Count locally while Redis cannot answer, instead of rejecting.
    pub allow_degradation: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisTls {
    /// Check the server's certificate and name (`redis_ssl_verify`).
    pub verify: bool,
    /// PEM certificates to trust instead of the platform's roots. `None`: `server.ca_file` when it
    /// is set (one setting for every outbound TLS connection), else the platform's roots.
    pub root_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("nodes", &self.nodes)
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("database", &self.database)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .field("allow_degradation", &self.allow_degradation)
            .finish()
    }
}

fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "[REDACTED]")
}

impl RedisSettings {
    /// Check the fields of a `policy: redis` or `policy: redis-cluster` config. Fields that belong
    /// to the other policy are ignored, as APISIX does.
    pub fn new(policy: RedisPolicy, f: RedisFields) -> Result<RedisSettings, FieldError> {
        let timeout = match f.redis_timeout {
            None => Duration::from_millis(DEFAULT_TIMEOUT_MS),
            Some(ms) => limits::millis(u64::try_from(ms).unwrap_or(0), 1)
                .map_err(|m| FieldError::new("redis_timeout", m))?,
        };
        let nonempty = |field: &'static str, v: Option<String>| match v {
            Some(s) if s.is_empty() => Err(FieldError::new(field, "must not be empty")),
            v => Ok(v),
        };
        let username = nonempty("redis_username", f.redis_username)?;
        // An empty password is allowed: APISIX treats it as no password.
        let password = f.redis_password.filter(|p| !p.is_empty());
        let allow_degradation = f.allow_degradation.unwrap_or(false);
        let tls = |ssl: Option<bool>, verify: Option<bool>| {
            ssl.unwrap_or(false).then(|| RedisTls {
                // aigate: certificates are checked unless `*_ssl_verify: false` says not to
                // (APISIX's default is not to check them).
                verify: verify.unwrap_or(true),
                root_ca_pem: None,
            })
        };
        match policy {
            RedisPolicy::Redis => {
                let host = match f.redis_host {
                    None => {
                        return Err(FieldError::new(
                            "redis_host",
                            "is required with policy redis",
                        ))
                    }
                    Some(h) => check_host("redis_host", h)?,
                };
                let port = match f.redis_port {
                    None => DEFAULT_PORT,
                    Some(p) => port("redis_port", p)?,
                };
                let database = f.redis_database.unwrap_or(0);
                if database < 0 {
                    return Err(FieldError::new(
                        "redis_database",
                        format!("must be 0 or more, not {database}"),
                    ));
                }
                Ok(RedisSettings {
                    nodes: RedisNodes::Single { host, port },
                    username,
                    password,
                    database,
                    timeout,
                    tls: tls(f.redis_ssl, f.redis_ssl_verify),
                    allow_degradation,
                })
            }
            RedisPolicy::RedisCluster => {
                let list = f.redis_cluster_nodes.unwrap_or_default();
                if list.is_empty() {
                    return Err(FieldError::new(
                        "redis_cluster_nodes",
                        "is required with policy redis-cluster: at least one \"host:port\"",
                    ));
                }
                let nodes = list
                    .into_iter()
                    .enumerate()
                    .map(|(i, node)| host_port(i, node))
                    .collect::<Result<Vec<_>, _>>()?;
                let name = match f.redis_cluster_name {
                    Some(n) if !n.is_empty() => n,
                    _ => {
                        return Err(FieldError::new(
                            "redis_cluster_name",
                            "is required with policy redis-cluster",
                        ))
                    }
                };
                Ok(RedisSettings {
                    nodes: RedisNodes::Cluster { name, nodes },
                    username,
                    password,
                    database: 0,
                    timeout,
                    tls: tls(f.redis_cluster_ssl, f.redis_cluster_ssl_verify),
                    allow_degradation,
                })
            }
        }
    }

    /// How log lines and errors name the store: where it is, never the credentials.
    pub fn label(&self) -> String {
        match &self.nodes {
            RedisNodes::Single { host, port } => format!("redis {}", join_host_port(host, *port)),
            RedisNodes::Cluster { name, .. } => format!("redis-cluster {name}"),
        }
    }
}

fn check_host(field: &str, host: String) -> Result<String, FieldError> {
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(FieldError::new(
            field,
            format!("{host:?} is not a host name or IP address"),
        ));
    }
    // `[::1]` and `::1` are the same address; redis-rs wants it without brackets.
    Ok(host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .map(str::to_string)
        .unwrap_or(host))
}

fn port(field: &str, p: i64) -> Result<u16, FieldError> {
    match u16::try_from(p) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(FieldError::new(
            field,
            format!("must be a port between 1 and 65535, not {p}"),
        )),
    }
}

/// `host:port` or `[v6]:port`.
fn host_port(i: usize, node: String) -> Result<(String, u16), FieldError> {
    let field = format!("redis_cluster_nodes[{i}]");
    let bad = || {
        FieldError::new(
            field.as_str(),
            format!("{node:?} is not \"host:port\" (an IPv6 address in brackets: \"[::1]:6379\")"),
        )
    };
    let (host, p) = node.rsplit_once(':').ok_or_else(bad)?;
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(bad());
    }
    let p: i64 = p.parse().map_err(|_| bad())?;
    Ok((check_host(&field, host.to_string())?, port(&field, p)?))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

// -------------------------------------------------------------------------------------------
// The scripts

// Scripts call `redis.replicate_commands()` where Redis has it (3.2 to 6: then reading `TIME`
// before a write is allowed, and replicas get the writes rather than the script); from Redis 5
// on that is how scripts always replicate. Lua numbers are doubles: times in ms (~2^41) and
// counts below 2^53 are exact. Amounts reach `INCRBY` as the decimal text they were sent as.

/// KEYS[1] = the counter's prefix; ARGV = window ms, limit, amount, expiry slack ms.
/// Returns {admitted 0|1, count after, ms until the window ends, window index}.
static RESERVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local idx = math.floor(now / window)
local key = KEYS[1] .. ':' .. string.format('%.0f', idx)
local reset = (idx + 1) * window - now
local count = tonumber(redis.call('GET', key) or '0')
if count >= tonumber(ARGV[2]) then
  return {0, count, reset, idx}
end
count = redis.call('INCRBY', key, ARGV[3])
redis.call('PEXPIRE', key, reset + tonumber(ARGV[4]))
return {1, count, reset, idx}
",
    )
});

/// KEYS[1] = the counter's prefix; ARGV = window ms, the ticket's window index, reserved,
/// actual, expiry slack ms. In the reservation's window: add actual - reserved. Later: the
/// reservation lapsed with its window, so add actual to the current one. A count never goes
/// below 0 (a window lost with a restarted Redis must not turn into extra quota).
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local idx = math.floor(now / window)
local delta = tonumber(ARGV[4])
if idx == tonumber(ARGV[2]) then
  delta = delta - tonumber(ARGV[3])
end
if delta == 0 then
  return 0
end
local key = KEYS[1] .. ':' .. string.format('%.0f', idx)
local count = redis.call('INCRBY', key, string.format('%.0f', delta))
if count < 0 then
  redis.call('SET', key, '0')
  count = 0
end
redis.call('PEXPIRE', key, (idx + 1) * window - now + tonumber(ARGV[5]))
return count
",
    )
});

/// KEYS[1] = the counter's prefix; ARGV = window ms, limit. Read-only: 1 when the current
/// window's count has reached the limit.
static SPENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idx = math.floor(now / tonumber(ARGV[1]))
local count = tonumber(redis.call('GET', KEYS[1] .. ':' .. string.format('%.0f', idx)) or '0')
if count >= tonumber(ARGV[2]) then
  return 1
end
return 0
",
    )
});

/// `aigate:quota:{<key>}`: the prefix of a counter's keys; the window index follows.
pub fn key_prefix(key: &str) -> String {
    format!("aigate:quota:{{{}}}", hash_tag(key))
}

/// The key as a cluster hash tag. A tag is the text between the first `{` and the next `}`, and
/// an empty one does not count (the whole key is hashed, and the windowed key would land in
/// another slot than the one the script was sent to). Keys can hold request values (a rule's
/// `$http_*` key), so braces are escaped (with `%`, which is escaped too, so different keys stay
/// different), and the empty key is `%`, which no escaped key can be.
fn hash_tag(key: &str) -> Cow<'_, str> {
    if key.is_empty() {
        return Cow::Borrowed("%");
    }
    if !key.contains(['{', '}', '%']) {
        return Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn window_ms(limit: &Limit) -> u64 {
    u64::try_from(limit.window.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_AMOUNT)
}

// -------------------------------------------------------------------------------------------
// The store

/// A `QuotaStore` in Redis. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    timeout: Duration,
    allow_degradation: bool,
    /// Scrubbed from every error text (redis-rs does not put it in errors; this makes sure).
    password: Option<String>,
    client: Clients,
    /// Made on first use, inside the runtime that serves requests (building it spawns redis-rs's
    /// tasks). A cluster connection that could not be made is tried again by the next call.
    conn: OnceCell<Conn>,
    /// Redis failed its last call and has not answered one since: logged once when it starts
    /// and once when it ends.
    down: AtomicBool,
    /// A background probe is running (one per store).
    probing: AtomicBool,
}

// One per store, built once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Clients {
    Single(Client),
    Cluster(ClusterClient),
}

/// The one multiplexed connection (or, for a cluster, one per node behind one handle).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The stores alive, by their settings (see `RedisStore::shared`).
static SHARED: LazyLock<Mutex<HashMap<RedisSettings, Weak<Inner>>>> =
    LazyLock::new(Default::default);

impl RedisStore {
    /// The store for these settings: the one already in use by another plugin config with the
    /// same settings, or a new one. Every route and consumer quota on one Redis then shares one
    /// connection (and one view of whether Redis is up, so an outage is logged once), instead of
    /// a connection per config object. A store lives as long as a config uses it.
    pub fn shared(settings: RedisSettings) -> Result<RedisStore, String> {
        let mut stores = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        stores.retain(|_, store| store.strong_count() > 0);
        if let Some(inner) = stores.get(&settings).and_then(Weak::upgrade) {
            return Ok(RedisStore { inner });
        }
        let store = RedisStore::new(settings.clone())?;
        stores.insert(settings, Arc::downgrade(&store.inner));
        Ok(store)
    }

    /// Build a store of its own (see `shared`). Nothing connects until the first call, so a
    /// Redis that is down when the config is loaded does not stop the gateway. Fails only on TLS
    /// material that cannot be used (the message names no secret).
    pub fn new(settings: RedisSettings) -> Result<RedisStore, String> {
        let label = settings.label();
        let scrub = |e: redis::RedisError| scrub(&e.to_string(), settings.password.as_deref());
        let redis_info = {
            let mut info = RedisConnectionInfo::default().set_db(settings.database);
            if let Some(u) = &settings.username {
                info = info.set_username(u);
            }
            if let Some(p) = &settings.password {
                info = info.set_password(p);
            }
            info
        };
        let root_ca = match &settings.tls {
            Some(RedisTls {
                root_ca_pem: Some(pem),
                ..
            }) => Some(pem.clone()),
            Some(_) => server_ca_file()?,
            None => None,
        };
        let certs = |root_ca: Option<Vec<u8>>| TlsCertificates {
            client_tls: None,
            root_cert: root_ca,
        };
        let client = match &settings.nodes {
            RedisNodes::Single { host, port } => {
                let addr = match &settings.tls {
                    None => ConnectionAddr::Tcp(host.clone(), *port),
                    Some(tls) => ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: !tls.verify,
                        tls_params: None,
                    },
                };
                let info = addr
                    .into_connection_info()
                    .map_err(scrub)?
                    .set_redis_settings(redis_info);
                let client = match root_ca {
                    Some(_) => Client::build_with_tls(info, certs(root_ca)),
                    None => Client::open(info),
                };
                Clients::Single(client.map_err(scrub)?)
            }
            RedisNodes::Cluster { nodes, .. } => {
                let mut b = ClusterClientBuilder::new(
                    nodes
                        .iter()
                        .map(|(h, p)| ConnectionAddr::Tcp(h.clone(), *p)),
                )
                .connection_timeout(settings.timeout)
                .response_timeout(settings.timeout)
                // A call is bounded by `redis_timeout` in all; retries inside it (MOVED, a
                // reconnect) share that time.
                .overall_response_timeout(Some(settings.timeout));
                if let Some(u) = &settings.username {
                    b = b.username(u);
                }
                if let Some(p) = &settings.password {
                    b = b.password(p);
                }
                if let Some(tls) = &settings.tls {
                    b = b.tls(if tls.verify {
                        TlsMode::Secure
                    } else {
                        TlsMode::Insecure
                    });
                    if root_ca.is_some() {
                        b = b.certs(certs(root_ca));
                    }
                }
                Clients::Cluster(b.build().map_err(scrub)?)
            }
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                label,
                timeout: settings.timeout,
                allow_degradation: settings.allow_degradation,
                password: settings.password,
                client,
                conn: OnceCell::new(),
                down: AtomicBool::new(false),
                probing: AtomicBool::new(false),
            }),
        })
    }

    /// `redis 127.0.0.1:6379` or `redis-cluster NAME`.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// Redis failed its last call and has not answered since.
    pub fn is_down(&self) -> bool {
        self.inner.down.load(Ordering::Relaxed)
    }

    /// `PING`, bounded like every call (marks Redis up or down, as every call does).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.inner
            .call(|mut conn| async move {
                redis::cmd("PING")
                    .query_async::<redis::Value>(&mut conn)
                    .await
                    .map(drop)
            })
            .await
    }

    /// While Redis is down, `PING` it every `PROBE_INTERVAL` in the background until it answers
    /// (which logs that it is back). One probe per store; it ends with the store.
    pub fn probe_until_up(&self) {
        if self.inner.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.inner.probing.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { return };
                let store = RedisStore { inner };
                if !store.is_down() || store.ping().await.is_ok() {
                    store.inner.probing.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }
}

/// `server.ca_file`, read when a TLS store is built, so Redis trusts what every other outbound
/// TLS connection trusts.
fn server_ca_file() -> Result<Option<Vec<u8>>, String> {
    let Some(path) = crate::net::tls::connector_options().and_then(|o| o.ca_file) else {
        return Ok(None);
    };
    std::fs::read(&path)
        .map(Some)
        .map_err(|e| format!("cannot read server.ca_file {path:?}: {e}"))
}

/// An error text without the password, whatever produced it.
fn scrub(text: &str, password: Option<&str>) -> String {
    match password {
        Some(p) if !p.is_empty() && text.contains(p) => text.replace(p, "[REDACTED]"),
        _ => text.to_string(),
    }
}

impl Inner {
    async fn conn(&self) -> redis::RedisResult<Conn> {
        self.conn
            .get_or_try_init(|| async {
                match &self.client {
                    Clients::Single(client) => {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(self.timeout))
                            .set_response_timeout(Some(self.timeout))
                            // One attempt per reconnect: a caller waiting on a reconnect gets
                            // its answer at once rather than after a series of backed-off
                            // retries, and the next call starts the next attempt.
                            .set_number_of_retries(0);
                        ConnectionManager::new_lazy_with_config(client.clone(), config)
                            .map(Conn::Single)
                    }
                    Clients::Cluster(client) => {
                        client.get_async_connection().await.map(Conn::Cluster)
                    }
                }
            })
            .await
            .cloned()
    }

    /// Run `op` on the connection within `timeout`, and note whether Redis answered.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.conn().await?;
            op(conn).await
        };
        let result = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError(format!(
                "{}: {}",
                self.label,
                scrub(&e.to_string(), self.password.as_deref())
            ))),
            Err(_) => Err(StoreError(format!(
                "{}: no answer within redis_timeout ({} ms)",
                self.label,
                self.timeout.as_millis()
            ))),
        };
        self.note(result.as_ref().err());
        result
    }

    /// Log the start of an outage and its end, once each, whichever call notices.
    fn note(&self, error: Option<&StoreError>) {
        match error {
            Some(e) => {
                if !self.down.swap(true, Ordering::AcqRel) {
                    let meanwhile = if self.allow_degradation {
                        "quotas are counted by each gateway node on its own until it is back (allow_degradation)"
                    } else {
                        "requests under its quotas are rejected until it is back (allow_degradation is off)"
                    };
                    log::warn!(
                        "quota store {} is unavailable: {e}; {meanwhile}",
                        self.label
                    );
                }
            }
            None => {
                if self.down.swap(false, Ordering::AcqRel) {
                    log::warn!(
                        "quota store {} is available again: quotas are shared again",
                        self.label
                    );
                }
            }
        }
    }

    async fn eval<T: FromRedisValue>(
        &self,
        script: &'static Script,
        key: &str,
        args: &[u64],
    ) -> Result<T, StoreError> {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(1)
            .arg(key_prefix(key))
            .arg(args);
        self.call(|mut conn| async move {
            match cmd.query_async(&mut conn).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    // A new (or restarted, or failed-over) server: load every script, not only
                    // this one. The settle of a reservation must find its script there: an
                    // EVALSHA refused and sent again would go after calls made meanwhile, and a
                    // client's next request could miss the settle.
                    for s in [&*RESERVE, &*SETTLE, &*SPENT] {
                        s.load_async(&mut conn).await?;
                    }
                    cmd.query_async(&mut conn).await
                }
                result => result,
            }
        })
        .await
    }
}

#[async_trait]
impl QuotaStore for RedisStore {
    async fn reserve(&self, key: &str, limit: Limit, amount: u64) -> Result<Admission, StoreError> {
        let amount = amount.min(MAX_AMOUNT);
        let (admitted, count, reset_ms, window): (i64, i64, i64, i64) = self
            .inner
            .eval(
                &RESERVE,
                key,
                &[window_ms(&limit), limit.count, amount, EXPIRY_SLACK_MS],
            )
            .await?;
        let quota = Quota {
            limit: limit.count,
            remaining: limit.count.saturating_sub(count.max(0) as u64),
            reset: Duration::from_millis(reset_ms.max(0) as u64),
        };
        Ok(if admitted == 1 {
            Admission::Admitted {
                quota,
                ticket: Ticket {
                    key: key.into(),
                    limit,
                    reserved: amount,
                    window: window.max(0) as u64,
                },
            }
        } else {
            Admission::Rejected { quota }
        })
    }

    /// Sent in the background, but queued on the connection before this returns: the plugin
    /// settles before the answer's last byte goes out, so a client's next request, which goes
    /// through the same connection, reaches Redis after the settle and sees its effect.
    fn settle(&self, ticket: Ticket, actual: u64) {
        let inner = self.inner.clone();
        let actual = actual.min(MAX_AMOUNT);
        if actual == 0 && ticket.reserved == 0 {
            return; // adds nothing in any window
        }
        let task = async move {
            let args = [
                window_ms(&ticket.limit),
                ticket.window,
                ticket.reserved,
                actual,
                EXPIRY_SLACK_MS,
            ];
            let _ = inner
                .eval::<Value>(&SETTLE, &ticket.key, &args)
                .await
                .map_err(|e| log::debug!("settle of {:?} lost: {e}", ticket.key));
        };
        issue_then_spawn(task);
    }

    async fn spent(&self, key: &str, limit: Limit) -> Result<bool, StoreError> {
        let spent: i64 = self
            .inner
            .eval(&SPENT, key, &[window_ms(&limit), limit.count])
            .await?;
        Ok(spent == 1)
    }
}

/// Poll `task` once here, then let the runtime finish it. The first poll runs up to the first
/// wait, which for a Redis call is the answer: the command is then already in the connection's
/// queue (redis-rs's multiplexed connection writes its queue in order), so whatever is sent on
/// the connection after this returns is processed by Redis after it. Only if the connection is
/// being (re)made does the command wait for it, and then in the same line as later callers.
/// `unconstrained`: tokio's cooperative budget of the calling task must not postpone the queueing.
fn issue_then_spawn(task: impl Future<Output = ()> + Send + 'static) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        // Only outside a runtime (never on the request path): nothing can run the call.
        log::debug!("quota settle dropped: no async runtime");
        return;
    };
    let mut task = Box::pin(tokio::task::unconstrained(task));
    if task
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_pending()
    {
        rt.spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(f: RedisFields) -> Result<RedisSettings, FieldError> {
        RedisSettings::new(RedisPolicy::Redis, f)
    }

    fn cluster(f: RedisFields) -> Result<RedisSettings, FieldError> {
        RedisSettings::new(RedisPolicy::RedisCluster, f)
    }

    fn host(h: &str) -> RedisFields {
        RedisFields {
            redis_host: Some(h.into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_apisix_limit_counts() {
        let s = single(host("redis.internal")).unwrap();
        assert_eq!(
            s.nodes,
            RedisNodes::Single {
                host: "redis.internal".into(),
                port: 6379
            }
        );
        assert_eq!(s.database, 0);
        assert_eq!(s.timeout, Duration::from_millis(1000));
        assert!(s.tls.is_none());
        assert!(!s.allow_degradation);
        assert_eq!(s.label(), "redis redis.internal:6379");
    }

    #[test]
    fn every_field_is_taken() {
        let s = single(RedisFields {
            redis_host: Some("[::1]".into()),
            redis_port: Some(6380),
            redis_username: Some("gw".into()),
            redis_password: Some("pw".into()),
            redis_database: Some(3),
            redis_timeout: Some(250),
            redis_ssl: Some(true),
            redis_ssl_verify: Some(false),
            allow_degradation: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s.nodes,
            RedisNodes::Single {
                host: "::1".into(),
                port: 6380
            }
        );
        assert_eq!(s.label(), "redis [::1]:6380");
        assert_eq!(
            (s.username.as_deref(), s.password.as_deref()),
            (Some("gw"), Some("pw"))
        );
        assert_eq!(s.database, 3);
        assert_eq!(s.timeout, Duration::from_millis(250));
        assert_eq!(
            s.tls,
            Some(RedisTls {
                verify: false,
                root_ca_pem: None
            })
        );
        assert!(s.allow_degradation);
        // TLS checks certificates unless told not to.
        let s = single(RedisFields {
            redis_ssl: Some(true),
            ..host("h")
        })
        .unwrap();
        assert!(s.tls.unwrap().verify);
    }

    #[test]
    fn wrong_single_fields_are_named() {
        let e = single(RedisFields::default()).unwrap_err();
        assert_eq!(e.field, "redis_host");
        for (p, field) in [(0, "redis_port"), (65536, "redis_port"), (-1, "redis_port")] {
            let e = single(RedisFields {
                redis_port: Some(p),
                ..host("h")
            })
            .unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.message.contains(&p.to_string()), "{e}");
        }
        for t in [0, -5, 86_400_001] {
            let e = single(RedisFields {
                redis_timeout: Some(t),
                ..host("h")
            })
            .unwrap_err();
            assert_eq!(e.field, "redis_timeout", "{t}");
        }
        let e = single(RedisFields {
            redis_database: Some(-1),
            ..host("h")
        })
        .unwrap_err();
        assert_eq!(e.field, "redis_database");
        let e = single(host("")).unwrap_err();
        assert_eq!(e.field, "redis_host");
        let e = single(host("redis://h")).unwrap_err();
        assert_eq!(e.field, "redis_host");
        let e = single(RedisFields {
            redis_username: Some(String::new()),
            ..host("h")
        })
        .unwrap_err();
        assert_eq!(e.field, "redis_username");
        // An empty password is no password.
        let s = single(RedisFields {
            redis_password: Some(String::new()),
            ..host("h")
        })
        .unwrap();
        assert_eq!(s.password, None);
    }

    #[test]
    fn cluster_fields() {
        let s = cluster(RedisFields {
            redis_cluster_nodes: Some(vec!["10.0.0.1:7000".into(), "[fe80::1]:7001".into()]),
            redis_cluster_name: Some("quotas".into()),
            redis_cluster_ssl: Some(true),
            // Single-node fields do not apply to a cluster.
            redis_host: Some("ignored".into()),
            redis_database: Some(5),
            redis_ssl: Some(false),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            s.nodes,
            RedisNodes::Cluster {
                name: "quotas".into(),
                nodes: vec![("10.0.0.1".into(), 7000), ("fe80::1".into(), 7001)]
            }
        );
        assert_eq!(s.database, 0);
        assert!(s.tls.as_ref().unwrap().verify);
        assert_eq!(s.label(), "redis-cluster quotas");

        let named = |nodes: Vec<&str>| RedisFields {
            redis_cluster_nodes: Some(nodes.into_iter().map(String::from).collect()),
            redis_cluster_name: Some("c".into()),
            ..Default::default()
        };
        let e = cluster(named(vec![])).unwrap_err();
        assert_eq!(e.field, "redis_cluster_nodes");
        for bad in [vec!["h"], vec!["h:x"], vec!["::1:7000"], vec!["a:1", "h:0"]] {
            let e = cluster(named(bad.clone())).unwrap_err();
            let at = format!("redis_cluster_nodes[{}]", bad.len() - 1);
            assert_eq!(e.field, at, "{bad:?}");
        }
        let e = cluster(RedisFields {
            redis_cluster_name: None,
            ..named(vec!["h:1"])
        })
        .unwrap_err();
        assert_eq!(e.field, "redis_cluster_name");
        assert!(e.message.contains("required"), "{e}");
    }

    #[test]
    fn the_password_is_never_printed() {
        let f = RedisFields {
            redis_password: Some("hunter2-secret".into()),
            ..host("h")
        };
        assert!(!format!("{f:?}").contains("hunter2"));
        let s = single(f).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(format!("{s:?}").contains("[REDACTED]"));
        assert_eq!(
            scrub("AUTH hunter2-secret failed", Some("hunter2-secret")),
            "AUTH [REDACTED] failed"
        );
    }

    #[test]
    fn keys_share_their_hash_tag_and_stay_distinct() {
        assert_eq!(
            key_prefix("route-1:ai-proxy-openai"),
            "aigate:quota:{route-1:ai-proxy-openai}"
        );
        assert_eq!(key_prefix(""), "aigate:quota:{%}");
        assert_eq!(key_prefix("}x"), "aigate:quota:{%7Dx}");
        assert_eq!(key_prefix("a{b%"), "aigate:quota:{a%7Bb%25}");
        // Distinct keys stay distinct, and each tag is non-empty and brace-free.
        let keys = ["", "%", "%25", "{", "}", "%7B", "a}", "a%7D"];
        let tags: std::collections::HashSet<_> = keys.iter().map(|k| hash_tag(k)).collect();
        assert_eq!(tags.len(), keys.len());
        for t in tags {
            assert!(!t.is_empty() && !t.contains(['{', '}']), "{t}");
        }
    }
}
