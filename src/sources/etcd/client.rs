//! An etcd v3 client over etcd's HTTP/JSON gateway, for keeping configuration resources in etcd
//! (as Apache APISIX does; its lua-resty-etcd speaks the same gateway).
//!
//! Why the gateway and not the `etcd-client` crate: that crate is tonic (gRPC) and needs `protoc`
//! on every machine that builds aigate, and it pulls in a whole gRPC stack next to Pingora's. The
//! gateway is plain HTTP/1.1 with JSON bodies (`POST /v3/kv/range`, `/v3/kv/put`,
//! `/v3/kv/deleterange`, `/v3/watch`, `/v3/auth/authenticate`; keys and values base64), which
//! the gateway's own outbound client ([`crate::net::client`], on Pingora's connector and DNS)
//! already speaks. Served by every etcd since 3.4 on the client port.
//!
//! # Keys
//! Every key and prefix a caller passes is relative to [`EtcdSettings::prefix`] (`/aigate`),
//! which is prepended verbatim: `put("/routes/1", ..)` writes `/aigate/routes/1`. Keys that come
//! back ([`Kv::key`], [`WatchEvent::Delete`]) are relative the same way. Pass keys that start
//! with `/`; an empty prefix in [`EtcdClient::get_prefix`] / [`EtcdClient::watch`] means `/`
//! (everything under `/aigate/`, never a sibling such as `/aigate2`).
//!
//! # Bounds
//! - A unary call ([`EtcdClient::get_prefix`], [`EtcdClient::put`], [`EtcdClient::delete`]) takes
//!   at most [`EtcdSettings::timeout`] in all, authentication, every endpoint and the one retry
//!   after an expired token included. Each endpoint tried gets an equal share of what is left
//!   (the last one all of it), so one that hangs cannot starve the others.
//! - A watch is one long HTTP response. It asks etcd for progress notifications
//!   (`progress_notify`), which etcd sends on an idle watch every
//!   `--experimental-watch-progress-notify-interval` (10 minutes by default). When the stream has
//!   been silent for [`EtcdClient::watch_quiet_limit`] = max(3 × timeout, 10 s), the client does
//!   not trust the connection any more: it opens the watch again, from the first revision it has
//!   not delivered, on a new connection (any endpoint), and drops the old one. If that fails the
//!   watch is broken: [`Watch::next`] returns an error at most quiet limit + timeout after the
//!   last byte etcd sent. A killed etcd closes the connection and is seen at once. On an idle
//!   cluster with the default interval this costs one new watch request per quiet limit, and no
//!   event is lost or repeated across it.
//!
//! # Multiple endpoints
//! Tried in order, starting with the last one that answered; the client moves on when one is
//! unreachable, times out or answers "unavailable" (no leader). A put or delete that timed out
//! on one endpoint may have been applied there before it is sent to the next.
//!
//! # Authentication
//! With `user` and `password`, the client authenticates (`/v3/auth/authenticate`) before its
//! first call and sends the token in the `Authorization` header (the gateway takes it raw). When
//! etcd rejects the token (expired, or etcd restarted: 401 / code 16 "invalid auth token"), it
//! authenticates once more and retries. Neither the password nor the token is ever part of an
//! error, a log line or a `Debug` output.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use pingora_core::protocols::http::client::HttpSession;
use pingora_http::RequestHeader;
use serde::{Deserialize, Deserializer};
use serde_json::json;
use tokio::time::Instant;

use crate::net::client::{self, ClientError};
use crate::net::endpoint::Endpoint;
use crate::net::peer::{fresh_group_key, http_peer, PeerOptions};

/// The largest unary answer read (a whole configuration prefix).
const MAX_RESPONSE: usize = 64 << 20;
/// The largest watch response, and so the most a watch buffers while one arrives.
const MAX_WATCH_RESPONSE: usize = 16 << 20;
/// The largest error answer read when a watch request is refused.
const MAX_ERROR_BODY: usize = 64 << 10;
/// The floor of [`EtcdClient::watch_quiet_limit`].
const WATCH_QUIET_FLOOR: Duration = Duration::from_secs(10);

/// Where the etcd cluster is and how to talk to it.
#[derive(Clone)]
pub struct EtcdSettings {
    /// `http://host:port` or `https://host:port`, tried in order.
    pub endpoints: Vec<String>,
    /// Prepended to every key (`/aigate`); a trailing `/` is dropped.
    pub prefix: String,
    /// Bound on every unary call and on opening a watch.
    pub timeout: Duration,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// One key and its value, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// Relative to [`EtcdSettings::prefix`].
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Kv),
    Delete { key: String, mod_revision: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No endpoint could be reached or answered in time, or a watch connection broke.
    Unavailable(String),
    /// The watch's start revision has been compacted away: read everything again
    /// ([`EtcdClient::get_prefix`]) and watch from the revision that returns.
    Compacted { compact_revision: i64 },
    /// Wrong user or password, permission denied, or credentials missing.
    Auth(String),
    /// etcd answered something this client does not understand, or an error it does not expect.
    Protocol(String),
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtcdError::Unavailable(m) => write!(f, "etcd unavailable: {m}"),
            EtcdError::Compacted { compact_revision } => write!(
                f,
                "etcd watch start revision compacted (compacted up to revision {compact_revision})"
            ),
            EtcdError::Auth(m) => write!(f, "etcd authentication: {m}"),
            EtcdError::Protocol(m) => write!(f, "etcd protocol: {m}"),
        }
    }
}

impl std::error::Error for EtcdError {}

