//! The upstream side of a request: choosing the peer, shaping the upstream request (endpoint,
//! auth, headers) and swapping in the rewritten body (which leaves with its header in one TCP
//! segment, `net::cork`). Also the first hop of `passthrough`, which
//! the gateway makes itself before proxying to the route's upstream.

use std::os::unix::io::RawFd;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::errors::{self, GatewayError};
use crate::llm::json_tap::JsonTap;
use crate::llm::request::RewriteSpec;
use crate::llm::sse::{SseTap, SseTapOptions};
use crate::net::client::{self, ClientError};
use crate::net::cork;
use crate::net::peer::http_peer;
use crate::observability::request_id;
use crate::plugins::ctx::{LlmCall, ResponseTap};
use crate::providers::instance::LlmInstance;
use crate::providers::vertex_ai;
use crate::runtime::upstream::PassHost;

/// Request headers never forwarded as the client sent them: hop-by-hop ones, and the body's
/// framing, which the gateway recomputes when it sends a body of its own. Names, not strings:
/// removing by `&str` parses the name again on every request. The framing headers come last
/// (`HOP_BY_HOP`): a plain route that streams the client's own body keeps them.
static DROP_HEADERS: [HeaderName; 9] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
    http::header::EXPECT,
    http::header::TRANSFER_ENCODING,
    http::header::CONTENT_LENGTH,
];
/// How many of `DROP_HEADERS` are hop-by-hop; then `Transfer-Encoding`, then `Content-Length`.
const HOP_BY_HOP: usize = 7;

/// A client's credentials for the gateway (or for the site it came from). A provider is a third
/// party: none of them is sent to it, whatever the provider kind; the configured auth is (or, with
/// `forward_client_authorization`, the client's own `Authorization`). `apikey` is key-auth's
/// default header. APISIX forwards every client header; LiteLLM forwards client headers only on
/// opt-in; aigate takes LiteLLM's side for credentials and forwards the rest (`OpenAI-Organization`,
/// `anthropic-version`, `User-Agent`, tracing headers...). The client's query string never reaches
/// a provider either: the upstream URI is the endpoint's path and query plus `auth.query`.
///
/// Plain `upstream` routes (and the second hop of `passthrough`) are a reverse proxy to the
/// operator's own service: there every client header is forwarded, as in APISIX.
static CLIENT_CREDENTIAL_HEADERS: [HeaderName; 7] = [
    http::header::AUTHORIZATION,
    http::header::PROXY_AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("apikey"),
    http::header::COOKIE,
];

/// Headers of the client's request the passthrough first hop does not copy: hop-by-hop ones
/// (Pingora strips them from the proxied requests; this hop is the gateway's own), those it
/// computes itself, and `Accept-Encoding` (a compressed answer would hide its usage).
const PASSTHROUGH_SKIP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "expect",
    "host",
    "content-length",
    "content-type",
    "accept-encoding",
    "x-request-id",
];

/// The client's `Authorization` when the instance lets clients bring their own key.
fn byok_authorization(inst: &LlmInstance, client: &RequestHeader) -> Option<HeaderValue> {
    if !inst.forward_client_authorization {
        return None;
    }
    let mut v = client.headers.get(http::header::AUTHORIZATION)?.clone();
    v.set_sensitive(true);
    Some(v)
}

/// The credentials a provider request carries: the client's own `Authorization` (bring your own
/// key), or else the instance's configured headers and GCP token. With the client's key, none of
/// the configured credentials is sent (headers, `auth.query`, GCP token): the gateway's account
/// is never billed for, nor mixed into, a call made with the client's key. Each header is handed
/// to `put`, in order (a GCP token replaces a configured `Authorization`).
async fn provider_auth(
    llm: &LlmCall,
    byok: Option<HeaderValue>,
    mut put: impl FnMut(HeaderName, HeaderValue) + Send,
) -> Result<(), GatewayError> {
    if let Some(v) = byok {
        put(http::header::AUTHORIZATION, v);
        return Ok(());
    }
    for (k, v) in &llm.instance.auth_headers {
        put(k.clone(), v.clone());
    }
    if let Some(v) = gcp_header(llm).await? {
        put(http::header::AUTHORIZATION, v);
    }
    Ok(())
}

