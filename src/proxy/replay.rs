//! Replaying a request body of any size through Pingora's proxy loop.
//!
//! aigate must read the whole body before choosing the upstream (to route on `post_arg.model`,
//! validate the JSON and rewrite it). Pingora 0.9 only replays a pre-read body from its retry
//! buffer, which is fixed at 64 KiB: a larger body reaches the upstream as headers and no bytes,
//! and cannot be retried. Long conversations are far larger than that.
//!
//! So, after reading the body, the real downstream session is wrapped in a `ReplaySession`, a
//! Pingora custom downstream session (its `custom::server::Session` trait) that forwards every
//! response write to the real session but reports the request body as fully read and offers the
//! whole body as its retry buffer. Pingora then hands that body to `request_body_filter` (where
//! aigate swaps in the rewritten body) on the first attempt and again on every retry, whatever
//! its size. No patched Pingora needed.
//!
//! In `logging`, which Pingora always runs before finishing the request, the real session is put
//! back, so the connection's keep-alive handling is the stock HTTP/1 one.
//!
//! Most bodies are small, and for them Pingora's own retry buffer is enough: `keep_small_body`
//! turns it on before the gateway reads a body whose Content-Length is at most
//! `PINGORA_BUFFER_MAX`, and `install` then leaves the session as it is. The wrapper costs a
//! dynamic call on every session access, boxed futures for several of them and two moves of the
//! ~700-byte session; Pingora's buffer costs two copies of the body, which is less below a few
//! KiB (callgrind and perf under wrk put the wrapper at ~1.5% of a small chat request's CPU).
//!
//! The wrapper can also hold the response header back until the body is complete
//! (`hold_header`): an answer the gateway must read whole before it can rewrite it (Vertex AI
//! `:predict`) may still turn out unusable (too large, cut off), and then the client gets the
//! gateway's error with its own status instead of a 200 followed by a broken body.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderMap;
use pingora_core::protocols::http::custom::server::Session as CustomSession;
use pingora_core::protocols::http::custom::CustomMessageWrite;
use pingora_core::protocols::http::{HttpTask, ServerSession};
use pingora_core::protocols::l4::socket::SocketAddr;
use pingora_core::protocols::Digest;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};

pub struct ReplaySession {
    /// The real downstream session. `None` only in the short-lived placeholder used while swapping.
    inner: Option<ServerSession>,
    body: Bytes,
    replayed: bool,
    /// Hold the next response header back until the body is complete (see `hold_header`).
    hold: bool,
    held: Option<Box<ResponseHeader>>,
}

/// Identifies the installed wrapper so `restore` can be sure the custom session it finds is the
/// one `install` created (it compares heap addresses). 0 = nothing installed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayToken(usize);

impl ReplayToken {
    pub fn is_installed(&self) -> bool {
        self.0 != 0
    }
}

/// Bodies up to this many bytes are replayed from Pingora's own retry buffer (64 KiB at most)
/// rather than through the wrapper: below it, the buffer's two copies of the body cost less.
pub const PINGORA_BUFFER_MAX: u64 = 16 * 1024;

/// Before the gateway reads a body: when it declares a small length, let Pingora keep its own copy
/// (its retry buffer) as it is read. `true` when it will; `install` is told so.
pub fn keep_small_body(session: &mut pingora_proxy::Session, declared: Option<u64>) -> bool {
    let small = declared.is_some_and(|n| n > 0 && n <= PINGORA_BUFFER_MAX);
    if small {
        session.downstream_session.enable_retry_buffering();
    }
    small
}

/// Make sure `body`, already read by the gateway, reaches the upstream on every attempt: from
/// Pingora's retry buffer when `in_retry_buffer` says the whole body is there (and no answer
/// header may have to be held), else by wrapping the session's downstream.
pub fn install(
    session: &mut pingora_proxy::Session,
    body: Bytes,
    in_retry_buffer: bool,
    may_hold: bool,
) -> ReplayToken {
    let ds = &mut session.downstream_session;
    if in_retry_buffer
        && !may_hold
        && !body.is_empty()
        && body.len() as u64 <= PINGORA_BUFFER_MAX
        && ds.is_body_done()
        && !ds.retry_buffer_truncated()
    {
        return ReplayToken::default();
    }
    let placeholder = ServerSession::new_custom(Box::new(ReplaySession {
        inner: None,
        body: Bytes::new(),
        replayed: true,
        hold: false,
        held: None,
    }));
    let real = std::mem::replace(&mut *session.downstream_session, placeholder);
    let wrapper = Box::new(ReplaySession {
        inner: Some(real),
        body,
        replayed: false,
        hold: false,
        held: None,
    });
    let token = ReplayToken(&*wrapper as *const ReplaySession as usize);
    *session.downstream_session = ServerSession::new_custom(wrapper);
    token
}

