//! Host name resolution for every outbound connection (provider requests, health probes, the
//! gateway's own HTTP client).
//!
//! Why not `getaddrinfo` (what `HttpPeer::new("host:port")` does): it blocks the calling worker
//! thread, knows nothing of TTLs, and cannot be bounded or shared. Resolution here is
//! asynchronous (hickory-resolver, reading `/etc/resolv.conf` and `/etc/hosts` like the system
//! resolver does, or the nameservers given in `gateway.dns.nameservers`), and a small cache in
//! front of it adds what a gateway needs on its request path:
//!
//! - a cache hit is lock-free (two `ArcSwap` loads) and allocates nothing;
//! - answers live as long as their DNS TTL, clamped to `[min_ttl, max_ttl]`;
//! - concurrent look-ups of one name share a single query (coalesced);
//! - a look-up takes at most `timeout`; a failure is remembered for `error_ttl`, so a dead
//!   name fails fast instead of costing every request a DNS round trip;
//! - when a refresh fails, the last good addresses are kept (a DNS outage does not take down a
//!   provider whose addresses did not change);
//! - each name remembers the address family that last connected, so connection attempts start
//!   with it (see `net::connect`, RFC 8305 "Happy Eyeballs").

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::future::{FutureExt, Shared};
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

/// Resolver settings (`gateway.dns`), validated.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// `None`: the system's `/etc/resolv.conf`.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// Bound on one look-up, all nameservers and retries included.
    pub timeout: Duration,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// How long a failed look-up is remembered before the name is tried again.
    pub error_ttl: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            nameservers: None,
            timeout: Duration::from_secs(5),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            error_ttl: Duration::from_secs(5),
        }
    }
}

static SETTINGS: OnceLock<DnsSettings> = OnceLock::new();

/// Use these settings for the rest of the process. Called once at start-up, before any look-up
/// (later calls are ignored; the settings are fixed for the process's life).
pub fn configure(settings: DnsSettings) {
    let _ = SETTINGS.set(settings);
}

fn settings() -> &'static DnsSettings {
    SETTINGS.get_or_init(DnsSettings::default)
}

/// The resolver is built on first use, inside a runtime, so that `-d` (which forks after the
/// config is loaded) never inherits one whose background tasks lived in the parent.
fn resolver() -> Result<&'static TokioResolver, String> {
    static RESOLVER: OnceLock<Result<TokioResolver, String>> = OnceLock::new();
    RESOLVER
        .get_or_init(|| build_resolver(settings()))
        .as_ref()
        .map_err(|e| e.clone())
}

fn build_resolver(s: &DnsSettings) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match &s.nameservers {
        Some(list) => {
            let servers = list
                .iter()
                .map(|a| {
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    for c in &mut ns.connections {
                        c.port = a.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        }
        None => match TokioResolver::builder(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                // Minimal containers may have no /etc/resolv.conf; the C library then asks a
                // resolver on 127.0.0.1, and so does aigate (with /etc/hosts first, as always).
                log::warn!(
                    "cannot read the system resolver configuration ({e}); using 127.0.0.1:53"
                );
                let local = NameServerConfig::udp_and_tcp(IpAddr::from([127, 0, 0, 1]));
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![local]),
                    provider,
                )
            }
        },
    };
    let opts = builder.options_mut();
    // Both families, always, IPv6 first as RFC 8305 recommends: the connection step moves on
    // at once from a family that does not work, and remembers the one that does.
    opts.ip_strategy = LookupIpStrategy::Ipv6AndIpv4;
    opts.positive_min_ttl = Some(s.min_ttl);
    opts.positive_max_ttl = Some(s.max_ttl);
    opts.negative_min_ttl = Some(s.error_ttl);
    opts.negative_max_ttl = Some(s.error_ttl.max(s.min_ttl));
    // Our own deadline bounds the whole look-up; the per-query timeout leaves room for a retry.
    opts.timeout = (s.timeout / 2).max(Duration::from_millis(100));
    opts.attempts = 2;
    // aigate keeps its own cache in front; hickory's only needs to hold what is in flight.
    opts.cache_size = 256;
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

// ------------------------------------------------------------------------------------------------
// The cache

/// One name's current answer.
struct Answer {
    /// The last good addresses, in the resolver's order; empty if the name never resolved.
    ips: Arc<[IpAddr]>,
    /// Until when this answer is used without asking again.
    fresh_until: Instant,
    /// Why the last look-up failed (shown while `ips` is empty).
    error: Option<Arc<str>>,
}

