//! `ai-proxy-multi`: several provider instances behind one route.
//!
//! Instances are grouped by `priority` (highest first) and balanced inside a tier by smooth
//! weighted round robin or consistent hashing (`balancer.algorithm: chash`). An answer with a
//! fallback status (`fallback_strategy: http_429 / http_5xx`, `fallback_http_statuses`), a
//! refused connection or a timeout sends the request, rewritten from scratch, to the next untried
//! instance. Unhealthy instances (active probes, or passive cool-down after failing real
//! requests) are skipped unless every instance is unhealthy.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::ctx::{LlmCall, LlmPlugin, PluginCtx, PluginRequest};
use super::registry::{self, Registration};
use super::Plugin;
use crate::balancer::health::{ActiveProbe, Outcome, PassiveHealth};
use crate::balancer::tiered::{Algorithm, Member, TieredBalancer};
use crate::config::schema::ChecksConf;
use crate::config::schema::{AiProxyMultiConf, OneOrMany};
use crate::config::{limits, ConfigError};
use crate::error::Rejection;
use crate::providers::instance::{InstanceSpec, LlmInstance};
use crate::router::vars::Variable;
use crate::router::RequestView;

pub const REGISTRATION: Registration = Registration {
    name: "ai-proxy-multi",
    priority: 998,
    build: |conf, path, _owner| {
        let conf: AiProxyMultiConf = registry::parse(conf, path)?;
        Ok(Arc::new(Arc::new(AiProxyMulti::build(&conf, path)?)))
    },
    credential: None,
};

pub struct MultiInstance {
    pub llm: Arc<LlmInstance>,
    pub weight: u32,
    pub priority: i64,
    pub active: Option<Arc<ActiveProbe>>,
    pub passive: PassiveHealth,
}

impl MultiInstance {
    pub fn healthy(&self) -> bool {
        self.active.as_ref().is_none_or(|a| a.healthy()) && !self.passive.cooling_down()
    }
}

/// Where `chash` takes its key from (`balancer.hash_on` + `key`).
enum HashOn {
    /// `vars`, `header`, `cookie`: one request variable.
    Var(Variable),
    /// `consumer`: the authenticated consumer (no consumer: the client address, as APISIX).
    Consumer,
    /// `vars_combinations`: a template like `$remote_addr-$http_x_user`.
    Combination(Vec<Piece>),
}

enum Piece {
    Lit(String),
    Var(Variable),
}

pub struct AiProxyMulti {
    pub instances: Vec<MultiInstance>,
    balancer: TieredBalancer,
    hash_on: Option<HashOn>,
    remote_addr: Variable,
    /// Statuses that send the request to the next instance (index = status).
    fallback_statuses: Box<[bool; 600]>,
    max_attempts: u32,
    retry_within: Option<Duration>,
    /// `fallback_strategy` has `rate_limiting`: an instance whose ai-rate-limiting quota is
    /// spent is skipped at pick time.
    pub quota_fallback: bool,
}

