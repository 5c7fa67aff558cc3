//! `ai-rate-limiting`: token quotas in fixed time windows, per LLM instance or per rule key.
//!
//! **Quotas.** `limit` + `time_window` is one quota shared by every instance without its own (one
//! counter, as APISIX's `ai-rate-limiting#global`, reported under each instance's name);
//! `instances[]` gives instances their own; `rules[]` (not combined with those) keys quotas by
//! request variables (`$http_x_user`, `$consumer_name`, `$remote_addr`, combinations), and a rule
//! whose key resolves to nothing does not apply to the request.
//!
//! **Admission** (the quota store's contract, `crate::quota`): each attempt reserves an estimate of
//! its cost on the attempt's instance (`before_attempt`, after ai-proxy(-multi) picked it): the
//! prompt's estimated tokens plus `max_completion_tokens` / `max_tokens` (the instance's options
//! first, then the client's), else `estimated_completion_tokens`; for `prompt_tokens` and
//! `completion_tokens` only that part. It is admitted while the window's count (used and
//! reserved) is below the limit. When the answer ends, before its last byte reaches the client
//! (`answer_end`), the reservation is replaced by the real cost, so the next request sees it; an
//! attempt that falls back to another instance gives its reservation back first; a request that
//! fails before an answer gives it back in `log`, and a stream the client cut short is charged
//! the gateway's estimate of what was generated. Concurrent clients therefore overshoot a limit
//! by at most one request's worth: everything in flight counts.
//!
//! **Scopes.** Counters belong to the consumer when the plugin is configured on a consumer, else
//! to the route (a service's plugin counts each of its routes apart): keys are
//! `ai-rate-limiting/route/<route id>/...` or `ai-rate-limiting/consumer/<username>/...`, the same
//! on every node, so a shared store (Redis) counts one quota for all of them.
//!
//! **Headers.** `X-AI-RateLimit-{Limit,Remaining,Reset}-<instance>`, and for rules
//! `X-AI-<header_prefix or 1-based index>-RateLimit-{Limit,Remaining,Reset}`: the limit, what is
//! left after this request's reservation, and the seconds until the window resets. Also on the
//! refusal, which is `rejected_code` (503) with an OpenAI-shaped error whose message is
//! `rejected_msg` when set.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::chain::Chain;
use super::ctx::{LlmCall, PluginCtx, PluginRequest};
use super::registry::{self, Owner, Registration};
use super::{AsyncPhase, AttemptRefusal, Plugin};
use crate::config::{limits, ConfigError};
use crate::error::{GatewayError, Rejection};
use crate::llm::request::LlmRequest;
use crate::net::number_value;
use crate::providers::instance::LlmInstance;
use crate::quota::expr::CostExpr;
use crate::quota::redis::{RedisFields, RedisPolicy, RedisSettings};
use crate::quota::{self, Admission, Keys, Limit, Policy, Quota, QuotaStore, Ticket};
use crate::router::vars::Variable;
use crate::router::RequestView;

pub const REGISTRATION: Registration = Registration {
    name: "ai-rate-limiting",
    priority: 1030,
    build: |conf, path, owner| {
        let conf: Conf = registry::parse(conf, path)?;
        Ok(Arc::new(AiRateLimiting::build(conf, path, owner)?))
    },
    credential: None,
};

/// aigate's default for `estimated_completion_tokens`: what a reservation counts for the answer
/// when the request sets no `max_tokens`.
pub const DEFAULT_ESTIMATED_COMPLETION_TOKENS: u64 = 256;

