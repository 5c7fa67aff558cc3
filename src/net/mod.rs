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
