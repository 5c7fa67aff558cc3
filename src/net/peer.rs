//! Building Pingora `HttpPeer`s with aigate's timeouts and TLS settings.

use std::net::SocketAddr;
use std::time::Duration;

use pingora_core::upstreams::peer::HttpPeer;

#[derive(Debug, Clone, Copy)]
pub struct PeerOptions {
    pub connect_timeout: Duration,
    /// Per read: bounds time-to-first-byte and every gap between streamed chunks.
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long an idle pooled connection is kept; `None` = not pooled.
    pub idle_timeout: Option<Duration>,
    pub verify_tls: bool,
}

pub fn http_peer(addr: SocketAddr, tls: bool, host: &str, o: &PeerOptions) -> HttpPeer {
    // SNI is always the endpoint's host: with an empty SNI Pingora skips certificate checks.
    let mut peer = HttpPeer::new(addr, tls, host.to_string());
    let opts = &mut peer.options;
    opts.connection_timeout = Some(o.connect_timeout);
    opts.total_connection_timeout = Some(o.connect_timeout + o.connect_timeout);
    opts.read_timeout = Some(o.read_timeout);
    opts.write_timeout = Some(o.write_timeout);
    opts.idle_timeout = o.idle_timeout;
    opts.verify_cert = o.verify_tls;
    opts.verify_hostname = o.verify_tls;
    peer
}