// ---- config ------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    #[serde(default)]
    limit: Option<Whole>,
    #[serde(default)]
    time_window: Option<Whole>,
    #[serde(default)]
    instances: Option<Vec<InstanceConf>>,
    #[serde(default)]
    limit_strategy: Option<String>,
    #[serde(default)]
    cost_expr: Option<String>,
    #[serde(default)]
    rejected_code: Option<i64>,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default)]
    show_limit_quota_header: Option<bool>,
    #[serde(default)]
    rules: Option<Vec<RuleConf>>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    redis_host: Option<String>,
    #[serde(default)]
    redis_port: Option<i64>,
    #[serde(default)]
    redis_username: Option<String>,
    #[serde(default)]
    redis_password: Option<String>,
    #[serde(default)]
    redis_database: Option<i64>,
    /// Milliseconds.
    #[serde(default)]
    redis_timeout: Option<i64>,
    #[serde(default)]
    redis_ssl: Option<bool>,
    #[serde(default)]
    redis_ssl_verify: Option<bool>,
    #[serde(default)]
    redis_cluster_nodes: Option<Vec<String>>,
    #[serde(default)]
    redis_cluster_name: Option<String>,
    #[serde(default)]
    redis_cluster_ssl: Option<bool>,
    #[serde(default)]
    redis_cluster_ssl_verify: Option<bool>,
    #[serde(default)]
    allow_degradation: Option<bool>,
    /// APISIX's Redis pool settings (milliseconds; connections): checked, with no effect.
    #[serde(default)]
    redis_keepalive_timeout: Option<i64>,
    #[serde(default)]
    redis_keepalive_pool: Option<i64>,
    /// aigate: completion tokens a reservation counts when the request sets no `max_tokens`.
    #[serde(default)]
    estimated_completion_tokens: Option<Whole>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceConf {
    name: String,
    limit: Whole,
    time_window: Whole,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConf {
    count: Whole,
    time_window: Whole,
    key: String,
    #[serde(default)]
    header_prefix: Option<String>,
}

/// A whole number, written as a number or (APISIX allows it, e.g. from a secret) as a string.
struct Whole(i64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Whole;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Whole, E> {
                Ok(Whole(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Whole, E> {
                Ok(Whole(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Whole, E> {
                Err(E::custom(format!("must be a whole number, not {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Whole, E> {
                v.trim()
                    .parse()
                    .map(Whole)
                    .map_err(|_| E::custom(format!("must be a whole number, not {v:?}")))
            }
        }
        d.deserialize_any(V)
    }
}

fn bounded(v: &Whole, min: u64, max: u64, path: String) -> Result<u64, ConfigError> {
    u64::try_from(v.0)
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                path,
                format!("must be between {min} and {max}, not {}", v.0),
            )
        })
}

fn quota_limit(
    count: &Whole,
    window: &Whole,
    at: &str,
    count_field: &str,
) -> Result<Limit, ConfigError> {
    Ok(Limit {
        count: bounded(count, 1, limits::MAX_QUOTA, format!("{at}.{count_field}"))?,
        window: Duration::from_secs(bounded(
            window,
            1,
            limits::MAX_QUOTA_WINDOW_SECS,
            format!("{at}.time_window"),
        )?),
    })
}

// ---- the plugin --------------------------------------------------------------------------------

/// How a request's cost is counted (`limit_strategy`).
enum Strategy {
    Total,
    Prompt,
    Completion,
    Expression(CostExpr),
}

/// The header names of one quota.
struct QuotaHeaders {
    limit: HeaderName,
    remaining: HeaderName,
    reset: HeaderName,
}

impl QuotaHeaders {
    /// `X-AI-RateLimit-Limit-<instance>` ...
    fn for_instance(name: &str) -> Option<QuotaHeaders> {
        let h = |kind: &str| {
            HeaderName::from_bytes(format!("x-ai-ratelimit-{kind}-{name}").as_bytes()).ok()
        };
        Some(QuotaHeaders {
            limit: h("limit")?,
            remaining: h("remaining")?,
            reset: h("reset")?,
        })
    }

    /// `X-AI-<prefix>-RateLimit-Limit` ...
    fn for_rule(prefix: &str) -> Option<QuotaHeaders> {
        let h = |kind: &str| {
            HeaderName::from_bytes(format!("x-ai-{prefix}-ratelimit-{kind}").as_bytes()).ok()
        };
        Some(QuotaHeaders {
            limit: h("limit")?,
            remaining: h("remaining")?,
            reset: h("reset")?,
        })
    }
}

struct InstanceQuota {
    name: String,
    /// The counter's name below the scope (`instance/<name>`).
    key: String,
    /// `<scope>/<key>` when the scope is fixed (a route's or a consumer's plugin): made once, not
    /// per attempt.
    full_key: Option<String>,
    limit: Limit,
    headers: Arc<QuotaHeaders>,
}

/// Header names of instances counted in the shared quota, by instance name (`None`: the name
/// cannot be part of a header name).
type HeaderCache = ArcSwap<Vec<(Box<str>, Option<Arc<QuotaHeaders>>)>>;

/// The quota an attempt's instance counts in.
struct InstanceCounter<'a> {
    /// The counter's name below the scope.
    name: &'a str,
    /// The whole key, when the scope is fixed.
    full_key: Option<&'a str>,
    limit: Limit,
    headers: Option<Arc<QuotaHeaders>>,
}

/// One of `rules[]`.
struct Rule {
    limit: Limit,
    key: Template,
    /// The counter's name below the scope (`rule/<header_prefix or index>`).
    id: String,
    /// `header_prefix`, or the 1-based index: for headers and messages.
    label: String,
    headers: QuotaHeaders,
}

enum Quotas {
    Instances {
        own: Vec<InstanceQuota>,
        /// The top-level `limit` + `time_window`: one counter for every instance without its own.
        shared: Option<Limit>,
        /// `<scope>/global` when the scope is fixed.
        shared_key: Option<String>,
        /// Header names of the instances that count in `shared`, made the first time each is
        /// seen (copy-on-write: lock-free to read).
        shared_headers: HeaderCache,
    },
    Rules(Vec<Rule>),
}

/// Whose counters these are.
enum Scope {
    /// A route's or a consumer's own: the key prefix is fixed.
    Fixed(Arc<str>),
    /// A service's: each route that uses it counts apart.
    PerRoute,
}

pub struct AiRateLimiting {
    scope: Scope,
    quotas: Quotas,
    strategy: Strategy,
    rejected_code: u16,
    rejected_msg: Option<String>,
    show_headers: bool,
    estimated_completion: u64,
    store: Arc<dyn QuotaStore>,
    /// A store that cannot answer admits the request (uncounted) instead of refusing it.
    allow_degradation: bool,
}

/// A key part chosen in config (a route id, a username, an instance name), made unambiguous: `/`
/// separates the parts of a key and `%` escapes.
fn key_part(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['/', '%']) {
        return s.into();
    }
    s.replace('%', "%25").replace('/', "%2F").into()
}

const KEY_ROOT: &str = "ai-rate-limiting";
/// The counter of the top-level quota, below the scope.
const SHARED_COUNTER: &str = "global";

impl AiRateLimiting {
    fn build(c: Conf, path: &str, owner: &Owner) -> Result<AiRateLimiting, ConfigError> {
        let at = |f: &str| format!("{path}.{f}");
        let strategy = match c.limit_strategy.as_deref().unwrap_or("total_tokens") {
            "total_tokens" => Strategy::Total,
            "prompt_tokens" => Strategy::Prompt,
            "completion_tokens" => Strategy::Completion,
            "expression" => {
                let text = c.cost_expr.as_deref().ok_or_else(|| {
                    ConfigError::new(at("cost_expr"), "is required with limit_strategy expression")
                })?;
                Strategy::Expression(CostExpr::parse(text).map_err(|e| {
                    ConfigError::new(at("cost_expr"), format!("invalid cost_expr: {e}"))
                })?)
            }
            other => {
                return Err(ConfigError::new(
                    at("limit_strategy"),
                    format!("must be total_tokens, prompt_tokens, completion_tokens or expression, not {other:?}"),
                ))
            }
        };
        if c.cost_expr.is_some() && !matches!(strategy, Strategy::Expression(_)) {
            return Err(ConfigError::new(
                at("cost_expr"),
                "only with limit_strategy expression",
            ));
        }

        let shared = match (&c.limit, &c.time_window) {
            (Some(l), Some(w)) => Some(quota_limit(l, w, path, "limit")?),
            (Some(_), None) => {
                return Err(ConfigError::new(
                    at("time_window"),
                    "is required with limit",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    at("limit"),
                    "is required with time_window",
                ))
            }
            (None, None) => None,
        };
        let scope = match owner {
            Owner::Route(id) => Scope::Fixed(format!("{KEY_ROOT}/route/{}", key_part(id)).into()),
            Owner::Consumer(name) => {
                Scope::Fixed(format!("{KEY_ROOT}/consumer/{}", key_part(name)).into())
            }
            Owner::Service(_) => Scope::PerRoute,
        };
        // A route's or a consumer's counter keys are whole at build; a service's get the route's
        // id per request.
        let fixed_key = |counter: &str| match &scope {
            Scope::Fixed(s) => Some(format!("{s}/{counter}")),
            Scope::PerRoute => None,
        };
        let quotas = match (&c.rules, shared, &c.instances) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ConfigError::new(
                    at("rules"),
                    "cannot be combined with limit, time_window or instances",
                ))
            }
            (Some(rules), None, None) => Quotas::Rules(build_rules(rules, &at("rules"))?),
            (None, None, None) => {
                return Err(ConfigError::new(
                    path,
                    "give limit and time_window, instances, or rules",
                ))
            }
            (None, shared, instances) => {
                let mut own: Vec<InstanceQuota> = Vec::new();
                if instances.as_ref().is_some_and(|i| i.is_empty()) {
                    return Err(ConfigError::new(at("instances"), "must not be empty"));
                }
                for (i, ic) in instances.iter().flatten().enumerate() {
                    let ipath = format!("{path}.instances[{i}]");
                    if ic.name.is_empty() {
                        return Err(ConfigError::new(
                            format!("{ipath}.name"),
                            "must not be empty",
                        ));
                    }
                    if own.iter().any(|o| o.name == ic.name) {
                        return Err(ConfigError::new(
                            format!("{ipath}.name"),
                            format!("duplicate instance name {:?}", ic.name),
                        ));
                    }
                    let headers = QuotaHeaders::for_instance(&ic.name).map(Arc::new).ok_or_else(|| {
                        ConfigError::new(
                            format!("{ipath}.name"),
                            format!("{:?} cannot be part of a header name (X-AI-RateLimit-Limit-<name>)", ic.name),
                        )
                    })?;
                    let key = format!("instance/{}", key_part(&ic.name));
                    own.push(InstanceQuota {
                        full_key: fixed_key(&key),
                        key,
                        name: ic.name.clone(),
                        limit: quota_limit(&ic.limit, &ic.time_window, &ipath, "limit")?,
                        headers,
                    });
                }
                Quotas::Instances {
                    own,
                    shared,
                    shared_key: fixed_key(SHARED_COUNTER),
                    shared_headers: ArcSwap::from_pointee(Vec::new()),
                }
            }
        };

        let rejected_code = match c.rejected_code {
            None => 503,
            Some(v) if (200..=599).contains(&v) => v as u16,
            Some(v) => {
                return Err(ConfigError::new(
                    at("rejected_code"),
                    format!("must be between 200 and 599, not {v}"),
                ))
            }
        };
        if c.rejected_msg.as_deref() == Some("") {
            return Err(ConfigError::new(at("rejected_msg"), "must not be empty"));
        }
        let estimated_completion = match &c.estimated_completion_tokens {
            None => DEFAULT_ESTIMATED_COMPLETION_TOKENS,
            Some(v) => bounded(v, 0, limits::MAX_QUOTA, at("estimated_completion_tokens"))?,
        };
        let policy = build_policy(&c, path)?;
        let keys = match quotas {
            Quotas::Rules(_) => Keys::FromRequests,
            Quotas::Instances { .. } => Keys::Fixed,
        };
        let store =
            quota::store_for(&policy, keys).map_err(|m| ConfigError::new(at("policy"), m))?;
        Ok(AiRateLimiting {
            scope,
            quotas,
            strategy,
            rejected_code,
            rejected_msg: c.rejected_msg,
            show_headers: c.show_limit_quota_header.unwrap_or(true),
            estimated_completion,
            store,
            allow_degradation: c.allow_degradation.unwrap_or(false),
        })
    }
}