/// The installed wrapper, if `token` names the session's current downstream.
fn installed<'a>(
    session: &'a mut pingora_proxy::Session,
    token: &ReplayToken,
) -> Option<&'a mut ReplaySession> {
    if !token.is_installed() {
        return None;
    }
    let ServerSession::Custom(custom) = &mut *session.downstream_session else {
        return None;
    };
    let ptr = (&mut **custom) as *mut dyn CustomSession as *mut ReplaySession;
    if ptr as usize != token.0 {
        return None;
    }
    // SAFETY: `ptr` is the address of the live boxed `ReplaySession` that `install` created and
    // recorded in `token` (only `install` puts a custom session into a request, and the box has
    // not moved since: boxes keep their heap address). Casting the trait object's data pointer
    // back to its concrete type is therefore sound, and the returned borrow is tied to the
    // `&mut` borrow of the session.
    Some(unsafe { &mut *ptr })
}

/// Put the real downstream session back (keep-alive, connection reuse).
pub fn restore(session: &mut pingora_proxy::Session, token: &mut ReplayToken) {
    let Some(replay) = installed(session, token) else {
        return;
    };
    if let Some(real) = replay.inner.take() {
        *session.downstream_session = real;
    }
    *token = ReplayToken::default();
}

/// Keep the response header that is about to be written from the client until a body chunk with
/// content (or the end of the body) follows it. Until then nothing has been answered
/// (`response_written()` is `None`), so a failure in between is answered with the gateway's own
/// error; a second header (that error) replaces the held one.
pub fn hold_header(session: &mut pingora_proxy::Session, token: &ReplayToken) {
    if let Some(replay) = installed(session, token) {
        replay.hold = true;
    }
}

impl ReplaySession {
    /// Whether a header about to be written is held back: the first one after `hold_header`, if
    /// a body may follow. A later header (the gateway's error) replaces a held one and goes out.
    fn hold_this_header(&mut self, end: bool) -> bool {
        if self.held.take().is_some() {
            self.hold = false;
            return false;
        }
        self.hold && !end && self.s().response_written().is_none()
    }

    async fn release_header(&mut self) -> Result<()> {
        self.hold = false;
        match self.held.take() {
            Some(h) => self.m().write_response_header(h).await,
            None => Ok(()),
        }
    }

    fn s(&self) -> &ServerSession {
        self.inner
            .as_ref()
            .expect("replay placeholder is never used")
    }
    fn m(&mut self) -> &mut ServerSession {
        self.inner
            .as_mut()
            .expect("replay placeholder is never used")
    }
}

#[async_trait]
impl CustomSession for ReplaySession {
    fn req_header(&self) -> &RequestHeader {
        self.s().req_header()
    }

    fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.m().req_header_mut()
    }

    async fn read_body_bytes(&mut self) -> Result<Option<Bytes>> {
        if self.replayed {
            return Ok(None);
        }
        self.replayed = true;
        Ok(Some(self.body.clone()))
    }

    async fn drain_request_body(&mut self) -> Result<()> {
        Ok(())
    }

    async fn write_response_header(&mut self, resp: Box<ResponseHeader>, end: bool) -> Result<()> {
        if self.hold_this_header(end) {
            self.held = Some(resp);
            return Ok(());
        }
        self.m().write_response_header(resp).await?;
        if end {
            self.m().finish_body().await?;
        }
        Ok(())
    }

    async fn write_response_header_ref(&mut self, resp: &ResponseHeader, end: bool) -> Result<()> {
        if self.hold_this_header(end) {
            self.held = Some(Box::new(resp.clone()));
            return Ok(());
        }
        self.m().write_response_header_ref(resp).await?;
        if end {
            self.m().finish_body().await?;
        }
        Ok(())
    }

    async fn write_body(&mut self, data: Bytes, end: bool) -> Result<()> {
        if self.held.is_some() {
            if data.is_empty() && !end {
                return Ok(());
            }
            self.release_header().await?;
        }
        self.m().write_response_body(data, end).await
    }

    async fn write_trailers(&mut self, trailers: HeaderMap) -> Result<()> {
        self.m().write_response_trailers(trailers).await
    }

    async fn response_duplex_vec(&mut self, tasks: Vec<HttpTask>) -> Result<bool> {
        if !self.hold && self.held.is_none() {
            return self.m().response_duplex_vec(tasks).await;
        }
        let mut out = Vec::with_capacity(tasks.len() + 1);
        for task in tasks {
            match task {
                HttpTask::Header(h, end) if self.hold_this_header(end) => self.held = Some(h),
                // Nothing for the client yet: the header stays held.
                HttpTask::Body(None, false) => {}
                HttpTask::Body(Some(b), false) if b.is_empty() => {}
                // The answer failed before it was released: the header is never sent, so the
                // gateway can still answer with its own error.
                HttpTask::Failed(e) if self.held.is_some() => return Err(e),
                task => {
                    if let Some(h) = self.held.take() {
                        out.push(HttpTask::Header(h, false));
                    }
                    self.hold = false;
                    out.push(task);
                }
            }
        }
        if out.is_empty() {
            return Ok(false);
        }
        self.m().response_duplex_vec(out).await
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.m().set_read_timeout(timeout)
    }

    fn get_read_timeout(&self) -> Option<Duration> {
        self.s().get_read_timeout()
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.m().set_write_timeout(timeout)
    }

    fn get_write_timeout(&self) -> Option<Duration> {
        self.s().get_write_timeout()
    }

    fn set_total_drain_timeout(&mut self, timeout: Option<Duration>) {
        self.m().set_total_drain_timeout(timeout)
    }

    fn get_total_drain_timeout(&self) -> Option<Duration> {
        self.s().get_total_drain_timeout()
    }

    fn request_summary(&self) -> String {
        self.s().request_summary()
    }

    fn response_written(&self) -> Option<&ResponseHeader> {
        self.s().response_written()
    }

    async fn shutdown(&mut self, _code: u32, _ctx: &str) {
        self.m().shutdown().await
    }

    fn is_body_done(&mut self) -> bool {
        true
    }

    async fn finish(&mut self) -> Result<()> {
        // Only reached if `restore` did not run; finish the response on the real session.
        self.m().finish_body().await
    }

    fn is_body_empty(&mut self) -> bool {
        self.body.is_empty()
    }

    async fn read_body_or_idle(&mut self, no_body_expected: bool) -> Result<Option<Bytes>> {
        if no_body_expected || self.replayed {
            // The real body is fully read: this only waits for the client to go away, which is
            // how Pingora notices a disconnect mid-stream and stops the upstream.
            self.m().read_body_or_idle(true).await
        } else {
            self.read_body_bytes().await
        }
    }

    fn body_bytes_sent(&self) -> usize {
        self.s().body_bytes_sent()
    }

    fn body_bytes_read(&self) -> usize {
        self.s().body_bytes_read()
    }

    fn digest(&self) -> Option<&Digest> {
        self.s().digest()
    }

    fn digest_mut(&mut self) -> Option<&mut Digest> {
        self.m().digest_mut()
    }

    fn client_addr(&self) -> Option<&SocketAddr> {
        self.s().client_addr()
    }

    fn server_addr(&self) -> Option<&SocketAddr> {
        self.s().server_addr()
    }

    fn pseudo_raw_h1_request_header(&self) -> Bytes {
        self.s().to_h1_raw()
    }

    fn enable_retry_buffering(&mut self) {}

    fn retry_buffer_truncated(&self) -> bool {
        false
    }

    fn get_retry_buffer(&self) -> Option<Bytes> {
        Some(self.body.clone())
    }

    async fn finish_custom(&mut self) -> Result<()> {
        Ok(())
    }

    fn take_custom_message_reader(
        &mut self,
    ) -> Option<Box<dyn futures::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>>
    {
        None
    }

    fn restore_custom_message_reader(
        &mut self,
        _reader: Box<dyn futures::Stream<Item = Result<Bytes>> + Unpin + Send + Sync + 'static>,
    ) -> Result<()> {
        Error::e_explain(
            ErrorType::InternalError,
            "replay session has no custom messages",
        )
    }

    fn take_custom_message_writer(&mut self) -> Option<Box<dyn CustomMessageWrite>> {
        None
    }

    fn restore_custom_message_writer(
        &mut self,
        _writer: Box<dyn CustomMessageWrite>,
    ) -> Result<()> {
        Error::e_explain(
            ErrorType::InternalError,
            "replay session has no custom messages",
        )
    }
}
