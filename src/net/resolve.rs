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
    addrs: Vec<SocketAddr>,
    expires: Instant,
    next: AtomicUsize,
}

type Cache = RwLock<HashMap<(String, u16), Arc<Entry>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let key = (host.to_string(), port);
    if let Some(e) = cache().read().ok().and_then(|c| c.get(&key).cloned()) {
        if e.expires > Instant::now() {
            return Ok(pick(&e));
        }
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("cannot resolve {host}: no addresses"));
    }
    let entry = Arc::new(Entry {
        addrs,
        expires: Instant::now() + TTL,
        next: AtomicUsize::new(0),
    });
    let addr = pick(&entry);
    if let Ok(mut c) = cache().write() {
        c.insert(key, entry);
    }
    Ok(addr)
}

fn pick(e: &Entry) -> SocketAddr {
    let i = e.next.fetch_add(1, Ordering::Relaxed);
    e.addrs[i % e.addrs.len()]
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
