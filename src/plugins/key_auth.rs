//! `key-auth`: the request names its consumer with a key, in a header or a query parameter.
//!
//! On a route or service: `{header: "apikey", query: "apikey", hide_credentials: false}` say
//! where the key is. On a consumer (or one of its credentials): `{key}`, the consumer's key.
//! No key: 401 "Missing API key in request"; a key no consumer has: 401 "Invalid API key in
//! request". Keys are looked up by their digest (`Consumers::by_key`): one hash, whatever the
//! number of consumers, and no timing that tells a near miss from a far one.

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderName;
use serde::Deserialize;

use super::consumer::Credential;
use super::ctx::{PluginCtx, PluginRequest};
use super::registry::{self, Registration};
use super::{AsyncPhase, Plugin};
use crate::config::ConfigError;
use crate::error::{GatewayError, Rejection};
use crate::net::endpoint::encode_query_component;
use crate::router::vars::Variable;

pub const REGISTRATION: Registration = Registration {
    name: "key-auth",
    priority: 2500,
    build: |conf, path, _owner| {
        let conf: KeyAuthConf = registry::parse(conf, path)?;
        Ok(Arc::new(KeyAuth::build(&conf, path)?))
    },
    credential: Some(|conf, path| {
        let conf: KeyAuthCredentialConf = registry::parse(conf, path)?;
        if conf.key.is_empty() {
            return Err(ConfigError::new(format!("{path}.key"), "must not be empty"));
        }
        Ok(Credential::Key(conf.key))
    }),
};

/// On a route or service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyAuthConf {
    #[serde(default = "default_name")]
    header: String,
    #[serde(default = "default_name")]
    query: String,
    #[serde(default)]
    hide_credentials: bool,
}

fn default_name() -> String {
    "apikey".into()
}

/// On a consumer or credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyAuthCredentialConf {
    key: String,
}

pub struct KeyAuth {
    header: HeaderName,
    /// The query parameter, as a variable (percent-decoded when read).
    query_var: Variable,
    query: String,
    hide_credentials: bool,
}

impl KeyAuth {
    fn build(conf: &KeyAuthConf, path: &str) -> Result<KeyAuth, ConfigError> {
        let header = HeaderName::from_bytes(conf.header.as_bytes())
            .map_err(|_| ConfigError::new(format!("{path}.header"), "not a valid header name"))?;
        if conf.query.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.query"),
                "must not be empty",
            ));
        }
        let query_var = Variable::parse(&format!("arg_{}", conf.query))
            .map_err(|m| ConfigError::new(format!("{path}.query"), m))?;
        Ok(KeyAuth {
            header,
            query_var,
            query: conf.query.clone(),
            hide_credentials: conf.hide_credentials,
        })
    }

    fn rejection(code: &'static str, message: &str) -> Rejection {
        GatewayError::new(401, "invalid_request_error", code, message).into()
    }

    /// The request's query without the key parameter.
    fn query_without_key(&self, query: &str) -> String {
        let mut encoded = String::new();
        encode_query_component(&self.query, &mut encoded);
        query
            .split('&')
            .filter(|p| {
                let name = p.split('=').next().unwrap_or("");
                name != self.query && name != encoded
            })
            .collect::<Vec<_>>()
            .join("&")
    }
}

#[async_trait]
impl Plugin for KeyAuth {
    fn runs(&self, phase: AsyncPhase) -> bool {
        matches!(phase, AsyncPhase::Rewrite)
    }

    fn name(&self) -> &'static str {
        REGISTRATION.name
    }

    fn priority(&self) -> i32 {
        REGISTRATION.priority
    }

    async fn rewrite(
        &self,
        req: &mut PluginRequest<'_>,
        ctx: &mut PluginCtx,
    ) -> Result<(), Rejection> {
        let (consumer, in_query) = {
            let key_header = req.header.headers.get(&self.header);
            let from_query;
            let (key, in_query): (&[u8], bool) = match key_header {
                Some(v) => (v.as_bytes(), false),
                None => {
                    from_query = self.query_var.read_string(&req.view(ctx));
                    match &from_query {
                        Some(k) => (k.as_bytes(), true),
                        None => {
                            return Err(Self::rejection(
                                "missing_api_key",
                                "Missing API key in request",
                            ))
                        }
                    }
                }
            };
            match req.consumers.by_key(key) {
                Some(c) => (c.clone(), in_query),
                None => {
                    return Err(Self::rejection(
                        "invalid_api_key",
                        "Invalid API key in request",
                    ))
                }
            }
        };
        // The key is the client's credential for the gateway: it never reaches a provider (a
        // third party), and with `hide_credentials` not the route's upstream either.
        if self.hide_credentials || req.to_provider {
            req.header.remove_header(&self.header);
        }
        if self.hide_credentials && in_query {
            let uri = &req.header.uri;
            let rest = self.query_without_key(uri.query().unwrap_or(""));
            let new = if rest.is_empty() {
                uri.path().to_string()
            } else {
                format!("{}?{rest}", uri.path())
            };
            if let Ok(u) = new.parse() {
                req.header.set_uri(u);
            }
        }
        ctx.consumer = Some(consumer);
        Ok(())
    }
}