/// A client for one etcd cluster. Cloning is cheap: clones share the endpoint memory and the
/// auth token.
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<Endpoint>,
    prefix: String,
    timeout: Duration,
    credentials: Option<Credentials>,
    /// The endpoint that answered last: tried first.
    current: AtomicUsize,
    token: Mutex<Token>,
}

struct Credentials {
    user: String,
    password: String,
}

#[derive(Clone)]
enum Token {
    /// Not authenticated yet (or the token was rejected).
    Unknown,
    /// etcd said authentication is not enabled: no token is sent.
    NotEnabled,
    Have(String),
}

impl fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("EtcdClient")
            .field(
                "endpoints",
                &i.endpoints
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>(),
            )
            .field("prefix", &i.prefix)
            .field("timeout", &i.timeout)
            .field("user", &i.credentials.as_ref().map(|c| &c.user))
            .finish_non_exhaustive()
    }
}

/// How one attempt on one endpoint ended, when it did not succeed.
enum Failure {
    /// This endpoint is unreachable or cannot serve now: try the next one.
    Next(EtcdError),
    /// An answer that another endpoint would give too.
    Final(EtcdError),
}

/// A non-200 answer's `{"code":..,"message":..}`.
#[derive(Debug)]
struct Status {
    http: u16,
    code: i64,
    message: String,
}

/// gRPC status codes etcd's gateway passes on.
const CODE_PERMISSION_DENIED: i64 = 7;
const CODE_FAILED_PRECONDITION: i64 = 9;
const CODE_UNAVAILABLE: i64 = 14;
const CODE_UNAUTHENTICATED: i64 = 16;

impl Status {
    /// The token was not accepted: a fresh one may be.
    fn token_rejected(&self) -> bool {
        self.http == 401
            || self.code == CODE_UNAUTHENTICATED
            || self.message.contains("invalid auth token")
            || self.message.contains("user name is empty")
    }

    fn unavailable(&self) -> bool {
        self.code == CODE_UNAVAILABLE || matches!(self.http, 502..=504)
    }

