//! A minimal outbound HTTP client on Pingora's own connector (and its connection pool), for the
//! calls the gateway makes itself: the GCP token exchange and the first hop of `passthrough`.
//! Responses are read whole, up to a limit the caller gives (`gateway.max_body_size` for LLM
//! answers): beyond it the call fails with `TooLarge` instead of growing without bound.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_http::{RequestHeader, ResponseHeader};

use super::cork;
use super::endpoint::Endpoint;
use super::peer::{http_peer, PeerOptions};

pub struct Response {
    pub header: ResponseHeader,
    pub body: Bytes,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.header.status.as_u16()
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// Could not connect or resolve.
    Connect(String),
    /// The server's certificate was not accepted (or the handshake failed).
    Tls(String),
    Timeout(String),
    /// Broken exchange after connecting.
    Io(String),
    /// The answer's body is larger than the caller's limit.
    TooLarge(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(m)
            | ClientError::Tls(m)
            | ClientError::Timeout(m)
            | ClientError::Io(m)
            | ClientError::TooLarge(m) => f.write_str(m),
        }
    }
}

pub(crate) fn connector() -> &'static Connector {
    static C: OnceLock<Connector> = OnceLock::new();
    // Built on first use, after `-d` has forked; `server.ca_file` is an absolute path by then
    // (made so at load), so the daemon's chdir to / does not change which file is read.
    C.get_or_init(|| Connector::new(super::tls::connector_options()))
}

pub(crate) fn classify(e: &pingora_error::Error, what: &str) -> ClientError {
    use pingora_error::ErrorType::*;
    let msg = format!("{what}: {}", e.etype().as_str());
    // Connect and TLS failures carry their reason (the addresses tried, "UnknownIssuer"), which
    // holds no request data; other errors are named by type only.
    let detailed = || format!("{what}: {e}");
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            ClientError::Timeout(msg)
        }
        TLSHandshakeFailure | InvalidCert => ClientError::Tls(detailed()),
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure => {
            ClientError::Connect(detailed())
        }
        _ => ClientError::Io(msg),
    }
}

/// Send one request and read the whole answer, at most `max_response` bytes of body.
/// `path_and_query` is sent as-is.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    endpoint: &Endpoint,
    method: &str,
    path_and_query: &str,
    headers: &[(http::HeaderName, http::HeaderValue)],
    body: Bytes,
    timeout: Duration,
    verify_tls: bool,
    max_response: usize,
) -> Result<Response, ClientError> {
    let resolved = endpoint.resolve().await.map_err(ClientError::Connect)?;
    let opts = PeerOptions {
        connect_timeout: timeout,
        read_timeout: timeout,
        write_timeout: timeout,
        idle_timeout: Some(Duration::from_secs(60)),
        verify_tls,
    };
    let peer = http_peer(
        &resolved,
        endpoint.port,
        endpoint.tls,
        &endpoint.host,
        &opts,
    );
    let what = endpoint.to_string();
    let mut req = RequestHeader::build(method, path_and_query.as_bytes(), None)
        .map_err(|e| ClientError::Io(format!("bad request for {what}: {e}")))?;
    req.insert_header("Host", endpoint.authority())
        .map_err(|e| ClientError::Io(e.to_string()))?;
    for (k, v) in headers {
        req.append_header(k.clone(), v.clone())
            .map_err(|_| ClientError::Io(format!("invalid header {k}")))?;
    }
    req.insert_header("Content-Length", body.len().to_string())
        .map_err(|e| ClientError::Io(e.to_string()))?;

    // A pooled connection the server dropped while idle fails before answering: one more try on
    // a fresh connection (never pooled afterwards), as the proxy does for ai-proxy.
    let mut fresh = false;
    loop {
        let mut peer = peer.clone();
        if fresh {
            peer.group_key = super::peer::fresh_group_key();
        }
        let (mut session, reused) = connector()
            .get_http_session(&peer)
            .await
            .map_err(|e| classify(&e, &what))?;
        session.set_read_timeout(Some(timeout));
        session.set_write_timeout(Some(timeout));
        match exchange(&mut session, req.clone(), body.clone(), max_response, &what).await {
            Ok(resp) => {
                if fresh {
                    session.shutdown().await;
                } else {
                    connector()
                        .release_http_session(session, &peer, peer.options.idle_timeout)
                        .await;
                }
                return Ok(resp);
            }
            Err((err, cause)) => {
                session.shutdown().await;
                let stale = reused
                    && !fresh
                    && cause
                        .as_deref()
                        .is_some_and(super::peer::failed_before_answer);
                if !stale {
                    return Err(err);
                }
                log::info!(
                    "{what}: a pooled connection failed before answering; retrying on a fresh one"
                );
                fresh = true;
            }
        }
    }
}

/// One request/answer on `session`. On failure, the Pingora error behind it (if any) says
/// whether the answer had started.
async fn exchange(
    session: &mut HttpSession,
    req: RequestHeader,
    body: Bytes,
    max_response: usize,
    what: &str,
) -> Result<Response, (ClientError, Option<Box<pingora_error::Error>>)> {
    let fail = |e: Box<pingora_error::Error>| (classify(&e, what), Some(e));
    // Header and body in one TCP segment (see `cork`); here the writes are ours, so the uncork
    // comes right after them. A failed write leaves the socket corked, and the caller closes it.
    let corked = match &*session {
        HttpSession::H1(h1) if !body.is_empty() => {
            let fd = h1.stream().id();
            cork::cork(fd).then_some(fd)
        }
        _ => None,
    };
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(fail)?;
    if !body.is_empty() {
        session.write_request_body(body, true).await.map_err(fail)?;
    }
    if let Some(fd) = corked {
        cork::uncork(fd);
    }
    session.finish_request_body().await.map_err(fail)?;
    session.read_response_header().await.map_err(fail)?;
    let mut buf = BytesMut::new();
    while let Some(chunk) = session.read_response_body().await.map_err(fail)? {
        if buf.len().saturating_add(chunk.len()) > max_response {
            return Err((
                ClientError::TooLarge(format!("{what}: response larger than {max_response} bytes")),
                None,
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    let header = session
        .response_header()
        .cloned()
        .ok_or_else(|| (ClientError::Io(format!("{what}: no response header")), None))?;
    Ok(Response {
        header,
        body: buf.freeze(),
    })
}