impl AiProxyMulti {
    pub fn build(conf: &AiProxyMultiConf, path: &str) -> Result<AiProxyMulti, ConfigError> {
        let err = |f: &str, m: String| ConfigError::new(format!("{path}{f}"), m);
        if conf.instances.is_empty() {
            return Err(err(
                ".instances",
                "at least one instance is required".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut instances = Vec::with_capacity(conf.instances.len());
        for (i, c) in conf.instances.iter().enumerate() {
            let ipath = format!("{path}.instances[{i}]");
            if c.name.is_empty() {
                return Err(ConfigError::new(
                    format!("{ipath}.name"),
                    "must not be empty",
                ));
            }
            if !names.insert(c.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{ipath}.name"),
                    format!("duplicate instance name {:?}", c.name),
                ));
            }
            let spec = InstanceSpec {
                name: c.name.clone(),
                provider: c.provider,
                auth: &c.auth,
                options: c.options.as_ref(),
                endpoint: c.override_.as_ref().and_then(|o| o.endpoint.as_deref()),
                provider_conf: c.provider_conf.as_ref(),
                timeout_ms: conf.timeout,
                keepalive: conf.keepalive,
                keepalive_timeout_ms: conf.keepalive_timeout,
                ssl_verify: conf.ssl_verify,
                logging: conf.logging,
                forward_client_authorization: conf.forward_client_authorization,
            };
            let llm = LlmInstance::build(spec, &ipath)?;
            if c.weight > limits::MAX_WEIGHT {
                return Err(ConfigError::new(
                    format!("{ipath}.weight"),
                    format!("must be between 0 and {}", limits::MAX_WEIGHT),
                ));
            }
            let checks = c.checks.as_ref();
            if let Some(checks) = checks {
                check_health_numbers(checks, &format!("{ipath}.checks"))?;
            }
            let active = match checks.and_then(|c| c.active.as_ref()) {
                Some(a) => Some(Arc::new(
                    ActiveProbe::new(
                        &c.name,
                        a,
                        &llm.endpoint,
                        &llm.auth_headers,
                        &llm.auth_query,
                    )
                    .map_err(|m| ConfigError::new(format!("{ipath}.checks.active"), m))?,
                )),
                None => None,
            };
            let passive = PassiveHealth::new(checks.and_then(|c| c.passive.as_ref()))
                .map_err(|m| ConfigError::new(format!("{ipath}.checks.passive"), m))?;
            instances.push(MultiInstance {
                llm: Arc::new(llm),
                weight: c.weight,
                priority: c.priority.unwrap_or(0),
                active,
                passive,
            });
        }

        let b = conf.balancer.clone().unwrap_or_default();
        let algorithm = match b.algorithm.as_deref() {
            None | Some("roundrobin") => Algorithm::RoundRobin,
            Some("chash") => Algorithm::Chash,
            Some(other) => {
                return Err(err(
                    ".balancer.algorithm",
                    format!("must be roundrobin or chash, not {other:?}"),
                ))
            }
        };
        let hash_on = match algorithm {
            Algorithm::RoundRobin => None,
            Algorithm::Chash => Some(
                parse_hash_on(b.hash_on.as_deref(), b.key.as_deref())
                    .map_err(|m| err(".balancer", m))?,
            ),
        };

        let mut fallback_statuses = Box::new([false; 600]);
        let mut quota_fallback = false;
        // A string may be any strategy; a list may hold rate_limiting, http_429 and http_5xx.
        let (strategies, listed): (Vec<String>, bool) = match &conf.fallback_strategy {
            None => (Vec::new(), false),
            Some(OneOrMany::One(s)) => (vec![s.clone()], false),
            Some(OneOrMany::Many(v)) => (v.clone(), true),
        };
        for (i, s) in strategies.iter().enumerate() {
            let at = if listed {
                format!(".fallback_strategy[{i}]")
            } else {
                ".fallback_strategy".to_string()
            };
            match s.as_str() {
                "http_429" => fallback_statuses[429] = true,
                "http_5xx" => fallback_statuses[500..600].iter_mut().for_each(|b| *b = true),
                // Health-based fallback is the instance selection itself, always on; quota-based
                // fallback happens when ai-rate-limiting refuses the picked instance.
                "rate_limiting" => quota_fallback = true,
                "instance_health_and_rate_limiting" if !listed => quota_fallback = true,
                other => {
                    return Err(err(
                        &at,
                        format!("unknown strategy {other:?} (expected instance_health_and_rate_limiting, rate_limiting, http_429, http_5xx)"),
                    ))
                }
            }
        }
        for (i, s) in conf.fallback_http_statuses.iter().flatten().enumerate() {
            if !(400..=599).contains(s) {
                return Err(err(
                    &format!(".fallback_http_statuses[{i}]"),
                    format!("{s} is not a status between 400 and 599"),
                ));
            }
            fallback_statuses[*s as usize] = true;
        }
        let retry_within = match conf.retry_on_failure_within_ms {
            Some(ms) => {
                Some(limits::millis(ms, 1).map_err(|m| err(".retry_on_failure_within_ms", m))?)
            }
            None => None,
        };
        let n = u32::try_from(instances.len()).unwrap_or(u32::MAX);
        // Retries beyond the instances are meaningless: any number is accepted and capped.
        let max_attempts = match conf.max_retries {
            Some(r) => r.saturating_add(1).min(n),
            None => n,
        };
        if algorithm == Algorithm::Chash {
            // Each unit of weight is 160 points on the ketama ring (a u32-sized ring that is
            // built at load): keep one tier's ring bounded.
            let mut tiers: std::collections::BTreeMap<i64, u64> = Default::default();
            for i in &instances {
                *tiers.entry(i.priority).or_default() += u64::from(i.weight);
            }
            if let Some((p, w)) = tiers
                .iter()
                .find(|(_, w)| **w > limits::MAX_CHASH_TIER_WEIGHT)
            {
                return Err(err(
                    ".instances",
                    format!(
                        "with balancer chash, the weights of one priority tier may add up to at most {}; priority {p} has {w}",
                        limits::MAX_CHASH_TIER_WEIGHT
                    ),
                ));
            }
        }

        let members: Vec<Member> = instances
            .iter()
            .map(|i| Member {
                name: i.llm.name.clone(),
                priority: i.priority,
                weight: i.weight,
            })
            .collect();
        Ok(AiProxyMulti {
            balancer: TieredBalancer::new(&members, algorithm),
            instances,
            hash_on,
            remote_addr: Variable::parse("remote_addr").expect("known variable"),
            fallback_statuses,
            max_attempts,
            retry_within,
            quota_fallback,
        })
    }

    /// The `chash` key of a request (None for round robin).
    pub fn hash_key(&self, req: &RequestView) -> Option<Vec<u8>> {
        let hash_on = self.hash_on.as_ref()?;
        let key = match hash_on {
            HashOn::Var(v) => v.read_string(req),
            HashOn::Consumer => req.consumer.map(str::to_string),
            HashOn::Combination(pieces) => {
                let mut s = String::new();
                for p in pieces {
                    match p {
                        Piece::Lit(l) => s.push_str(l),
                        Piece::Var(v) => s.push_str(&v.read_string(req).unwrap_or_default()),
                    }
                }
                Some(s)
            }
        };
        // APISIX hashes the client address when the key is missing.
        key.filter(|k| !k.is_empty())
            .or_else(|| self.remote_addr.read_string(req))
            .map(String::into_bytes)
    }

    /// The instance for the next attempt. Healthy, untried instances first, by tier; when every
    /// untried instance is unhealthy they are used anyway (better than failing outright).
    pub fn pick(&self, key: Option<&[u8]>, tried: &[bool]) -> Option<usize> {
        let untried = |i: usize| !tried.get(i).copied().unwrap_or(false);
        let any_healthy =
            (0..self.instances.len()).any(|i| untried(i) && self.instances[i].healthy());
        self.balancer.pick(key, |i| {
            untried(i) && (!any_healthy || self.instances[i].healthy())
        })
    }

    pub fn falls_back_on(&self, status: u16) -> bool {
        self.fallback_statuses
            .get(status as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Whether another attempt may be made after `attempts` attempts, `elapsed` into the request.
    pub fn may_retry(&self, attempts: u32, elapsed: Duration, tried: &[bool]) -> bool {
        attempts < self.max_attempts
            && self.retry_within.is_none_or(|w| elapsed < w)
            && tried.iter().any(|t| !t)
    }

    pub fn record(&self, instance: usize, outcome: Outcome) {
        if let Some(i) = self.instances.get(instance) {
            if i.passive.record(outcome) {
                log::warn!(
                    "instance {} failed repeatedly and is skipped for a cool-down",
                    i.llm.name
                );
            }
        }
    }

    pub fn probes(&self) -> impl Iterator<Item = &Arc<ActiveProbe>> {
        self.instances.iter().filter_map(|i| i.active.as_ref())
    }
}

/// The numbers of `checks`, each refused with its own path (the health module builds probes from
/// them and would otherwise only name `checks.active`).
fn check_health_numbers(checks: &ChecksConf, path: &str) -> Result<(), ConfigError> {
    let at = |f: &str, m: String| ConfigError::new(format!("{path}.{f}"), m);
    let statuses = |list: Option<&Vec<u16>>, f: &str| -> Result<(), ConfigError> {
        for (i, s) in list.into_iter().flatten().enumerate() {
            if !(100..=599).contains(s) {
                return Err(at(
                    &format!("{f}[{i}]"),
                    format!("{s} is not an HTTP status"),
                ));
            }
        }
        Ok(())
    };
    if let Some(a) = &checks.active {
        if let Some(t) = a.timeout {
            limits::secs(t).map_err(|m| at("active.timeout", m))?;
        }
        if a.port == Some(0) {
            return Err(at("active.port", "must be between 1 and 65535".into()));
        }
        if let Some(h) = &a.healthy {
            if let Some(v) = h.interval {
                limits::secs(v).map_err(|m| at("active.healthy.interval", m))?;
            }
            statuses(h.http_statuses.as_ref(), "active.healthy.http_statuses")?;
        }
        if let Some(u) = &a.unhealthy {
            if let Some(v) = u.interval {
                limits::secs(v).map_err(|m| at("active.unhealthy.interval", m))?;
            }
            statuses(u.http_statuses.as_ref(), "active.unhealthy.http_statuses")?;
        }
    }
    if let Some(p) = &checks.passive {
        if let Some(v) = p.cooldown {
            limits::secs_or_zero(v).map_err(|m| at("passive.cooldown", m))?;
        }
        if let Some(h) = &p.healthy {
            statuses(h.http_statuses.as_ref(), "passive.healthy.http_statuses")?;
        }
        if let Some(u) = &p.unhealthy {
            statuses(u.http_statuses.as_ref(), "passive.unhealthy.http_statuses")?;
        }
    }
    Ok(())
}

fn parse_hash_on(hash_on: Option<&str>, key: Option<&str>) -> Result<HashOn, String> {
    let need_key = || {
        key.filter(|k| !k.is_empty())
            .ok_or("chash needs balancer.key".to_string())
    };
    match hash_on.unwrap_or("vars") {
        "vars" => Ok(HashOn::Var(Variable::parse(need_key()?)?)),
        "header" => Ok(HashOn::Var(Variable::parse(&format!(
            "http_{}",
            need_key()?.replace('-', "_")
        ))?)),
        "cookie" => Ok(HashOn::Var(Variable::parse(&format!(
            "cookie_{}",
            need_key()?
        ))?)),
        "consumer" => Ok(HashOn::Consumer),
        "vars_combinations" => {
            let tpl = need_key()?;
            let mut pieces = Vec::new();
            let mut rest = tpl;
            while let Some(i) = rest.find('$') {
                if i > 0 {
                    pieces.push(Piece::Lit(rest[..i].to_string()));
                }
                let name_end = rest[i + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map(|e| i + 1 + e)
                    .unwrap_or(rest.len());
                pieces.push(Piece::Var(Variable::parse(&rest[i + 1..name_end])?));
                rest = &rest[name_end..];
            }
            if !rest.is_empty() {
                pieces.push(Piece::Lit(rest.to_string()));
            }
            Ok(HashOn::Combination(pieces))
        }
        other => Err(format!(
            "hash_on must be vars, header, cookie, consumer or vars_combinations, not {other:?}"
        )),
    }
}

/// The plugin is the shared `AiProxyMulti` (one balancer state and one set of probes for every
/// route of a service): an LLM call holds on to it to pick each attempt's instance.
#[async_trait]
impl Plugin for Arc<AiProxyMulti> {
    fn name(&self) -> &'static str {
        REGISTRATION.name
    }

    fn priority(&self) -> i32 {
        REGISTRATION.priority
    }

    fn needs_body(&self) -> bool {
        true
    }

    fn serves_request(&self) -> bool {
        true
    }

    async fn access(
        &self,
        req: &mut PluginRequest<'_>,
        ctx: &mut PluginCtx,
    ) -> Result<(), Rejection> {
        if let Some(body) = req.body.take() {
            let key = self.hash_key(&req.view(ctx));
            let call = LlmCall::new(
                LlmPlugin::Multi(self.clone()),
                body,
                self.instances[0].llm.clone(),
                vec![false; self.instances.len()],
                key,
            );
            ctx.llm = Some(Box::new(call));
        }
        Ok(())
    }

    fn credentials(&self) -> Vec<String> {
        self.instances
            .iter()
            .flat_map(|i| i.llm.credentials())
            .collect()
    }

    fn probes(&self) -> Vec<Arc<ActiveProbe>> {
        AiProxyMulti::probes(self).cloned().collect()
    }

    fn instance_names(&self) -> Vec<&str> {
        self.instances.iter().map(|i| i.llm.name.as_str()).collect()
    }
}
