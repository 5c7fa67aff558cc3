//! A provider instance: one provider + endpoint + auth + options, compiled from config.
//!
//! `ai-proxy` has one; `ai-proxy-multi` has several. Everything the request path needs is
//! precomputed here (parsed endpoint, header names and values, encoded query, serialized options).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::gcp_auth::GcpTokenSource;
use super::{driver, vertex_ai, Provider};
use crate::config::schema::{AuthConf, LoggingConf, ProviderConf, ProviderName};
use crate::config::{limits, ConfigError};
use crate::llm::request::{BodyOptions, LlmRequest};
use crate::net::endpoint::{encode_query_component, Endpoint};
use crate::net::peer::PeerOptions;

/// `keepalive_pool` sizes a per-plugin connection pool in APISIX; aigate's connections to
/// providers live in Pingora's one pool per process, so only APISIX's default, 30, is accepted.
pub fn check_keepalive_pool(v: Option<u32>, path: &str) -> Result<(), ConfigError> {
    crate::config::limits::apisix_default_only(v, 30, crate::config::limits::ONE_PROCESS_POOL)
        .map_err(|m| ConfigError::new(format!("{path}.keepalive_pool"), m))
}

/// The settings an instance is built from, whichever plugin schema they came from.
pub struct InstanceSpec<'a> {
    pub name: String,
    pub provider: ProviderName,
    pub auth: &'a AuthConf,
    pub options: Option<&'a serde_json::Map<String, serde_json::Value>>,
    pub endpoint: Option<&'a str>,
    pub provider_conf: Option<&'a ProviderConf>,
    pub timeout_ms: Option<u64>,
    pub keepalive: Option<bool>,
    pub keepalive_timeout_ms: Option<u64>,
    pub ssl_verify: Option<bool>,
    pub logging: Option<LoggingConf>,
    pub forward_client_authorization: Option<bool>,
}

pub struct LlmInstance {
    pub name: String,
    pub provider: ProviderName,
    pub driver: &'static dyn Provider,
    /// The chat endpoint: `override.endpoint` or the provider's default (shared with every
    /// request's `Target`, so what it caches is built once).
    pub endpoint: Arc<Endpoint>,
    pub endpoint_overridden: bool,
    pub provider_conf: Option<ProviderConf>,
    pub auth_headers: Vec<(HeaderName, HeaderValue)>,
    /// `auth.query`, already encoded as `k=v&k2=v2`.
    pub auth_query: String,
    pub gcp: Option<Arc<GcpTokenSource>>,
    pub options: BodyOptions,
    pub peer: PeerOptions,
    pub keepalive: bool,
    pub timeout: Duration,
    pub logging: LoggingConf,
    /// Bring your own key (aigate's `forward_client_authorization`): a client's `Authorization`
    /// is sent instead of the configured credentials.
    pub forward_client_authorization: bool,
    credentials: Vec<String>,
}

impl std::fmt::Debug for LlmInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Auth values are deliberately left out.
        f.debug_struct("LlmInstance")
            .field("name", &self.name)
            .field("provider", &self.driver.name())
            .field("endpoint", &self.endpoint.to_string())
            .finish()
    }
}

/// How one request is sent to an instance.
pub struct Target {
    pub endpoint: Arc<Endpoint>,
    /// Vertex AI embeddings: convert to and from the `:predict` API.
    pub vertex_predict: bool,
}

