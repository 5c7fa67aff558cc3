//! `gateway.max_inflight_body_bytes`: one budget, for the whole process, for the request bodies
//! the gateway holds in memory.
//!
//! AI routes and `post_arg` routing read the whole body before anything is proxied, and keep it
//! until the request ends (it is replayed on every attempt). `max_body_size` bounds one body; this
//! bounds all of them together, so a burst of large uploads is answered `503 server_busy` instead
//! of growing the process until the kernel kills it. A body declared by `Content-Length` is
//! reserved whole before it is read; a chunked one is reserved chunk by chunk as it arrives. The
//! reservation is a guard kept in the request context: it is given back when the request ends,
//! however it ends (answered, refused, failed, client gone), or as soon as reading the body fails.
//!
//! The count is one atomic integer: reserving is a compare-and-swap loop, releasing one
//! subtraction; no lock is taken, so contention costs a retried CAS, never a wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::errors::GatewayError;

/// The process-wide budget.
#[derive(Debug)]
pub struct BodyBudget {
    limit: u64,
    used: AtomicU64,
}

impl BodyBudget {
    pub fn new(limit: u64) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes reserved now, by every request together.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `n` bytes if they fit.
    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Bytes reserved for one request's body; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

/// What `read_body` holds while it reads: the budget (if one is configured) and what it has
/// reserved so far. Dropped on a failed read, which gives the bytes back at once.
pub struct BodyClaim {
    held: Option<Reservation>,
}

impl BodyClaim {
    pub fn new(budget: Option<&Arc<BodyBudget>>) -> BodyClaim {
        BodyClaim {
            held: budget.map(|b| Reservation {
                budget: b.clone(),
                bytes: 0,
            }),
        }
    }

    /// Makes sure `total` bytes of body are reserved (a no-op for what is already covered, so a
    /// body read against its `Content-Length` costs one reservation, a chunked one one per read).
    pub fn cover(&mut self, total: u64) -> Result<(), GatewayError> {
        let Some(r) = &mut self.held else {
            return Ok(());
        };
        if total <= r.bytes {
            return Ok(());
        }
        if !r.budget.take(total - r.bytes) {
            log::info!(
                "request body refused: {total} bytes would pass gateway.max_inflight_body_bytes \
                 ({} of {} in use)",
                r.budget.used(),
                r.budget.limit
            );
            return Err(server_busy());
        }
        r.bytes = total;
        Ok(())
    }

    /// The reservation, to keep for as long as the body is kept.
    pub fn into_reservation(self) -> Option<Reservation> {
        self.held
    }
}

/// The answer when the budget is spent: the request was fine, the gateway is busy.
pub fn server_busy() -> GatewayError {
    GatewayError::new(
        503,
        "api_error",
        "server_busy",
        "the gateway is holding too many request bodies right now; retry shortly",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_up_to_the_limit_and_gives_back_on_drop() {
        let b = BodyBudget::new(100);
        let mut a = BodyClaim::new(Some(&b));
        a.cover(60).unwrap();
        a.cover(40).unwrap();
        assert_eq!(b.used(), 60, "covering less than held takes nothing");
        let mut c = BodyClaim::new(Some(&b));
        assert_eq!(c.cover(41).unwrap_err().status, 503);
        assert_eq!(b.used(), 60, "a refused claim takes nothing");
        c.cover(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(c);
        assert_eq!(b.used(), 60, "a failed read gives its bytes back");
        let kept = a.into_reservation().unwrap();
        assert_eq!((kept.bytes(), b.used()), (60, 60));
        drop(kept);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn grows_chunk_by_chunk() {
        let b = BodyBudget::new(10);
        let mut a = BodyClaim::new(Some(&b));
        for total in 1..=10 {
            a.cover(total).unwrap();
            assert_eq!(b.used(), total);
        }
        let e = a.cover(11).unwrap_err();
        assert_eq!((e.kind, e.code), ("api_error", "server_busy"));
        assert_eq!(b.used(), 10);
        drop(a);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn without_a_budget_everything_fits() {
        let mut a = BodyClaim::new(None);
        a.cover(u64::MAX).unwrap();
        assert!(a.into_reservation().is_none());
    }

    #[test]
    fn never_oversubscribed_under_contention() {
        // Threads grow claims in random steps against one budget. The count never passes the
        // limit (checked by every thread after every step) and ends at zero.
        let b = BodyBudget::new(10_000);
        let start = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8u64)
            .map(|seed| {
                let (b, start) = (b.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut rng = fastrand::Rng::with_seed(seed);
                    let (mut granted, mut refused) = (0u32, 0u32);
                    for _ in 0..2_000 {
                        let mut claim = BodyClaim::new(Some(&b));
                        let mut total = 0;
                        for _ in 0..rng.usize(1..5) {
                            total += rng.u64(1..2_000);
                            match claim.cover(total) {
                                Ok(()) => granted += 1,
                                Err(_) => {
                                    refused += 1;
                                    break;
                                }
                            }
                            assert!(b.used() <= b.limit());
                        }
                        if rng.bool() {
                            drop(claim.into_reservation());
                        }
                    }
                    (granted, refused)
                })
            })
            .collect();
        let (mut granted, mut refused) = (0, 0);
        for t in threads {
            let (g, r) = t.join().unwrap();
            granted += g;
            refused += r;
        }
        assert_eq!(b.used(), 0, "granted {granted}, refused {refused}");
        assert!(granted > 1_000, "{granted}");
    }
}
