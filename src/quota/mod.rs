//! Token quotas: counters of tokens in fixed time windows, and where they are kept.
//!
//! A request reserves its estimated cost when it is admitted (`reserve`), and the reservation
//! is replaced by the real cost when the answer ends (`settle`), so requests in flight count
//! against the quota and concurrent clients cannot overshoot it by more than one request.
//! `QuotaStore` is the contract every place a counter can live implements: in the process
//! (`local`, on pingora-limits) or shared by several gateway nodes (`redis`).

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
