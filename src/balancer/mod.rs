//! Load balancing: smooth weighted round robin, priority tiers with consistent hashing, and the
//! health of balanced instances (active probes on pingora-load-balancing, passive cool-downs), and
//! the registry that keeps that runtime state by owner across config rebuilds (`state`).

pub mod health;
pub mod state;
pub mod swrr;
pub mod tiered;