/// Rewrite the body and pick the endpoint for the current attempt on `llm.instance`. Every
/// attempt starts again from the client's body, so nothing of an earlier attempt leaks into it.
pub fn prepare_attempt(llm: &mut LlmCall) -> Result<(), GatewayError> {
    if let Some(m) = llm.multi().cloned() {
        let idx = m
            .pick(llm.hash_key.as_deref(), &llm.tried)
            .ok_or_else(|| GatewayError::bad_gateway("no_instance", "no instance left to try"))?;
        llm.tried[idx] = true;
        llm.instance_idx = Some(idx);
        llm.instance = m.instances[idx].llm.clone();
    }
    // Nothing of an earlier attempt's answer counts for this one.
    llm.usage = None;
    llm.usage_estimated = false;
    llm.raw_usage = None;
    llm.response_model = None;
    llm.tap = ResponseTap::None;
    let inst = llm.instance.clone();
    let rw = llm.request.rewrite(
        &inst.options,
        RewriteSpec {
            drop_model: inst.driver.drops_model(),
        },
    );
    let target = inst
        .target(&llm.request, rw.model.as_deref())
        .map_err(|m| GatewayError::bad_request("invalid_request", m))?;
    llm.upstream_body = if target.vertex_predict {
        vertex_ai::predict_body(&llm.request.embedding_inputs())
    } else {
        rw.body
    };
    llm.model = rw.model;
    llm.upstream_stream = rw.stream && !target.vertex_predict;
    llm.usage_injected = rw.usage_injected;
    llm.target = Some(target);
    llm.attempts += 1;
    llm.sent_at = Some(Instant::now());
    llm.first_token_at = None;
    Ok(())
}

/// Pick the attempt's instance, rewrite the body for it, and let the plugins admit it (a quota
/// reserves there). An instance a plugin turns down while another could serve (ai-proxy-multi
/// falling back on quota) counts as tried and is not an attempt: the next one is picked at once.
/// A refusal's headers (the quota's) go out with the error, through `response_headers`.
pub async fn attempt(ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    loop {
        let llm = ctx.plugins.llm.as_mut().expect("an LLM call");
        prepare_attempt(llm)?;
        let Some(chain) = ctx.plugins.chain.clone() else {
            return Ok(());
        };
        let Err(refusal) = chain.before_attempt(&mut ctx.plugins).await else {
            return Ok(());
        };
        let llm = ctx.plugins.llm.as_mut().expect("an LLM call");
        if refusal.try_another && llm.multi().is_some() && llm.tried.iter().any(|t| !t) {
            llm.attempts -= 1;
            continue;
        }
        ctx.plugins
            .response_headers
            .extend(refusal.rejection.headers);
        ctx.refused = true;
        return Err(refusal.rejection.error);
    }
}

/// A fresh GCP access token header when the instance authenticates with a service account
/// (its static auth headers are sent straight from the instance).
async fn gcp_header(llm: &LlmCall) -> Result<Option<HeaderValue>, GatewayError> {
    let inst = &llm.instance;
    let Some(gcp) = &inst.gcp else {
        return Ok(None);
    };
    // Boxed: the token fetch (an HTTP client call) is a future of several KB, and held inline it
    // made every request's `upstream_request_filter` future that large, copied whole into its
    // box per request (callgrind), GCP or not.
    let token = Box::pin(gcp.token()).await.map_err(|m| {
        log::warn!("instance {}: {m}", inst.name);
        GatewayError::bad_gateway(
            "upstream_auth_error",
            "could not obtain a GCP access token for the provider",
        )
    })?;
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        GatewayError::bad_gateway("upstream_auth_error", "invalid GCP access token")
    })?;
    v.set_sensitive(true);
    Ok(Some(v))
}

