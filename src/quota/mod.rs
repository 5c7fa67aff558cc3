//! Token quotas: counters of tokens in fixed time windows, and where they are kept.
//!
//! A request reserves its estimated cost when it is admitted (`reserve`), and the reservation
//! is replaced by the real cost when the answer ends (`settle`), so requests in flight count
//! against the quota and concurrent clients cannot overshoot it by more than one request.
//! `QuotaStore` is the contract every place a counter can live implements: in the process
//! (`local`, on pingora-limits) or shared by several gateway nodes (`redis`). `store_for` picks
//! the store for a plugin's `policy`. `expr` is ai-rate-limiting's `cost_expr`.

pub mod expr;
pub mod local;

pub mod degrade;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// What a counter allows: `count` tokens per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub count: u64,
    pub window: Duration,
}

/// A counter's state after an admission (what `X-AI-RateLimit-*` report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    /// Left in the window after this request's reservation (0 when spent).
    pub remaining: u64,
    /// Until the window resets.
    pub reset: Duration,
}

/// A reservation to settle when the request ends.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub key: Arc<str>,
    pub limit: Limit,
    /// What was added at admission.
    pub reserved: u64,
    /// Which window the reservation went into (store-defined), so that a request that ends in a
    /// later window is charged there and the lapsed reservation is not subtracted from it.
    pub window: u64,
}

#[derive(Debug)]
pub enum Admission {
    /// Admitted: the reservation is in the window; settle the ticket when the request ends.
    Admitted { quota: Quota, ticket: Ticket },
    /// The window is spent (used and reserved reach the limit).
    Rejected { quota: Quota },
}

/// A store could not answer (unreachable, timed out): the caller degrades or refuses.
#[derive(Debug, Clone)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[async_trait]
pub trait QuotaStore: Send + Sync + 'static {
    /// Admit when the window's count (used and reserved) is below the limit, adding `amount`
    /// (the request's estimated cost) to it. Atomic per key: of concurrent admissions, only
    /// those that found room are admitted.
    async fn reserve(&self, key: &str, limit: Limit, amount: u64) -> Result<Admission, StoreError>;

    /// Replace a reservation by the real cost (`actual`; 0 releases it). Never waits: a remote
    /// store sends it in the background.
    fn settle(&self, ticket: Ticket, actual: u64);

    /// Whether the window is spent, without reserving (ai-proxy-multi skips spent instances).
    async fn spent(&self, key: &str, limit: Limit) -> Result<bool, StoreError>;
}

/// Largest amount a store counts at once (a reservation or a cost): exact in a double (Lua and
/// Redis scripts) and far from overflowing a counter. No token count comes near it.
pub const MAX_AMOUNT: u64 = 1 << 53;

/// What kind of keys a plugin counts with a store: a local store keeps the two differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// A set the config bounds (instance quotas per route or consumer): counted exactly.
    Fixed,
    /// Keys from request variables (rules keyed by a header, the client address...): unbounded
    /// and chosen by clients, so kept in fixed memory that may over-count (never under-count).
    FromRequests,
}

/// Where a plugin's counters live: ai-rate-limiting's `policy`, checked and typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// In this process (the default).
    Local,
    /// `policy: redis` or `policy: redis-cluster`: shared by every node on the same Redis.
    Redis(redis::RedisSettings),
}

/// The in-process store for `keys` (process-wide: counters are keyed by stable strings).
pub fn local_store(keys: Keys) -> Arc<dyn QuotaStore> {
    match keys {
        Keys::Fixed => local::fixed(),
        Keys::FromRequests => local::from_requests(),
    }
}

/// The store a plugin with this `policy` counts `keys` in. `Err` is a config error's message
/// (the caller names the field).
pub fn store_for(policy: &Policy, keys: Keys) -> Result<Arc<dyn QuotaStore>, String> {
    match policy {
        Policy::Local => Ok(local_store(keys)),
        Policy::Redis(settings) => {
            let redis = redis::RedisStore::shared(settings.clone())?;
            Ok(degrade::redis_policy_store(
                redis,
                settings.allow_degradation,
                || local_store(keys),
            ))
        }
    }
}
