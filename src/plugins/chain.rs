//! A route's plugins in the order they run, and the phases the proxy glue runs through them.
//!
//! Order is APISIX's: by priority, highest first (key-auth 2500, then ai-rate-limiting 1030, then
//! ai-proxy 999 / ai-proxy-multi 998). A route's plugins are its service's with the route's own
//! winning plugin by plugin name, as APISIX merges them.

use std::sync::Arc;

use pingora_http::ResponseHeader;

use super::ctx::{PluginCtx, PluginRequest};
use super::{AsyncPhase, AttemptRefusal, Plugin};
use crate::error::Rejection;

pub struct Chain {
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Chain {
    /// `plugins` in any order; each name at most once.
    pub fn new(mut plugins: Vec<Arc<dyn Plugin>>) -> Chain {
        // Stable for equal priorities: by name, so the order never depends on the config's.
        plugins.sort_by(|a, b| {
            b.priority()
                .cmp(&a.priority())
                .then_with(|| a.name().cmp(b.name()))
        });
        Chain { plugins }
    }

    /// `over`'s plugins replace `base`'s of the same name; the others of both are kept.
    pub fn merge(base: &[Arc<dyn Plugin>], over: &[Arc<dyn Plugin>]) -> Vec<Arc<dyn Plugin>> {
        let mut out: Vec<Arc<dyn Plugin>> = base
            .iter()
            .filter(|p| !over.iter().any(|o| o.name() == p.name()))
            .cloned()
            .collect();
        out.extend(over.iter().cloned());
        out
    }

    /// This chain with a consumer's plugins over it (APISIX: consumer over route over service).
    /// A consumer that brings its own LLM plugin replaces the route's, whatever its name.
    pub fn with_consumer(&self, consumer: &[Arc<dyn Plugin>]) -> Chain {
        let replaces_llm = consumer.iter().any(|p| p.serves_request());
        let base: Vec<Arc<dyn Plugin>> = self
            .plugins
            .iter()
            .filter(|p| !(replaces_llm && p.serves_request()))
            .cloned()
            .collect();
        Chain::new(Chain::merge(&base, consumer))
    }

    pub fn plugins(&self) -> &[Arc<dyn Plugin>] {
        &self.plugins
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Plugin>> {
        self.plugins.iter().find(|p| p.name() == name)
    }

    /// Some plugin needs the JSON request body before its access phase.
    pub fn needs_body(&self) -> bool {
        self.plugins.iter().any(|p| p.needs_body())
    }

    /// A plugin serves the request itself (an LLM call), instead of the route's upstream.
    pub fn serves_request(&self) -> bool {
        self.plugins.iter().any(|p| p.serves_request())
    }

    /// APISIX's rewrite phase: authentication.
    pub async fn rewrite(
        &self,
        req: &mut PluginRequest<'_>,
        ctx: &mut PluginCtx,
    ) -> Result<(), Rejection> {
        for p in self.plugins.iter().filter(|p| p.runs(AsyncPhase::Rewrite)) {
            p.rewrite(req, ctx).await?;
        }
        Ok(())
    }

    /// APISIX's access phase: admission, and preparing the upstream call.
    pub async fn access(
        &self,
        req: &mut PluginRequest<'_>,
        ctx: &mut PluginCtx,
    ) -> Result<(), Rejection> {
        for p in self.plugins.iter().filter(|p| p.runs(AsyncPhase::Access)) {
            p.access(req, ctx).await?;
        }
        Ok(())
    }

    /// An attempt's instance is picked; plugins admit it or refuse it.
    pub async fn before_attempt(&self, ctx: &mut PluginCtx) -> Result<(), AttemptRefusal> {
        for p in self
            .plugins
            .iter()
            .filter(|p| p.runs(AsyncPhase::BeforeAttempt))
        {
            p.before_attempt(ctx).await?;
        }
        Ok(())
    }

    /// The answer's header on its way to the client.
    pub fn header_filter(&self, resp: &mut ResponseHeader, ctx: &mut PluginCtx) {
        for p in &self.plugins {
            p.header_filter(resp, ctx);
        }
    }

    /// The answer has ended and its usage is known; its last byte has not reached the client yet.
    pub fn answer_end(&self, ctx: &mut PluginCtx) {
        for p in &self.plugins {
            p.answer_end(ctx);
        }
    }

    /// After the request ended, however it ended.
    pub async fn log(&self, ctx: &mut PluginCtx) {
        for p in self.plugins.iter().filter(|p| p.runs(AsyncPhase::Log)) {
            p.log(ctx).await;
        }
    }
}
