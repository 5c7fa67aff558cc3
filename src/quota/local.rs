//! Quotas counted in this process (`policy: local`), on pingora-limits' `Rate`.
//!
//! A `Rate` keeps two count-min sketches (the current window and the previous one) and swaps
//! them lazily: the first call after a window has run out clears the older one and makes it
//! current, so a window starts at the first use after the previous one ended (like APISIX's
//! limit-count). Counting is a few relaxed atomic adds: no lock anywhere on the request path.
//!
//! **Exactness.** A count-min sketch can only over-count, when every one of its rows (hashes)
//! puts another active key in the same slot as this one; it never under-counts. Its error bound
//! is `P(key over-counted) ≈ ((k-1)/w)^d` for `k` keys active in a window, `w` slots and `d`
//! rows. The two kinds of keys are kept apart so that quotas are exact in practice:
//!
//! * `Keys::Fixed` (one per instance quota, or the shared top-level one, per route or consumer:
//!   a set the config bounds) get a `Rate` each, of one row and one slot: a single pair of
//!   counters, exact by construction, about 200 bytes a key. The key → counter map is
//!   copy-on-write behind an `ArcSwap`: reads are lock-free, and the map is copied only the first
//!   time a key is seen.
//! * `Keys::FromRequests` (rule keys from request variables: a header value, the client address;
//!   unbounded, and chosen by clients) share one sketch per window length, `SKETCH_ROWS` ×
//!   `SKETCH_SLOTS` (4 × 65 536: 4 MiB for both windows, made on first use), so memory stays
//!   fixed whatever clients send. With 1 000 keys active in a window a key is over-counted with
//!   probability (1 000 / 65 536)^4 ≈ 5·10⁻⁸; with 10 000, ≈ 5·10⁻⁴. The hash seeds are random
//!   per process, so clients cannot aim collisions at someone else's key. One more caveat of a
//!   sketch: it adds to its rows one after the other, so two reservations of the same key racing
//!   in the same few nanoseconds can both read the same minimum, and both be admitted at the
//!   limit's edge. An exact counter is a single atomic add: of racing reservations only those
//!   that found room are admitted.
//!
//! A reservation never exceeds the limit it is for (an estimate larger than the whole quota
//! already stops everyone else), and amounts are capped at `MAX_AMOUNT`, so counters stay far
//! from overflowing.
//!
//! Both stores are process-wide (`fixed()`, `from_requests()`): keys are stable strings built from
//! route ids, consumer names and instance names, so counters do not depend on which plugin
//! object asked, and a config rebuilt with the same ids keeps counting where it was.
//!
//! **Windows of tickets.** `Rate` does not say when its window started, but `rate_with` reports
//! how far into the current window it is; with the store's own clock that gives the window's
//! start to a millisecond or two, and a different window starts at least one window length
//! (≥ 1 s) later, so "same window" is decided with half a window of tolerance. A reservation
//! records its window's start in the ticket; `settle` replaces it by the real cost only if that
//! window is still current, and otherwise charges the real cost to the current window without
//! subtracting the lapsed reservation. When the window turns over during a reservation (seen as a
//! different start just before and just after counting), where the reservation landed is unknown:
//! the ticket is marked and settled as lapsed (over-counting rather than under-counting). One
//! case remains, inherent in `Rate`'s lock-free swap: an add that runs in the nanoseconds between
//! another thread claiming the turn-over and flipping the current slot lands in the closing
//! window, undetectably; its later release then comes out of the new window, which can admit one
//! request's estimate more than its limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_limits::rate::Rate;

use super::{Admission, Limit, Quota, QuotaStore, StoreError, Ticket, MAX_AMOUNT};

/// Rows (hashes) of the shared sketch for keys from requests.
pub const SKETCH_ROWS: usize = 4;
/// Slots per row of the shared sketch for keys from requests.
pub const SKETCH_SLOTS: usize = 1 << 16;
/// `Ticket::window` of a reservation made while its window turned over: settled as lapsed.
/// (Below 2^63: a degrading Redis store marks local tickets with the top bit.)
const UNKNOWN_WINDOW: u64 = (1 << 63) - 1;

