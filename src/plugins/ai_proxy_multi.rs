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
use super::registry::{self, Owner, Registration};
use super::{AsyncPhase, Plugin};
use crate::balancer::health::{ActiveProbe, Outcome, PassiveHealth};
use crate::balancer::state;
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
    build: |conf, path, owner| {
        let conf: AiProxyMultiConf = registry::parse(conf, path)?;
        Ok(Arc::new(Arc::new(AiProxyMulti::build(&conf, path, owner)?)))
    },
    credential: None,
};

/// One instance of a compiled `AiProxyMulti`. Its health (`active`, `passive`) is not its own:
/// it comes from `balancer::state`, shared with every compiled object of the same owner, instance
/// name and checks config, so it survives rebuilds that do not change this instance.
pub struct MultiInstance {
    pub llm: Arc<LlmInstance>,
    pub weight: u32,
    pub priority: i64,
    pub active: Option<Arc<ActiveProbe>>,
    pub passive: Arc<PassiveHealth>,
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
    /// From `balancer::state`: shared with every compiled object of the same owner and members,
    /// so the rotation continues across rebuilds.
    balancer: Arc<TieredBalancer>,
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
    /// Compile `conf` (at config path `path`) for `owner`, the resource whose `plugins` it is in:
    /// the runtime state (health, balancer) is `owner`'s, kept across rebuilds by
    /// `balancer::state`.
    pub fn build(
        conf: &AiProxyMultiConf,
        path: &str,
        owner: &Owner,
    ) -> Result<AiProxyMulti, ConfigError> {
        let err = |f: &str, m: String| ConfigError::new(format!("{path}{f}"), m);
        crate::providers::instance::check_keepalive_pool(conf.keepalive_pool, path)?;
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
                Some(a) => Some(
                    state::active_probe(
                        owner,
                        &c.name,
                        a,
                        &llm.endpoint,
                        &llm.auth_headers,
                        &llm.auth_query,
                    )
                    .map_err(|m| ConfigError::new(format!("{ipath}.checks.active"), m))?,
                ),
                None => None,
            };
            let passive =
                state::passive_health(owner, &c.name, checks.and_then(|c| c.passive.as_ref()))
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
            balancer: state::balancer(owner, &members, algorithm),
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
    fn runs(&self, phase: AsyncPhase) -> bool {
        matches!(phase, AsyncPhase::Access)
    }

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

