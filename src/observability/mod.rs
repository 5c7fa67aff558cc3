//! What the gateway tells operators: access log lines, request ids and Prometheus metrics.

pub mod access_log;
pub mod metrics;
pub mod metrics_http;
pub mod redact;
pub mod request_id;