fn build_rules(rules: &[RuleConf], path: &str) -> Result<Vec<Rule>, ConfigError> {
    if rules.is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    let mut out: Vec<Rule> = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let rpath = format!("{path}[{i}]");
        let key =
            Template::parse(&r.key).map_err(|m| ConfigError::new(format!("{rpath}.key"), m))?;
        if rules[..i].iter().any(|o| o.key == r.key) {
            return Err(ConfigError::new(
                format!("{rpath}.key"),
                format!("duplicate key {:?} in rules", r.key),
            ));
        }
        let label = match &r.header_prefix {
            Some(p) if p.is_empty() => {
                return Err(ConfigError::new(
                    format!("{rpath}.header_prefix"),
                    "must not be empty",
                ))
            }
            Some(p) => p.clone(),
            None => (i + 1).to_string(),
        };
        if out.iter().any(|o| o.label.eq_ignore_ascii_case(&label)) {
            return Err(ConfigError::new(
                format!("{rpath}.header_prefix"),
                format!("another rule already sends X-AI-{label}-RateLimit-* headers"),
            ));
        }
        let headers = QuotaHeaders::for_rule(&label).ok_or_else(|| {
            ConfigError::new(
                format!("{rpath}.header_prefix"),
                format!(
                    "{label:?} cannot be part of a header name (X-AI-<prefix>-RateLimit-Limit)"
                ),
            )
        })?;
        out.push(Rule {
            limit: quota_limit(&r.count, &r.time_window, &rpath, "count")?,
            key,
            id: format!("rule/{}", key_part(&label)),
            label,
            headers,
        });
    }
    Ok(out)
}

