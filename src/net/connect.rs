//! Connecting to a host name that has several addresses: RFC 8305 "Happy Eyeballs".
//!
//! Pingora's `HttpPeer` holds one socket address and its connector tries exactly that one. A
//! provider name usually has several (IPv4 and IPv6, several of each), and hosts without an
//! IPv6 route are common (Docker's default network): trying only the resolver's first address
//! fails whenever that one is unreachable. `NameConnector` plugs into Pingora through its own
//! extension point, `PeerOptions::custom_l4` (the `L4Connect` trait), so TLS, pooling, timeouts
//! and everything after the TCP connect stay Pingora's:
//!
//! - the name's addresses come from `net::dns` (cached), ordered by `dns::order`: families
//!   alternate, starting with the family that connected last;
//! - the first address is tried at once; each next one when the previous attempt failed, or
//!   after `ATTEMPT_DELAY` while it is still pending (the slow attempt keeps running), so a
//!   black-holed address costs 250 ms, not a whole connect timeout;
//! - the first connection to succeed wins; the others are dropped;
//! - all of it within the owner's connect timeout.
//!
//! The same connector serves proxied requests, health probes and the gateway's own client, so
//! all three behave alike on multi-address names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_error::{Error, ErrorType, Result};

use super::dns::Name;

/// RFC 8305 §5's recommended "Connection Attempt Delay".
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Connects to whichever of a name's addresses answers first.
#[derive(Debug)]
pub struct NameConnector {
    pub name: Arc<Name>,
    pub port: u16,
    /// Bound on the whole connect, every address included.
    pub timeout: Duration,
}

#[async_trait]
impl L4Connect for NameConnector {
    /// `_addr` is the peer's nominal address (used by Pingora for pooling and logs); the real
    /// candidates come from the name.
    async fn connect(&self, _addr: &PingoraAddr) -> Result<Stream> {
        let ips = self
            .name
            .addresses()
            .await
            .map_err(|m| Error::explain(ErrorType::ConnectNoRoute, m))?;
        let candidates = self.name.ordered(&ips, self.port);
        let host = self.name.host();
        match tokio::time::timeout(self.timeout, race(&candidates)).await {
            Ok(Ok((stream, addr))) => {
                self.name.connected(&addr);
                Ok(stream.into())
            }
            Ok(Err(failures)) => Err(failed(host, self.port, failures)),
            Err(_) => Error::e_explain(
                ErrorType::ConnectTimedout,
                format!(
                    "connecting to {host}:{} timed out after {} ms ({} addresses tried)",
                    self.port,
                    self.timeout.as_millis(),
                    candidates.len()
                ),
            ),
        }
    }
}

/// The address a connected socket actually reached (for `$upstream_addr`: with several
/// candidates, the peer's nominal address may not be the one that answered).
pub fn peer_of(fd: std::os::unix::io::RawFd) -> Option<SocketAddr> {
    // SAFETY: Pingora hands the hook the fd of a live connection it owns for the duration of
    // the call; it is only borrowed here, never closed.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket()
}

/// One failed attempt.
struct Failure {
    addr: SocketAddr,
    error: std::io::Error,
}

/// Try `candidates` as RFC 8305 describes; `Err` once every attempt has failed.
async fn race(
    candidates: &[SocketAddr],
) -> std::result::Result<(tokio::net::TcpStream, SocketAddr), Vec<Failure>> {
    let mut pending = FuturesUnordered::new();
    let mut next = 0;
    let mut failures = Vec::new();
    let attempt =
        |addr: SocketAddr| async move { (addr, tokio::net::TcpStream::connect(addr).await) };
    loop {
        if pending.is_empty() {
            match candidates.get(next) {
                Some(a) => {
                    pending.push(attempt(*a));
                    next += 1;
                }
                None => return Err(failures),
            }
        }
        let more = next < candidates.len();
        tokio::select! {
            Some((addr, res)) = pending.next() => match res {
                Ok(s) => return Ok((s, addr)),
                Err(error) => {
                    failures.push(Failure { addr, error });
                    // A failed attempt starts the next one at once (the loop head does it when
                    // nothing else is pending; otherwise here).
                    if !pending.is_empty() && more {
                        pending.push(attempt(candidates[next]));
                        next += 1;
                    }
                }
            },
            _ = tokio::time::sleep(ATTEMPT_DELAY), if more => {
                pending.push(attempt(candidates[next]));
                next += 1;
            }
        }
    }
}

/// The error for a connect where every address failed: the type of the most telling failure
/// (a refusal says the host is up but nothing listens), every address in the context.
fn failed(host: &str, port: u16, failures: Vec<Failure>) -> Box<Error> {
    let etype = |e: &std::io::Error| match e.kind() {
        std::io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
        std::io::ErrorKind::TimedOut => ErrorType::ConnectTimedout,
        _ => match e.raw_os_error() {
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EADDRNOTAVAIL) => {
                ErrorType::ConnectNoRoute
            }
            _ => ErrorType::ConnectError,
        },
    };
    let rank = |t: &ErrorType| match t {
        ErrorType::ConnectRefused => 3,
        ErrorType::ConnectTimedout => 2,
        ErrorType::ConnectError => 1,
        _ => 0,
    };
    let best = failures
        .iter()
        .map(|f| etype(&f.error))
        .max_by_key(rank)
        .unwrap_or(ErrorType::ConnectError);
    let detail: Vec<String> = failures
        .iter()
        .map(|f| format!("{}: {}", f.addr, f.error))
        .collect();
    Error::explain(
        best,
        format!("cannot connect to {host}:{port} ({})", detail.join("; ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn falls_through_refused_addresses_in_order() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        // 127.0.0.2 is loopback too, but nothing listens there on this port: refused.
        let c = [
            SocketAddr::new("127.0.0.2".parse().unwrap(), port),
            SocketAddr::new("127.0.0.1".parse().unwrap(), port),
        ];
        let t = Instant::now();
        let (_, addr) = race(&c).await.ok().unwrap();
        assert_eq!(addr, c[1]);
        assert!(t.elapsed() < ATTEMPT_DELAY, "a refusal moves on at once");
    }

    #[tokio::test]
    async fn all_refused_reports_every_address() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = [
            SocketAddr::new("127.0.0.2".parse().unwrap(), port),
            SocketAddr::new("127.0.0.3".parse().unwrap(), port),
        ];
        let failures = race(&c).await.err().unwrap();
        let e = failed("h.test", port, failures);
        assert_eq!(e.etype(), &ErrorType::ConnectRefused);
        let msg = e.to_string();
        assert!(
            msg.contains("127.0.0.2") && msg.contains("127.0.0.3"),
            "{msg}"
        );
    }
}
