//! The response side: watching the provider's answer for token usage as it streams to the
//! client, and the few rewrites the answer needs (dropping the usage-only SSE event the client did
//! not ask for, converting Vertex AI predict answers).

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora_http::ResponseHeader;

use super::ctx::RequestCtx;
use super::errors::GatewayError;
use crate::llm::json_tap::JsonTap;
use crate::llm::sse::{SseTap, SseTapOptions};
use crate::llm::usage::Usage;
use crate::observability::request_id;
use crate::plugins::ctx::ResponseTap;
use crate::providers::vertex_ai;

/// Payload logging keeps at most this much of a JSON answer.
const PAYLOAD_CAP: usize = 1 << 20;

/// `upstream_response_filter`: note the status and pick how the body will be watched.
pub fn on_upstream_header(resp: &ResponseHeader, ctx: &mut RequestCtx) {
    ctx.upstream_status = Some(resp.status.as_u16());
    ctx.upstream_header_at = Some(Instant::now());
    let Some(llm) = ctx.plugins.llm.as_mut() else {
        return;
    };
    if llm.passthrough_body.is_some() {
        return; // the answer comes from the route's upstream, not the LLM
    }
    let is_sse = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let ok = resp.status.is_success();
    let vertex_predict = llm.target.as_ref().is_some_and(|t| t.vertex_predict);
    llm.tap = if vertex_predict && ok {
        ResponseTap::Collect(BytesMut::new())
    } else if is_sse {
        let mut tap = SseTap::new(SseTapOptions {
            drop_usage_only_event: llm.usage_injected,
            capture_text: llm.instance.logging.payloads,
        });
        if llm.keep_raw_usage {
            tap.keep_raw_usage();
        }
        ResponseTap::Sse(Box::new(tap))
    } else {
        if llm.instance.logging.payloads && ok {
            llm.payload_buf = Some(BytesMut::new());
        }
        let mut tap = Box::<JsonTap>::default();
        if llm.keep_raw_usage {
            tap.keep_raw_usage();
        }
        ResponseTap::Json(tap)
    };
}

/// The answer the gateway had to read whole was larger than `gateway.max_body_size`.
pub fn too_large(limit: u64) -> GatewayError {
    GatewayError::bad_gateway(
        "upstream_response_too_large",
        format!("the provider's answer exceeds the {limit} byte limit"),
    )
}

