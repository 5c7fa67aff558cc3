//! Networking helpers shared by the proxy path and the gateway's own outbound calls: endpoint
//! URLs, non-blocking DNS, building Pingora peers, a small HTTP client on Pingora's connector, and
//! the process's outbound TLS settings.

pub mod client;
pub mod endpoint;
pub mod peer;
pub mod resolve;
pub mod tls;
