//! `ai-proxy`: one LLM provider instance per route.
//!
//! Accepts the current schema (`provider`, `auth`, `options`, `override`, ...) and the older one of
//! seed 001 (`model: {provider, name, options}`, `passthrough`). With the older schema, `name` is
//! the model and `model.options` are options; top-level `options` still win over both.

use std::sync::Arc;

use async_trait::async_trait;

use super::ctx::{LlmCall, LlmPlugin, PluginCtx, PluginRequest};
use super::registry::{self, Registration};
use super::{AsyncPhase, Plugin};
use crate::config::schema::AiProxyConf;
use crate::config::ConfigError;
use crate::error::Rejection;
use crate::providers::instance::{InstanceSpec, LlmInstance};

pub const REGISTRATION: Registration = Registration {
    name: "ai-proxy",
    priority: 999,
    build: |conf, path, _owner| {
        let conf: AiProxyConf = registry::parse(conf, path)?;
        Ok(Arc::new(Arc::new(AiProxy::build(&conf, path)?)))
    },
    credential: None,
};

pub struct AiProxy {
    pub instance: Arc<LlmInstance>,
    /// Send the LLM's answer on to the route's `upstream` and answer with that upstream's reply.
    pub passthrough: bool,
}

impl AiProxy {
    pub fn build(conf: &AiProxyConf, path: &str) -> Result<AiProxy, ConfigError> {
        crate::providers::instance::check_keepalive_pool(conf.keepalive_pool, path)?;
        let provider = match (conf.provider, conf.model.as_ref().map(|m| m.provider)) {
            (Some(p), None) => p,
            (None, Some(p)) => p,
            (Some(p), Some(legacy)) if p == legacy => p,
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    format!("{path}.model.provider"),
                    "differs from provider; set only one of them",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    format!("{path}.provider"),
                    "provider is required",
                ))
            }
        };
        let mut options = serde_json::Map::new();
        if let Some(m) = &conf.model {
            if let Some(o) = &m.options {
                options.extend(o.clone());
            }
            if let Some(name) = &m.name {
                options.insert("model".into(), serde_json::Value::String(name.clone()));
            }
        }
        if let Some(o) = &conf.options {
            options.extend(o.clone());
        }
        let driver = crate::providers::driver(provider);
        let spec = InstanceSpec {
            name: format!("ai-proxy-{}", driver.name()),
            provider,
            auth: &conf.auth,
            options: (!options.is_empty()).then_some(&options),
            endpoint: conf.override_.as_ref().and_then(|o| o.endpoint.as_deref()),
            provider_conf: conf.provider_conf.as_ref(),
            timeout_ms: conf.timeout,
            keepalive: conf.keepalive,
            keepalive_timeout_ms: conf.keepalive_timeout,
            ssl_verify: conf.ssl_verify,
            logging: conf.logging,
            forward_client_authorization: conf.forward_client_authorization,
        };
        let instance = LlmInstance::build(spec, path)?;
        Ok(AiProxy {
            instance: Arc::new(instance),
            passthrough: conf.passthrough.unwrap_or(false),
        })
    }
}

/// The plugin is the shared `AiProxy`: an LLM call holds on to it for the whole request.
#[async_trait]
impl Plugin for Arc<AiProxy> {
    fn runs(&self, phase: AsyncPhase) -> bool {
        matches!(phase, AsyncPhase::Access)
    }

    fn name(&self) -> &'static str {
        REGISTRATION.name
    }

    fn priority(&self) -> i32 {
        REGISTRATION.priority
    }

    fn needs_body(&self) -> bool {
        true
    }

    fn serves_request(&self) -> bool {
        true
    }

    fn needs_route_upstream(&self) -> bool {
        self.passthrough
    }

    async fn access(
        &self,
        req: &mut PluginRequest<'_>,
        ctx: &mut PluginCtx,
    ) -> Result<(), Rejection> {
        if let Some(body) = req.body.take() {
            let call = LlmCall::new(
                LlmPlugin::Single(self.clone()),
                body,
                self.instance.clone(),
                Vec::new(),
                None,
            );
            ctx.llm = Some(Box::new(call));
        }
        Ok(())
    }

    fn credentials(&self) -> Vec<String> {
        self.instance.credentials()
    }

    fn instance_names(&self) -> Vec<&str> {
        vec![self.instance.name.as_str()]
    }
}