/// `upstream_peer`: where this attempt goes.
pub async fn select_peer(ctx: &mut RequestCtx) -> Result<Box<HttpPeer>, GatewayError> {
    let to_llm = ctx
        .plugins
        .llm
        .as_ref()
        .is_some_and(|l| l.passthrough_body.is_none());
    let peer = if to_llm {
        attempt(ctx).await?;
        let llm = ctx.plugins.llm.as_mut().expect("checked");
        let target = llm.target.as_ref().expect("set by prepare_attempt");
        let ep = &target.endpoint;
        let resolved = ep
            .resolve()
            .await
            .map_err(|m| GatewayError::bad_gateway("upstream_unreachable", m))?;
        ctx.upstream_addr = Some(resolved.first(ep.port));
        http_peer(&resolved, ep.port, ep.tls, &ep.host, &llm.instance.peer)
    } else {
        let route = ctx
            .route
            .as_ref()
            .ok_or_else(|| GatewayError::internal("no route"))?;
        let up = route
            .upstream
            .as_ref()
            .ok_or_else(|| GatewayError::internal("route has no upstream"))?;
        let idx = up.pick();
        ctx.upstream_node = Some(idx);
        let node = &up.nodes[idx];
        let resolved = node
            .dns
            .resolve()
            .await
            .map_err(|m| GatewayError::bad_gateway("upstream_unreachable", m))?;
        ctx.upstream_addr = Some(resolved.first(node.port));
        http_peer(&resolved, node.port, up.tls, &node.host, &up.peer)
    };
    ctx.upstream_started = Some(Instant::now());
    ctx.upstream_status = None;
    Ok(Box::new(peer))
}

/// `DROP_HEADERS[i]` is bit `i` of a header set, `CLIENT_CREDENTIAL_HEADERS[i]` bit
/// `CREDENTIAL_BITS + i`, and `Accept-Encoding` bit `ACCEPT_ENCODING_BIT`.
const CREDENTIAL_BITS: u32 = 16;
const ACCEPT_ENCODING_BIT: u32 = 24;

/// The bit of a header name the gateway may drop (see `header_set`), or 0. One string match on
/// the name (a switch on its length, then a compare) instead of comparing it with every name
/// (`HeaderName` equality was ~800 instructions per request under callgrind). A test checks it
/// against the two name lists.
fn header_bit(name: &str) -> u32 {
    match name {
        "connection" => 1,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "te" => 1 << 3,
        "trailer" => 1 << 4,
        "upgrade" => 1 << 5,
        "expect" => 1 << 6,
        "transfer-encoding" => 1 << 7,
        "content-length" => 1 << 8,
        "authorization" => 1 << CREDENTIAL_BITS,
        "proxy-authorization" => 1 << (CREDENTIAL_BITS + 1),
        "x-api-key" => 1 << (CREDENTIAL_BITS + 2),
        "api-key" => 1 << (CREDENTIAL_BITS + 3),
        "x-goog-api-key" => 1 << (CREDENTIAL_BITS + 4),
        "apikey" => 1 << (CREDENTIAL_BITS + 5),
        "cookie" => 1 << (CREDENTIAL_BITS + 6),
        "accept-encoding" => 1 << ACCEPT_ENCODING_BIT,
        _ => 0,
    }
}

/// Which droppable headers the request has, as a bit set: one pass over its few headers, so that
/// only the present ones are looked up again to be removed (most requests carry one or none),
/// with nothing allocated.
fn header_set(keys: http::header::Keys<'_, HeaderValue>) -> u32 {
    keys.fold(0, |set, k| set | header_bit(k.as_str()))
}