    fn instance_health(&self) -> Vec<(&str, bool)> {
        self.instances
            .iter()
            .map(|i| (i.llm.name.as_str(), i.healthy()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    //! Runtime state across rebuilds (`balancer::state`). The registry is process-wide and tests
    //! run in parallel: each test uses its own owner ids, so no two tests share state.

    use super::*;
    use crate::balancer::state::{self as registry_state, passive_key};

    const PATH: &str = "routes[0].plugins.ai-proxy-multi";

    /// Two instances; `a` has active and passive checks (`a_checks`), `b` points at `b_port`.
    fn conf(a_checks: &str, b_port: u16, b_weight: u32) -> String {
        format!(
            r#"
instances:
  - name: a
    provider: openai
    weight: 3
    auth: {{ header: {{ Authorization: "Bearer a" }} }}
    override: {{ endpoint: "http://127.0.0.1:1/v1/chat/completions" }}
    checks: {a_checks}
  - name: b
    provider: openai
    weight: {b_weight}
    auth: {{ header: {{ Authorization: "Bearer b" }} }}
    override: {{ endpoint: "http://127.0.0.1:{b_port}/v1/chat/completions" }}
    checks: {{ active: {{ http_path: /health }} }}
"#
        )
    }

    const CHECKS: &str = "{ active: { http_path: /health }, passive: { cooldown: 60 } }";

    fn build(yaml: &str, owner: &Owner) -> AiProxyMulti {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let c: AiProxyMultiConf = registry::parse(&v, PATH).unwrap();
        AiProxyMulti::build(&c, PATH, owner).unwrap()
    }

    fn route(id: &str) -> Owner {
        Owner::Route(id.into())
    }

    /// Three 500s in a row: `a` (instance 0) cools down.
    fn fail_a(m: &AiProxyMulti) {
        for _ in 0..3 {
            m.record(0, Outcome::Status(500));
        }
        assert!(m.instances[0].passive.cooling_down());
    }

    fn same<T>(a: &Arc<T>, b: &Arc<T>) -> bool {
        Arc::ptr_eq(a, b)
    }

    fn probe(m: &AiProxyMulti, i: usize) -> &Arc<ActiveProbe> {
        m.instances[i]
            .active
            .as_ref()
            .expect("instance has active checks")
    }

    #[test]
    fn a_rebuild_of_the_same_config_shares_health() {
        let owner = route("state-same-config");
        let first = build(&conf(CHECKS, 2, 1), &owner);
        fail_a(&first);
        let second = build(&conf(CHECKS, 2, 1), &owner);
        assert!(!second.instances[0].healthy(), "the rebuild still skips a");
        assert!(second.instances[1].healthy());
        assert!(same(
            &first.instances[0].passive,
            &second.instances[0].passive
        ));
        assert!(same(probe(&first, 0), probe(&second, 0)));
        assert!(same(probe(&first, 1), probe(&second, 1)));
        assert!(same(&first.balancer, &second.balancer));
        // Requests picked on the rebuild avoid a, as they did on the first build.
        assert_eq!(second.pick(None, &[false, false]), Some(1));
    }

    #[test]
    fn changing_another_instance_keeps_this_ones_state() {
        let owner = route("state-other-changed");
        let first = build(&conf(CHECKS, 2, 1), &owner);
        fail_a(&first);
        // b moves to another port and gets another weight: b's probe and the balancer are new.
        let second = build(&conf(CHECKS, 3, 2), &owner);
        assert!(second.instances[0].passive.cooling_down());
        assert!(same(
            &first.instances[0].passive,
            &second.instances[0].passive
        ));
        assert!(same(probe(&first, 0), probe(&second, 0)));
        assert!(!same(probe(&first, 1), probe(&second, 1)));
        assert!(!same(&first.balancer, &second.balancer));
    }

    #[test]
    fn changing_this_instances_checks_starts_it_fresh() {
        let owner = route("state-checks-changed");
        let first = build(&conf(CHECKS, 2, 1), &owner);
        fail_a(&first);
        // Another passive config: fresh passive health; the active probe's config is unchanged.
        let passive = "{ active: { http_path: /health }, passive: { cooldown: 30 } }";
        let second = build(&conf(passive, 2, 1), &owner);
        assert!(!second.instances[0].passive.cooling_down());
        assert!(second.instances[0].healthy());
        assert!(!same(
            &first.instances[0].passive,
            &second.instances[0].passive
        ));
        assert!(same(probe(&first, 0), probe(&second, 0)));
        // Another active config: a fresh probe; the passive state is kept.
        let active = "{ active: { http_path: /healthz }, passive: { cooldown: 60 } }";
        let third = build(&conf(active, 2, 1), &owner);
        assert!(!same(probe(&first, 0), probe(&third, 0)));
        assert!(same(
            &first.instances[0].passive,
            &third.instances[0].passive
        ));
        assert!(
            same(&first.balancer, &third.balancer),
            "members are the same"
        );
    }

    #[test]
    fn another_owner_never_shares() {
        let text = conf(CHECKS, 2, 1);
        let first = build(&text, &route("state-owner-1"));
        fail_a(&first);
        for owner in [
            route("state-owner-2"),
            Owner::Service("state-owner-1".into()),
            Owner::Consumer("state-owner-1".into()),
        ] {
            let other = build(&text, &owner);
            assert!(other.instances[0].healthy(), "{owner:?}");
            assert!(!same(
                &first.instances[0].passive,
                &other.instances[0].passive
            ));
            assert!(!same(probe(&first, 0), probe(&other, 0)));
            assert!(!same(&first.balancer, &other.balancer));
        }
    }

    #[test]
    fn state_dies_with_the_last_build_that_uses_it() {
        let owner = route("state-dropped");
        let text = conf(CHECKS, 2, 1);
        let first = build(&text, &owner);
        fail_a(&first);
        let second = build(&text, &owner);
        let passive = Arc::downgrade(&first.instances[0].passive);
        let probe_a = Arc::downgrade(probe(&first, 0));
        let balancer = Arc::downgrade(&first.balancer);
        drop(first);
        assert!(
            passive.upgrade().is_some(),
            "the second build still uses it"
        );
        drop(second);
        assert!(passive.upgrade().is_none());
        assert!(probe_a.upgrade().is_none(), "a probe no build uses is gone");
        assert!(balancer.upgrade().is_none());

        let passives = registry_state::passive_registry();
        // The passive config `CHECKS` gives instance a.
        let conf = crate::config::schema::PassiveCheckConf {
            cooldown: Some(60.0),
            ..Default::default()
        };
        let key = passive_key(&owner, "a", Some(&conf));
        assert!(!passives.contains_live(&key));
        passives.prune();
        assert!(!passives.holds(&key), "the dead entry is pruned");

        // The next build starts fresh.
        let third = build(&text, &owner);
        assert!(third.instances[0].healthy());
        assert!(
            passives.contains_live(&key),
            "the key is the one the build used"
        );
    }

    #[test]
    fn the_rotation_continues_across_a_rebuild_with_the_same_members() {
        let owner = route("state-rotation");
        // Weights 3:1 rotate a, a, b, a.
        let first = build(&conf(CHECKS, 2, 1), &owner);
        let tried = [false, false];
        assert_eq!(first.pick(None, &tried), Some(0));
        assert_eq!(first.pick(None, &tried), Some(0));
        // b's endpoint changes, its name, weight and priority do not: the rotation goes on.
        let second = build(&conf(CHECKS, 4, 1), &owner);
        assert_eq!(second.pick(None, &tried), Some(1));
        assert_eq!(second.pick(None, &tried), Some(0));
        // Another weight: a new rotation, from its start.
        let third = build(&conf(CHECKS, 4, 2), &owner);
        assert!(!same(&second.balancer, &third.balancer));
        assert_eq!(third.pick(None, &tried), Some(0));
    }

    #[test]
    fn the_registration_passes_the_owner_and_snapshots_share_probes() {
        let v: serde_yaml::Value = serde_yaml::from_str(&conf(CHECKS, 2, 1)).unwrap();
        let build = |owner: &Owner| registry::build("ai-proxy-multi", &v, PATH, owner).unwrap();
        let one = build(&route("state-registration"));
        let two = build(&route("state-registration"));
        let other = build(&route("state-registration-2"));
        let (p1, p2, p3) = (one.probes(), two.probes(), other.probes());
        assert_eq!(p1.len(), 2);
        assert!(p1.iter().zip(&p2).all(|(a, b)| same(a, b)));
        assert!(p1.iter().zip(&p3).all(|(a, b)| !same(a, b)));

        // Two snapshots of one file: the same probes, so the health-check service (which runs
        // the current snapshot's probes) runs each once, with its history intact.
        let text = format!(
            "routes:\n  - id: state-snapshot\n    uri: /x\n    plugins:\n      ai-proxy-multi:\n{}",
            conf(CHECKS, 2, 1)
                .lines()
                .map(|l| format!("        {l}\n"))
                .collect::<String>()
        );
        let file = crate::config::parse_str(&text, &|_| None).unwrap().file;
        let s1 = crate::runtime::Snapshot::build(&file).unwrap();
        let s2 = crate::runtime::Snapshot::build(&file).unwrap();
        assert_eq!(s1.probes.len(), 2);
        assert!(s1.probes.iter().zip(&s2.probes).all(|(a, b)| same(a, b)));
    }
}