/// `policy` and its flat `redis_*` fields. A field of another policy is refused (it would do
/// nothing), as is `allow_degradation: true` with `policy: local`; the Redis fields themselves
/// are checked by the Redis store (`RedisSettings::new`), which names the field.
fn build_policy(c: &Conf, path: &str) -> Result<Policy, ConfigError> {
    let at = |f: &str| format!("{path}.{f}");
    let policy = c.policy.as_deref().unwrap_or("local");
    let single = [
        ("redis_host", c.redis_host.is_some()),
        ("redis_port", c.redis_port.is_some()),
        ("redis_database", c.redis_database.is_some()),
        ("redis_ssl", c.redis_ssl.is_some()),
        ("redis_ssl_verify", c.redis_ssl_verify.is_some()),
    ];
    let cluster = [
        ("redis_cluster_nodes", c.redis_cluster_nodes.is_some()),
        ("redis_cluster_name", c.redis_cluster_name.is_some()),
        ("redis_cluster_ssl", c.redis_cluster_ssl.is_some()),
        (
            "redis_cluster_ssl_verify",
            c.redis_cluster_ssl_verify.is_some(),
        ),
    ];
    let both = [
        ("redis_username", c.redis_username.is_some()),
        ("redis_password", c.redis_password.is_some()),
        ("redis_timeout", c.redis_timeout.is_some()),
        (
            "redis_keepalive_timeout",
            c.redis_keepalive_timeout.is_some(),
        ),
        ("redis_keepalive_pool", c.redis_keepalive_pool.is_some()),
    ];
    let refuse = |fields: &[(&str, bool)], only: &str| -> Result<(), ConfigError> {
        match fields.iter().find(|(_, set)| *set) {
            Some((f, _)) => Err(ConfigError::new(at(f), format!("only with policy {only}"))),
            None => Ok(()),
        }
    };
    let kind = match policy {
        "local" => {
            refuse(&single, "redis")?;
            refuse(&cluster, "redis-cluster")?;
            refuse(&both, "redis or redis-cluster")?;
            if c.allow_degradation == Some(true) {
                return Err(ConfigError::new(
                    at("allow_degradation"),
                    "only with policy redis or redis-cluster (a local counter always answers)",
                ));
            }
            return Ok(Policy::Local);
        }
        "redis" => {
            refuse(&cluster, "redis-cluster")?;
            RedisPolicy::Redis
        }
        "redis-cluster" => {
            refuse(&single, "redis")?;
            RedisPolicy::RedisCluster
        }
        "redis-sentinel" => {
            return Err(ConfigError::new(
                at("policy"),
                "redis-sentinel is not supported (use local, redis or redis-cluster)",
            ))
        }
        other => {
            return Err(ConfigError::new(
                at("policy"),
                format!("must be local, redis or redis-cluster, not {other:?}"),
            ))
        }
    };
    // APISIX's pool settings size a pool of Redis connections; aigate keeps one multiplexed
    // connection per Redis (per cluster node), shared by every request, so there is nothing for
    // them to size. APISIX's defaults (which exported configs carry) are accepted; any other
    // value would be silently ignored, and is refused instead.
    for (field, value, default) in [
        ("redis_keepalive_timeout", c.redis_keepalive_timeout, 10_000),
        ("redis_keepalive_pool", c.redis_keepalive_pool, 100),
    ] {
        crate::config::limits::apisix_default_only(
            value,
            default,
            "aigate keeps one multiplexed connection per Redis, with no pool to size",
        )
        .map_err(|m| ConfigError::new(at(field), m))?;
    }
    let fields = RedisFields {
        redis_host: c.redis_host.clone(),
        redis_port: c.redis_port,
        redis_username: c.redis_username.clone(),
        redis_password: c.redis_password.clone(),
        redis_database: c.redis_database,
        redis_timeout: c.redis_timeout,
        redis_ssl: c.redis_ssl,
        redis_ssl_verify: c.redis_ssl_verify,
        redis_cluster_nodes: c.redis_cluster_nodes.clone(),
        redis_cluster_name: c.redis_cluster_name.clone(),
        redis_cluster_ssl: c.redis_cluster_ssl,
        redis_cluster_ssl_verify: c.redis_cluster_ssl_verify,
        allow_degradation: c.allow_degradation,
    };
    RedisSettings::new(kind, fields)
        .map(Policy::Redis)
        .map_err(|e| ConfigError::new(at(&e.field), e.message))
}

// ---- rule keys ---------------------------------------------------------------------------------

/// A rule's `key`: text with `$name` / `${name}` variables, as APISIX's `resolve_var`.
struct Template(Vec<Piece>);

enum Piece {
    Lit(String),
    Var(KeyVar),
}

enum KeyVar {
    Request(Variable),
    /// `$consumer_name`: the consumer an authentication plugin identified.
    ConsumerName,
    /// `$route_id`.
    RouteId,
}

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, next) = if let Some(inner) = after.strip_prefix('{') {
                let end = inner.find('}').ok_or(format!("unclosed ${{ in {text:?}"))?;
                (&inner[..end], &inner[end + 1..])
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            if name.is_empty() {
                lit.push('$'); // a `$` that starts no variable is text
                rest = after;
                continue;
            }
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            let var = match name {
                "consumer_name" | "remote_user" => KeyVar::ConsumerName,
                "route_id" => KeyVar::RouteId,
                n if n.to_ascii_lowercase().starts_with("post_arg") => {
                    return Err(format!(
                        "{text:?}: rule keys cannot read the request body (post_arg.*)"
                    ))
                }
                n => KeyVar::Request(Variable::parse(n).map_err(|e| format!("${n}: {e}"))?),
            };
            pieces.push(Piece::Var(var));
            rest = next;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        if !pieces.iter().any(|p| matches!(p, Piece::Var(_))) {
            // APISIX skips a rule whose key resolves no variable: one without any never applies.
            return Err(format!(
                "{text:?} has no variable; write one such as $remote_addr, $consumer_name or $http_x_user"
            ));
        }
        Ok(Template(pieces))
    }

    /// The key for this request, or `None` when none of its variables has a value (the rule
    /// does not apply, as in APISIX).
    fn resolve(&self, req: &RequestView, ctx: &PluginCtx, out: &mut String) -> bool {
        let mut resolved = 0;
        for p in &self.0 {
            match p {
                Piece::Lit(l) => out.push_str(l),
                Piece::Var(v) => {
                    // The consumer and the route are borrowed, not copied, into the key.
                    let owned;
                    let value = match v {
                        KeyVar::Request(var) => {
                            owned = var.read_string(req);
                            owned.as_deref()
                        }
                        KeyVar::ConsumerName => ctx.consumer.as_ref().map(|c| c.username.as_str()),
                        KeyVar::RouteId => ctx.route_id.as_deref(),
                    };
                    if let Some(value) = value {
                        resolved += 1;
                        out.push_str(value);
                    }
                }
            }
        }
        resolved > 0
    }
}

// ---- per request -------------------------------------------------------------------------------

/// What the plugin keeps for one request (in `PluginCtx::quota`).
pub struct RequestQuota {
    /// `ai-rate-limiting/route/<id>` or `.../consumer/<name>`.
    scope: Arc<str>,
    /// The keys of the rules that apply (index into the rules, full key).
    rule_keys: Vec<(usize, String)>,
    /// The current attempt's reservations.
    held: Vec<Ticket>,
    /// Headers of instances skipped because their quota was spent: sent with the answer.
    skipped: Vec<(HeaderName, HeaderValue)>,
    /// The header names this plugin put in `response_headers` (replaced on the next attempt).
    written: Vec<HeaderName>,
}

impl AiRateLimiting {
    /// The estimated cost of an attempt on `inst`, reserved at admission.
    fn estimate(&self, req: &LlmRequest, inst: &LlmInstance) -> u64 {
        let prompt = req.estimated_prompt_tokens();
        let completion = if req.is_embeddings() {
            0
        } else {
            max_tokens(req, inst).unwrap_or(self.estimated_completion)
        };
        match &self.strategy {
            Strategy::Total => prompt.saturating_add(completion),
            Strategy::Prompt => prompt,
            Strategy::Completion => completion,
            Strategy::Expression(e) => e
                .cost_of_fields(&[
                    ("prompt_tokens", prompt),
                    ("completion_tokens", completion),
                    ("total_tokens", prompt.saturating_add(completion)),
                    ("input_tokens", prompt),
                    ("output_tokens", completion),
                ])
                .unwrap_or(0),
        }
    }