impl LlmInstance {
    /// `path` is the config path of the plugin (or instance) for error messages.
    pub fn build(spec: InstanceSpec<'_>, path: &str) -> Result<LlmInstance, ConfigError> {
        let drv = driver(spec.provider);
        let err = |field: &str, msg: String| ConfigError::new(format!("{path}{field}"), msg);

        let (endpoint, overridden) = match spec.endpoint {
            Some(url) => (
                Endpoint::parse(url).map_err(|m| err(".override.endpoint", m))?,
                true,
            ),
            None => match drv.default_endpoint(spec.provider_conf) {
                Ok(Some(url)) => (
                    Endpoint::parse(&url).map_err(|m| err(".provider_conf", m))?,
                    false,
                ),
                Ok(None) => {
                    return Err(err(
                        ".override.endpoint",
                        format!(
                            "provider {} has no default endpoint; override.endpoint is required",
                            drv.name()
                        ),
                    ))
                }
                Err(m) => return Err(err(".provider_conf", m)),
            },
        };

        let mut auth_headers = Vec::new();
        for (k, v) in spec.auth.header.iter().flatten() {
            let field = format!(".auth.header.{k}");
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(err(
                    &field,
                    "header names may only contain letters, digits, '.', '_' and '-'".into(),
                ));
            }
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| err(&field, "invalid header name".into()))?;
            let mut value = HeaderValue::from_str(v)
                .map_err(|_| err(&field, "invalid header value (control characters?)".into()))?;
            value.set_sensitive(true);
            auth_headers.push((name, value));
        }
        let mut auth_query = String::new();
        let mut credentials: Vec<String> = spec
            .auth
            .header
            .iter()
            .flatten()
            .map(|(_, v)| v.clone())
            .collect();
        for (k, v) in spec.auth.query.iter().flatten() {
            credentials.push(v.clone());
            let mut encoded = String::new();
            encode_query_component(v, &mut encoded);
            credentials.push(encoded);
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(err(
                    &format!(".auth.query.{k}"),
                    "invalid query parameter name".into(),
                ));
            }
            if !auth_query.is_empty() {
                auth_query.push('&');
            }
            encode_query_component(k, &mut auth_query);
            auth_query.push('=');
            encode_query_component(v, &mut auth_query);
        }
        let gcp = match &spec.auth.gcp {
            Some(g) => {
                // APISIX: max_ttl >= 1, expire_early_secs >= 0; both at most a day here, so the
                // cache deadline (`now + ttl`) can never overflow.
                if let Some(v) = g.max_ttl {
                    limits::whole_secs(v, 1).map_err(|m| err(".auth.gcp.max_ttl", m))?;
                }
                if let Some(v) = g.expire_early_secs {
                    limits::whole_secs(v, 0).map_err(|m| err(".auth.gcp.expire_early_secs", m))?;
                }
                Some(GcpTokenSource::for_conf(g).map_err(|m| err(".auth.gcp", m))?)
            }
            None => None,
        };

        let timeout =
            limits::millis(spec.timeout_ms.unwrap_or(30_000), 1).map_err(|m| err(".timeout", m))?;
        let keepalive_timeout = limits::millis(spec.keepalive_timeout_ms.unwrap_or(60_000), 1000)
            .map_err(|m| err(".keepalive_timeout", m))?;
        let keepalive = spec.keepalive.unwrap_or(true);
        let peer = PeerOptions {
            connect_timeout: timeout,
            read_timeout: timeout,
            write_timeout: timeout,
            idle_timeout: keepalive.then_some(keepalive_timeout),
            verify_tls: spec.ssl_verify.unwrap_or(true),
        };

        Ok(LlmInstance {
            name: spec.name,
            provider: spec.provider,
            driver: drv,
            endpoint: Arc::new(endpoint),
            endpoint_overridden: overridden,
            provider_conf: spec.provider_conf.cloned(),
            auth_headers,
            auth_query,
            gcp,
            options: spec.options.map(BodyOptions::from_map).unwrap_or_default(),
            peer,
            keepalive,
            timeout,
            logging: spec.logging.unwrap_or_default(),
            forward_client_authorization: spec.forward_client_authorization.unwrap_or(false),
            credentials,
        })
    }

    /// The secret values this instance sends (for scrubbing logs): whole header values, the part
    /// after a scheme like `Bearer `, and query values raw and encoded.
    pub fn credentials(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.credentials {
            out.push(c.clone());
            if let Some((_, token)) = c.split_once(' ') {
                out.push(token.trim().to_string());
            }
        }
        out
    }

    /// Where this request goes. Chat requests use the configured endpoint; embeddings on a default
    /// endpoint go to the provider's embeddings endpoint, and Vertex AI embeddings to `:predict`.
    pub fn target(&self, req: &LlmRequest, model: Option<&str>) -> Result<Target, String> {
        if !req.is_embeddings() {
            return Ok(Target {
                endpoint: self.endpoint.clone(),
                vertex_predict: false,
            });
        }
        if self.driver.embeddings_via_predict() {
            let endpoint = if self.endpoint_overridden {
                self.endpoint.clone()
            } else {
                let model = model.ok_or("an embeddings request to vertex-ai needs a model")?;
                Arc::new(vertex_ai::predict_endpoint(
                    self.provider_conf.as_ref(),
                    model,
                )?)
            };
            return Ok(Target {
                endpoint,
                vertex_predict: true,
            });
        }
        let endpoint = if self.endpoint_overridden {
            self.endpoint.clone()
        } else {
            self.driver
                .default_embeddings_endpoint(&self.endpoint)
                .map(Arc::new)
                .unwrap_or_else(|| self.endpoint.clone())
        };
        Ok(Target {
            endpoint,
            vertex_predict: false,
        })
    }
}
