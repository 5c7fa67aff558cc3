//! Networking shared by the proxy path, health probes and the gateway's own outbound calls:
//! endpoint URLs, DNS (`dns`), connecting to multi-address names (`connect`), building Pingora
//! peers, a small HTTP client on Pingora's connector, and the process's outbound TLS
//! settings (`tls`).

pub mod client;
pub mod connect;
pub mod dns;
pub mod endpoint;
pub mod peer;
pub mod tls;

/// The body length a request declares in `Content-Length` (`None` when absent or not a number),
/// for the gateway's own body reads: the proxy's and the admin API's.
pub fn declared_length(req: &pingora_http::RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}