    /// The real cost of the call's answer (0 without usage).
    fn cost(&self, llm: &LlmCall) -> u64 {
        let Some(u) = llm.usage else {
            return 0;
        };
        match &self.strategy {
            Strategy::Total => u.total_tokens,
            Strategy::Prompt => u.prompt_tokens,
            Strategy::Completion => u.completion_tokens,
            Strategy::Expression(e) => {
                let cost = match &llm.raw_usage {
                    Some(raw) if !llm.usage_estimated => e.cost_of_usage(raw),
                    // No raw object (the gateway's own estimate, Vertex predict): its fields.
                    _ => e.cost_of_fields(&[
                        ("prompt_tokens", u.prompt_tokens),
                        ("completion_tokens", u.completion_tokens),
                        ("total_tokens", u.total_tokens),
                    ]),
                };
                cost.unwrap_or_else(|| {
                    log::warn!(
                        "ai-rate-limiting: cost_expr gave no finite number; nothing charged"
                    );
                    0
                })
            }
        }
    }

    /// The quota of the attempt's instance: its own, or the shared one.
    fn instance_quota(&self, name: &str) -> Option<InstanceCounter<'_>> {
        let Quotas::Instances {
            own,
            shared,
            shared_key,
            shared_headers,
        } = &self.quotas
        else {
            return None;
        };
        if let Some(q) = own.iter().find(|q| q.name == name) {
            return Some(InstanceCounter {
                name: &q.key,
                full_key: q.full_key.as_deref(),
                limit: q.limit,
                headers: Some(q.headers.clone()),
            });
        }
        let limit = (*shared)?;
        let cached = shared_headers
            .load()
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, h)| h.clone());
        let headers = match cached {
            Some(h) => h,
            None => {
                let made = QuotaHeaders::for_instance(name).map(Arc::new);
                if made.is_none() {
                    log::debug!("ai-rate-limiting: instance name {name:?} cannot be part of a header name; no quota headers for it");
                }
                // Instance names come from the config, so the list stays small.
                shared_headers.rcu(|l| {
                    let mut l = Vec::clone(l);
                    if !l.iter().any(|(n, _)| &**n == name) {
                        l.push((name.into(), made.clone()));
                    }
                    l
                });
                made
            }
        };
        Some(InstanceCounter {
            name: SHARED_COUNTER,
            full_key: shared_key.as_deref(),
            limit,
            headers,
        })
    }

    fn push_headers(&self, out: &mut Vec<(HeaderName, HeaderValue)>, h: &QuotaHeaders, q: &Quota) {
        if !self.show_headers {
            return;
        }
        out.reserve(3);
        out.push((h.limit.clone(), number_value(q.limit)));
        out.push((h.remaining.clone(), number_value(q.remaining)));
        out.push((h.reset.clone(), number_value(reset_secs(q.reset))));
    }

    fn refusal(
        &self,
        what: &str,
        quota: &Quota,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        try_another: bool,
    ) -> AttemptRefusal {
        let reset = reset_secs(quota.reset);
        let message = self.rejected_msg.clone().unwrap_or_else(|| {
            format!("the token quota of {what} is spent; it resets in {reset} s")
        });
        if matches!(self.rejected_code, 429 | 503) {
            headers.push((http::header::RETRY_AFTER, HeaderValue::from(reset.max(1))));
        }
        AttemptRefusal {
            rejection: Rejection {
                error: GatewayError::new(
                    self.rejected_code,
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    message,
                ),
                headers,
            },
            try_another,
        }
    }

    fn store_failed(&self, e: quota::StoreError) -> Result<(), AttemptRefusal> {
        // The store logs an outage once when it starts and once when it ends; a line per
        // request would turn an outage into a flood.
        if self.allow_degradation {
            log::debug!("ai-rate-limiting: quota store failed ({e}); request admitted uncounted");
            return Ok(());
        }
        log::debug!("ai-rate-limiting: quota store failed: {e}");
        // As a spent quota: the rejected code (APISIX's behaviour with allow_degradation off),
        // with a message and code that say why, and a short Retry-After.
        let message = self.rejected_msg.clone().unwrap_or_else(|| {
            "the token quota could not be checked (its store is unavailable); retry later".into()
        });
        let mut headers = Vec::new();
        if matches!(self.rejected_code, 429 | 503) {
            headers.push((http::header::RETRY_AFTER, HeaderValue::from(1u64)));
        }
        Err(AttemptRefusal {
            rejection: Rejection {
                error: GatewayError::new(
                    self.rejected_code,
                    "rate_limit_error",
                    "quota_store_unavailable",
                    message,
                ),
                headers,
            },
            try_another: false,
        })
    }

    /// Give the current attempt's reservations back, or replace them by the real cost.
    fn settle_held(&self, ctx: &mut PluginCtx) {
        let Some(q) = ctx.quota.as_mut() else {
            return;
        };
        if q.held.is_empty() {
            return;
        }
        let cost = ctx.llm.as_ref().map(|l| self.cost(l)).unwrap_or(0);
        for t in q.held.drain(..) {
            self.store.settle(t, cost);
        }
    }
}

/// Whole seconds until a window resets, rounded up (a fresh 60 s window says 60).
fn reset_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

/// The answer's token budget: the instance's options win over the client's, as in the body sent.
fn max_tokens(req: &LlmRequest, inst: &LlmInstance) -> Option<u64> {
    let parse = |v: &str| {
        let v = v.trim();
        v.parse::<u64>().ok().or_else(|| {
            v.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        })
    };
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| inst.options.get(k).and_then(parse))
        .or_else(|| {
            ["max_completion_tokens", "max_tokens"]
                .iter()
                .find_map(|k| req.raw(k).and_then(parse))
        })
}

#[async_trait]
impl Plugin for AiRateLimiting {
    fn runs(&self, phase: AsyncPhase) -> bool {
        matches!(
            phase,
            AsyncPhase::Access | AsyncPhase::BeforeAttempt | AsyncPhase::Log
        )
    }