/// `response_filter`: headers the client gets. `true`: the answer is read whole before it is
/// rewritten, so the header must be held back until then (an answer that turns out too large is
/// still answered with a 502).
pub fn on_client_header(resp: &mut ResponseHeader, ctx: &RequestCtx) -> bool {
    let llm = ctx.plugins.llm.as_ref();
    let rewrites_body = llm.is_some_and(|llm| match &llm.tap {
        ResponseTap::Collect(_) => true,
        ResponseTap::Sse(_) => llm.usage_injected,
        _ => false,
    });
    edit_headers(resp, |h| {
        // With plugin headers (a quota's three), room for every insert at once: the map was
        // sized for the provider's headers, and growing it one insert at a time rehashed it
        // more than once (callgrind: ~20% of this function). Without them, reserving costs more
        // than the one growth it saves.
        if !ctx.plugins.response_headers.is_empty() {
            h.reserve(2 + ctx.plugins.response_headers.len());
        }
        if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
            h.insert(request_id::HEADER.clone(), v);
        }
        if rewrites_body {
            // The body's length changes: send it chunked (else HTTP/1 falls back to closing the
            // connection to delimit it).
            h.remove(http::header::CONTENT_LENGTH);
            h.insert(
                http::header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        // The plugins' own headers (a quota's `X-AI-RateLimit-*`, the picked instance...).
        for (k, v) in &ctx.plugins.response_headers {
            h.insert(k.clone(), v.clone());
        }
    });
    llm.is_some_and(|llm| matches!(llm.tap, ResponseTap::Collect(_)))
}

/// Edit the answer's headers in the `http` map itself. Pingora's `ResponseHeader` keeps a second,
/// case-preserving map of the names, and each of its inserts converts the name to title case and
/// parses it back before updating both maps (~1k instructions a header, per callgrind); the
/// gateway sets a few headers on every answer. The names then go out in canonical case
/// (`Content-Type`, `x-request-id`), which HTTP/1.1 treats alike (and HTTP/2 lowercases anyway).
/// A reason phrase of the provider's own is kept.
fn edit_headers(resp: &mut ResponseHeader, edit: impl FnOnce(&mut http::HeaderMap)) {
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let blank = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(resp, blank).into();
    edit(&mut parts.headers);
    *resp = ResponseHeader::from(parts);
    if let Some(r) = reason {
        let _ = resp.set_reason_phrase(Some(&r));
    }
}

/// `response_body_filter`: runs on every chunk on its way to the client. Synchronous, so it only
/// scans and slices; nothing here waits. An error ends the response.
pub fn on_body(
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let limit = ctx.max_body_size;
    let Some(llm) = ctx.plugins.llm.as_mut() else {
        if end_of_stream {
            ctx.upstream_done_at = Some(Instant::now());
        }
        return Ok(());
    };
    match &mut llm.tap {
        ResponseTap::None => {}
        ResponseTap::Sse(tap) => {
            if let Some(chunk) = body.take() {
                *body = Some(tap.on_chunk(chunk));
            }
            if llm.first_token_at.is_none() && tap.first_content_seen() {
                llm.first_token_at = Some(Instant::now());
            }
            if end_of_stream {
                let rest = tap.finish();
                if !rest.is_empty() {
                    *body = Some(concat(body.take(), rest));
                }
            }
        }
        ResponseTap::Json(tap) => {
            if let Some(chunk) = body.as_ref() {
                tap.feed(chunk);
                if let Some(buf) = llm.payload_buf.as_mut() {
                    let room = PAYLOAD_CAP.saturating_sub(buf.len());
                    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
            }
        }
        ResponseTap::Collect(buf) => {
            if let Some(chunk) = body.take() {
                if (buf.len() as u64).saturating_add(chunk.len() as u64) > limit {
                    // Let go of what was collected; the header is still held (`hold_header`),
                    // so the client gets this error instead of a 200.
                    llm.tap = ResponseTap::None;
                    return Err(too_large(limit));
                }
                buf.extend_from_slice(&chunk);
            }
            if end_of_stream {
                let model = llm.model.clone().unwrap_or_default();
                match vertex_ai::embeddings_from_predict(buf, &model) {
                    Ok((out, tokens)) => {
                        llm.usage = Some(Usage {
                            prompt_tokens: tokens,
                            completion_tokens: 0,
                            total_tokens: tokens,
                        });
                        *body = Some(out);
                    }
                    Err(m) => {
                        log::warn!(
                            "route {}: {m}",
                            ctx.route.as_ref().map(|r| &*r.id).unwrap_or("-")
                        );
                        *body = Some(std::mem::take(buf).freeze());
                    }
                }
            }
        }
    }
    if end_of_stream {
        let now = Instant::now();
        ctx.upstream_done_at = Some(now);
        if llm.first_token_at.is_none() {
            llm.first_token_at = Some(now);
        }
        settle_usage(ctx);
    }
    Ok(())
}

/// Copy what the tap saw into the call record (also used when the client left mid-stream: the
/// tokens already generated are still counted).
pub fn settle_usage(ctx: &mut RequestCtx) {
    let Some(llm) = ctx.plugins.llm.as_mut() else {
        return;
    };
    match &llm.tap {
        ResponseTap::Sse(tap) => {
            llm.usage = tap.usage().or(llm.usage);
            if let Some(raw) = tap.raw_usage().filter(|_| llm.raw_usage.is_none()) {
                llm.raw_usage = Some(raw.to_vec());
            }
            if llm.usage.is_none() && tap.content_events() > 0 {
                // The stream ended without the provider's usage (the client left mid-stream, or
                // the provider never reports it): estimate rather than count nothing, or a
                // client could spend tokens for free by hanging up early.
                let prompt = llm.request.estimated_prompt_tokens();
                let completion = tap.content_events();
                llm.usage = Some(Usage {
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    total_tokens: prompt + completion,
                });
                llm.usage_estimated = true;
            }
            if llm.response_model.is_none() {
                llm.response_model = tap.model().map(str::to_string);
            }
            if llm.instance.logging.payloads {
                llm.response_text = Some(tap.text().to_string());
            }
        }
        ResponseTap::Json(tap) => {
            llm.usage = tap.usage().or(llm.usage);
            if let Some(raw) = tap.raw_usage().filter(|_| llm.raw_usage.is_none()) {
                llm.raw_usage = Some(raw.to_vec());
            }
            if llm.response_model.is_none() {
                llm.response_model = tap.model().map(str::to_string);
            }
            if let Some(buf) = llm.payload_buf.take() {
                llm.response_text = Some(answer_text(&buf));
            }
        }
        _ => {}
    }
}

/// The assistant's text of a chat completion (for payload logging).
fn answer_text(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Resp {
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        #[serde(default)]
        message: Option<Msg>,
    }
    #[derive(serde::Deserialize)]
    struct Msg {
        #[serde(default)]
        content: Option<String>,
    }
    serde_json::from_slice::<Resp>(body)
        .ok()
        .and_then(|r| r.choices.into_iter().next())
        .and_then(|c| c.message)
        .and_then(|m| m.content)
        .unwrap_or_default()
}

fn concat(a: Option<Bytes>, b: Bytes) -> Bytes {
    match a {
        None => b,
        Some(a) if a.is_empty() => b,
        Some(a) => {
            let mut m = BytesMut::with_capacity(a.len() + b.len());
            m.extend_from_slice(&a);
            m.extend_from_slice(&b);
            m.freeze()
        }
    }
}

/// The gateway's own time so far, in microseconds: since the request arrived, minus the time the
/// answering upstream attempt took from its start (peer selection, connecting) to its header.
/// Earlier attempts that fell back count as the gateway's.
pub fn overhead_us(ctx: &RequestCtx) -> u64 {
    let total = ctx.started.elapsed();
    let upstream = match (ctx.upstream_started, ctx.upstream_header_at) {
        (Some(s), Some(h)) => h.saturating_duration_since(s),
        _ => std::time::Duration::ZERO,
    };
    total.saturating_sub(upstream).as_micros() as u64
}
