//! Load-balancing algorithms shared by plain upstreams and (later) ai-proxy-multi.

pub mod swrr;
