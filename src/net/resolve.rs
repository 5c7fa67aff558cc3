//! Non-blocking host name resolution with a small cache.
//!
//! `HttpPeer::new("host:port")` resolves with the blocking `getaddrinfo` on the calling thread,
//! which would stall every request on that Pingora worker. Names are resolved here on tokio's
//! blocking pool instead, cached for a short TTL, and rotated across the returned addresses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(30);

struct Entry {
    ips: Vec<IpAddr>,
    expires: Instant,
    next: AtomicUsize,
}

/// Keyed by host name alone (the port is applied on each pick), so a cache hit looks the name up
/// borrowed and allocates nothing.
type Cache = RwLock<HashMap<String, Arc<Entry>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if let Some(e) = cache().read().ok().and_then(|c| c.get(host).cloned()) {
        if e.expires > Instant::now() {
            return Ok(SocketAddr::new(pick(&e), port));
        }
    }
    let ips: Vec<IpAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .map(|a| a.ip())
        .collect();
    if ips.is_empty() {
        return Err(format!("cannot resolve {host}: no addresses"));
    }
    let entry = Arc::new(Entry {
        ips,
        expires: Instant::now() + TTL,
        next: AtomicUsize::new(0),
    });
    let ip = pick(&entry);
    if let Ok(mut c) = cache().write() {
        c.insert(host.to_string(), entry);
    }
    Ok(SocketAddr::new(ip, port))
}

fn pick(e: &Entry) -> IpAddr {
    let i = e.next.fetch_add(1, Ordering::Relaxed);
    e.ips[i % e.ips.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ip_literals_and_localhost() {
        assert_eq!(
            resolve("127.0.0.1", 80).await.unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            resolve("::1", 80).await.unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(resolve("localhost", 81).await.unwrap().ip().is_loopback());
        assert!(resolve("no-such-host.invalid", 80).await.is_err());
    }
}
