//! Runtime state of balanced instances, keyed by who owns it rather than held by a compiled
//! object.
//!
//! ai-proxy-multi's compiled object (`AiProxyMulti`) is rebuilt whenever its config changes, and
//! with configuration changing at runtime (admin API, etcd) a new snapshot is compiled on every
//! change. The state that real traffic and probes accumulate — an instance's passive health
//! (failure streak, cool-down deadline), its active probe (Pingora's success/failure history,
//! healthy flag, next due time) and the balancer's smooth-WRR counters — must not reset because
//! *another* instance, or another part of the config, changed: a failed instance would come back
//! into rotation and the rotation would restart from its first member. So compiled objects do not
//! create that state themselves; they ask this module for it at build time:
//!
//! - [`passive_health`]: key = owner + instance name + fingerprint of the instance's
//!   `checks.passive` (all that `PassiveHealth::new` takes);
//! - [`active_probe`]: key = owner + instance name + fingerprint of `checks.active`, the
//!   instance's endpoint, auth headers and auth query (all that `ActiveProbe::new` takes);
//! - [`balancer`]: key = owner + the ordered list of (instance name, weight, priority) + the
//!   algorithm (all that `TieredBalancer::new` takes; the order matters because the balancer
//!   works on instance indices).
//!
//! The owner is the resource whose `plugins` the plugin is in ([`Owner`]: route, service or
//! consumer), so two routes never share state even with identical configs. The same key hands out
//! the same `Arc` as long as some compiled snapshot still holds it; a different key (the instance
//! was renamed, or its checks, endpoint or credentials changed; the members, their weights or
//! priorities, or the algorithm changed) gets fresh state, built from the new config. State is
//! never carried over into an object built from a different config: the state's thresholds are
//! part of the object, so reusing it would silently keep the old config.
//!
//! The registry holds `Weak` references only. The compiled snapshots are what keep state alive:
//! while a new snapshot is built the old one is still published, so its state can be found and
//! shared; once no snapshot uses a state any more it is dropped with the last one — a removed
//! instance's probe is in no snapshot's `probes()` and is no longer run. Dead entries are pruned
//! on insert, amortized (when the map has grown to twice its size after the last pruning), so the
//! map stays within a constant factor of the live state.
//!
//! Lookups take a `Mutex` and happen only while a config is compiled, never per request: the
//! request path uses the `Arc`s it was given, whose state is atomics (health) or the balancer's
//! own lock, and is therefore sound to share between two compiled objects of the same key
//! (the key fixes everything the state's meaning depends on, including member indices).
//!
//! Fingerprints are SHA-256 over a canonical rendering of the inputs: the `Debug` form of the
//! config structs (every field, in declaration order, maps sorted — deterministic for a given
//! binary, which is all an in-process registry needs, and it covers fields added later without
//! anyone remembering to list them) and the raw bytes of header values (whose `Debug` hides
//! sensitive values, so a changed key would not show). Each part is length-prefixed. Process-wide
//! settings a probe also uses (`server.ca_file`, DNS) are fixed for the process's lifetime.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use http::{HeaderName, HeaderValue};

use super::health::{ActiveProbe, PassiveHealth};
use super::tiered::{Algorithm, Member, TieredBalancer};
use crate::config::schema::{ActiveCheckConf, PassiveCheckConf};
use crate::net::endpoint::Endpoint;
use crate::plugins::registry::Owner;

/// A digest of the config a piece of state was built from.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Builds a [`Fingerprint`] from parts, each length-prefixed so that no two different sequences
/// of parts render the same bytes.
pub struct Fingerprinter(ring::digest::Context);