/// The name of bit `i` of a header set.
fn bit_name(i: u32) -> &'static HeaderName {
    static ACCEPT_ENCODING: HeaderName = http::header::ACCEPT_ENCODING;
    match i {
        ACCEPT_ENCODING_BIT => &ACCEPT_ENCODING,
        i if i >= CREDENTIAL_BITS => &CLIENT_CREDENTIAL_HEADERS[(i - CREDENTIAL_BITS) as usize],
        i => &DROP_HEADERS[i as usize],
    }
}

/// The names of the headers in `set`.
fn set_names(mut set: u32) -> impl Iterator<Item = &'static HeaderName> {
    std::iter::from_fn(move || {
        if set == 0 {
            return None;
        }
        let i = set.trailing_zeros();
        set &= set - 1;
        Some(bit_name(i))
    })
}

/// Remove the headers of `set` from `headers`.
fn drop_set(headers: &mut http::HeaderMap, set: u32) {
    for name in set_names(set) {
        headers.remove(name);
    }
}

/// `upstream_request_filter`: the request line and headers the upstream gets.
pub async fn shape_request(
    session: &Session,
    req: &mut RequestHeader,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let rid = HeaderValue::from_str(&ctx.request_id).unwrap_or(HeaderValue::from_static("-"));
    let to_llm = ctx
        .plugins
        .llm
        .as_ref()
        .is_some_and(|l| l.passthrough_body.is_none());
    if to_llm {
        let llm = ctx.plugins.llm.as_ref().expect("checked");
        let target = llm
            .target
            .as_ref()
            .ok_or_else(|| GatewayError::internal("no target"))?;
        let inst = &llm.instance;
        let byok = byok_authorization(inst, session.req_header());
        // Built from the endpoint alone: the client's own query (`?key=`...) is not forwarded.
        let auth_query = if byok.is_some() { "" } else { &inst.auth_query };
        let uri = target
            .endpoint
            .uri(auth_query)
            .ok_or_else(|| GatewayError::internal("invalid upstream uri"))?;
        let host = target
            .endpoint
            .host_value()
            .ok_or_else(|| GatewayError::internal("bad host"))?;
        // The provider request is the gateway's own: its headers are edited in the `http` map
        // directly, without Pingora's case-preserving name map, whose every insert converts the
        // name to its title case and parses it back (~1k instructions per header, most of the
        // cost of this hook). Header names then go out in their canonical case (`Content-Type`,
        // `x-request-id`), which HTTP/1.1 treats alike.
        let end_stream = req.send_end_stream();
        let blank = RequestHeader::from(http::Request::new(()).into_parts().0);
        let mut parts: http::request::Parts = std::mem::replace(req, blank).into();
        let h = &mut parts.headers;
        // Every hop-by-hop and framing header, every client credential, and `Accept-Encoding`
        // (a gzip answer would hide the usage from the gateway, APISIX issue #13544). The
        // `Content-Length` is replaced below, not removed first.
        let content_length = header_bit(http::header::CONTENT_LENGTH.as_str());
        let set = header_set(h.keys()) & !content_length;
        drop_set(h, set);
        h.insert(request_id::HEADER.clone(), rid);
        h.insert(http::header::HOST, host);
        provider_auth(llm, byok, |k, v| {
            h.insert(k, v);
        })
        .await?;
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            http::header::CONTENT_LENGTH,
            crate::net::number_value(llm.upstream_body.len() as u64),
        );
        // The retry after a stale pooled connection runs on a connection of its own (see
        // `fallback::fresh_connection`), which must not be pooled afterwards.
        if !inst.keepalive || ctx.stale_retry {
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        parts.method = http::Method::POST;
        parts.uri = uri;
        *req = RequestHeader::from(parts);
        if let Some(end) = end_stream {
            req.set_send_end_stream(end);
        }
        return Ok(());
    }

    // Plain upstream, or the second hop of passthrough.
    let hop_by_hop = header_set(req.headers.keys()) & ((1 << HOP_BY_HOP) - 1);
    for name in set_names(hop_by_hop) {
        req.remove_header(name);
    }
    let set = |req: &mut RequestHeader, name: HeaderName, value: HeaderValue| {
        req.insert_header(name, value)
            .map_err(|_| GatewayError::internal("invalid upstream header"))
    };
    // A `&'static str` name: Pingora keeps it as the case to send, with no title-casing copy.
    req.insert_header("X-Request-Id", rid)
        .map_err(|_| GatewayError::internal("invalid upstream header"))?;

    let route = ctx
        .route
        .as_ref()
        .ok_or_else(|| GatewayError::internal("no route"))?;
    if let Some(up) = &route.upstream {
        match &up.pass_host {
            PassHost::Pass => {}
            PassHost::Node => {
                let node = &up.nodes[ctx.upstream_node.unwrap_or(0)];
                let host = if node.port == 80 || node.port == 443 {
                    node.host.clone()
                } else {
                    format!("{}:{}", node.host, node.port)
                };
                set(
                    req,
                    http::header::HOST,
                    HeaderValue::from_str(&host).map_err(|_| GatewayError::internal("bad host"))?,
                )?;
            }
            PassHost::Rewrite(h) => {
                set(
                    req,
                    http::header::HOST,
                    HeaderValue::from_str(h).map_err(|_| GatewayError::internal("bad host"))?,
                )?;
            }
        }
    }
    let replaced = ctx
        .plugins
        .llm
        .as_ref()
        .and_then(|l| l.passthrough_body.as_ref())
        .or(ctx.replay_body.as_ref());
    let has_te = req.headers.contains_key(http::header::TRANSFER_ENCODING);
    if let Some(body) = replaced {
        // A body of the gateway's own, sent whole.
        if has_te {
            req.remove_header(&http::header::TRANSFER_ENCODING);
        }
        set(
            req,
            http::header::CONTENT_LENGTH,
            crate::net::number_value(body.len() as u64),
        )?;
    } else if has_te && req.headers.contains_key(http::header::CONTENT_LENGTH) {
        // Streaming the client's body through with its own framing, which is `Content-Length`
        // when it sent both (as before RFC 9112 made that an error).
        req.remove_header(&http::header::TRANSFER_ENCODING);
    }
    if let Some(llm) = &ctx.plugins.llm {
        if llm.passthrough_body.is_some() {
            set(
                req,
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )?;
        }
    }
    Ok(())
}

