//! Networking helpers shared by the proxy path and the gateway's own outbound calls: endpoint
//! URLs, non-blocking DNS, building Pingora peers, and a small HTTP client on Pingora's connector.

pub mod client;
pub mod endpoint;
pub mod peer;
pub mod resolve;