    fn name(&self) -> &'static str {
        REGISTRATION.name
    }

    fn priority(&self) -> i32 {
        REGISTRATION.priority
    }

    /// On a route (or a service), the quota needs the LLM plugin it counts for, and an instance
    /// quota must name one of its instances: otherwise it would never count anything. (A
    /// consumer's quota is not checked here: it applies on whichever routes the consumer uses.)
    fn check_route(&self, chain: &Chain) -> Result<(), ConfigError> {
        let Some(llm) = chain.plugins().iter().find(|p| p.serves_request()) else {
            return Err(ConfigError::new(
                "",
                "counts LLM tokens: the route needs ai-proxy or ai-proxy-multi",
            ));
        };
        let Quotas::Instances { own, .. } = &self.quotas else {
            return Ok(());
        };
        let names = llm.instance_names();
        for (i, q) in own.iter().enumerate() {
            if !names.contains(&q.name.as_str()) {
                return Err(ConfigError::new(
                    format!("instances[{i}].name"),
                    format!(
                        "{:?} is not an instance of this route's {} (its instances: {})",
                        q.name,
                        llm.name(),
                        names.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Resolve the request's scope and rule keys while the request's variables are at hand;
    /// reservations wait for the attempt's instance (`before_attempt`).
    async fn access(
        &self,
        req: &mut PluginRequest<'_>,
        ctx: &mut PluginCtx,
    ) -> Result<(), Rejection> {
        if req.body.is_none() {
            return Ok(()); // no LLM call on this route: no tokens to count
        }
        let scope = match &self.scope {
            Scope::Fixed(s) => s.clone(),
            Scope::PerRoute => format!(
                "{KEY_ROOT}/route/{}",
                key_part(ctx.route_id.as_deref().unwrap_or(""))
            )
            .into(),
        };
        let mut rule_keys = Vec::new();
        if let Quotas::Rules(rules) = &self.quotas {
            let view = req.view(ctx);
            for (i, r) in rules.iter().enumerate() {
                let mut key = format!("{scope}/{}/", r.id);
                if r.key.resolve(&view, ctx, &mut key) {
                    rule_keys.push((i, key));
                }
            }
        }
        ctx.quota = Some(Box::new(RequestQuota {
            scope,
            rule_keys,
            held: Vec::new(),
            skipped: Vec::new(),
            written: Vec::new(),
        }));
        Ok(())
    }

    async fn before_attempt(&self, ctx: &mut PluginCtx) -> Result<(), AttemptRefusal> {
        let PluginCtx {
            quota,
            llm,
            response_headers,
            ..
        } = ctx;
        let (Some(q), Some(llm)) = (quota.as_mut(), llm.as_mut()) else {
            return Ok(());
        };
        // A new attempt: the last one's reservations go back (its instance failed or answered
        // with a fallback status; nothing of it is charged).
        for t in q.held.drain(..) {
            self.store.settle(t, 0);
        }
        if matches!(self.strategy, Strategy::Expression(_)) {
            llm.keep_raw_usage = true;
        }
        let estimate = self.estimate(&llm.request, &llm.instance);
        // The last attempt's headers go (this attempt's instance may count in another quota);
        // this attempt's are written straight into the answer's, after those of instances
        // skipped because their quota was spent.
        if !q.written.is_empty() {
            response_headers.retain(|(k, _)| !q.written.contains(k));
            q.written.clear();
        }
        let start = response_headers.len();
        response_headers.extend(q.skipped.iter().cloned());
        match &self.quotas {
            Quotas::Instances { .. } => {
                let name = llm.instance.name.as_str();
                if let Some(counter) = self.instance_quota(name) {
                    let h = counter.headers.as_deref();
                    // A service's plugin counts per route: its key is joined here (by hand:
                    // `format!` costs several times as much, per attempt).
                    let joined;
                    let key = match counter.full_key {
                        Some(k) => k,
                        None => {
                            let mut k =
                                String::with_capacity(q.scope.len() + 1 + counter.name.len());
                            k.push_str(&q.scope);
                            k.push('/');
                            k.push_str(counter.name);
                            joined = k;
                            &joined
                        }
                    };
                    match self.store.reserve(key, counter.limit, estimate).await {
                        Ok(Admission::Admitted { quota, ticket }) => {
                            q.held.push(ticket);
                            if let Some(h) = h {
                                self.push_headers(response_headers, h, &quota);
                            }
                        }
                        Ok(Admission::Rejected { quota }) => {
                            // The refusal carries the skipped instances' headers and this one's.
                            let mut headers: Vec<_> = response_headers.drain(start..).collect();
                            if let Some(h) = h {
                                self.push_headers(&mut headers, h, &quota);
                            }
                            let try_another = llm.multi().is_some_and(|m| m.quota_fallback);
                            if try_another {
                                q.skipped.extend(headers[q.skipped.len()..].iter().cloned());
                            }
                            return Err(self.refusal(name, &quota, headers, try_another));
                        }
                        Err(e) => {
                            if let Err(refusal) = self.store_failed(e) {
                                response_headers.truncate(start);
                                return Err(refusal);
                            }
                        }
                    }
                }
            }
            Quotas::Rules(rules) => {
                for (i, key) in &q.rule_keys {
                    let rule = &rules[*i];
                    match self.store.reserve(key, rule.limit, estimate).await {
                        Ok(Admission::Admitted { quota, ticket }) => {
                            q.held.push(ticket);
                            self.push_headers(response_headers, &rule.headers, &quota);
                        }
                        Ok(Admission::Rejected { quota }) => {
                            for t in q.held.drain(..) {
                                self.store.settle(t, 0);
                            }
                            // The rules admitted so far say what they have left, this one
                            // that it is spent.
                            let mut headers: Vec<_> = response_headers.drain(start..).collect();
                            self.push_headers(&mut headers, &rule.headers, &quota);
                            let what = format!("rule {}", rule.label);
                            return Err(self.refusal(&what, &quota, headers, false));
                        }
                        Err(e) => {
                            if let Err(refusal) = self.store_failed(e) {
                                for t in q.held.drain(..) {
                                    self.store.settle(t, 0);
                                }
                                response_headers.truncate(start);
                                return Err(refusal);
                            }
                        }
                    }
                }
            }
        }
        q.written
            .extend(response_headers[start..].iter().map(|(k, _)| k.clone()));
        Ok(())
    }

    fn answer_end(&self, ctx: &mut PluginCtx) {
        self.settle_held(ctx);
    }

    async fn log(&self, ctx: &mut PluginCtx) {
        // Whatever was not settled when an answer ended: a request that failed before its answer
        // (nothing to charge), or a stream cut short (the gateway's estimate of it).
        self.settle_held(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str, owner: Owner) -> Result<AiRateLimiting, ConfigError> {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let conf: Conf = registry::parse(&v, "routes[0].plugins.ai-rate-limiting")?;
        AiRateLimiting::build(conf, "routes[0].plugins.ai-rate-limiting", &owner)
    }

    fn route() -> Owner {
        Owner::Route("r1".into())
    }

    fn err(yaml: &str) -> String {
        match build(yaml, route()) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn config_errors_name_their_path() {
        let p = "routes[0].plugins.ai-rate-limiting";
        for (yaml, want) in [
            ("limit: 10", format!("{p}.time_window: is required with limit")),
            ("time_window: 10", format!("{p}.limit: is required with time_window")),
            ("{}", format!("{p}: give limit and time_window, instances, or rules")),
            ("{limit: 0, time_window: 60}", format!("{p}.limit: must be between 1 and")),
            ("{limit: 10, time_window: 0}", format!("{p}.time_window: must be between 1 and")),
            ("{limit: 10.5, time_window: 60}", format!("{p}.limit: must be a whole number")),
            ("{limit: 'ten', time_window: 60}", format!("{p}.limit: must be a whole number")),
            (
                "{limit: 10, time_window: 60, rules: [{count: 1, time_window: 1, key: $remote_addr}]}",
                format!("{p}.rules: cannot be combined"),
            ),
            (
                "{instances: [{name: a, limit: 1, time_window: 1}], rules: [{count: 1, time_window: 1, key: $remote_addr}]}",
                format!("{p}.rules: cannot be combined"),
            ),
            ("{limit: 1, time_window: 1, rejected_code: 600}", format!("{p}.rejected_code: must be between 200 and 599, not 600")),
            ("{limit: 1, time_window: 1, rejected_code: 199}", format!("{p}.rejected_code: must be between 200 and 599")),
            ("{limit: 1, time_window: 1, rejected_msg: ''}", format!("{p}.rejected_msg: must not be empty")),
            ("{limit: 1, time_window: 1, limit_strategy: tokens}", format!("{p}.limit_strategy: must be total_tokens")),
            ("{limit: 1, time_window: 1, limit_strategy: expression}", format!("{p}.cost_expr: is required with limit_strategy expression")),
            ("{limit: 1, time_window: 1, limit_strategy: expression, cost_expr: 'prompt_tokens +'}", format!("{p}.cost_expr: invalid cost_expr: expression ends too early (at byte 15)")),
            ("{limit: 1, time_window: 1, cost_expr: 'prompt_tokens'}", format!("{p}.cost_expr: only with limit_strategy expression")),
            ("{instances: []}", format!("{p}.instances: must not be empty")),
            ("{instances: [{name: a, limit: 1}]}", format!("{p}.instances[0]: missing field `time_window`")),
            ("{instances: [{name: a, limit: 1, time_window: 1}, {name: a, limit: 1, time_window: 1}]}", format!("{p}.instances[1].name: duplicate instance name")),
            ("{instances: [{name: 'a b', limit: 1, time_window: 1}]}", format!("{p}.instances[0].name: \"a b\" cannot be part of a header name")),
            ("{instances: [{name: a, limit: 1, time_window: 1, weight: 2}]}", format!("{p}.instances[0].weight: unknown field `weight`")),
            ("{rules: []}", format!("{p}.rules: must not be empty")),
            ("{rules: [{count: 1, time_window: 1, key: user}]}", format!("{p}.rules[0].key: \"user\" has no variable")),
            ("{rules: [{count: 1, time_window: 1, key: '$post_arg.model'}]}", format!("{p}.rules[0].key: \"$post_arg.model\": rule keys cannot read the request body")),
            ("{rules: [{count: 1, time_window: 1, key: '$nope'}]}", format!("{p}.rules[0].key: $nope:")),
            ("{rules: [{count: 1, time_window: 1, key: $http_x_a}, {count: 1, time_window: 1, key: $http_x_a}]}", format!("{p}.rules[1].key: duplicate key")),
            ("{rules: [{count: 1, time_window: 1, key: $http_x_a, header_prefix: u}, {count: 1, time_window: 1, key: $http_x_b, header_prefix: U}]}", format!("{p}.rules[1].header_prefix: another rule already sends X-AI-U-RateLimit-* headers")),
            ("{rules: [{count: 0, time_window: 1, key: $http_x_a}]}", format!("{p}.rules[0].count: must be between 1")),
            ("{limit: 1, time_window: 1, policy: redis}", format!("{p}.redis_host: is required with policy redis")),
            ("{limit: 1, time_window: 1, policy: redis, redis_host: 'a b'}", format!("{p}.redis_host: \"a b\" is not a host name")),
            ("{limit: 1, time_window: 1, policy: redis, redis_host: h, redis_database: -1}", format!("{p}.redis_database: must be 0 or more")),
            ("{limit: 1, time_window: 1, policy: redis, redis_host: h, redis_keepalive_timeout: 10}", format!("{p}.redis_keepalive_timeout: aigate keeps one multiplexed connection per Redis, with no pool to size: remove this field or leave it at APISIX's default 10000, not 10")),
            ("{limit: 1, time_window: 1, policy: redis, redis_host: h, redis_keepalive_pool: 0}", format!("{p}.redis_keepalive_pool: aigate keeps one multiplexed connection per Redis, with no pool to size: remove this field or leave it at APISIX's default 100, not 0")),
            ("{limit: 1, time_window: 1, redis_keepalive_pool: 5}", format!("{p}.redis_keepalive_pool: only with policy redis or redis-cluster")),
            ("{limit: 1, time_window: 1, policy: redis-cluster, redis_cluster_nodes: ['nope'], redis_cluster_name: c}", format!("{p}.redis_cluster_nodes[0]: \"nope\" is not \"host:port\"")),
            ("{limit: 1, time_window: 1, policy: redis-cluster, redis_cluster_nodes: ['a:1']}", format!("{p}.redis_cluster_name: is required with policy redis-cluster")),
            ("{limit: 1, time_window: 1, policy: redis, redis_host: h, redis_port: 70000}", format!("{p}.redis_port: must be a port between 1 and 65535")),
            ("{limit: 1, time_window: 1, policy: redis, redis_host: h, redis_timeout: 0}", format!("{p}.redis_timeout: must be at least 1")),
            ("{limit: 1, time_window: 1, policy: redis, redis_host: h, redis_cluster_name: c}", format!("{p}.redis_cluster_name: only with policy redis-cluster")),
            ("{limit: 1, time_window: 1, redis_host: h}", format!("{p}.redis_host: only with policy redis")),
            ("{limit: 1, time_window: 1, allow_degradation: true}", format!("{p}.allow_degradation: only with policy redis or redis-cluster")),
            ("{limit: 1, time_window: 1, policy: redis-sentinel}", format!("{p}.policy: redis-sentinel is not supported")),
            ("{limit: 1, time_window: 1, policy: etcd}", format!("{p}.policy: must be local, redis or redis-cluster")),
            ("{limit: 1, time_window: 1, estimated_completion_tokens: -1}", format!("{p}.estimated_completion_tokens: must be between 0 and")),
            ("{limit: 1, time_window: 1, show_limit_quota_header: 1}", format!("{p}.show_limit_quota_header: invalid type")),
        ] {
            let got = err(yaml);
            assert!(got.starts_with(&want), "{yaml}\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn accepted_configs() {
        for yaml in [
            "{limit: 30, time_window: 60}",
            "{limit: '30', time_window: '60'}",
            "{instances: [{name: openai-instance, limit: 10, time_window: 60}], limit_strategy: total_tokens}",
            "{limit: 5, time_window: 1, instances: [{name: a, limit: 1, time_window: 1}], rejected_code: 429, rejected_msg: slow down}",
            "{rules: [{count: 10, time_window: 60, key: '$consumer_name $remote_addr', header_prefix: user}, {count: 5, time_window: 60, key: '${http_x_team}'}]}",
            "{limit: 1, time_window: 1, limit_strategy: expression, cost_expr: 'input_tokens + cache_creation_input_tokens + output_tokens'}",
            "{limit: 1, time_window: 31622400, allow_degradation: false, show_limit_quota_header: false}",
            "{limit: 1, time_window: 1, policy: redis, redis_host: localhost, redis_keepalive_timeout: 10000, redis_keepalive_pool: 100}",
            "{limit: 1, time_window: 1, policy: redis-cluster, redis_cluster_nodes: ['a:1', '[::1]:7000'], redis_cluster_name: c, allow_degradation: true}",
        ] {
            build(yaml, route()).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        }
    }

    #[test]
    fn scopes_make_keys_per_route_and_per_consumer() {
        let r = build("{limit: 1, time_window: 1}", Owner::Route("a/b%".into())).unwrap();
        assert!(matches!(&r.scope, Scope::Fixed(s) if &**s == "ai-rate-limiting/route/a%2Fb%25"));
        let c = build("{limit: 1, time_window: 1}", Owner::Consumer("john".into())).unwrap();
        assert!(matches!(&c.scope, Scope::Fixed(s) if &**s == "ai-rate-limiting/consumer/john"));
        let s = build("{limit: 1, time_window: 1}", Owner::Service("svc".into())).unwrap();
        assert!(matches!(s.scope, Scope::PerRoute));
    }

    #[test]
    fn rule_templates() {
        let t = Template::parse("$remote_addr-${http_x_user}:$consumer_name$").unwrap();
        assert_eq!(t.0.len(), 6);
        assert!(matches!(&t.0[5], Piece::Lit(l) if l == "$"));
        assert!(Template::parse("${unclosed").is_err());
        assert!(Template::parse("$ and text").is_err(), "no variable");
    }

    /// A request through the plugin's phases by hand, with an ai-proxy call on route `route`.
    fn call_ctx(route: &str, body: &str) -> PluginCtx {
        use super::super::ai_proxy::AiProxy;
        use super::super::ctx::LlmPlugin;
        let v: serde_yaml::Value = serde_yaml::from_str(
            "{provider: openai-compatible, auth: {header: {Authorization: k}}, override: {endpoint: 'http://127.0.0.1:9/v1/chat/completions'}}",
        )
        .unwrap();
        let proxy = Arc::new(AiProxy::build(&registry::parse(&v, "p").unwrap(), "p").unwrap());
        let request = LlmRequest::parse(bytes::Bytes::from(body.to_string())).unwrap();
        let call = LlmCall::new(
            LlmPlugin::Single(proxy.clone()),
            request,
            proxy.instance.clone(),
            Vec::new(),
            None,
        );
        PluginCtx {
            route_id: Some(route.into()),
            llm: Some(Box::new(call)),
            quota: Some(Box::new(RequestQuota {
                scope: format!("{KEY_ROOT}/route/{route}").into(),
                rule_keys: Vec::new(),
                held: Vec::new(),
                skipped: Vec::new(),
                written: Vec::new(),
            })),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_real_cost_replaces_the_reservation_when_the_answer_ends_not_later() {
        // The gateway runs answer_end in its body filter, before the answer's last byte is
        // written; this is what makes the next request see the real cost. (log, after the
        // response, only settles what is still held.)
        let route = "answer-end-unit";
        let p = build("{limit: 100, time_window: 60}", Owner::Route(route.into())).unwrap();
        let key = format!("{KEY_ROOT}/route/{route}/global");
        let count = || quota::local::fixed().count(&key, Duration::from_secs(60));
        let mut ctx = call_ctx(
            route,
            r#"{"messages":[{"content":"hi","role":"user"}],"max_tokens":5}"#,
        );
        p.before_attempt(&mut ctx).await.unwrap();
        assert_eq!(count(), 13, "the estimate is reserved");
        let names: Vec<&str> = ctx
            .response_headers
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "x-ai-ratelimit-limit-ai-proxy-openai-compatible",
                "x-ai-ratelimit-remaining-ai-proxy-openai-compatible",
                "x-ai-ratelimit-reset-ai-proxy-openai-compatible"
            ]
        );
        ctx.llm.as_mut().unwrap().usage = Some(crate::llm::usage::Usage {
            prompt_tokens: 7,
            completion_tokens: 3,
            total_tokens: 10,
        });
        p.answer_end(&mut ctx);
        assert_eq!(count(), 10, "settled in answer_end");
        p.log(&mut ctx).await;
        assert_eq!(count(), 10, "and only once");
        // A second attempt gives the first one's reservation back before reserving again.
        let mut ctx = call_ctx(
            route,
            r#"{"messages":[{"content":"hi","role":"user"}],"max_tokens":5}"#,
        );
        p.before_attempt(&mut ctx).await.unwrap();
        p.before_attempt(&mut ctx).await.unwrap();
        assert_eq!(count(), 23);
        assert_eq!(
            ctx.response_headers.len(),
            3,
            "the headers of the last attempt only"
        );
        p.log(&mut ctx).await;
        assert_eq!(count(), 10, "no answer: given back");
    }

    #[test]
    fn reset_is_rounded_up() {
        assert_eq!(reset_secs(Duration::from_millis(59_999)), 60);
        assert_eq!(reset_secs(Duration::from_millis(60_000)), 60);
        assert_eq!(reset_secs(Duration::from_millis(1)), 1);
        assert_eq!(reset_secs(Duration::ZERO), 0);
    }
}