/// The whole body the gateway sends upstream for this attempt, when it holds one: an LLM call's
/// (rewritten, or a passthrough answer), or a plain route's read for matching. `None`: the
/// client's body streams through as it comes.
pub fn held_body(ctx: &RequestCtx) -> Option<&Bytes> {
    match &ctx.plugins.llm {
        Some(l) => Some(l.passthrough_body.as_ref().unwrap_or(&l.upstream_body)),
        None => ctx.replay_body.as_ref(),
    }
}

/// `connected_to_upstream`: header and held body in one TCP segment (`net::cork`). The socket is
/// corked until `swap_body` hands Pingora the body; one an earlier attempt corked but never sent
/// its body on is uncorked first.
pub fn cork_for_held_body(peer: &HttpPeer, fd: RawFd, ctx: &mut RequestCtx) {
    if let Some(old) = ctx.corked.take() {
        cork::uncork(old);
    }
    if peer.options.alpn == ALPN::H1
        && held_body(ctx).is_some_and(|b| !b.is_empty())
        && cork::cork(fd)
    {
        ctx.corked = Some(fd);
    }
}

/// `request_body_filter`: send the rewritten body (or the replayed one) instead of the client's.
pub fn swap_body(body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
    let corked = end_of_stream.then(|| ctx.corked.take()).flatten();
    let Some(replacement) = held_body(ctx) else {
        if let Some(fd) = corked {
            cork::uncork(fd);
        }
        return;
    };
    *body = if end_of_stream {
        // Pingora writes this last piece next and drops it once written: uncork then.
        Some(match corked {
            Some(fd) => cork::uncork_when_sent(fd, replacement.clone()),
            None => replacement.clone(),
        })
    } else {
        // Empty, not None: None would tell Pingora the body has ended.
        Some(Bytes::new())
    };
}

