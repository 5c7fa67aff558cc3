//! Plugins: APISIX plugins compiled from their config into runtime objects, run as a chain.
//!
//! Each plugin is one file with a `REGISTRATION` (name, priority, constructor) listed in
//! `registry.rs`, and implements `Plugin`: one method per phase, all of them optional. The proxy
//! glue runs each phase over the route's `Chain` (`chain.rs`), in priority order; a plugin sees
//! the request through `PluginRequest` and keeps its per-request state in `PluginCtx` (`ctx.rs`),
//! so plugins never depend on the glue.

pub mod ai_proxy;
pub mod ai_proxy_multi;
pub mod ai_rate_limiting;
pub mod chain;
pub mod consumer;
pub mod ctx;
pub mod key_auth;
pub mod prometheus;
pub mod registry;

use std::sync::Arc;

use async_trait::async_trait;
use pingora_http::ResponseHeader;

pub use chain::Chain;
pub use ctx::{PluginCtx, PluginRequest};
pub use registry::Owner;

use crate::balancer::health::ActiveProbe;
use crate::config::ConfigError;
use crate::error::Rejection;

#[async_trait]
pub trait Plugin: std::any::Any + Send + Sync {
    /// The name in `plugins:`.
    fn name(&self) -> &'static str;

    /// APISIX's priority: higher runs first.
    fn priority(&self) -> i32;

    /// The JSON request body must be read and parsed before `access` (it is in `req.body`).
    fn needs_body(&self) -> bool {
        false
    }

    /// The plugin serves the request itself (an LLM call) instead of the route's upstream.
    fn serves_request(&self) -> bool {
        false
    }

    /// The plugin needs the route to have an `upstream` (`passthrough`).
    fn needs_route_upstream(&self) -> bool {
        false
    }

    /// Whether the plugin acts in an async `phase` at all. The chain skips a plugin whose phase is
    /// the default no-op: each async phase call builds and frees a boxed future (`async_trait`),
    /// and a request runs every phase of every plugin of its chain. The default says yes, so a
    /// plugin that forgets to say which phases it uses is only slower, never wrong.
    fn runs(&self, _phase: AsyncPhase) -> bool {
        true
    }

    /// APISIX's rewrite phase: authentication.
    async fn rewrite(
        &self,
        _req: &mut PluginRequest<'_>,
        _ctx: &mut PluginCtx,
    ) -> Result<(), Rejection> {
        Ok(())
    }

    /// APISIX's access phase: admission, and preparing the upstream call.
    async fn access(
        &self,
        _req: &mut PluginRequest<'_>,
        _ctx: &mut PluginCtx,
    ) -> Result<(), Rejection> {
        Ok(())
    }

    /// An attempt's instance has been picked (`ctx.llm.instance`), before anything is sent to
    /// it: admission per instance (a quota reserves there). Runs again for every attempt.
    async fn before_attempt(&self, _ctx: &mut PluginCtx) -> Result<(), AttemptRefusal> {
        Ok(())
    }

    /// The answer's header on its way to the client.
    fn header_filter(&self, _resp: &mut ResponseHeader, _ctx: &mut PluginCtx) {}

    /// The answer has ended and its usage is known; its last byte has not reached the client
    /// yet. Synchronous: it runs in Pingora's body filter.
    fn answer_end(&self, _ctx: &mut PluginCtx) {}

    /// After the request ended, however it ended (APISIX's log phase).
    async fn log(&self, _ctx: &mut PluginCtx) {}

    /// The secrets this plugin's config holds, scrubbed from every log line.
    fn credentials(&self) -> Vec<String> {
        Vec::new()
    }

    /// Active health probes to run while this plugin is configured.
    fn probes(&self) -> Vec<Arc<ActiveProbe>> {
        Vec::new()
    }

    /// The LLM instances this plugin serves, by the names quotas and headers use
    /// (`ai-proxy-<provider>` for ai-proxy, each instance's `name` for ai-proxy-multi).
    fn instance_names(&self) -> Vec<&str> {
        Vec::new()
    }

    /// The health of each instance this plugin balances over (name, healthy), for metrics.
    fn instance_health(&self) -> Vec<(&str, bool)> {
        Vec::new()
    }

    /// Check this plugin against the route's whole chain (itself included), once the route's,
    /// its service's and the plugin's places are known: a setting that could never apply on this
    /// route is refused. The error's path is relative to the plugin's config (`""` for the plugin
    /// itself, `"instances[0].name"`); the caller puts the plugin's path in front.
    fn check_route(&self, _chain: &Chain) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// The async phases of `Plugin`, for `Plugin::runs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncPhase {
    Rewrite,
    Access,
    BeforeAttempt,
    Log,
}

/// A plugin's refusal of an attempt's instance (`before_attempt`).
#[derive(Debug)]
pub struct AttemptRefusal {
    /// What the client gets when no other instance serves the request.
    pub rejection: Rejection,
    /// Another instance may serve it (ai-proxy-multi falls back on quota): pick again, as if
    /// this one had been tried.
    pub try_another: bool,
}

pub use crate::config::schema::PluginsConf;

/// Compile one object's `plugins` (a route's, a service's or a consumer's); `path` is that
/// object's path.
pub fn compile(
    conf: Option<&PluginsConf>,
    path: &str,
    owner: &Owner,
) -> Result<Vec<Arc<dyn Plugin>>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in conf.into_iter().flatten() {
        out.push(registry::build(
            name,
            value,
            &format!("{path}.plugins.{name}"),
            owner,
        )?);
    }
    Ok(out)
}
