//! Building Pingora `HttpPeer`s with aigate's timeouts, TLS settings and connect strategy.

use std::sync::Arc;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;

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
