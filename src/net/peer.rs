//! Building Pingora `HttpPeer`s with aigate's timeouts, TLS settings and connect strategy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, RetryType};

use super::connect::NameConnector;
use super::dns::Resolved;

#[derive(Debug, Clone, Copy)]
pub struct PeerOptions {
    /// Bound on establishing the TCP connection (every address of a name included).
    pub connect_timeout: Duration,
    /// Per read: bounds time-to-first-byte and every gap between streamed chunks.
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long an idle pooled connection is kept; `None` = not pooled.
    pub idle_timeout: Option<Duration>,
    pub verify_tls: bool,
}

/// A peer for `host:port` as resolved. A name with several addresses connects through
/// [`NameConnector`] (Happy Eyeballs across all of them); the peer's own address, the
/// preferred first one, is what Pingora keys its connection pool on.
pub fn http_peer(
    resolved: &Resolved,
    port: u16,
    tls: bool,
    host: &str,
    o: &PeerOptions,
) -> HttpPeer {
    // SNI is always the endpoint's host: with an empty SNI Pingora skips certificate checks.
    let mut peer = HttpPeer::new(resolved.first(port), tls, host.to_string());
    let opts = &mut peer.options;
    opts.connection_timeout = Some(o.connect_timeout);
    // TCP (all addresses) plus the TLS handshake.
    opts.total_connection_timeout = Some(o.connect_timeout.saturating_mul(2));
    opts.read_timeout = Some(o.read_timeout);
    opts.write_timeout = Some(o.write_timeout);
    opts.idle_timeout = o.idle_timeout;
    opts.verify_cert = o.verify_tls;
    opts.verify_hostname = o.verify_tls;
    if let Resolved::Name(name, ips) = resolved {
        if ips.len() > 1 {
            opts.custom_l4 = Some(Arc::new(NameConnector {
                name: name.clone(),
                port,
                timeout: o.connect_timeout,
            }));
        }
    }
    peer
}

/// Whether a failure on a reused (pooled) connection happened before a single byte of the answer
/// came back: the server had closed the connection while it sat idle (or reset it when the
/// request arrived), so nothing was processed and one more attempt on a fresh connection is
/// safe. Pingora marks exactly these failures `ReusedOnly`; its message says how many bytes of
/// the response header had been read, and any byte means the answer had started. A failed write
/// of the request also means the server never got the whole request.
pub fn failed_before_answer(e: &Error) -> bool {
    match (&e.retry, e.etype()) {
        (RetryType::ReusedOnly, _) => {
            // The message may sit deeper in the chain (the proxy adds the peer).
            let text = e.to_string();
            match text.rsplit_once("bytes already read: ") {
                Some((_, n)) => {
                    n.starts_with('0') && !n[1..].starts_with(|c: char| c.is_ascii_digit())
                }
                None => true,
            }
        }
        (_, ErrorType::WriteError) => true,
        _ => false,
    }
}

/// A pool group no pooled connection belongs to. The group key is part of Pingora's pool key,
/// so a peer with it always gets a new connection: the retry after a stale pooled connection
/// must not take another pooled one (a server that dropped one idle connection has likely
/// dropped the others too). Nothing should be pooled under it afterwards.
pub fn fresh_group_key() -> u64 {
    static FRESH: AtomicU64 = AtomicU64::new(1);
    FRESH.fetch_add(1, Ordering::Relaxed)
}
