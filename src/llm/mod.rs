//! LLM wire formats, independent of the proxy: the request body (parse once, rewrite once) and
//! the taps that read token usage from answers as they stream past.

pub mod json_tap;
pub mod request;
pub mod sse;
pub mod usage;