/// `passthrough` (seed 001): call the LLM now; its answer becomes the body sent to the route's
/// upstream. `Ok(Some(()))`: the provider failed and its error was relayed to the client.
pub async fn passthrough_call(
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Option<()>, GatewayError> {
    let request_id = ctx.request_id.clone();
    let max_response = usize::try_from(ctx.max_body_size).unwrap_or(usize::MAX);
    attempt(ctx).await?;
    let llm = ctx
        .plugins
        .llm
        .as_mut()
        .expect("passthrough needs an LLM call");
    let target = llm.target.as_ref().expect("set by prepare_attempt");
    let inst = llm.instance.clone();
    // The same headers a plain ai-proxy call sends: the client's, minus hop-by-hop ones and every
    // client credential, plus the provider's auth.
    let client = session.req_header();
    let byok = byok_authorization(&inst, client);
    let nominated: Vec<String> = client
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut headers: Vec<(HeaderName, HeaderValue)> = client
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !CLIENT_CREDENTIAL_HEADERS.iter().any(|c| c == k)
                && !PASSTHROUGH_SKIP.contains(&k)
                && !nominated.iter().any(|n| n == k)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let auth_query = if byok.is_some() { "" } else { &inst.auth_query };
    provider_auth(llm, byok, |k, v| headers.push((k, v))).await?;
    headers.push((
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    ));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.push((HeaderName::from_static("x-request-id"), v));
    }
    let resp = client::send(
        &target.endpoint,
        "POST",
        &target.endpoint.path_and_query(auth_query),
        &headers,
        llm.upstream_body.clone(),
        inst.timeout,
        inst.peer.verify_tls,
        max_response,
    )
    .await
    .map_err(|e| {
        // The proxy path's failures reach Pingora's error log; this call is the gateway's own.
        log::warn!("passthrough call to instance {}: {e}", inst.name);
        match e {
            ClientError::Timeout(_) => GatewayError::timeout(format!(
                "the provider did not answer in time after {} ms",
                inst.timeout.as_millis()
            )),
            ClientError::Connect(_) => GatewayError::bad_gateway(
                "upstream_unreachable",
                "could not connect to the provider",
            ),
            ClientError::Tls(_) => GatewayError::bad_gateway(
                "upstream_tls_error",
                "TLS handshake with the provider failed",
            ),
            ClientError::Io(_) => {
                GatewayError::bad_gateway("upstream_error", "invalid response from the provider")
            }
            ClientError::TooLarge(_) => super::response::too_large(max_response as u64),
        }
    })?;
    llm.first_token_at = Some(Instant::now());
    let status = resp.status();
    let is_sse = resp
        .header
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if is_sse {
        let mut tap = SseTap::new(SseTapOptions::default());
        if llm.keep_raw_usage {
            tap.keep_raw_usage();
        }
        tap.on_chunk(resp.body.clone());
        tap.finish();
        llm.usage = tap.usage();
        llm.raw_usage = tap.raw_usage().map(<[u8]>::to_vec);
        llm.response_model = tap.model().map(str::to_string);
    } else {
        let mut tap = JsonTap::new();
        if llm.keep_raw_usage {
            tap.keep_raw_usage();
        }
        tap.feed(&resp.body);
        llm.usage = tap.usage();
        llm.raw_usage = tap.raw_usage().map(<[u8]>::to_vec);
        llm.response_model = tap.model().map(str::to_string);
    }
    if !(200..300).contains(&status) {
        // The provider's own error goes back to the client as it is.
        ctx.upstream_status = Some(status);
        let mut out = pingora_http::ResponseHeader::build(status, Some(4))
            .map_err(|_| GatewayError::internal("bad status"))?;
        let ct = resp
            .header
            .headers
            .get(http::header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("application/json"));
        let _ = out.insert_header(http::header::CONTENT_TYPE, ct);
        let _ = out.insert_header(http::header::CONTENT_LENGTH, resp.body.len());
        let _ = out.insert_header("X-Request-Id", request_id.as_str());
        if session
            .write_response_header(Box::new(out), false)
            .await
            .is_ok()
        {
            let _ = session.write_response_body(Some(resp.body), true).await;
        }
        return Ok(Some(()));
    }
    let body = if target.vertex_predict {
        let model = llm.model.clone().unwrap_or_default();
        let (b, tokens) = vertex_ai::embeddings_from_predict(&resp.body, &model)
            .map_err(|m| GatewayError::bad_gateway("upstream_error", m))?;
        llm.usage = Some(crate::llm::usage::Usage {
            prompt_tokens: tokens,
            completion_tokens: 0,
            total_tokens: tokens,
        });
        b
    } else {
        resp.body
    };
    llm.passthrough_body = Some(body);
    Ok(None)
}