    fn describe(&self) -> String {
        format!(
            "HTTP {} (code {}): {}",
            self.http,
            self.code,
            truncate(&self.message, 300)
        )
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl EtcdClient {
    /// Checks the settings; does not connect.
    pub fn new(settings: EtcdSettings) -> Result<EtcdClient, String> {
        if settings.endpoints.is_empty() {
            return Err("etcd: at least one endpoint is needed".into());
        }
        let mut endpoints = Vec::with_capacity(settings.endpoints.len());
        for url in &settings.endpoints {
            endpoints.push(parse_endpoint(url)?);
        }
        let prefix = settings.prefix.trim_end_matches('/').to_string();
        if !prefix.is_empty() && !prefix.starts_with('/') {
            return Err(format!(
                "etcd: prefix \"{}\" must start with /",
                settings.prefix
            ));
        }
        if settings.timeout.is_zero() {
            return Err("etcd: timeout must be more than 0".into());
        }
        let credentials = match (settings.user, settings.password) {
            (None, None) => None,
            (Some(user), Some(password)) if !user.is_empty() => {
                Some(Credentials { user, password })
            }
            (Some(_), Some(_)) => return Err("etcd: user must not be empty".into()),
            _ => return Err("etcd: user and password go together".into()),
        };
        Ok(EtcdClient {
            inner: Arc::new(Inner {
                endpoints,
                prefix,
                timeout: settings.timeout,
                credentials,
                current: AtomicUsize::new(0),
                token: Mutex::new(Token::Unknown),
            }),
        })
    }

    /// How long a watch stream may stay silent before the client re-opens it to check that etcd
    /// is still there: max(3 × timeout, 10 s).
    pub fn watch_quiet_limit(&self) -> Duration {
        self.inner.timeout.saturating_mul(3).max(WATCH_QUIET_FLOOR)
    }

    /// Every key under `prefix`, in key order, and the revision they were read at (watch from
    /// the revision after it).
    pub async fn get_prefix(&self, prefix: &str) -> Result<(Vec<Kv>, i64), EtcdError> {
        let key = self.full_prefix(prefix);
        let body = json!({
            "key": b64(&key),
            "range_end": b64(&prefix_range_end(&key)),
        });
        let resp: RangeResponse = self.unary("/v3/kv/range", body).await?;
        let mut kvs = Vec::with_capacity(resp.kvs.len());
        for kv in resp.kvs {
            kvs.push(self.kv(kv)?);
        }
        Ok((kvs, resp.header.revision))
    }

    /// Sets `key` to `value`; the revision of the write.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<i64, EtcdError> {
        let body = json!({"key": b64(self.full_key(key).as_bytes()), "value": b64(value)});
        let resp: PutResponse = self.unary("/v3/kv/put", body).await?;
        Ok(resp.header.revision)
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, EtcdError> {
        let body = json!({"key": b64(self.full_key(key).as_bytes())});
        let resp: DeleteResponse = self.unary("/v3/kv/deleterange", body).await?;
        Ok(resp.deleted > 0)
    }

    /// Watch keys under prefix from `start_revision`; events arrive on the returned stream until
    /// the connection breaks (then Err) — the caller resyncs with get_prefix and watches again.
    ///
    /// `start_revision` ≤ 0 means "changes after now". Returns once etcd has confirmed the watch
    /// (within the timeout). A start revision etcd has compacted away gives
    /// [`EtcdError::Compacted`], from here or from the first [`Watch::next`].
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, EtcdError> {
        let key = self.full_prefix(prefix);
        let range_end = prefix_range_end(&key);
        let opened = self.open_watch(&key, &range_end, start_revision).await?;
        let next_revision = if start_revision > 0 {
            start_revision
        } else {
            opened.created_revision.saturating_add(1)
        };
        let mut watch = Watch {
            client: self.clone(),
            key,
            range_end,
            next_revision,
            stream: opened.stream,
            pending: VecDeque::new(),
            broken: None,
        };
        for obj in opened.early {
            watch.handle(&obj)?;
        }
        Ok(watch)
    }

    // -----------------------------------------------------------------------------------------
    // Keys

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    fn full_prefix(&self, prefix: &str) -> Vec<u8> {
        let p = if prefix.is_empty() { "/" } else { prefix };
        self.full_key(p).into_bytes()
    }

    fn relative(&self, full: &[u8]) -> String {
        let p = self.inner.prefix.as_bytes();
        let rel = full.strip_prefix(p).unwrap_or(full);
        // etcd keys are bytes; one that is not UTF-8 was not written by aigate and comes back
        // recognisably mangled rather than failing the whole read.
        String::from_utf8_lossy(rel).into_owned()
    }

    fn kv(&self, raw: RawKv) -> Result<Kv, EtcdError> {
        Ok(Kv {
            key: self.relative(&unb64(&raw.key)?),
            value: unb64(&raw.value)?,
            create_revision: raw.create_revision,
            mod_revision: raw.mod_revision,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Endpoints

    /// Endpoint indexes in the order to try them: the last good one first.
    fn order(&self) -> impl Iterator<Item = usize> {
        let n = self.inner.endpoints.len();
        let start = self.inner.current.load(Ordering::Relaxed) % n;
        (0..n).map(move |i| (start + i) % n)
    }

    /// Runs `attempt` on each endpoint in turn until one answers, all within the timeout. Each
    /// endpoint gets an equal share of the time left.
    async fn each_endpoint<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, EtcdError>
    where
        F: FnMut(usize, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let deadline = Instant::now() + self.inner.timeout;
        let n = self.inner.endpoints.len();
        let mut last = None;
        for (tried, idx) in self.order().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let share = left / (n - tried) as u32;
            let endpoint = &self.inner.endpoints[idx];
            let err = match tokio::time::timeout(share, attempt(idx, share)).await {
                Ok(Ok(v)) => {
                    self.inner.current.store(idx, Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(Failure::Final(e))) => return Err(e),
                Ok(Err(Failure::Next(e))) => e,
                Err(_) => EtcdError::Unavailable(format!(
                    "{}: no answer within {share:?}",
                    url(endpoint, what)
                )),
            };
            if tried + 1 < n {
                log::debug!("{err}; trying the next etcd endpoint");
            }
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| {
            EtcdError::Unavailable(format!("{what}: no answer within {:?}", self.inner.timeout))
        }))
    }

    // -----------------------------------------------------------------------------------------
    // Unary calls

    async fn unary<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, EtcdError> {
        let body = Bytes::from(body.to_string());
        self.each_endpoint(path, |idx, budget| {
            let body = body.clone();
            async move { self.unary_on(idx, path, body, budget).await }
        })
        .await
    }

    async fn unary_on<T: for<'de> Deserialize<'de>>(
        &self,
        idx: usize,
        path: &str,
        body: Bytes,
        budget: Duration,
    ) -> Result<T, Failure> {
        let mut token = self.token(idx, budget, false).await?;
        let mut reauthenticated = false;
        loop {
            let resp = self
                .post(
                    idx,
                    path,
                    body.clone(),
                    token.as_deref(),
                    budget,
                    MAX_RESPONSE,
                )
                .await?;
            match resp {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes).map_err(|e| {
                        Failure::Final(EtcdError::Protocol(format!(
                            "{}: unexpected answer: {e}",
                            url(&self.inner.endpoints[idx], path)
                        )))
                    })
                }
                Err(status) => {
                    let what = url(&self.inner.endpoints[idx], path);
                    if status.token_rejected()
                        && self.inner.credentials.is_some()
                        && !reauthenticated
                    {
                        log::debug!("{what}: token rejected; authenticating again");
                        reauthenticated = true;
                        token = self.token(idx, budget, true).await?;
                        continue;
                    }
                    return Err(self.status_failure(&what, &status));
                }
            }
        }
    }

    fn status_failure(&self, what: &str, status: &Status) -> Failure {
        let msg = format!("{what}: {}", status.describe());
        if status.unavailable() {
            Failure::Next(EtcdError::Unavailable(msg))
        } else if status.token_rejected() || status.code == CODE_PERMISSION_DENIED {
            Failure::Final(EtcdError::Auth(msg))
        } else {
            Failure::Final(EtcdError::Protocol(msg))
        }
    }

    /// One POST; `Ok(Err(status))` for an answer other than 200.
    async fn post(
        &self,
        idx: usize,
        path: &str,
        body: Bytes,
        token: Option<&str>,
        timeout: Duration,
        max_response: usize,
    ) -> Result<Result<Bytes, Status>, Failure> {
        let endpoint = &self.inner.endpoints[idx];
        let mut headers = vec![(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )];
        if let Some(t) = token {
            headers.push((http::header::AUTHORIZATION, auth_value(t)?));
        }
        let resp = client::send(
            &endpoint.with_path(path),
            "POST",
            path,
            &headers,
            body,
            timeout,
            true,
            max_response,
        )
        .await
        .map_err(|e| match e {
            ClientError::TooLarge(m) => Failure::Final(EtcdError::Protocol(m)),
            e => Failure::Next(EtcdError::Unavailable(e.to_string())),
        })?;
        if resp.status() == 200 {
            Ok(Ok(resp.body))
        } else {
            Ok(Err(parse_status(resp.status(), &resp.body)))
        }
    }

    /// The token to send to endpoint `idx` (`None`: no credentials, or auth not enabled);
    /// authenticates when there is none yet or `fresh`.
    async fn token(
        &self,
        idx: usize,
        budget: Duration,
        fresh: bool,
    ) -> Result<Option<String>, Failure> {
        let Some(creds) = &self.inner.credentials else {
            return Ok(None);
        };
        if !fresh {
            match &*self.inner.token.lock().unwrap() {
                Token::Have(t) => return Ok(Some(t.clone())),
                Token::NotEnabled => return Ok(None),
                Token::Unknown => {}
            }
        }
        let body = Bytes::from(json!({"name": creds.user, "password": creds.password}).to_string());
        let what = url(&self.inner.endpoints[idx], "/v3/auth/authenticate");
        let resp = self
            .post(
                idx,
                "/v3/auth/authenticate",
                body,
                None,
                budget,
                MAX_ERROR_BODY,
            )
            .await?;
        let token = match resp {
            Ok(bytes) => {
                let auth: AuthResponse = serde_json::from_slice(&bytes).map_err(|e| {
                    Failure::Final(EtcdError::Protocol(format!(
                        "{what}: unexpected answer: {e}"
                    )))
                })?;
                if auth.token.is_empty() {
                    return Err(Failure::Final(EtcdError::Protocol(format!(
                        "{what}: no token in the answer"
                    ))));
                }
                Token::Have(auth.token)
            }
            Err(status)
                if status.code == CODE_FAILED_PRECONDITION
                    && status.message.contains("authentication is not enabled") =>
            {
                Token::NotEnabled
            }
            Err(status) if status.unavailable() => {
                return Err(Failure::Next(EtcdError::Unavailable(format!(
                    "{what}: {}",
                    status.describe()
                ))))
            }
            Err(status) => {
                return Err(Failure::Final(EtcdError::Auth(format!(
                    "user \"{}\" at {what}: {}",
                    creds.user,
                    status.describe()
                ))))
            }
        };
        let out = match &token {
            Token::Have(t) => Some(t.clone()),
            _ => None,
        };
        *self.inner.token.lock().unwrap() = token;
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // Watch

    async fn open_watch(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
    ) -> Result<Opened, EtcdError> {
        let mut create = json!({
            "key": b64(key),
            "range_end": b64(range_end),
            "progress_notify": true,
        });
        if start_revision > 0 {
            create["start_revision"] = json!(start_revision.to_string());
        }
        let body = Bytes::from(json!({ "create_request": create }).to_string());
        self.each_endpoint("/v3/watch", |idx, budget| {
            let body = body.clone();
            async move { self.open_watch_on(idx, body, budget).await }
        })
        .await
    }

    async fn open_watch_on(
        &self,
        idx: usize,
        body: Bytes,
        budget: Duration,
    ) -> Result<Opened, Failure> {
        let mut token = self.token(idx, budget, false).await?;
        let mut reauthenticated = false;
        let what = url(&self.inner.endpoints[idx], "/v3/watch");
        loop {
            let mut session = self
                .start_watch(idx, body.clone(), token.as_deref(), budget)
                .await?;
            let status = session
                .response_header()
                .map(|h| h.status.as_u16())
                .unwrap_or(0);
            let rejected = if status != 200 {
                let body = read_all(&mut session, MAX_ERROR_BODY)
                    .await
                    .map_err(|e| Failure::Next(EtcdError::Unavailable(format!("{what}: {e}"))))?;
                parse_status(status, &body)
            } else {
                let mut stream = WatchStream {
                    session,
                    splitter: JsonSplitter::new(MAX_WATCH_RESPONSE),
                    endpoint: idx,
                };
                // Read up to etcd's "created" answer; whatever follows it in the same read is
                // kept for `next`.
                let mut early = Vec::new();
                let created = loop {
                    let objects = stream.read(&what).await.map_err(Failure::Next)?;
                    let mut objects = objects.into_iter();
                    let mut created = None;
                    for obj in objects.by_ref() {
                        let resp = parse_watch(&obj, &what).map_err(Failure::Final)?;
                        if resp.created {
                            created = Some(resp);
                            break;
                        }
                        // Nothing comes before "created"; tolerate it as if it followed.
                        early.push(obj);
                    }
                    if let Some(c) = created {
                        early.extend(objects);
                        break c;
                    }
                };
                if !created.canceled {
                    return Ok(Opened {
                        stream,
                        created_revision: created.header.revision,
                        early,
                    });
                }
                if created.compact_revision > 0 {
                    return Err(Failure::Final(EtcdError::Compacted {
                        compact_revision: created.compact_revision,
                    }));
                }
                // The gateway reports a refused watch as a cancelled one, with the gRPC error
                // as text: "rpc error: code = Unauthenticated desc = etcdserver: invalid auth
                // token".
                let reason = created.cancel_reason;
                Status {
                    http: 200,
                    code: if reason.contains("code = Unauthenticated") {
                        CODE_UNAUTHENTICATED
                    } else if reason.contains("code = PermissionDenied")
                        || reason.contains("permission denied")
                    {
                        CODE_PERMISSION_DENIED
                    } else if reason.contains("code = Unavailable") {
                        CODE_UNAVAILABLE
                    } else {
                        0
                    },
                    message: reason,
                }
            };
            if rejected.token_rejected() && self.inner.credentials.is_some() && !reauthenticated {
                log::debug!("{what}: token rejected; authenticating again");
                reauthenticated = true;
                token = self.token(idx, budget, true).await?;
                continue;
            }
            return Err(self.status_failure(&what, &rejected));
        }
    }

    /// Sends the watch request on a new connection of its own and reads the answer's header.
    async fn start_watch(
        &self,
        idx: usize,
        body: Bytes,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<HttpSession, Failure> {
        let endpoint = &self.inner.endpoints[idx];
        let what = url(endpoint, "/v3/watch");
        let unavailable = |m: String| Failure::Next(EtcdError::Unavailable(m));
        let resolved = endpoint
            .resolve()
            .await
            .map_err(|e| unavailable(format!("{what}: {e}")))?;
        let opts = PeerOptions {
            connect_timeout: timeout,
            read_timeout: timeout,
            write_timeout: timeout,
            idle_timeout: None,
            verify_tls: true,
        };
        let mut peer = http_peer(
            &resolved,
            endpoint.port,
            endpoint.tls,
            &endpoint.host,
            &opts,
        );
        // Never a pooled connection, never pooled afterwards: the stream is this watch's alone.
        peer.group_key = fresh_group_key();
        // Reads are bounded by the watch itself (quiet limit), not per read by Pingora.
        peer.options.read_timeout = None;
        let (mut session, _) = client::connector()
            .get_http_session(&peer)
            .await
            .map_err(|e| unavailable(client::classify(&e, &what).to_string()))?;
        session.set_read_timeout(None);
        session.set_write_timeout(Some(timeout));
        let bad = |e: pingora_error::BError| unavailable(format!("{what}: {}", e.etype().as_str()));
        let mut req = RequestHeader::build("POST", b"/v3/watch", None).map_err(bad)?;
        req.insert_header("Host", endpoint.authority())
            .map_err(bad)?;
        req.insert_header("Content-Type", "application/json")
            .map_err(bad)?;
        req.insert_header("Content-Length", body.len().to_string())
            .map_err(bad)?;
        if let Some(t) = token {
            req.insert_header(http::header::AUTHORIZATION, auth_value(t)?)
                .map_err(bad)?;
        }
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(bad)?;
        session.write_request_body(body, true).await.map_err(bad)?;
        session.finish_request_body().await.map_err(bad)?;
        session.read_response_header().await.map_err(bad)?;
        Ok(session)
    }
}

/// A confirmed watch stream.
struct Opened {
    stream: WatchStream,
    /// The revision in etcd's "created" answer: the store's revision when the watch started.
    created_revision: i64,
    /// Complete answers read after "created", in order.
    early: Vec<Vec<u8>>,
}

struct WatchStream {
    session: HttpSession,
    splitter: JsonSplitter,
    endpoint: usize,
}

impl WatchStream {
    /// The complete JSON objects of the next read (possibly none: part of one).
    async fn read(&mut self, what: &str) -> Result<Vec<Vec<u8>>, EtcdError> {
        match self.session.read_response_body().await {
            Ok(Some(chunk)) => self
                .splitter
                .push(&chunk)
                .map_err(|e| EtcdError::Protocol(format!("{what}: {e}"))),
            Ok(None) => Err(EtcdError::Unavailable(format!(
                "{what}: etcd ended the watch stream"
            ))),
            Err(e) => Err(EtcdError::Unavailable(format!(
                "{what}: watch connection broken: {}",
                e.etype().as_str()
            ))),
        }
    }
}

/// A watch on a prefix (see [`EtcdClient::watch`]).
pub struct Watch {
    client: EtcdClient,
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The first revision not yet delivered: where a re-opened watch starts.
    next_revision: i64,
    stream: WatchStream,
    /// Event batches read but not yet returned.
    pending: VecDeque<Vec<WatchEvent>>,
    /// Once broken, every later `next` returns this.
    broken: Option<EtcdError>,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("next_revision", &self.next_revision)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// The events of the next etcd watch response that has any, in revision order. Creation
    /// answers and progress notifications are skipped. An error means the watch is over: read
    /// everything again and watch anew. Errors at most
    /// [`EtcdClient::watch_quiet_limit`] + timeout after etcd last sent anything (see the
    /// module doc). Dropping the future part-way may lose the stream's position: drop the watch
    /// too then.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>, EtcdError> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Ok(batch);
            }
            if let Some(e) = &self.broken {
                return Err(e.clone());
            }
            let what = url(
                &self.client.inner.endpoints[self.stream.endpoint],
                "/v3/watch",
            );
            let quiet = self.client.watch_quiet_limit();
            let result = match tokio::time::timeout(quiet, self.stream.read(&what)).await {
                Ok(Ok(objects)) => objects.iter().try_for_each(|obj| self.handle(obj)),
                Ok(Err(e)) => Err(e),
                Err(_) => self.reopen(quiet).await,
            };
            if let Err(e) = result {
                self.broken = Some(e.clone());
                // Batches complete before the error still go out first.
                if self.pending.is_empty() {
                    return Err(e);
                }
            }
        }
    }

    /// The stream was silent for the quiet limit: open the watch again from the first revision
    /// not delivered; on success the old connection is dropped.
    async fn reopen(&mut self, quiet: Duration) -> Result<(), EtcdError> {
        log::debug!(
            "{}: watch on {} silent for {quiet:?}; opening it again from revision {}",
            url(
                &self.client.inner.endpoints[self.stream.endpoint],
                "/v3/watch"
            ),
            String::from_utf8_lossy(&self.key),
            self.next_revision
        );
        let opened = self
            .client
            .open_watch(&self.key, &self.range_end, self.next_revision)
            .await?;
        self.stream = opened.stream;
        for obj in opened.early {
            self.handle(&obj)?;
        }
        Ok(())
    }

    /// One watch response: events are queued, progress moves `next_revision` on.
    fn handle(&mut self, obj: &[u8]) -> Result<(), EtcdError> {
        let what = url(
            &self.client.inner.endpoints[self.stream.endpoint],
            "/v3/watch",
        );
        let resp = parse_watch(obj, &what)?;
        if resp.canceled {
            if resp.compact_revision > 0 {
                return Err(EtcdError::Compacted {
                    compact_revision: resp.compact_revision,
                });
            }
            return Err(EtcdError::Unavailable(format!(
                "{what}: etcd cancelled the watch: {}",
                truncate(&resp.cancel_reason, 300)
            )));
        }
        if resp.events.is_empty() {
            // A progress notification: every change up to header.revision has been sent. (Also
            // a late "created", whose revision is no such promise: skipped.)
            if !resp.created && resp.header.revision > 0 {
                self.next_revision = self
                    .next_revision
                    .max(resp.header.revision.saturating_add(1));
            }
            return Ok(());
        }
        let mut batch = Vec::with_capacity(resp.events.len());
        for ev in resp.events {
            let kv = ev.kv.ok_or_else(|| {
                EtcdError::Protocol(format!("{what}: an event without a key-value"))
            })?;
            self.next_revision = self.next_revision.max(kv.mod_revision.saturating_add(1));
            let delete = match &ev.kind {
                serde_json::Value::Null => false,
                serde_json::Value::String(s) if s == "PUT" => false,
                serde_json::Value::String(s) if s == "DELETE" => true,
                serde_json::Value::Number(n) if n.as_i64() == Some(0) => false,
                serde_json::Value::Number(n) if n.as_i64() == Some(1) => true,
                other => {
                    return Err(EtcdError::Protocol(format!(
                        "{what}: unknown event type {}",
                        truncate(&other.to_string(), 40)
                    )))
                }
            };
            batch.push(if delete {
                WatchEvent::Delete {
                    key: self.client.relative(&unb64(&kv.key)?),
                    mod_revision: kv.mod_revision,
                }
            } else {
                WatchEvent::Put(self.client.kv(kv)?)
            });
        }
        self.pending.push_back(batch);
        Ok(())
    }
}

/// The body of a response read whole, at most `max` bytes.
async fn read_all(session: &mut HttpSession, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| e.etype().as_str().to_string())?
    {
        if out.len() + chunk.len() > max {
            return Err(format!("error answer larger than {max} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    let e = Endpoint::parse(url).map_err(|e| format!("etcd: {e}"))?;
    let authority = url.split_once("://").map_or("", |(_, r)| r);
    let authority = authority.split(['/', '?']).next().unwrap_or("");
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok());
    if !has_port || e.path != "/" || e.query.is_some() {
        return Err(format!(
            "etcd: invalid endpoint \"{url}\": expected http(s)://host:port"
        ));
    }
    Ok(e)
}

/// `scheme://host:port/path`, for messages.
fn url(e: &Endpoint, path: &str) -> String {
    let scheme = if e.tls { "https" } else { "http" };
    format!("{scheme}://{}{path}", e.authority())
}

fn auth_value(token: &str) -> Result<http::HeaderValue, Failure> {
    let mut v = http::HeaderValue::from_str(token).map_err(|_| {
        Failure::Final(EtcdError::Protocol(
            "etcd gave a token that is not a valid header value".into(),
        ))
    })?;
    v.set_sensitive(true);
    Ok(v)
}

fn parse_status(http: u16, body: &[u8]) -> Status {
    #[derive(Deserialize, Default)]
    struct ErrorBody {
        #[serde(default, deserialize_with = "int64")]
        code: i64,
        #[serde(default)]
        message: String,
        #[serde(default)]
        error: String,
    }
    let e: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let message = if !e.message.is_empty() {
        e.message
    } else if !e.error.is_empty() {
        e.error
    } else {
        String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
    };
    Status {
        http,
        code: e.code,
        message,
    }
}

fn parse_watch(obj: &[u8], what: &str) -> Result<WatchResult, EtcdError> {
    let env: WatchEnvelope = serde_json::from_slice(obj)
        .map_err(|e| EtcdError::Protocol(format!("{what}: unexpected watch answer: {e}")))?;
    if let Some(e) = env.error {
        let msg = format!(
            "{what}: watch error (code {}): {}",
            e.grpc_code,
            truncate(&e.message, 300)
        );
        return Err(if e.grpc_code == CODE_UNAVAILABLE {
            EtcdError::Unavailable(msg)
        } else {
            EtcdError::Protocol(msg)
        });
    }
    env.result
        .ok_or_else(|| EtcdError::Protocol(format!("{what}: a watch answer without a result")))
}

// ---------------------------------------------------------------------------------------------
// Wire format

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, EtcdError> {
    // Go writes padded standard base64; accept it unpadded too.
    const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    LENIENT
        .decode(s)
        .map_err(|e| EtcdError::Protocol(format!("bad base64 from etcd: {e}")))
}

/// The `range_end` that makes a range cover every key starting with `prefix`: the prefix with
/// its last byte below 0xff incremented and what follows dropped; `\0` (every key from `prefix`
/// on) when there is no such byte.
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// An int64 in proto3 JSON: a string ("42"), though a number is accepted too; null is 0.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        N(i64),
        S(String),
        Null(()),
    }
    match Int::deserialize(d)? {
        Int::N(n) => Ok(n),
        Int::S(s) => s.parse().map_err(serde::de::Error::custom),
        Int::Null(()) => Ok(0),
    }
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    create_revision: i64,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
}

#[derive(Deserialize)]
struct PutResponse {
    #[serde(default)]
    header: Header,
}

#[derive(Deserialize)]
struct DeleteResponse {
    #[serde(default, deserialize_with = "int64")]
    deleted: i64,
}

#[derive(Deserialize)]
struct AuthResponse {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
struct WatchEnvelope {
    result: Option<WatchResult>,
    error: Option<StreamError>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type", default)]
    kind: serde_json::Value,
    kv: Option<RawKv>,
}

#[derive(Deserialize)]
struct StreamError {
    #[serde(default, deserialize_with = "int64")]
    grpc_code: i64,
    #[serde(default)]
    message: String,
}

// ---------------------------------------------------------------------------------------------
// The watch stream's framing

/// Cuts a byte stream of top-level JSON objects (`{..}{..}`, whitespace between) into whole
/// objects, whatever the reads' boundaries. Scans each byte once (tracking nesting and
/// strings), so an object arriving in many pieces costs no re-parsing. Holds at most `max`
/// bytes of an unfinished object.
struct JsonSplitter {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    /// Nesting depth; 0 between objects.
    depth: usize,
    in_string: bool,
    escaped: bool,
    max: usize,
}

impl JsonSplitter {
    fn new(max: usize) -> JsonSplitter {
        JsonSplitter {
            buf: Vec::new(),
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            max,
        }
    }

