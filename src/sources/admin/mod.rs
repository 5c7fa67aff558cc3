//! The APISIX admin API (`gateway.admin`): `/apisix/admin/{routes,services,upstreams,consumers}`
//! and consumer credentials, in APISIX v3's shapes, on its own Pingora listener in the gateway's
//! process. Every change goes through `Store::apply` (checked, compiled, persisted, then
//! published), so a request that follows an admin answer sees the change.
//!
//! Access: the client address must be in `allow` (if given; else 403), then the `X-API-KEY`
//! header must equal `key` (compared in constant time; else 401). Without a key (only allowed
//! on a loopback address) no key is asked for. Bodies are never logged: they hold provider keys.

pub mod api;
pub mod json;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::json;

use crate::config::gateway::AdminSettings;
use crate::router::cidr::{Cidr, Ip};
use crate::runtime::Store;
use crate::sources::Persist;
use api::{Api, Reply};

/// Largest request body accepted (413 past it).
pub const MAX_BODY: usize = 4 << 20;
/// Time to receive a whole request body (408 past it).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AdminService {
    api: Api,
    /// SHA-256 of the key: comparing digests takes the same time whatever the key's length and
    /// wherever the first difference is.
    key_digest: Option<[u8; 32]>,
    allow: Vec<Cidr>,
}

fn digest(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal digests, without an early exit.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminService {
    pub fn new(store: Arc<Store>, persist: Arc<dyn Persist>, settings: &AdminSettings) -> Self {
        AdminService {
            api: Api::new(store, persist, settings.redact_secrets),
            key_digest: settings.key.as_deref().map(|k| digest(k.as_bytes())),
            allow: settings.allow.clone(),
        }
    }

    /// The access checks: `None` lets the request through.
    fn check_access(&self, session: &ServerSession) -> Option<Reply> {
        if !self.allow.is_empty() {
            let ip = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| Ip::from_addr(a.ip()));
            if !ip.is_some_and(|ip| self.allow.iter().any(|c| c.contains(ip))) {
                return Some(Reply::error(403, "IP address not allowed"));
            }
        }
        if let Some(want) = &self.key_digest {
            let given = session
                .req_header()
                .headers
                .get("x-api-key")
                .map(|v| v.as_bytes())
                .unwrap_or(b"");
            if !same(&digest(given), want) {
                return Some(Reply::error(401, "failed to check token"));
            }
        }
        None
    }

    async fn serve(&self, session: &mut ServerSession) -> Reply {
        if let Some(refused) = self.check_access(session) {
            // The body is left unread: the connection cannot be reused.
            session.set_keepalive(None);
            return refused;
        }
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(reply) => {
                session.set_keepalive(None);
                return reply;
            }
        };
        let method = session.req_header().method.as_str().to_string();
        let uri = session.req_header().uri.clone();
        let api = &self.api;
        // A change compiles the config and may write a store, on this thread: the admin service
        // has its own threads (a Pingora service), so the data plane does not wait for it.
        let reply = api.handle(&method, uri.path(), uri.query(), &body);
        // Never the body or the key: only what was done and the answer's status.
        log::info!("admin API: {method} {} -> {}", uri.path(), reply.status);
        reply
    }
}

async fn read_body(session: &mut ServerSession) -> Result<bytes::Bytes, Reply> {
    let too_large = || {
        Reply::error(
            413,
            format!("request body too large (at most {MAX_BODY} bytes)"),
        )
    };
    let declared = crate::net::declared_length(session.req_header());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects && session.write_continue_response().await.is_err() {
        return Err(Reply::error(
            400,
            "invalid request body: the client went away",
        ));
    }
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(chunk) = session
            .read_request_body()
            .await
            .map_err(|_| Reply::error(400, "invalid request body: failed to read it"))?
        {
            if buf.len() + chunk.len() > MAX_BODY {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(Reply::error(408, "timed out reading the request body")))
}

#[async_trait]
impl ServeHttp for AdminService {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let reply = self.serve(session).await;
        let body = serde_json::to_vec(&reply.body).unwrap_or_else(|_| {
            json!({"error_msg": "failed to encode the answer"})
                .to_string()
                .into_bytes()
        });
        let mut b = Response::builder()
            .status(reply.status)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .header("server", "aigate");
        for (k, v) in &reply.headers {
            b = b.header(*k, v);
        }
        if reply.status == 405 {
            b = b.header("allow", "GET, PUT, POST, PATCH, DELETE");
        }
        b.body(body).unwrap_or_else(|_| {
            let mut r = Response::new(br#"{"error_msg":"internal error"}"#.to_vec());
            *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_compare() {
        let k = digest(b"edd1c9f034335f136f87ad84b625c8f1");
        assert!(same(&k, &digest(b"edd1c9f034335f136f87ad84b625c8f1")));
        assert!(!same(&k, &digest(b"edd1c9f034335f136f87ad84b625c8f2")));
        assert!(!same(&k, &digest(b"")));
    }
}