/// One window length's counters: a `Rate` and what its window is.
struct Window {
    rate: Rate,
    ms: u64,
}

impl Window {
    fn new(ms: u64, rows: usize, slots: usize) -> Window {
        Window {
            rate: Rate::new_with_estimator_config(Duration::from_millis(ms), rows, slots),
            ms,
        }
    }

    /// Milliseconds into the current window. Exact while no turn-over is due: call `turn` first.
    fn elapsed(&self) -> u64 {
        // The fraction is `(ms since the last turn-over % window) / window`: the position in the
        // window as long as the turn-over has happened. The key is irrelevant to it; `()` hashes
        // to nothing.
        let f = self.rate.rate_with(&(), |c| c.current_interval_fraction);
        (f * self.ms as f64).round() as u64
    }

    /// When the window started, in the store's clock. `elapsed` lets a due turn-over happen first
    /// (every `Rate` call does, `rate_with` included), so no other call is needed for it.
    fn start(&self, now: u64) -> u64 {
        now.saturating_sub(self.elapsed())
    }

    fn same(&self, a: u64, b: u64) -> bool {
        a != UNKNOWN_WINDOW && b != UNKNOWN_WINDOW && a.abs_diff(b) < self.ms / 2
    }

    /// Add `amount` and admit if the count before it was below `limit`: the quota, and for an
    /// admission the start of the window the reservation went into.
    fn reserve<K: Hash>(&self, now: u64, key: &K, limit: u64, amount: u64) -> (Quota, Option<u64>) {
        // One reading of the store's clock serves the whole call: the calls below take well under
        // a millisecond, and window starts are compared with half a window of tolerance.
        let before_start = self.start(now);
        let after = self.rate.observe(key, amount as isize).max(0) as u64;
        let elapsed = self.elapsed();
        let start = now.saturating_sub(elapsed);
        let known_window = self.same(before_start, start);
        let used = after.saturating_sub(amount);
        let reset = Duration::from_millis(self.ms.saturating_sub(elapsed));
        if used < limit {
            let quota = Quota {
                limit,
                remaining: limit.saturating_sub(after),
                reset,
            };
            (
                quota,
                Some(if known_window { start } else { UNKNOWN_WINDOW }),
            )
        } else {
            // Take the reservation back, unless the window turned over meanwhile and it may
            // have landed in the old one (taking it from the new one would under-count).
            if known_window {
                self.rate.observe(key, -(amount as isize));
            }
            let quota = Quota {
                limit,
                remaining: 0,
                reset,
            };
            (quota, None)
        }
    }

    fn settle<K: Hash>(&self, now: u64, key: &K, window: u64, reserved: u64, actual: u64) {
        let start = self.start(now);
        if !self.same(window, start) {
            // The reservation's window is over (or unknown): only the real cost counts, here.
            if actual > 0 {
                self.rate.observe(key, actual as isize);
            }
            return;
        }
        let delta = actual as isize - reserved as isize;
        if delta == 0 {
            return;
        }
        self.rate.observe(key, delta);
        if delta < 0 && !self.same(start, now.saturating_sub(self.elapsed())) {
            // The window turned over between the check and the release: the release came out of
            // the new window, which never had the reservation. Put it back so the new window
            // holds just the real cost.
            self.rate.observe(key, reserved as isize);
        }
    }

    fn count<K: Hash>(&self, key: &K) -> u64 {
        self.rate.observe(key, 0).max(0) as u64
    }
}

/// Milliseconds since the store was made (tickets carry window starts in this clock).
struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// Which counters a key gets (see the module doc).
enum Kind {
    /// A `Rate` of one counter per (key, window length).
    Exact(ArcSwap<HashMap<Box<str>, Vec<Arc<Window>>>>),
    /// One sketch per window length, shared by every key.
    Sketch(ArcSwap<Vec<Arc<Window>>>),
}

pub struct LocalStore {
    clock: Clock,
    kind: Kind,
}

/// The process-wide store for `Keys::Fixed`.
pub fn fixed() -> Arc<LocalStore> {
    static STORE: OnceLock<Arc<LocalStore>> = OnceLock::new();
    STORE.get_or_init(|| Arc::new(LocalStore::exact())).clone()
}