/// Map a Pingora error (or the gateway's own) to what the client is told.
pub fn classify_failure(e: &pingora_error::Error, ctx: &RequestCtx) -> Option<GatewayError> {
    if let Some(err) = &ctx.error {
        return Some(err.clone());
    }
    let timeout_ms = ctx
        .plugins
        .llm
        .as_ref()
        .map(|l| l.instance.timeout.as_millis() as u64);
    let err = errors::classify(e, timeout_ms)?;
    // Several instances tried and none answered: that is the route failing, not one timeout.
    // (A single instance's second attempt after a stale pooled connection is the same instance.)
    if let Some(llm) = ctx
        .plugins
        .llm
        .as_ref()
        .filter(|l| l.attempts > 1 && l.multi().is_some())
    {
        if e.esource() == &pingora_error::ErrorSource::Upstream {
            return Some(GatewayError::bad_gateway(
                "no_instance_answered",
                format!(
                    "none of the {} instances tried answered (last: {})",
                    llm.attempts, err.message
                ),
            ));
        }
    }
    Some(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `header_bit` is a hand-written copy of the two name lists: it must agree with them.
    #[test]
    fn header_bits_match_the_name_lists() {
        let mut seen = 0u32;
        for (i, n) in DROP_HEADERS.iter().enumerate() {
            assert_eq!(header_bit(n.as_str()), 1 << i, "{n}");
            assert_eq!(bit_name(i as u32), n);
            seen |= 1 << i;
        }
        for (i, n) in CLIENT_CREDENTIAL_HEADERS.iter().enumerate() {
            let bit = CREDENTIAL_BITS + i as u32;
            assert_eq!(header_bit(n.as_str()), 1 << bit, "{n}");
            assert_eq!(bit_name(bit), n);
            seen |= 1 << bit;
        }
        assert_eq!(header_bit("accept-encoding"), 1 << ACCEPT_ENCODING_BIT);
        assert_eq!(
            bit_name(ACCEPT_ENCODING_BIT),
            &http::header::ACCEPT_ENCODING
        );
        assert_eq!(header_bit("content-type"), 0);
        assert_eq!(header_bit("x-request-id"), 0);
        // The three groups do not overlap.
        assert_eq!(seen & (1 << ACCEPT_ENCODING_BIT), 0);
        assert!(DROP_HEADERS.len() <= CREDENTIAL_BITS as usize);
        assert!(
            CREDENTIAL_BITS as usize + CLIENT_CREDENTIAL_HEADERS.len()
                <= ACCEPT_ENCODING_BIT as usize
        );
    }

    #[test]
    fn drop_set_removes_exactly_the_present_ones() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive"),
            ("apikey", "secret"),
            ("accept-encoding", "gzip"),
            ("content-type", "application/json"),
            ("x-trace", "1"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let set = header_set(h.keys());
        drop_set(&mut h, set);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-trace"]);
    }
}
