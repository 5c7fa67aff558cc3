//! `allow_degradation`: a Redis quota store that counts in the process while Redis cannot answer.
//!
//! While Redis is up, every call goes to it. When a call fails (down, slow past `redis_timeout`,
//! refusing our credentials), that request is counted by the local store instead, and so are the
//! following ones without asking Redis at all (they must not each wait for a timeout), while a
//! background `PING` asks every second whether it is back; its first answer sends requests to
//! Redis again, with no restart. Meanwhile each gateway node enforces the whole quota on its own
//! (so N nodes admit up to N times the quota): that is what degrading means, and why it is off
//! by default. The store logs once when an outage starts and once when it ends
//! (`RedisStore::note`), never per request.
//!
//! A ticket is settled by the store that issued it: a local reservation is released locally even
//! if Redis came back meanwhile, and a Redis one in Redis. Local tickets are marked in their
//! `window` (the top bit, which Redis window indexes, below 2^53, never use).

use std::sync::Arc;

use async_trait::async_trait;

use super::redis::RedisStore;
use super::{Admission, Limit, QuotaStore, StoreError, Ticket};

/// Marks a ticket issued by the local store.
const LOCAL: u64 = 1 << 63;

pub struct DegradingStore {
    redis: RedisStore,
    local: Arc<dyn QuotaStore>,
}

impl DegradingStore {
    /// `local` is the in-process store the plugin uses for `policy: local`.
    pub fn new(redis: RedisStore, local: Arc<dyn QuotaStore>) -> DegradingStore {
        DegradingStore { redis, local }
    }

    async fn reserve_locally(
        &self,
        key: &str,
        limit: Limit,
        amount: u64,
    ) -> Result<Admission, StoreError> {
        self.redis.probe_until_up();
        Ok(match self.local.reserve(key, limit, amount).await? {
            Admission::Admitted { quota, mut ticket } => {
                debug_assert_eq!(ticket.window & LOCAL, 0, "local window uses the top bit");
                ticket.window |= LOCAL;
                Admission::Admitted { quota, ticket }
            }
            rejected => rejected,
        })
    }
}

/// The store for a `policy: redis` / `redis-cluster` config: Redis alone, or with
/// `allow_degradation` Redis backed by `local()` (built only then).
pub fn redis_policy_store(
    redis: RedisStore,
    allow_degradation: bool,
    local: impl FnOnce() -> Arc<dyn QuotaStore>,
) -> Arc<dyn QuotaStore> {
    if allow_degradation {
        Arc::new(DegradingStore::new(redis, local()))
    } else {
        Arc::new(redis)
    }
}

#[async_trait]
impl QuotaStore for DegradingStore {
    async fn reserve(&self, key: &str, limit: Limit, amount: u64) -> Result<Admission, StoreError> {
        if self.redis.is_down() {
            return self.reserve_locally(key, limit, amount).await;
        }
        match self.redis.reserve(key, limit, amount).await {
            Ok(admission) => Ok(admission),
            Err(_) => self.reserve_locally(key, limit, amount).await,
        }
    }

    fn settle(&self, mut ticket: Ticket, actual: u64) {
        if ticket.window & LOCAL != 0 {
            ticket.window &= !LOCAL;
            self.local.settle(ticket, actual);
        } else {
            self.redis.settle(ticket, actual);
        }
    }

    async fn spent(&self, key: &str, limit: Limit) -> Result<bool, StoreError> {
        if !self.redis.is_down() {
            match self.redis.spent(key, limit).await {
                Ok(spent) => return Ok(spent),
                Err(_) => self.redis.probe_until_up(),
            }
        }
        self.local.spent(key, limit).await
    }
}