/// The process-wide store for `Keys::FromRequests`.
pub fn from_requests() -> Arc<LocalStore> {
    static STORE: OnceLock<Arc<LocalStore>> = OnceLock::new();
    STORE.get_or_init(|| Arc::new(LocalStore::sketch())).clone()
}

impl LocalStore {
    /// A store with an exact counter per key (for a set of keys the config bounds).
    pub fn exact() -> LocalStore {
        LocalStore {
            clock: Clock(Instant::now()),
            kind: Kind::Exact(ArcSwap::from_pointee(HashMap::new())),
        }
    }

    /// A store of fixed size that may over-count (for keys from requests).
    pub fn sketch() -> LocalStore {
        LocalStore {
            clock: Clock(Instant::now()),
            kind: Kind::Sketch(ArcSwap::from_pointee(Vec::new())),
        }
    }

    /// The window of `ms` for `key` in an exact store, made the first time it is asked for.
    fn exact_window(
        map: &ArcSwap<HashMap<Box<str>, Vec<Arc<Window>>>>,
        key: &str,
        ms: u64,
    ) -> Arc<Window> {
        let find = |m: &HashMap<Box<str>, Vec<Arc<Window>>>| {
            m.get(key)
                .and_then(|ws| ws.iter().find(|w| w.ms == ms).cloned())
        };
        if let Some(w) = find(&map.load()) {
            return w;
        }
        // First use of this key: copy the map with it added. Racing first uses agree on one
        // counter, because `rcu` retries on a map that changed and the retry finds it there.
        let made = Arc::new(Window::new(ms, 1, 1));
        map.rcu(|m| {
            if find(m).is_some() {
                return Arc::clone(m);
            }
            let mut m = HashMap::clone(m);
            m.entry(key.into()).or_default().push(made.clone());
            Arc::new(m)
        });
        find(&map.load()).expect("just inserted")
    }

    fn sketch_window(list: &ArcSwap<Vec<Arc<Window>>>, ms: u64) -> Arc<Window> {
        let find = |l: &Vec<Arc<Window>>| l.iter().find(|w| w.ms == ms).cloned();
        if let Some(w) = find(&list.load()) {
            return w;
        }
        list.rcu(|l| {
            if find(l).is_some() {
                return Arc::clone(l);
            }
            let mut l = Vec::clone(l);
            l.push(Arc::new(Window::new(ms, SKETCH_ROWS, SKETCH_SLOTS)));
            Arc::new(l)
        });
        find(&list.load()).expect("just inserted")
    }

    /// A window length in whole milliseconds, at least 1 s (`Rate`'s turn-over check assumes
    /// windows of a second or more).
    fn window_ms(limit: &Limit) -> u64 {
        u64::try_from(limit.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1000)
    }

    fn reserve_now(&self, key: &str, limit: Limit, amount: u64) -> Admission {
        let ms = Self::window_ms(&limit);
        let count = limit.count.min(MAX_AMOUNT);
        let amount = amount.min(count);
        let (quota, window) = match &self.kind {
            Kind::Exact(map) => {
                Self::exact_window(map, key, ms).reserve(self.clock.now(), &(), count, amount)
            }
            Kind::Sketch(list) => {
                Self::sketch_window(list, ms).reserve(self.clock.now(), &key, count, amount)
            }
        };
        match window {
            Some(window) => Admission::Admitted {
                quota,
                ticket: Ticket {
                    key: Arc::from(key),
                    limit,
                    reserved: amount,
                    window,
                },
            },
            None => Admission::Rejected { quota },
        }
    }

    /// The count of `key`'s current window (used and reserved).
    pub fn count(&self, key: &str, window: Duration) -> u64 {
        let ms = Self::window_ms(&Limit { count: 0, window });
        match &self.kind {
            Kind::Exact(map) => Self::exact_window(map, key, ms).count(&()),
            Kind::Sketch(list) => Self::sketch_window(list, ms).count(&key),
        }
    }
}

#[async_trait]
impl QuotaStore for LocalStore {
    async fn reserve(&self, key: &str, limit: Limit, amount: u64) -> Result<Admission, StoreError> {
        Ok(self.reserve_now(key, limit, amount))
    }

