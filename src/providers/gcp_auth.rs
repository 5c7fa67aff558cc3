//! GCP service-account auth for Vertex AI (`auth.gcp`).
//!
//! An RS256 JWT signed with the account's private key is exchanged at the account's `token_uri`
//! for an access token (OAuth 2.0 JWT bearer grant). The token is cached until
//! `expires_in - expire_early_secs` (capped by `max_ttl`) and refreshed by one request while the
//! others wait on it, so a burst after expiry makes one token call, not hundreds. Token sources
//! are shared process-wide per service account, so routes and config reloads reuse the token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::schema::GcpAuthConf;
use crate::net::client;
use crate::net::endpoint::{encode_query_component, Endpoint};

const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const JWT_LIFETIME_SECS: u64 = 3600;
const TOKEN_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A token answer is a few hundred bytes.
const MAX_TOKEN_RESPONSE: usize = 1024 * 1024;

#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

pub struct GcpTokenSource {
    client_email: String,
    key: jsonwebtoken::EncodingKey,
    key_id: Option<String>,
    token_uri: String,
    token_endpoint: Endpoint,
    max_ttl: Option<Duration>,
    expire_early: Duration,
    cached: RwLock<Option<(Arc<str>, Instant)>>,
    refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for GcpTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never prints the key or the token.
        f.debug_struct("GcpTokenSource")
            .field("client_email", &self.client_email)
            .finish()
    }
}

impl GcpTokenSource {
    /// Build (or reuse) the token source for `auth.gcp`. The service account comes from
    /// `service_account_json`, else from env `GCP_SERVICE_ACCOUNT`.
    pub fn for_conf(conf: &GcpAuthConf) -> Result<Arc<GcpTokenSource>, String> {
        let json = match &conf.service_account_json {
            Some(j) if !j.trim().is_empty() => j.clone(),
            _ => std::env::var("GCP_SERVICE_ACCOUNT").map_err(|_| {
                "no service account: set service_account_json or env GCP_SERVICE_ACCOUNT"
                    .to_string()
            })?,
        };
        let sa: ServiceAccount = serde_json::from_str(&json).map_err(|e| {
            format!(
                "service_account_json is not a service account key file: {}",
                key_file_error(&e)
            )
        })?;
        let token_uri = sa
            .token_uri
            .clone()
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string());
        let expire_early = Duration::from_secs(conf.expire_early_secs.unwrap_or(60));
        let max_ttl = conf.max_ttl.map(Duration::from_secs);
        let registry_key = format!(
            "{}|{}|{}|{:?}|{}",
            sa.client_email,
            sa.private_key_id.as_deref().unwrap_or(""),
            token_uri,
            max_ttl,
            expire_early.as_secs()
        );
        static REGISTRY: OnceLock<Mutex<HashMap<String, Arc<GcpTokenSource>>>> = OnceLock::new();
        let reg = REGISTRY.get_or_init(Default::default);
        if let Some(existing) = reg.lock().ok().and_then(|r| r.get(&registry_key).cloned()) {
            return Ok(existing);
        }
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(sa.private_key.as_bytes())
            .map_err(|_| "service account private_key is not a valid RSA PEM key".to_string())?;
        let token_endpoint =
            Endpoint::parse(&token_uri).map_err(|e| format!("service account token_uri: {e}"))?;
        let src = Arc::new(GcpTokenSource {
            client_email: sa.client_email,
            key,
            key_id: sa.private_key_id,
            token_uri,
            token_endpoint,
            max_ttl,
            expire_early,
            cached: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        });
        if let Ok(mut r) = reg.lock() {
            r.insert(registry_key, src.clone());
        }
        Ok(src)
    }

    fn fresh(&self) -> Option<Arc<str>> {
        let c = self.cached.read().ok()?;
        let (tok, until) = c.as_ref()?;
        (Instant::now() < *until).then(|| tok.clone())
    }

    /// A valid access token, fetching one if the cached token is missing or about to expire.
    pub async fn token(&self) -> Result<Arc<str>, String> {
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let _guard = self.refresh.lock().await;
        if let Some(t) = self.fresh() {
            return Ok(t); // another request refreshed it while we waited
        }
        let (token, lifetime) = self.fetch().await?;
        let mut ttl = lifetime.saturating_sub(self.expire_early);
        if let Some(max) = self.max_ttl {
            ttl = ttl.min(max);
        }
        let token: Arc<str> = token.into();
        if let Ok(mut c) = self.cached.write() {
            *c = Some((token.clone(), Instant::now() + ttl));
        }
        Ok(token)
    }

    fn assertion(&self) -> Result<String, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + JWT_LIFETIME_SECS,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = self.key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("signing the GCP JWT failed: {e}"))
    }

    async fn fetch(&self) -> Result<(String, Duration), String> {
        let jwt = self.assertion()?;
        let mut form = String::from("grant_type=");
        encode_query_component("urn:ietf:params:oauth:grant-type:jwt-bearer", &mut form);
        form.push_str("&assertion=");
        form.push_str(&jwt);
        let ep = &self.token_endpoint;
        let headers = [(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        )];
        let resp = client::send(
            ep,
            "POST",
            &ep.path_and_query(""),
            &headers,
            Bytes::from(form),
            TOKEN_CALL_TIMEOUT,
            true,
            MAX_TOKEN_RESPONSE,
        )
        .await
        .map_err(|e| format!("GCP token request to {ep} failed: {e}"))?;
        if resp.status() != 200 {
            return Err(format!(
                "GCP token endpoint {ep} answered {}",
                resp.status()
            ));
        }
        let t: TokenResponse = serde_json::from_slice(&resp.body)
            .map_err(|_| format!("GCP token endpoint {ep} sent an unexpected answer"))?;
        // `expires_in` is the token endpoint's word: capped at a day, so `now + ttl` (the cache
        // deadline) cannot overflow whatever it says. Google's tokens last an hour.
        let lifetime = t
            .expires_in
            .unwrap_or(3600)
            .min(crate::config::limits::MAX_SECS);
        Ok((t.access_token, Duration::from_secs(lifetime)))
    }
}

/// serde's messages can quote the input; for a key file that input is the private key.
fn key_file_error(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => "missing client_email or private_key".into(),
        _ => format!("invalid JSON at line {} column {}", e.line(), e.column()),
    }
}
