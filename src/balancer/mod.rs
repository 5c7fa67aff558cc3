//! Load balancing: smooth weighted round robin, priority tiers with consistent hashing, and the
//! health of balanced instances (active probes on pingora-load-balancing, passive cool-downs).

pub mod health;
pub mod swrr;
pub mod tiered;
