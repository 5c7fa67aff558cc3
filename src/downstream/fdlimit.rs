//! The process's file-descriptor limit, and the connection cap derived from it.
//!
//! Every client connection is a descriptor, and so is every upstream connection it uses. When
//! the limit is reached `accept` fails and Pingora's listener backs off, so normal requests time
//! out while idle connections hold every descriptor. aigate raises the soft limit to the hard
//! one at start (what a service manager grants, e.g. systemd's `LimitNOFILE`), and by default
//! admits only as many client connections as leave room for their upstream side.

/// Descriptors kept for everything that is not a client connection's pair: listeners, logs,
/// DNS, health probes, pooled idle upstream connections.
const RESERVED: u64 = 512;
/// Upper end of the default `max_connections`.
const DEFAULT_CAP: u64 = 65_536;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit. Returns the (possibly new) soft limit.
pub fn raise() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return before;
            }
            log::info!(
                "file-descriptor limit raised from {before} to {}",
                lim.rlim_cur
            );
        }
    }
    lim.rlim_cur
}

/// The current soft limit, without changing it.
pub fn current() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// `max_connections` when none is configured: half of what is left after the reserve (each
/// client connection may need an upstream one), between 64 and 65,536.
pub fn default_max_connections(fd_limit: u64) -> u64 {
    (fd_limit.saturating_sub(RESERVED) / 2).clamp(64, DEFAULT_CAP)
}

/// Whether `max_connections` client connections (and their upstream side) fit the limit.
pub fn fits(max_connections: u64, fd_limit: u64) -> bool {
    max_connections.saturating_mul(2).saturating_add(RESERVED) <= fd_limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        assert_eq!(default_max_connections(1024), 256);
        assert_eq!(default_max_connections(20_000), 9_744);
        assert_eq!(default_max_connections(1_048_576), 65_536);
        assert_eq!(default_max_connections(100), 64);
        assert!(fits(9_744, 20_000));
        assert!(!fits(10_000, 20_000));
        assert!(raise() >= current().min(1024));
    }
}