type Lookup = Shared<Pin<Box<dyn Future<Output = Arc<Answer>> + Send>>>;

/// A host name and everything known about it. Shared by every endpoint, probe and request that
/// uses the name, and kept for the process's life (names come from config: few, and stable).
pub struct Name {
    host: Box<str>,
    answer: ArcSwap<Answer>,
    /// The running look-up, if any: later callers wait for it instead of asking again.
    inflight: Mutex<Option<Lookup>>,
    /// The address family that connected last (0 = none yet, 4, 6).
    family: AtomicU8,
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.host)
    }
}

type Registry = ArcSwap<HashMap<Box<str>, Arc<Name>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The shared handle for `host` (a name, not an IP literal). Lock-free when the name is known.
pub fn name(host: &str) -> Arc<Name> {
    if let Some(n) = registry().load().get(host) {
        return n.clone();
    }
    let mut out = None;
    registry().rcu(|map| {
        let mut map = HashMap::clone(map);
        let n = map
            .entry(host.into())
            .or_insert_with(|| {
                Arc::new(Name {
                    host: host.into(),
                    answer: ArcSwap::from_pointee(Answer {
                        ips: Arc::from(Vec::new()),
                        fresh_until: Instant::now(),
                        error: None,
                    }),
                    inflight: Mutex::new(None),
                    family: AtomicU8::new(0),
                })
            })
            .clone();
        out = Some(n);
        map
    });
    out.expect("rcu ran at least once")
}

/// Where a host resolves to: an IP literal, or a name's current addresses.
#[derive(Clone)]
pub enum Resolved {
    Literal(IpAddr),
    Name(Arc<Name>, Arc<[IpAddr]>),
}

impl Resolved {
    /// The address tried first (the preferred family's first address).
    pub fn first(&self, port: u16) -> SocketAddr {
        match self {
            Resolved::Literal(ip) => SocketAddr::new(*ip, port),
            Resolved::Name(n, ips) => SocketAddr::new(order(ips, n.preferred())[0], port),
        }
    }
}

/// A host made ready for look-ups: an IP literal parsed, or a name's shared cache entry. A
/// compiled endpoint keeps one, so a request neither parses its host nor finds its entry again.
#[derive(Clone, Debug)]
pub enum Host {
    Literal(IpAddr),
    Name(Arc<Name>),
}

impl Host {
    pub fn of(host: &str) -> Host {
        match host.parse::<IpAddr>() {
            Ok(ip) => Host::Literal(ip),
            Err(_) => Host::Name(name(host)),
        }
    }

    pub async fn resolve(&self) -> Result<Resolved, String> {
        match self {
            Host::Literal(ip) => Ok(Resolved::Literal(*ip)),
            Host::Name(n) => {
                let ips = n.addresses().await?;
                Ok(Resolved::Name(n.clone(), ips))
            }
        }
    }
}

impl Name {
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The current addresses, looking the name up if the cached answer is stale.
    pub async fn addresses(self: &Arc<Self>) -> Result<Arc<[IpAddr]>, String> {
        let a = self.answer.load();
        let a = if a.fresh_until > Instant::now() {
            a.clone()
        } else {
            drop(a);
            self.refresh().await
        };
        if a.ips.is_empty() {
            Err(a.error.as_deref().unwrap_or("no addresses").to_string())
        } else {
            Ok(a.ips.clone())
        }
    }

    /// Join the running look-up or start one.
    fn refresh(self: &Arc<Self>) -> Lookup {
        let mut slot = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = slot.as_ref() {
            return l.clone();
        }
        let me = self.clone();
        let fut: Pin<Box<dyn Future<Output = Arc<Answer>> + Send>> =
            Box::pin(async move { me.look_up().await });
        let shared = fut.shared();
        *slot = Some(shared.clone());
        shared
    }

