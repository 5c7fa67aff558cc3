//! Plugins, compiled from their APISIX config into runtime objects.
//!
//! A route's plugins are the service's plugins with the route's own winning per plugin name,
//! merged once at load time.

pub mod ai_proxy;
pub mod ai_proxy_multi;

use std::sync::Arc;

use crate::config::schema::PluginsConf;
use crate::config::ConfigError;

#[derive(Default, Clone)]
pub struct RoutePlugins {
    pub ai_proxy: Option<Arc<ai_proxy::AiProxy>>,
    pub ai_proxy_multi: Option<Arc<ai_proxy_multi::AiProxyMulti>>,
}

impl RoutePlugins {
    /// Compile one object's `plugins` (a route's or a service's); `path` is that object's path.
    pub fn compile(conf: Option<&PluginsConf>, path: &str) -> Result<RoutePlugins, ConfigError> {
        let Some(conf) = conf else {
            return Ok(RoutePlugins::default());
        };
        let ai_proxy = match &conf.ai_proxy {
            Some(c) => Some(Arc::new(ai_proxy::AiProxy::build(
                c,
                &format!("{path}.plugins.ai-proxy"),
            )?)),
            None => None,
        };
        let ai_proxy_multi = match &conf.ai_proxy_multi {
            Some(c) => Some(Arc::new(ai_proxy_multi::AiProxyMulti::build(
                c,
                &format!("{path}.plugins.ai-proxy-multi"),
            )?)),
            None => None,
        };
        Ok(RoutePlugins {
            ai_proxy,
            ai_proxy_multi,
        })
    }

    /// The route's plugins over its service's: the route wins plugin by plugin. Service plugins
    /// are shared (same runtime object, so one balancer state and one set of health probes for
    /// every route of the service).
    pub fn over(
        self,
        service: &RoutePlugins,
        route_path: &str,
    ) -> Result<RoutePlugins, ConfigError> {
        let merged = RoutePlugins {
            ai_proxy: self.ai_proxy.or_else(|| service.ai_proxy.clone()),
            ai_proxy_multi: self
                .ai_proxy_multi
                .or_else(|| service.ai_proxy_multi.clone()),
        };
        if merged.ai_proxy.is_some() && merged.ai_proxy_multi.is_some() {
            return Err(ConfigError::new(
                format!("{route_path}.plugins"),
                "ai-proxy and ai-proxy-multi both apply to this route; use one of them",
            ));
        }
        Ok(merged)
    }

    /// Whether the route is an AI route (its body is an LLM request).
    pub fn is_ai(&self) -> bool {
        self.ai_proxy.is_some() || self.ai_proxy_multi.is_some()
    }
}
