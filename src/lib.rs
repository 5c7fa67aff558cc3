//! aigate: an AI gateway on Cloudflare Pingora that speaks Apache APISIX's AI plugin config.
//!
//! Module map (one concern each):
//! - `config`: the config file's schema, env substitution, loading with field paths.
//! - `resources`: the desired state: routes, services, upstreams, consumers, credentials by id.
//! - `runtime`: the resources compiled into the snapshot requests use, swapped atomically.
//! - `sources`: what feeds the resources: the config file (and SIGHUP), the admin API, the stores.
//! - `router`: APISIX route matching (uris, hosts, methods, `vars`).
//! - `plugins`: APISIX plugins behind one `Plugin` trait, run as a chain in priority order.
//! - `providers`: one driver per LLM provider, provider instances, GCP auth.
//! - `llm`: the wire formats: request body rewrite, SSE and JSON usage taps.
//! - `proxy`: the Pingora `ProxyHttp` glue, thin hooks over the modules above.
//! - `downstream`: the client side: connection cap, header deadline and size, keep-alive.
//! - `quota`: token quotas in time windows, kept locally or in Redis.
//! - `balancer`: load-balancing algorithms.
//! - `net`: endpoints, DNS, peers, the gateway's own outbound client.
//! - `observability`: access log, request ids.
//! - `error`: the gateway's own errors, in OpenAI's shape.
//! - `app`: building and running the Pingora server from a config file.

pub mod app;
pub mod balancer;
pub mod config;
pub mod downstream;
pub mod error;
pub mod llm;
pub mod net;
pub mod observability;
pub mod plugins;
pub mod providers;
pub mod proxy;
pub mod quota;
pub mod resources;
pub mod router;
pub mod runtime;
pub mod sources;