impl Default for Fingerprinter {
    fn default() -> Self {
        Fingerprinter(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Fingerprinter {
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }

    /// A config struct, by its `Debug` rendering (never use it for values whose `Debug` hides
    /// them, such as sensitive header values).
    pub fn debug(self, v: &impl Debug) -> Self {
        self.bytes(format!("{v:?}").as_bytes())
    }

    pub fn finish(self) -> Fingerprint {
        let mut out = [0; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        Fingerprint(out)
    }
}

/// The key of one instance's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceKey {
    pub owner: Owner,
    pub instance: String,
    pub fingerprint: Fingerprint,
}

/// The key of a balancer: what `TieredBalancer::new` takes, in order, and its owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BalancerKey {
    pub owner: Owner,
    /// (name, weight, priority) of each member, in config order.
    pub members: Vec<(String, u32, i64)>,
    pub algorithm: Algorithm,
}

/// Weak references to state, by key. See the module doc.
pub struct StateMap<K, T> {
    inner: Mutex<Entries<K, T>>,
}

struct Entries<K, T> {
    map: HashMap<K, Weak<T>>,
    /// Prune dead entries when the map reaches this many.
    prune_at: usize,
}

/// The smallest `prune_at`: below it the map is never scanned.
const MIN_PRUNE_AT: usize = 64;

impl<K: Eq + Hash, T> Default for StateMap<K, T> {
    fn default() -> Self {
        StateMap {
            inner: Mutex::new(Entries {
                map: HashMap::new(),
                prune_at: MIN_PRUNE_AT,
            }),
        }
    }
}

impl<K: Eq + Hash, T> StateMap<K, T> {
    /// The live state of `key`, or a new one from `make` (an error from `make` is returned and
    /// nothing is stored). `make` runs under the map's lock, so two concurrent builds of the same
    /// key cannot end up with two states.
    pub fn get_or_try_insert<E>(
        &self,
        key: K,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = e.map.get(&key).and_then(Weak::upgrade) {
            return Ok(live);
        }
        let state = Arc::new(make()?);
        e.map.insert(key, Arc::downgrade(&state));
        if e.map.len() >= e.prune_at {
            e.map.retain(|_, w| w.strong_count() > 0);
            e.prune_at = (e.map.len() * 2).max(MIN_PRUNE_AT);
        }
        Ok(state)
    }

    /// Drop every dead entry now (insertions do it amortized).
    pub fn prune(&self) {
        let mut e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        e.map.retain(|_, w| w.strong_count() > 0);
    }

    /// Entries held, dead ones not yet pruned included.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` has an entry, live or dead.
    #[cfg(test)]
    pub(crate) fn holds(&self, key: &K) -> bool {
        let e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        e.map.contains_key(key)
    }

    /// Whether `key` has live state.
    pub fn contains_live(&self, key: &K) -> bool {
        let e = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        e.map.get(key).is_some_and(|w| w.strong_count() > 0)
    }
}

static PASSIVE: LazyLock<StateMap<InstanceKey, PassiveHealth>> = LazyLock::new(Default::default);
static ACTIVE: LazyLock<StateMap<InstanceKey, ActiveProbe>> = LazyLock::new(Default::default);
static BALANCERS: LazyLock<StateMap<BalancerKey, TieredBalancer>> = LazyLock::new(Default::default);

/// The key of an instance's passive health.
pub fn passive_key(owner: &Owner, instance: &str, conf: Option<&PassiveCheckConf>) -> InstanceKey {
    InstanceKey {
        owner: owner.clone(),
        instance: instance.to_string(),
        fingerprint: Fingerprinter::default().debug(&conf).finish(),
    }
}

/// The key of an instance's active probe.
pub fn active_key(
    owner: &Owner,
    instance: &str,
    conf: &ActiveCheckConf,
    endpoint: &Endpoint,
    auth_headers: &[(HeaderName, HeaderValue)],
    auth_query: &str,
) -> InstanceKey {
    let mut f = Fingerprinter::default()
        .debug(conf)
        .debug(endpoint)
        .bytes(auth_query.as_bytes())
        .bytes(&(auth_headers.len() as u64).to_le_bytes());
    for (k, v) in auth_headers {
        f = f.bytes(k.as_str().as_bytes()).bytes(v.as_bytes());
    }
    InstanceKey {
        owner: owner.clone(),
        instance: instance.to_string(),
        fingerprint: f.finish(),
    }
}

/// The key of a balancer over `members`.
pub fn balancer_key(owner: &Owner, members: &[Member], algorithm: Algorithm) -> BalancerKey {
    BalancerKey {
        owner: owner.clone(),
        members: members
            .iter()
            .map(|m| (m.name.clone(), m.weight, m.priority))
            .collect(),
        algorithm,
    }
}

/// The passive health of `owner`'s instance `instance`: shared with any live compiled object of
/// the same key, else new (checking `conf`).
pub fn passive_health(
    owner: &Owner,
    instance: &str,
    conf: Option<&PassiveCheckConf>,
) -> Result<Arc<PassiveHealth>, String> {
    PASSIVE.get_or_try_insert(passive_key(owner, instance, conf), || {
        PassiveHealth::new(conf)
    })
}

/// The active probe of `owner`'s instance `instance`: shared with any live compiled object of the
/// same key (so it is one probe, run once per round, whose history continues), else new.
pub fn active_probe(
    owner: &Owner,
    instance: &str,
    conf: &ActiveCheckConf,
    endpoint: &Endpoint,
    auth_headers: &[(HeaderName, HeaderValue)],
    auth_query: &str,
) -> Result<Arc<ActiveProbe>, String> {
    let key = active_key(owner, instance, conf, endpoint, auth_headers, auth_query);
    ACTIVE.get_or_try_insert(key, || {
        ActiveProbe::new(instance, conf, endpoint, auth_headers, auth_query)
    })
}

/// The balancer of `owner`'s `members`: shared with any live compiled object of the same key (the
/// rotation continues where it was), else new.
pub fn balancer(owner: &Owner, members: &[Member], algorithm: Algorithm) -> Arc<TieredBalancer> {
    let key = balancer_key(owner, members, algorithm);
    let Ok(b) = BALANCERS.get_or_try_insert::<std::convert::Infallible>(key, || {
        Ok(TieredBalancer::new(members, algorithm))
    });
    b
}

/// The process-wide map of passive health, for tests that check what it holds.
#[cfg(test)]
pub(crate) fn passive_registry() -> &'static StateMap<InstanceKey, PassiveHealth> {
    &PASSIVE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_shares_until_the_last_holder_drops() {
        let m: StateMap<u32, String> = StateMap::default();
        let a = m.get_or_try_insert(1, || Ok::<_, ()>("a".into())).unwrap();
        let b = m
            .get_or_try_insert(1, || -> Result<String, ()> { panic!("must be shared") })
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = m.get_or_try_insert(2, || Ok::<_, ()>("b".into())).unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(
            weak.upgrade().is_none(),
            "the map must not keep state alive"
        );
        assert!(!m.contains_live(&1));
        let fresh = m.get_or_try_insert(1, || Ok::<_, ()>("a2".into())).unwrap();
        assert_eq!(*fresh, "a2");
        drop(fresh);
        m.prune();
        assert_eq!(m.len(), 1, "only key 2 is still alive");
        drop(other);
        m.prune();
        assert!(m.is_empty());
    }