    async fn look_up(self: Arc<Self>) -> Arc<Answer> {
        let s = settings();
        let result = match resolver() {
            Err(e) => Err(e),
            Ok(r) => match tokio::time::timeout(s.timeout, r.lookup_ip(&*self.host)).await {
                Err(_) => Err(format!(
                    "cannot resolve {}: no answer within {} ms",
                    self.host,
                    s.timeout.as_millis()
                )),
                Ok(Err(e)) => Err(format!("cannot resolve {}: {}", self.host, short(&e))),
                Ok(Ok(l)) => {
                    let ips: Vec<IpAddr> = l.iter().collect();
                    if ips.is_empty() {
                        Err(format!("cannot resolve {}: no addresses", self.host))
                    } else {
                        let now = Instant::now();
                        let ttl = l
                            .valid_until()
                            .saturating_duration_since(now)
                            .clamp(s.min_ttl, s.max_ttl);
                        Ok((ips, now + ttl))
                    }
                }
            },
        };
        let previous = self.answer.load_full();
        let answer = Arc::new(match result {
            Ok((ips, fresh_until)) => Answer {
                ips: ips.into(),
                fresh_until,
                error: None,
            },
            Err(e) => {
                if previous.ips.is_empty() {
                    log::warn!("{e}");
                } else {
                    log::warn!("{e}; keeping its last known addresses");
                }
                Answer {
                    ips: previous.ips.clone(),
                    fresh_until: Instant::now() + s.error_ttl,
                    error: Some(e.into()),
                }
            }
        });
        self.answer.store(answer.clone());
        *self.inflight.lock().unwrap_or_else(|p| p.into_inner()) = None;
        answer
    }

    fn preferred(&self) -> u8 {
        self.family.load(Ordering::Relaxed)
    }

    /// Record the family of an address that connected, so the next attempts start with it.
    pub fn connected(&self, addr: &SocketAddr) {
        let f = if addr.is_ipv6() { 6 } else { 4 };
        if self.family.load(Ordering::Relaxed) != f {
            self.family.store(f, Ordering::Relaxed);
        }
    }

    /// The order in which to try this name's addresses (see [`order`]).
    pub fn ordered(&self, ips: &[IpAddr], port: u16) -> Vec<SocketAddr> {
        order(ips, self.preferred())
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect()
    }
}

/// hickory's error text, without the debug noise some variants carry.
fn short(e: &hickory_resolver::net::NetError) -> String {
    if e.is_no_records_found() {
        "no such name or no addresses".to_string()
    } else {
        e.to_string()
    }
}

/// RFC 8305 §4: alternate the address families, starting with the one that connected last (or,
/// before any connection, with the family of the resolver's first answer). Order within a family
/// is the resolver's.
pub fn order(ips: &[IpAddr], preferred: u8) -> Vec<IpAddr> {
    let first_v6 = match preferred {
        6 => true,
        4 => false,
        _ => ips.first().is_some_and(|ip| ip.is_ipv6()),
    };
    let (mut a, mut b): (Vec<IpAddr>, Vec<IpAddr>) =
        ips.iter().partition(|ip| ip.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(ips.len());
    let (mut i, mut j) = (a.drain(..), b.drain(..));
    loop {
        match (i.next(), j.next()) {
            (None, None) => break,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn order_alternates_families_starting_with_the_preferred() {
        let ips = [
            ip("::1"),
            ip("::2"),
            ip("10.0.0.1"),
            ip("10.0.0.2"),
            ip("10.0.0.3"),
        ];
        assert_eq!(
            order(&ips, 0),
            vec![
                ip("::1"),
                ip("10.0.0.1"),
                ip("::2"),
                ip("10.0.0.2"),
                ip("10.0.0.3")
            ]
        );
        assert_eq!(
            order(&ips, 4),
            vec![
                ip("10.0.0.1"),
                ip("::1"),
                ip("10.0.0.2"),
                ip("::2"),
                ip("10.0.0.3")
            ]
        );
        assert_eq!(order(&[ip("10.0.0.1")], 6), vec![ip("10.0.0.1")]);
        assert!(order(&[], 0).is_empty());
    }

    async fn resolve(host: &str) -> Result<Resolved, String> {
        Host::of(host).resolve().await
    }

    #[tokio::test]
    async fn literals_and_localhost() {
        assert_eq!(
            resolve("127.0.0.1").await.unwrap().first(80),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            resolve("::1").await.unwrap().first(80),
            "[::1]:80".parse().unwrap()
        );
        // From /etc/hosts.
        assert!(resolve("localhost")
            .await
            .unwrap()
            .first(81)
            .ip()
            .is_loopback());
        assert!(resolve("no-such-host.invalid").await.is_err());
    }

    #[test]
    fn one_handle_per_name() {
        let a = name("handle.example");
        let b = name("handle.example");
        assert!(Arc::ptr_eq(&a, &b));
    }
}
