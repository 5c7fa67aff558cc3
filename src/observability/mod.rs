//! What the gateway tells operators: access log lines and request ids.

pub mod access_log;
pub mod redact;
pub mod request_id;
