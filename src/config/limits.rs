//! The bounds of numeric config values, in one place.
//!
//! A value past them would make the gateway panic or misbehave at load or later at run time:
//! `Duration::from_secs_f64` panics on huge or non-finite numbers, timers add durations to an
//! `Instant` (which panics on overflow), pingora-ketama puts `weight × 160` points per instance on
//! a `u32`-sized ring, Pingora preallocates its connection pool. The bounds are generous (far past
//! anything sensible) and far below where arithmetic breaks; a value beyond them is refused with
//! its field path instead of being clamped, so a typo (`timeout: 300000000`) is noticed.

use std::time::Duration;

/// Every duration (timeouts, intervals, cool-downs, token lifetimes): at most one day.
pub const MAX_SECS: u64 = 86_400;
/// The same, for fields in milliseconds.
pub const MAX_MS: u64 = MAX_SECS * 1000;
/// Fractional seconds below a millisecond would become a zero timeout (everything times out).
pub const MIN_SECS: f64 = 0.001;
/// `gateway.max_body_size`: request bodies (and the answers aigate buffers) are held in memory.
pub const MAX_BODY_SIZE: u64 = 1 << 30;
/// `ai-proxy-multi` `instances[].weight`.
pub const MAX_WEIGHT: u32 = 10_000;
/// `chash`: the weights of one priority tier together (each unit is 160 points on the ring, so
/// this keeps a ring at 1.6 M points, about 13 MB, at most).
pub const MAX_CHASH_TIER_WEIGHT: u64 = 10_000;
/// ai-rate-limiting: a quota, in tokens (and the reservation estimate's default). Far above any
/// budget, and below 2^53, where counting in doubles (Lua, Redis scripts) stops being exact.
pub const MAX_QUOTA: u64 = 1_000_000_000_000_000;
/// ai-rate-limiting `time_window`: a token budget may well be monthly, so up to 366 days (the
/// one-day bound of `MAX_SECS` is for timeouts and intervals).
pub const MAX_QUOTA_WINDOW_SECS: u64 = 366 * 86_400;
/// `server.threads`, `server.listener_tasks_per_fd`, offload thread pools (threads in total).
pub const MAX_THREADS: usize = 1024;
/// `server.upstream_keepalive_pool_size × server.threads`: Pingora preallocates the pool.
pub const MAX_KEEPALIVE_POOL: usize = 1 << 20;

/// Why APISIX's pool sizes (ai-proxy's and an upstream's `keepalive_pool`) have nothing to size.
pub const ONE_PROCESS_POOL: &str = "aigate keeps one connection pool per process, sized with \
                                    server.upstream_keepalive_pool_size";

/// An APISIX setting with nothing to act on in aigate (`why`): its APISIX default, which exported
/// configs carry, is accepted; any other value would be silently ignored, so it is refused.
pub fn apisix_default_only<T: PartialEq + std::fmt::Display>(
    value: Option<T>,
    default: T,
    why: &str,
) -> Result<(), String> {
    match value {
        Some(v) if v != default => Err(format!(
            "{why}: remove this field or leave it at APISIX's default {default}, not {v}"
        )),
        _ => Ok(()),
    }
}

/// Seconds as written in APISIX objects (a float): between `MIN_SECS` and `MAX_SECS`.
pub fn secs(v: f64) -> Result<Duration, String> {
    if (MIN_SECS..=MAX_SECS as f64).contains(&v) {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(format!(
            "must be a number of seconds between {MIN_SECS} and {MAX_SECS}, not {v}"
        ))
    }
}

/// Like `secs`, but 0 is allowed (it switches the feature off).
pub fn secs_or_zero(v: f64) -> Result<Duration, String> {
    if v == 0.0 {
        return Ok(Duration::ZERO);
    }
    secs(v).map_err(|_| {
        format!("must be 0 or a number of seconds between {MIN_SECS} and {MAX_SECS}, not {v}")
    })
}

/// Whole milliseconds between `min` and `MAX_MS`.
pub fn millis(v: u64, min: u64) -> Result<Duration, String> {
    if (min..=MAX_MS).contains(&v) {
        Ok(Duration::from_millis(v))
    } else {
        Err(format!(
            "must be at least {min} and at most {MAX_MS} (milliseconds), not {v}"
        ))
    }
}

/// Whole seconds between `min` and `MAX_SECS`.
pub fn whole_secs(v: u64, min: u64) -> Result<Duration, String> {
    if (min..=MAX_SECS).contains(&v) {
        Ok(Duration::from_secs(v))
    } else {
        Err(format!(
            "must be at least {min} and at most {MAX_SECS} (seconds), not {v}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(secs(1.5), Ok(Duration::from_millis(1500)));
        assert_eq!(secs(86_400.0), Ok(Duration::from_secs(86_400)));
        for bad in [0.0, -1.0, 0.0001, 86_400.5, 1e300, f64::INFINITY, f64::NAN] {
            assert!(secs(bad).is_err(), "{bad}");
        }
        assert_eq!(secs_or_zero(0.0), Ok(Duration::ZERO));
        assert!(secs_or_zero(-0.5).is_err());
        assert!(secs_or_zero(1e20).is_err());
        assert_eq!(millis(1, 1), Ok(Duration::from_millis(1)));
        assert!(millis(0, 1).is_err());
        assert!(millis(MAX_MS + 1, 1).is_err());
        assert!(millis(u64::MAX, 1).is_err());
        assert_eq!(whole_secs(0, 0), Ok(Duration::ZERO));
        assert!(whole_secs(u64::MAX, 0).is_err());
    }
}
