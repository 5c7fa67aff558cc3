//! Integration tests: the real `aigate` binary against the real `aigate-mock` over TCP.
//! One test binary (one link) for everything; each test starts its own gateway and mocks on free
//! ports, so tests run in parallel.

mod harness;

mod access_log;
mod admin;
mod ai_proxy;
mod bodies;
mod body_memory;
mod config_check;
mod consumers;
mod credentials;
mod dns;
mod dns_server;
mod errors;
mod etcd_cluster;
mod etcd_server;
mod etcd_store;
mod limits;
mod live_config;
mod metrics;
mod multi;
mod passthrough;
mod providers;
mod rate_limiting;
mod readme_examples;
mod redis_quota;
mod redis_server;
mod routing;
mod shared_quota;
mod streaming;
mod systemd;
mod tls;
mod upgrade;
