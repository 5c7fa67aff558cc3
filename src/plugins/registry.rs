//! Plugin names, their priorities, and the constructors that check their config.
//!
//! A plugin is one file that exports a `REGISTRATION`; adding one here is all it takes to make
//! its name valid in `plugins:`. A name not listed is an error (a route that silently lost a
//! plugin, such as its auth, would be worse than one that refuses to load).

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::consumer::Credential;
use super::{ai_proxy, ai_proxy_multi, ai_rate_limiting, key_auth, prometheus, Plugin};
use crate::config::ConfigError;

/// Builds a plugin from its config; `path` is the config path of the plugin's object, `owner`
/// the object whose `plugins` it is in.
pub type Build = fn(&serde_yaml::Value, &str, &Owner) -> Result<Arc<dyn Plugin>, ConfigError>;

/// Whose `plugins` a plugin was configured in: what its per-request state is scoped to (a quota
/// on a consumer is that consumer's own; one on a route or service is counted per route).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Route(String),
    Service(String),
    Consumer(String),
}

pub struct Registration {
    pub name: &'static str,
    /// APISIX's priority: higher runs first.
    pub priority: i32,
    pub build: Build,
    /// Authentication plugins: what their entry in a consumer's `plugins` (or credential) is,
    /// a credential rather than a plugin to run.
    pub credential: Option<CredentialParse>,
}

/// Parses an authentication plugin's consumer-side config (`key-auth: {key}`).
pub type CredentialParse = fn(&serde_yaml::Value, &str) -> Result<Credential, ConfigError>;

const PLUGINS: &[&Registration] = &[
    &key_auth::REGISTRATION,
    &ai_proxy::REGISTRATION,
    &ai_proxy_multi::REGISTRATION,
    &ai_rate_limiting::REGISTRATION,
    &prometheus::REGISTRATION,
];

pub fn find(name: &str) -> Option<&'static Registration> {
    PLUGINS.iter().copied().find(|r| r.name == name)
}

/// Every plugin name aigate knows.
pub fn names() -> impl Iterator<Item = &'static str> {
    PLUGINS.iter().map(|r| r.name)
}

/// Build the plugin `name` from its config at `path` (the plugin's own object, e.g.
/// `routes[0].plugins.ai-proxy`).
pub fn build(
    name: &str,
    conf: &serde_yaml::Value,
    path: &str,
    owner: &Owner,
) -> Result<Arc<dyn Plugin>, ConfigError> {
    let Some(reg) = find(name) else {
        let known: Vec<&str> = names().collect();
        return Err(ConfigError::new(
            path,
            format!("unknown plugin {name:?} (aigate has: {})", known.join(", ")),
        ));
    };
    (reg.build)(conf, path, owner)
}

/// A plugin's typed config from its YAML/JSON value, with the failing field's full path.
pub fn parse<T: DeserializeOwned>(conf: &serde_yaml::Value, path: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(conf.clone()).map_err(|e| {
        let inner = e.path().to_string();
        let at = if inner.is_empty() || inner == "." {
            path.to_string()
        } else {
            format!("{path}.{inner}")
        };
        let message = e.into_inner().to_string();
        let message = message
            .strip_prefix(&format!("{inner}: "))
            .map(str::to_string)
            .unwrap_or(message);
        ConfigError::new(at, message)
    })
}