    fn settle(&self, ticket: Ticket, actual: u64) {
        let ms = Self::window_ms(&ticket.limit);
        let actual = actual.min(MAX_AMOUNT);
        let reserved = ticket.reserved.min(MAX_AMOUNT);
        match &self.kind {
            Kind::Exact(map) => Self::exact_window(map, &ticket.key, ms).settle(
                self.clock.now(),
                &(),
                ticket.window,
                reserved,
                actual,
            ),
            Kind::Sketch(list) => Self::sketch_window(list, ms).settle(
                self.clock.now(),
                &&*ticket.key,
                ticket.window,
                reserved,
                actual,
            ),
        }
    }

    async fn spent(&self, key: &str, limit: Limit) -> Result<bool, StoreError> {
        Ok(self.count(key, limit.window) >= limit.count)
    }
}

/// The synchronous core, for benchmarks and tests (the trait's methods are async only because
/// a remote store's are).
impl LocalStore {
    pub fn reserve_sync(&self, key: &str, limit: Limit, amount: u64) -> Admission {
        self.reserve_now(key, limit, amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(count: u64, secs: u64) -> Limit {
        Limit {
            count,
            window: Duration::from_secs(secs),
        }
    }

    fn admitted(a: Admission) -> (Quota, Ticket) {
        match a {
            Admission::Admitted { quota, ticket } => (quota, ticket),
            Admission::Rejected { quota } => panic!("rejected: {quota:?}"),
        }
    }

    fn stores() -> [LocalStore; 2] {
        [LocalStore::exact(), LocalStore::sketch()]
    }

    #[test]
    fn admits_while_below_the_limit_and_reports_what_is_left() {
        for s in stores() {
            let l = limit(30, 60);
            let (q, t) = admitted(s.reserve_sync("k", l, 12));
            assert_eq!((q.limit, q.remaining), (30, 18));
            assert!(q.reset <= Duration::from_secs(60) && q.reset > Duration::from_secs(59));
            s.settle(t, 10);
            assert_eq!(s.count("k", l.window), 10);
            let (q, t) = admitted(s.reserve_sync("k", l, 12));
            assert_eq!(q.remaining, 8);
            s.settle(t, 10);
            // 20 used, below 30: admitted although the estimate does not fit (APISIX admits
            // while at least one token is left).
            let (q, t) = admitted(s.reserve_sync("k", l, 12));
            assert_eq!(q.remaining, 0);
            s.settle(t, 10);
            assert_eq!(s.count("k", l.window), 30);
            match s.reserve_sync("k", l, 12) {
                Admission::Rejected { quota } => {
                    assert_eq!((quota.limit, quota.remaining), (30, 0));
                    assert!(quota.reset > Duration::from_secs(59));
                }
                a => panic!("{a:?}"),
            }
            // The refused reservation was taken back.
            assert_eq!(s.count("k", l.window), 30);
        }
    }

    #[test]
    fn keys_and_window_lengths_count_apart() {
        for s in stores() {
            let (_, t) = admitted(s.reserve_sync("a", limit(100, 60), 5));
            s.settle(t, 7);
            let (_, t) = admitted(s.reserve_sync("b", limit(100, 60), 5));
            s.settle(t, 3);
            let (_, t) = admitted(s.reserve_sync("a", limit(100, 3600), 5));
            s.settle(t, 11);
            assert_eq!(s.count("a", Duration::from_secs(60)), 7);
            assert_eq!(s.count("b", Duration::from_secs(60)), 3);
            assert_eq!(s.count("a", Duration::from_secs(3600)), 11);
        }
    }

    #[test]
    fn release_and_zero_usage_charge_nothing() {
        for s in stores() {
            let l = limit(10, 60);
            let (_, t) = admitted(s.reserve_sync("k", l, 9));
            assert_eq!(s.count("k", l.window), 9, "in flight counts");
            s.settle(t, 0);
            assert_eq!(s.count("k", l.window), 0);
        }
    }

    #[test]
    fn concurrent_reservations_never_all_fit() {
        // 8 threads race for a quota of 100 with reservations of 30: exactly 4 fit (0, 30, 60
        // and 90 are below 100), whatever the interleaving. (The exact store: one counter, one
        // atomic add. A sketch adds to its rows one after the other, so two racing adds can read
        // the same minimum; see the module doc.)
        for _ in 0..50 {
            let s = Arc::new(LocalStore::exact());
            let l = limit(100, 60);
            let admitted: usize = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..8)
                    .map(|_| {
                        let s = s.clone();
                        sc.spawn(move || {
                            matches!(s.reserve_sync("k", l, 30), Admission::Admitted { .. })
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap() as usize).sum()
            });
            assert_eq!(admitted, 4);
            assert_eq!(s.count("k", l.window), 120);
        }
    }

    #[test]
    fn a_request_that_ends_in_the_next_window_is_charged_there_without_the_lapsed_reservation() {
        // Windows are at least a second: this test waits one out.
        for s in stores() {
            let l = limit(1000, 1);
            let (_, late) = admitted(s.reserve_sync("k", l, 500));
            let (_, on_time) = admitted(s.reserve_sync("k", l, 100));
            s.settle(on_time, 40);
            assert_eq!(s.count("k", l.window), 540);
            std::thread::sleep(Duration::from_millis(1100));
            assert_eq!(s.count("k", l.window), 0, "a new window");
            s.settle(late, 30);
            assert_eq!(
                s.count("k", l.window),
                30,
                "charged here, reservation not subtracted"
            );
            let (q, _) = admitted(s.reserve_sync("k", l, 10));
            assert_eq!(q.remaining, 960);
        }
    }

    #[test]
    fn unknown_window_tickets_are_settled_as_lapsed() {
        let s = LocalStore::exact();
        let l = limit(100, 60);
        let (_, mut t) = admitted(s.reserve_sync("k", l, 10));
        t.window = UNKNOWN_WINDOW;
        s.settle(t, 4);
        assert_eq!(s.count("k", l.window), 14, "over-counted, never under");
    }

    #[test]
    fn tickets_leave_the_top_bit_free() {
        let s = LocalStore::exact();
        let (_, t) = admitted(s.reserve_sync("k", limit(10, 60), 1));
        assert_eq!(t.window >> 63, 0);
        assert_eq!(UNKNOWN_WINDOW >> 63, 0);
    }

    #[test]
    fn huge_amounts_are_clamped_not_wrapped() {
        for s in stores() {
            let l = limit(u64::MAX, 60);
            let (_, t) = admitted(s.reserve_sync("k", l, u64::MAX));
            assert_eq!(t.reserved, MAX_AMOUNT);
            s.settle(t, u64::MAX);
            assert_eq!(s.count("k", l.window), MAX_AMOUNT);
        }
    }

    #[test]
    fn a_reservation_never_exceeds_its_limit() {
        let s = LocalStore::exact();
        let l = limit(30, 60);
        let (q, t) = admitted(s.reserve_sync("k", l, 266));
        assert_eq!((t.reserved, q.remaining), (30, 0));
        s.settle(t, 10);
        assert_eq!(s.count("k", l.window), 10);
    }

    #[tokio::test]
    async fn spent_reads_without_reserving() {
        let s = LocalStore::exact();
        let l = limit(10, 60);
        assert!(!s.spent("k", l).await.unwrap());
        let (_, t) = admitted(s.reserve("k", l, 3).await.unwrap());
        s.settle(t, 10);
        assert!(s.spent("k", l).await.unwrap());
        assert_eq!(s.count("k", l.window), 10);
    }

    #[test]
    fn the_sketch_is_exact_for_many_keys() {
        // 2 000 keys in one window of the shared-size sketch, each with its own count: none is
        // over-counted (the bound above makes that a ~10⁻⁶ event for this many keys).
        let s = LocalStore::sketch();
        let l = limit(1 << 40, 60);
        for i in 0..2000u64 {
            let (_, t) = admitted(s.reserve_sync(&format!("user-{i}"), l, 1000));
            s.settle(t, i);
        }
        for i in 0..2000u64 {
            assert_eq!(s.count(&format!("user-{i}"), l.window), i);
        }
    }
}