    /// Adds `chunk`; the objects it completed, in order.
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        // Start of the object being scanned (0 when between objects: `consumed` is dropped).
        let mut consumed = 0;
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            if self.depth == 0 {
                match b {
                    b'{' => self.depth = 1,
                    b' ' | b'\t' | b'\r' | b'\n' => consumed = i + 1,
                    _ => return Err(format!("unexpected byte 0x{b:02x} between watch answers")),
                }
            } else if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            out.push(self.buf[consumed..=i].to_vec());
                            consumed = i + 1;
                        }
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        self.buf.drain(..consumed);
        self.scanned = self.buf.len();
        if self.buf.len() > self.max {
            return Err(format!("a watch answer larger than {} bytes", self.max));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EtcdSettings {
        EtcdSettings {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/aigate".into(),
            timeout: Duration::from_secs(2),
            user: None,
            password: None,
        }
    }

    const STREAM: &str = concat!(
        r#"{"result":{"header":{"revision":"3"},"created":true}}"#,
        "\n",
        r#"{"result":{"header":{"revision":"4"},"events":[{"kv":{"key":"L2EvYg==","mod_revision":"4","value":"eyJ4Ijoie30ifQ=="}}]}}"#,
        r#"{"s":"a \"quoted\" } brace and \\ backslash { [","n":[1,[2,{"x":[]}]]}"#,
        "\r\n\n",
        r#"{"result":{"header":{"revision":"5"}}}"#,
        "\n"
    );

    fn objects() -> Vec<Vec<u8>> {
        serde_json::Deserializer::from_str(STREAM)
            .into_iter::<serde_json::Value>()
            .map(|v| serde_json::to_vec(&v.unwrap()).unwrap())
            .collect()
    }

    fn normalised(objs: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        objs.iter()
            .map(|o| {
                let v: serde_json::Value = serde_json::from_slice(o).unwrap();
                serde_json::to_vec(&v).unwrap()
            })
            .collect()
    }

    #[test]
    fn splitter_finds_objects_at_every_split_point() {
        let bytes = STREAM.as_bytes();
        let want = objects();
        assert_eq!(want.len(), 4);
        for cut in 0..=bytes.len() {
            let mut s = JsonSplitter::new(1 << 20);
            let mut got = s.push(&bytes[..cut]).unwrap();
            got.extend(s.push(&bytes[cut..]).unwrap());
            assert_eq!(normalised(got), want, "cut at {cut}");
            assert!(s.buf.is_empty(), "cut at {cut}");
        }
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut s = JsonSplitter::new(1 << 20);
                let mut got = s.push(&bytes[..a]).unwrap();
                got.extend(s.push(&bytes[a..b]).unwrap());
                got.extend(s.push(&bytes[b..]).unwrap());
                assert_eq!(normalised(got), want, "cuts at {a}, {b}");
            }
        }
        let mut s = JsonSplitter::new(1 << 20);
        let mut got = Vec::new();
        for b in bytes {
            got.extend(s.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(normalised(got), want, "byte by byte");
    }

    #[test]
    fn splitter_bounds_and_rejects() {
        let mut s = JsonSplitter::new(16);
        assert!(s.push(br#"{"a":"0123456789"#).is_ok());
        assert!(s.push(b"0123456789").is_err());
        // A complete large object within one read is fine only up to the bound of what is
        // left over; what is complete goes out.
        let mut s = JsonSplitter::new(16);
        assert_eq!(s.push(br#"{"a":"0123456789012345678"} "#).unwrap().len(), 1);
        let mut s = JsonSplitter::new(1024);
        assert!(s.push(b"x").is_err());
        let mut s = JsonSplitter::new(1024);
        assert!(s.push(b"[1]").is_err());
        // Unbalanced closers never underflow.
        let mut s = JsonSplitter::new(1024);
        let out = s.push(b"{] {}").unwrap();
        assert_eq!(out.len(), 2);
        assert!(parse_watch(&out[0], "x").is_err());
    }

    #[test]
    fn parses_watch_answers() {
        let objs = objects();
        let created = parse_watch(&objs[0], "x").unwrap();
        assert!(created.created && !created.canceled);
        assert_eq!(created.header.revision, 3);
        let ev = parse_watch(&objs[1], "x").unwrap();
        assert_eq!(ev.events.len(), 1);
        let kv = ev.events[0].kv.as_ref().unwrap();
        assert_eq!(unb64(&kv.key).unwrap(), b"/a/b");
        assert_eq!(unb64(&kv.value).unwrap(), br#"{"x":"{}"}"#);
        assert_eq!(kv.mod_revision, 4);
        let c = parse_watch(
            br#"{"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"4"}}"#,
            "x",
        )
        .unwrap();
        assert!(c.canceled);
        assert_eq!(c.compact_revision, 4);
        let e = parse_watch(
            br#"{"error":{"grpc_code":14,"http_code":503,"message":"no leader"}}"#,
            "x",
        );
        assert!(matches!(e, Err(EtcdError::Unavailable(_))));
        assert!(parse_watch(br#"{"result":{"header":{"revision":"x"}}}"#, "x").is_err());
        assert!(parse_watch(br#"{}"#, "x").is_err());
    }

    #[test]
    fn base64_roundtrips_any_bytes() {
        let all: Vec<u8> = (0..=255u8).collect();
        for n in 0..all.len() {
            assert_eq!(unb64(&b64(&all[..n])).unwrap(), &all[..n]);
        }
        assert_eq!(b64(b"/aigate/"), "L2FpZ2F0ZS8=");
        assert_eq!(unb64("L2FpZ2F0ZS8").unwrap(), b"/aigate/");
        assert_eq!(unb64("").unwrap(), b"");
        assert!(unb64("L2F*").is_err());
    }

    #[test]
    fn range_end_increments_the_last_byte() {
        assert_eq!(prefix_range_end(b"/aigate/"), b"/aigate0");
        assert_eq!(prefix_range_end(b"/a"), b"/b");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"a\xfe\xff\xff"), b"a\xff");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_range_end(b""), b"\0");
    }

    #[test]
    fn keys_are_relative_to_the_prefix() {
        let mut s = settings();
        s.prefix = "/aigate/".into();
        let c = EtcdClient::new(s).unwrap();
        assert_eq!(c.full_key("/routes/1"), "/aigate/routes/1");
        assert_eq!(c.full_prefix(""), b"/aigate/");
        assert_eq!(c.full_prefix("/routes/"), b"/aigate/routes/");
        assert_eq!(c.relative(b"/aigate/routes/1"), "/routes/1");
        let mut s = settings();
        s.prefix = String::new();
        let c = EtcdClient::new(s).unwrap();
        assert_eq!(c.full_key("/x"), "/x");
    }

    #[test]
    fn settings_are_checked() {
        assert!(EtcdClient::new(settings()).is_ok());
        let bad = |edit: &dyn Fn(&mut EtcdSettings)| {
            let mut s = settings();
            edit(&mut s);
            EtcdClient::new(s).unwrap_err()
        };
        bad(&|s| s.endpoints.clear());
        for url in [
            "127.0.0.1:2379",
            "ftp://h:1",
            "http://h",
            "http://h:2379/v3",
            "http://h:2379?x=1",
            "http://u:p@h:2379",
            "http://h:0",
        ] {
            let e = bad(&|s| s.endpoints = vec![url.into()]);
            assert!(e.contains("endpoint"), "{url}: {e}");
        }
        assert!(EtcdClient::new(EtcdSettings {
            endpoints: vec![
                "https://etcd.local:2379/".into(),
                "http://[::1]:2379".into()
            ],
            ..settings()
        })
        .is_ok());
        bad(&|s| s.prefix = "aigate".into());
        bad(&|s| s.timeout = Duration::ZERO);
        bad(&|s| s.user = Some("root".into()));
        bad(&|s| s.password = Some("pw".into()));
    }

    #[test]
    fn password_is_never_shown() {
        let secret = "s3cret-Pa55";
        let s = EtcdSettings {
            user: Some("root".into()),
            password: Some(secret.into()),
            ..settings()
        };
        assert!(!format!("{s:?}").contains(secret));
        let c = EtcdClient::new(s.clone()).unwrap();
        assert!(!format!("{c:?}").contains(secret));
        let errors = [
            EtcdError::Unavailable("x".into()),
            EtcdError::Compacted {
                compact_revision: 3,
            },
            EtcdError::Auth("user \"root\": authentication failed".into()),
            EtcdError::Protocol("x".into()),
        ];
        for e in errors {
            assert!(!e.to_string().contains(secret));
            assert!(!format!("{e:?}").contains(secret));
        }
        // Settings errors do not echo it either.
        let e = EtcdClient::new(EtcdSettings {
            user: None,
            ..s.clone()
        })
        .unwrap_err();
        assert!(!e.contains(secret));
    }

    #[test]
    fn status_classifies_gateway_errors() {
        let s = parse_status(
            401,
            br#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#,
        );
        assert!(s.token_rejected() && !s.unavailable());
        let s = parse_status(
            400,
            br#"{"error":"etcdserver: user name is empty","code":3}"#,
        );
        assert!(s.token_rejected());
        assert_eq!(s.message, "etcdserver: user name is empty");
        let s = parse_status(503, br#"{"message":"etcdserver: no leader","code":14}"#);
        assert!(s.unavailable());
        let s = parse_status(500, b"not json");
        assert_eq!((s.code, s.message.as_str()), (0, "not json"));
    }

    #[test]
    fn quiet_limit_is_three_timeouts_at_least_ten_seconds() {
        let c = EtcdClient::new(settings()).unwrap();
        assert_eq!(c.watch_quiet_limit(), Duration::from_secs(10));
        let c = EtcdClient::new(EtcdSettings {
            timeout: Duration::from_secs(5),
            ..settings()
        })
        .unwrap();
        assert_eq!(c.watch_quiet_limit(), Duration::from_secs(15));
    }
}
