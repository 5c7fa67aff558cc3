//! Plugins, compiled from their APISIX config into runtime objects.
//!
//! A route's plugins are the service's plugins with the route's own winning per plugin name,
//! merged once at load time.

pub mod ai_proxy;

use std::sync::Arc;

use crate::config::schema::PluginsConf;
use crate::config::ConfigError;

#[derive(Default, Clone)]
pub struct RoutePlugins {
    pub ai_proxy: Option<Arc<ai_proxy::AiProxy>>,
}

impl RoutePlugins {
    /// `route` wins over `service`, plugin by plugin. Paths point at whichever object supplied it.
    pub fn compile(
        route: Option<&PluginsConf>,
        route_path: &str,
        service: Option<&PluginsConf>,
        service_path: &str,
    ) -> Result<RoutePlugins, ConfigError> {
        let chosen = match route.and_then(|p| p.ai_proxy.as_ref()) {
            Some(c) => Some((c, format!("{route_path}.plugins.ai-proxy"))),
            None => service
                .and_then(|p| p.ai_proxy.as_ref())
                .map(|c| (c, format!("{service_path}.plugins.ai-proxy"))),
        };
        let ai_proxy = match chosen {
            Some((conf, path)) => Some(Arc::new(ai_proxy::AiProxy::build(conf, &path)?)),
            None => None,
        };
        Ok(RoutePlugins { ai_proxy })
    }

    /// Whether the route is an AI route (its body is an LLM request).
    pub fn is_ai(&self) -> bool {
        self.ai_proxy.is_some()
    }
}