    #[test]
    fn a_failed_make_stores_nothing() {
        let m: StateMap<u32, String> = StateMap::default();
        assert_eq!(m.get_or_try_insert(1, || Err::<String, _>("no")), Err("no"));
        assert!(m.is_empty());
    }

    #[test]
    fn dead_entries_are_pruned_on_insert() {
        let m: StateMap<u32, u32> = StateMap::default();
        let kept: Vec<Arc<u32>> = (0..10)
            .map(|k| m.get_or_try_insert(k, || Ok::<_, ()>(k)).unwrap())
            .collect();
        // Many keys that die right away: the map never grows past a constant factor.
        for k in 10..10_000 {
            drop(m.get_or_try_insert(k, || Ok::<_, ()>(k)).unwrap());
            assert!(m.len() <= MIN_PRUNE_AT.max(2 * kept.len()), "{}", m.len());
        }
        for (k, v) in kept.iter().enumerate() {
            assert!(m.contains_live(&(k as u32)));
            assert_eq!(**v, k as u32);
        }
    }

    #[test]
    fn fingerprints_see_sensitive_header_values() {
        let ep = Endpoint::parse("http://127.0.0.1:1/v1").unwrap();
        let conf = ActiveCheckConf::default();
        let owner = Owner::Route("fp".into());
        let header = |v: &str| {
            let mut v = HeaderValue::from_str(v).unwrap();
            v.set_sensitive(true);
            vec![(HeaderName::from_static("authorization"), v)]
        };
        let k1 = active_key(&owner, "a", &conf, &ep, &header("Bearer one"), "");
        let k1b = active_key(&owner, "a", &conf, &ep, &header("Bearer one"), "");
        let k2 = active_key(&owner, "a", &conf, &ep, &header("Bearer two"), "");
        assert_eq!(k1, k1b);
        assert_ne!(k1, k2, "a changed credential is a changed probe");
        let ep2 = Endpoint::parse("http://127.0.0.1:2/v1").unwrap();
        assert_ne!(
            k1,
            active_key(&owner, "a", &conf, &ep2, &header("Bearer one"), "")
        );
        assert_ne!(
            k1,
            active_key(&owner, "a", &conf, &ep, &header("Bearer one"), "k=v")
        );
        let timeout = ActiveCheckConf {
            timeout: Some(2.0),
            ..Default::default()
        };
        assert_ne!(
            k1,
            active_key(&owner, "a", &timeout, &ep, &header("Bearer one"), "")
        );
    }
}
