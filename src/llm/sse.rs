//! Streaming tap for `text/event-stream` chat-completion responses.
//!
//! The gateway forwards the provider's body chunk by chunk; [`SseTap`] looks at every chunk on
//! the way through to pull out token usage, the model name and (optionally) the generated text,
//! without ever buffering the stream.
//!
//! Two modes:
//! * **pass** (`drop_usage_only_event == false`): the chunk is returned as is (same `Bytes`, no
//!   copy); only an incomplete trailing *line* is copied aside so it can be parsed when its end
//!   arrives.
//! * **hold** (`drop_usage_only_event == true`): the gateway injected
//!   `stream_options.include_usage`, so the final usage-only event must not reach a client that
//!   did not ask for it. An event can only be judged once complete, so complete events are
//!   forwarded as soon as their terminating blank line is seen and only the incomplete trailing
//!   *event* is held. Chunks that end on an event boundary with nothing held are returned as
//!   slices of the input.
//!
//! Line handling follows the SSE spec (WHATWG HTML §9.2.6): lines end in `\n`, `\r\n` or a lone
//! `\r`; a blank line ends (dispatches) an event; `:` starts a comment; `data` lines are joined
//! with `\n`. A `\r` is acted on immediately; if the next byte (possibly in the next chunk) is
//! `\n` it is swallowed as the second half of the same line break.
//!
//! Byte accounting in hold mode: an event's bytes run from the end of the previous event up to
//! and including the line break of the blank line that ends it (both bytes of a `\r\n`). The
//! output is exactly the input minus the bytes of dropped events, whatever the chunking.
//!
//! On request (`keep_raw_usage`, for ai-rate-limiting's `cost_expr`) the raw text of the last
//! usage object is kept as well, in one buffer reused from event to event.
//!
//! Memory is bounded by [`MAX_EVENT_BYTES`]: if one incomplete event (hold mode) or line / data
//! payload (both modes) outgrows it, the tap stops holding and degrades to pass mode.

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::usage::Usage;

/// Largest incomplete event (hold mode), line or joined `data` payload kept in memory.
pub const MAX_EVENT_BYTES: usize = 1 << 20;
/// Cap on captured `delta.content` text; payload logging does not need more, and a runaway
/// stream must not grow the gateway's memory without limit.
pub const MAX_CAPTURED_TEXT: usize = 1 << 20;
/// Buffers that grew past this (a huge event) are released instead of being kept for reuse.
const KEEP_CAPACITY: usize = 64 << 10;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Clone, Copy, Default)]
pub struct SseTapOptions {
    /// The gateway added `stream_options.include_usage` itself, so the client did not ask for the
    /// usage-only final event: remove it from what is forwarded (its tokens are still counted).
    pub drop_usage_only_event: bool,
    /// Accumulate the text of `choices[*].delta.content` (for payload logging).
    pub capture_text: bool,
}

pub struct SseTap {
    opts: SseTapOptions,
    /// Pass mode: the incomplete trailing line (parse only; its bytes were already forwarded).
    /// Hold mode: the not yet forwarded bytes of the incomplete trailing event.
    held: BytesMut,
    /// Hold mode: offset in `held` where the incomplete trailing line starts. 0 in pass mode.
    line_start: usize,
    /// The incomplete line outgrew the cap and was discarded; ignore input up to its line break.
    line_overflow: bool,
    /// The last byte seen was a `\r` line break; a `\n` right after it belongs to it.
    pending_cr: bool,
    /// Hold mode, with `pending_cr` and nothing held: whether the event that `\r` ended was
    /// dropped (then its trailing `\n` is dropped too).
    cr_event_dropped: bool,
    /// Safety valve tripped: no more holding even in hold mode.
    passthrough: bool,
    ev: Events,
}

impl SseTap {
    pub fn new(opts: SseTapOptions) -> Self {
        SseTap {
            opts,
            held: BytesMut::new(),
            line_start: 0,
            line_overflow: false,
            pending_cr: false,
            cr_event_dropped: false,
            passthrough: false,
            ev: Events::new(opts.capture_text),
        }
    }

    /// Feed one upstream chunk; returns the bytes to forward to the client now.
    pub fn on_chunk(&mut self, chunk: Bytes) -> Bytes {
        if chunk.is_empty() {
            return chunk;
        }
        if self.holding() {
            self.chunk_holding(chunk)
        } else {
            self.scan_pass(&chunk);
            chunk
        }
    }

    /// End of the upstream body: returns whatever is still held (forwarded verbatim).
    ///
    /// For accounting, an unterminated final line and an event missing its blank line are still
    /// parsed (the SSE spec would discard them, but the provider did bill those tokens).
    pub fn finish(&mut self) -> Bytes {
        let out = if self.holding() {
            if self.held.len() > self.line_start {
                self.ev.line(&self.held[self.line_start..]);
            }
            self.held.split().freeze()
        } else {
            // (An overflowed line already poisoned its event.)
            if !self.line_overflow && !self.held.is_empty() {
                self.ev.line(&self.held[..]);
            }
            self.held.clear();
            Bytes::new()
        };
        self.ev.dispatch();
        self.line_start = 0;
        self.line_overflow = false;
        self.pending_cr = false;
        out
    }

    /// The last non-null usage seen in any event.
    pub fn usage(&self) -> Option<Usage> {
        self.ev.usage
    }

    /// Also keep the raw text of the usage object (see `raw_usage`).
    pub fn keep_raw_usage(&mut self) {
        self.ev.keep_raw_usage = true;
    }

    /// The raw JSON text of the usage object `usage()` was read from, when `keep_raw_usage` was
    /// asked for.
    pub fn raw_usage(&self) -> Option<&[u8]> {
        (self.ev.keep_raw_usage && self.ev.usage.is_some()).then_some(&self.ev.raw_usage[..])
    }

    /// The first non-empty `model` seen in a data event.
    pub fn model(&self) -> Option<&str> {
        self.ev.model.as_deref()
    }

    /// Captured `choices[*].delta.content` ("" unless `capture_text`).
    pub fn text(&self) -> &str {
        &self.ev.text
    }

    /// `data: [DONE]` seen.
    pub fn saw_done(&self) -> bool {
        self.ev.saw_done
    }

    /// Data events seen (non-empty payload, valid JSON or not), excluding `[DONE]`.
    pub fn data_events(&self) -> u64 {
        self.ev.data_events
    }

    /// A data event with a non-empty `choices` array (which covers every event carrying delta
    /// content, and also role-only and tool-call deltas) was seen: the first token has arrived.
    /// Data events that carried non-empty `delta.content`: about one token each, which is how
    /// completion tokens are estimated when a stream ends before the provider's usage arrives.
    pub fn content_events(&self) -> u64 {
        self.ev.content_events
    }

    pub fn first_content_seen(&self) -> bool {
        self.ev.first_content
    }

    #[cfg(test)]
    fn held_len(&self) -> usize {
        self.held.len()
    }

    fn holding(&self) -> bool {
        self.opts.drop_usage_only_event && !self.passthrough
    }

    /// Skip the `\n` of a `\r\n` split across chunks. Returns where scanning starts.
    #[inline]
    fn skip_split_crlf(&mut self, buf: &[u8]) -> usize {
        if self.pending_cr {
            self.pending_cr = false;
            if buf[0] == b'\n' {
                return 1;
            }
        }
        0
    }

    /// Given a line-break byte at `t`, returns the offset just past the whole line break.
    #[inline]
    fn eol_end(&mut self, buf: &[u8], t: usize) -> usize {
        if buf[t] == b'\r' {
            match buf.get(t + 1) {
                Some(b'\n') => t + 2,
                Some(_) => t + 1,
                None => {
                    // Can't tell yet whether this is a lone CR or half a CRLF.
                    self.pending_cr = true;
                    t + 1
                }
            }
        } else {
            t + 1
        }
    }

    // ---- pass mode ----------------------------------------------------------------------

    fn scan_pass(&mut self, buf: &[u8]) {
        let mut pos = self.skip_split_crlf(buf);
        if !self.held.is_empty() || self.line_overflow {
            // Finish the line carried over from earlier chunks.
            let Some(rel) = find_eol(&buf[pos..]) else {
                self.keep_partial_line(&buf[pos..]);
                return;
            };
            let t = pos + rel;
            if self.line_overflow {
                self.line_overflow = false; // the event was poisoned when the line overflowed
            } else {
                self.held.extend_from_slice(&buf[pos..t]);
                self.ev.line(&self.held[..]);
            }
            self.clear_held();
            pos = self.eol_end(buf, t);
        }
        // Lines wholly inside this chunk are parsed in place.
        while let Some(rel) = find_eol(&buf[pos..]) {
            let t = pos + rel;
            self.ev.line(&buf[pos..t]);
            pos = self.eol_end(buf, t);
        }
        self.keep_partial_line(&buf[pos..]);
    }

    fn keep_partial_line(&mut self, part: &[u8]) {
        if part.is_empty() || self.line_overflow {
            return;
        }
        if self.held.len() + part.len() > MAX_EVENT_BYTES {
            log::debug!("sse: line longer than {MAX_EVENT_BYTES} bytes, not parsing it");
            let head = if self.held.is_empty() {
                part
            } else {
                &self.held[..]
            };
            self.ev.poison(head.starts_with(b"data:"));
            self.held = BytesMut::new();
            self.line_overflow = true;
        } else {
            self.held.extend_from_slice(part);
        }
    }

    fn clear_held(&mut self) {
        if self.held.capacity() > KEEP_CAPACITY {
            self.held = BytesMut::new();
        } else {
            self.held.clear();
        }
    }

    // ---- hold mode ----------------------------------------------------------------------

    fn chunk_holding(&mut self, chunk: Bytes) -> Bytes {
        let buf: &[u8] = &chunk;
        let mut out = Out::default();
        // `seg`: bytes of `buf` before it are already forwarded, dropped or copied into `held`.
        // Invariant: `held` ++ `buf[seg..pos]` is the current event so far.
        let mut seg = 0;
        let mut pos = 0;
        if self.pending_cr {
            self.pending_cr = false;
            if buf[0] == b'\n' {
                pos = 1;
                if self.held.is_empty() {
                    // That `\r` ended an event already forwarded or dropped: this `\n` is its
                    // last byte and shares its fate.
                    if !self.cr_event_dropped {
                        out.range(buf, 0, 1);
                    }
                    seg = 1;
                }
                // Otherwise the `\r` ended a line inside the held event, and the `\n` is simply
                // part of that event's bytes (`seg` stays 0).
            }
        }
        // The line being scanned starts either in `held` (at `line_start`, carried over) or in
        // `buf` at `line_from`. Scanning resumes at `pos`, never re-reading held bytes.
        let mut line_in_held = self.held.len() > self.line_start;
        let mut line_from = pos;
        while let Some(rel) = find_eol(&buf[pos..]) {
            let t = pos + rel;
            let te = self.eol_end(buf, t);
            let ended = if line_in_held {
                // The line straddles chunks: make it contiguous by moving the bytes up to its
                // line break into `held` (they'd be copied there or into the output anyway).
                line_in_held = false;
                self.held.extend_from_slice(&buf[seg..te]);
                seg = te;
                let end = self.held.len() - (te - t);
                self.ev.line(&self.held[self.line_start..end])
            } else {
                self.ev.line(&buf[line_from..t])
            };
            pos = te;
            line_from = te;
            if let Some(droppable) = ended {
                if droppable {
                    self.clear_held();
                } else {
                    out.held_then(&mut self.held, buf, seg, te);
                }
                seg = te;
                self.line_start = 0;
                // Only consulted if this event ended in a `\r` at the end of the chunk.
                self.cr_event_dropped = droppable;
            }
        }
        // Keep the incomplete trailing event.
        let line_start = if line_in_held {
            self.line_start
        } else {
            self.held.len() + (line_from - seg)
        };
        self.held.extend_from_slice(&buf[seg..]);
        self.line_start = line_start;
        if self.held.len() > MAX_EVENT_BYTES {
            self.trip_valve(&mut out, buf);
        }
        out.into_bytes(&chunk)
    }

    /// A provider that never ends its events would make us hold the stream forever: forward
    /// everything held and continue in pass mode (the usage-only event will then not be
    /// dropped, which beats stalling or growing without bound).
    fn trip_valve(&mut self, out: &mut Out, buf: &[u8]) {
        log::warn!("sse: event exceeds {MAX_EVENT_BYTES} bytes without a blank line; passing the stream through");
        let all = self.held.split();
        let partial = &all[self.line_start..];
        // In pass mode `held` is just the incomplete line (parse-only copy).
        let mut line = BytesMut::new();
        if partial.len() > MAX_EVENT_BYTES {
            self.ev.poison(partial.starts_with(b"data:"));
            self.line_overflow = true;
        } else {
            line.extend_from_slice(partial);
        }
        out.owned(buf, all);
        self.held = line;
        self.line_start = 0;
        self.passthrough = true;
    }
}

/// The output of one hold-mode chunk: a slice of the input while possible, a copy when it has
/// to be stitched (held bytes in front, or a dropped event in the middle).
#[derive(Default)]
struct Out {
    owned: Option<BytesMut>,
    range: Option<(usize, usize)>,
}

impl Out {
    fn range(&mut self, buf: &[u8], a: usize, b: usize) {
        if a == b {
            return;
        }
        if let Some(o) = &mut self.owned {
            o.extend_from_slice(&buf[a..b]);
            return;
        }
        match &mut self.range {
            None => self.range = Some((a, b)),
            Some((_, e)) if *e == a => *e = b,
            Some(_) => {
                self.materialize(buf, buf.len() - a);
                self.owned.as_mut().unwrap().extend_from_slice(&buf[a..b]);
            }
        }
    }

    /// Forward the held start of an event followed by `buf[a..b]`.
    fn held_then(&mut self, held: &mut BytesMut, buf: &[u8], a: usize, b: usize) {
        if held.is_empty() {
            return self.range(buf, a, b);
        }
        if self.owned.is_none() && self.range.is_none() {
            // Append in place and hand over `held`'s bytes without another copy; reserve room
            // for the rest of the chunk, which often holds further complete events.
            held.reserve(buf.len() - a);
            held.extend_from_slice(&buf[a..b]);
            self.owned = Some(held.split());
        } else {
            self.materialize(buf, held.len() + buf.len() - a);
            let o = self.owned.as_mut().unwrap();
            o.extend_from_slice(held);
            o.extend_from_slice(&buf[a..b]);
            held.clear();
        }
    }

    fn owned(&mut self, buf: &[u8], bytes: BytesMut) {
        if self.owned.is_none() && self.range.is_none() {
            self.owned = Some(bytes);
        } else {
            self.materialize(buf, bytes.len());
            self.owned.as_mut().unwrap().extend_from_slice(&bytes);
        }
    }

    /// Switch to an owned buffer (copying the pending range), with `extra` bytes of room.
    fn materialize(&mut self, buf: &[u8], extra: usize) {
        if self.owned.is_none() {
            let (a, b) = self.range.take().unwrap_or((0, 0));
            let mut o = BytesMut::with_capacity(b - a + extra);
            o.extend_from_slice(&buf[a..b]);
            self.owned = Some(o);
        }
    }

    fn into_bytes(self, chunk: &Bytes) -> Bytes {
        match (self.owned, self.range) {
            (Some(o), _) => o.freeze(),
            (None, Some((a, b))) => chunk.slice(a..b),
            (None, None) => Bytes::new(),
        }
    }
}

/// Position of the first `\n` or `\r`. SWAR over 8-byte words: this runs over every byte of
/// every stream, and bytes `std` offers no two-byte search.
#[inline]
fn find_eol(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = LO * b'\n' as u64;
    const CR: u64 = LO * b'\r' as u64;
    let mut i = 0;
    while i + 8 <= s.len() {
        let w = u64::from_le_bytes(s[i..i + 8].try_into().unwrap());
        let (a, b) = (w ^ LF, w ^ CR);
        // Classic "has zero byte": exact for the lowest matching byte (false positives can only
        // appear above a true match), and little-endian load puts the first byte lowest.
        let m = (a.wrapping_sub(LO) & !a & HI) | (b.wrapping_sub(LO) & !b & HI);
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..]
        .iter()
        .position(|&c| c == b'\n' || c == b'\r')
        .map(|p| i + p)
}

// ---- event parsing ------------------------------------------------------------------------

/// Per-event parse state and what has been extracted so far.
struct Events {
    capture_text: bool,
    at_stream_start: bool,
    /// `data` lines of the current event joined with `\n` (buffer reused across events).
    data: Vec<u8>,
    has_data: bool,
    /// Part of this event was lost to the size cap: don't parse (or drop) it.
    poisoned: bool,
    usage: Option<Usage>,
    keep_raw_usage: bool,
    /// The raw text `usage` was parsed from (with `keep_raw_usage`).
    raw_usage: Vec<u8>,
    model: Option<String>,
    text: String,
    saw_done: bool,
    data_events: u64,
    content_events: u64,
    first_content: bool,
}

impl Events {
    fn new(capture_text: bool) -> Self {
        Events {
            capture_text,
            at_stream_start: true,
            data: Vec::new(),
            has_data: false,
            poisoned: false,
            usage: None,
            keep_raw_usage: false,
            raw_usage: Vec::new(),
            model: None,
            text: String::new(),
            saw_done: false,
            data_events: 0,
            content_events: 0,
            first_content: false,
        }
    }

    /// One complete line, line break removed. Returns `Some(droppable)` if it was the blank
    /// line that ends an event.
    #[inline]
    fn line(&mut self, mut line: &[u8]) -> Option<bool> {
        if self.at_stream_start {
            self.at_stream_start = false;
            if let Some(rest) = line.strip_prefix(UTF8_BOM) {
                line = rest;
            }
        }
        if let Some(v) = line.strip_prefix(b"data:") {
            // Fast path for the line that matters.
            self.push_data(v.strip_prefix(b" ").unwrap_or(v));
            return None;
        }
        match line.first() {
            None => Some(self.dispatch()),
            Some(b':') => None, // comment (keep-alives, OpenRouter's ": PROCESSING")
            Some(_) => {
                // `event`, `id`, `retry` and unknown fields don't matter for accounting; a bare
                // `data` (no colon) is an empty data line.
                if line == b"data" {
                    self.push_data(b"");
                }
                None
            }
        }
    }

    /// A line was too long to keep: the event it belongs to can't be parsed faithfully (but
    /// still counts as a data event if that line was a data line).
    fn poison(&mut self, data_line: bool) {
        self.at_stream_start = false;
        self.poisoned = true;
        self.has_data |= data_line;
        self.data.clear();
    }

    fn push_data(&mut self, v: &[u8]) {
        if !self.poisoned {
            let sep = self.has_data as usize;
            if self.data.len() + sep + v.len() > MAX_EVENT_BYTES {
                self.poisoned = true;
                self.data.clear();
            } else {
                if sep == 1 {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(v);
            }
        }
        self.has_data = true;
    }

    /// End of event. Returns whether it is a usage-only event that may be dropped.
    fn dispatch(&mut self) -> bool {
        let (has_data, poisoned) = (self.has_data, self.poisoned);
        self.has_data = false;
        self.poisoned = false;
        if !has_data {
            return false;
        }
        if poisoned {
            self.data_events += 1;
            self.release_data();
            return false;
        }
        // Take the buffer so it can be borrowed while `self` is updated; it goes back after.
        let data = std::mem::take(&mut self.data);
        let droppable = self.payload(&data);
        self.data = data;
        self.release_data();
        droppable
    }

    fn release_data(&mut self) {
        if self.data.capacity() > KEEP_CAPACITY {
            self.data = Vec::new();
        } else {
            self.data.clear();
        }
    }

    fn payload(&mut self, data: &[u8]) -> bool {
        let d = data.trim_ascii();
        if d.is_empty() {
            return false; // empty `data:` frame (some providers send them as keep-alives)
        }
        if d == b"[DONE]" {
            self.saw_done = true;
            return false;
        }
        self.data_events += 1;

        let text_mark = self.text.len();
        let mut sink = Sink {
            text: (self.capture_text && self.text.len() < MAX_CAPTURED_TEXT)
                .then_some(&mut self.text),
            content: false,
        };
        let mut de = serde_json::Deserializer::from_slice(d);
        let parsed = EventSeed(&mut sink)
            .deserialize(&mut de)
            .and_then(|info| de.end().map(|()| info));
        let content = sink.content;
        let info = match parsed {
            Ok(info) => info,
            Err(_) => {
                // Malformed or not an object: forwarded untouched, nothing counted. Undo any
                // text captured before the error was found.
                self.text.truncate(text_mark);
                return false;
            }
        };
        if self.model.is_none() {
            if let Some(m) = info.model.filter(|m| !m.is_empty()) {
                self.model = Some(m.into_owned());
            }
        }
        if content {
            self.content_events += 1;
        }
        if content || info.choices.is_some_and(|n| n > 0) {
            self.first_content = true;
        }
        let mut usage_object = false;
        if let Some(raw) = info.usage {
            let raw = raw.get().as_bytes();
            usage_object = raw.first() == Some(&b'{');
            if let Some(u) = Usage::from_json(raw) {
                self.usage = Some(u);
                if self.keep_raw_usage {
                    self.raw_usage.clear();
                    self.raw_usage.extend_from_slice(raw);
                }
            }
        }
        // OpenAI's `include_usage` final event: `"choices": []` plus a usage object.
        info.choices == Some(0) && usage_object
    }
}

// ---- one-pass borrowed deserialization of a chunk payload ---------------------------------
//
// A `#[derive]`d struct with `Vec<Choice>` would allocate per event; instead a small set of
// seeded visitors walks the payload once, counting `choices` and handing `delta.content`
// straight to the text sink. Everything else is skipped with `IgnoredAny`. The inner visitors
// accept any JSON type (ignoring unexpected shapes) so that one odd field from a provider does
// not cost the event's usage.

struct Sink<'t> {
    text: Option<&'t mut String>,
    content: bool,
}

impl Sink<'_> {
    fn content(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.content = true;
        if let Some(t) = self.text.as_deref_mut() {
            let room = MAX_CAPTURED_TEXT.saturating_sub(t.len());
            if s.len() <= room {
                t.push_str(s);
            } else {
                let mut end = room;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                t.push_str(&s[..end]);
            }
        }
    }
}

#[derive(Default)]
struct EventInfo<'a> {
    model: Option<Cow<'a, str>>,
    usage: Option<&'a RawValue>,
    /// Length of `choices` if it is an array.
    choices: Option<usize>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum EventField {
    Model,
    Usage,
    Choices,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum ChoiceField {
    Delta,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum DeltaField {
    Content,
    #[serde(other)]
    Other,
}

/// Visitor methods that accept scalars of any type and yield `$v`.
macro_rules! ignore_scalars {
    ($v:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($v)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($v)
        }
    };
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

struct EventSeed<'s, 't>(&'s mut Sink<'t>);

impl<'de> DeserializeSeed<'de> for EventSeed<'_, '_> {
    type Value = EventInfo<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_, '_> {
    type Value = EventInfo<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a chat completion chunk object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut info = EventInfo::default();
        while let Some(key) = map.next_key::<EventField>()? {
            match key {
                EventField::Model if info.model.is_none() => {
                    info.model = map.next_value::<MaybeStr>()?.0
                }
                EventField::Usage => info.usage = map.next_value()?,
                EventField::Choices => {
                    info.choices = map.next_value_seed(ChoicesSeed(&mut *self.0))?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(info)
    }
}

/// `choices`: counts elements; anything but an array yields `None`.
struct ChoicesSeed<'s, 't>(&'s mut Sink<'t>);

impl<'de> DeserializeSeed<'de> for ChoicesSeed<'_, '_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ChoicesSeed<'_, '_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("choices")
    }
    ignore_scalars!(None);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut n = 0;
        while seq.next_element_seed(ChoiceSeed(&mut *self.0))?.is_some() {
            n += 1;
        }
        Ok(Some(n))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map).map(|()| None)
    }
}

/// One element of `choices`: only `delta` is looked at.
struct ChoiceSeed<'s, 't>(&'s mut Sink<'t>);

impl<'de> DeserializeSeed<'de> for ChoiceSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ChoiceSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a choice")
    }
    ignore_scalars!(());
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        drain_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<ChoiceField>()? {
            match key {
                ChoiceField::Delta => map.next_value_seed(DeltaSeed(&mut *self.0))?,
                ChoiceField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// `delta`: only `content` (a string) is looked at.
struct DeltaSeed<'s, 't>(&'s mut Sink<'t>);

impl<'de> DeserializeSeed<'de> for DeltaSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DeltaSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a delta")
    }
    ignore_scalars!(());
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        drain_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<DeltaField>()? {
            match key {
                DeltaField::Content => {
                    if let Some(s) = map.next_value::<MaybeStr>()?.0 {
                        self.0.content(&s);
                    }
                }
                DeltaField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A string borrowed from the payload when it has no escapes; any non-string is `None`.
/// (serde's own `Cow<str>` impl always allocates outside `#[serde(borrow)]` derives.)
struct MaybeStr<'a>(Option<Cow<'a, str>>);

impl<'de> Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            // e.g. content given as an array of parts: not captured.
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq).map(|()| MaybeStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map).map(|()| MaybeStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: SseTapOptions = SseTapOptions {
        drop_usage_only_event: true,
        capture_text: true,
    };
    const PASS: SseTapOptions = SseTapOptions {
        drop_usage_only_event: false,
        capture_text: true,
    };

    use crate::llm::test_util::{u, Rng};

    /// Feed `chunks` then finish; returns everything forwarded and the tap.
    fn run(opts: SseTapOptions, chunks: &[&[u8]]) -> (Vec<u8>, SseTap) {
        let mut tap = SseTap::new(opts);
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&tap.on_chunk(Bytes::copy_from_slice(c)));
        }
        out.extend_from_slice(&tap.finish());
        (out, tap)
    }

    fn run1(opts: SseTapOptions, s: &[u8]) -> (Vec<u8>, SseTap) {
        run(opts, &[s])
    }

    fn content_event(id: u32, content: &str) -> String {
        format!(
            "data: {{\"id\":\"chatcmpl-{id}\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\
             \"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0aa8d3e20b\",\
             \"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"logprobs\":null,\"finish_reason\":null}}],\
             \"usage\":null}}\n\n"
        )
    }

    const USAGE_ONLY: &str = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\
        \"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":22,\
        \"total_tokens\":33,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n";

    /// A realistic but nasty stream as (span, dropped-in-hold-mode) pairs; spans are whole
    /// events including their terminating blank line.
    fn spans() -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = vec![
            (": OPENROUTER PROCESSING\n\n".into(), false),
            ("retry: 3000\n\n".into(), false),
            (
                "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\
                 \"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\
                 \"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n"
                    .into(),
                false,
            ),
            (content_event(1, "Hello"), false),
            (content_event(2, ", wor").replace("\n\n", "\r\n\r\n"), false),
            (content_event(3, "ld").replace("\n\n", "\r\r"), false),
            ("event: message\nid: 7\ndata:{\"choices\":[{\"delta\":{\"content\":\" caf\\u00e9 \\\"q\\\"\"}}]}\n\n".into(), false),
            ("data: {\"choices\":[{\"delta\":\n: interleaved comment\ndata: {\"content\":\"!\"}}]}\n\n".into(), false),
            ("data: {not json\n\n".into(), false),
            ("data: {\"choices\":[],\"usage\":null}\n\n".into(), false),
            ("data:\n\n".into(), false),
            ("\n".into(), false), // stray blank line: its own (empty) event
            (USAGE_ONLY.replace("\n\n", "\r\n\r\n"), true),
            ("data: [DONE]\n\n".into(), false),
        ];
        // A second usage-only event ending in lone CRs, then one with LF, so that drops are
        // exercised with every line break style.
        v.insert(
            9,
            (
                USAGE_ONLY
                    .replace("\n\n", "\r\r")
                    .replace("\"prompt_tokens\":11", "\"prompt_tokens\":1"),
                true,
            ),
        );
        v.insert(
            10,
            (
                USAGE_ONLY.replace("\"prompt_tokens\":11", "\"prompt_tokens\":2"),
                true,
            ),
        );
        v
    }

    fn stream() -> (Vec<u8>, Vec<u8>) {
        let (mut all, mut kept) = (Vec::new(), Vec::new());
        for (s, dropped) in spans() {
            all.extend_from_slice(s.as_bytes());
            if !dropped {
                kept.extend_from_slice(s.as_bytes());
            }
        }
        (all, kept)
    }

    fn check_stream_results(tap: &SseTap) {
        assert_eq!(tap.usage(), u(11, 22, 33));
        assert_eq!(tap.model(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(tap.text(), "Hello, world caf\u{e9} \"q\"!");
        assert!(tap.saw_done());
        // role, 3 content, event:message, multi-line, malformed, choices[]+null, 3 usage-only
        assert_eq!(tap.data_events(), 11);
        assert!(tap.first_content_seen());
        assert!(tap.content_events() > 0 && tap.content_events() <= 11);
    }

    // ---- zero copy / holding ------------------------------------------------------------

    #[test]
    fn pass_mode_returns_input_bytes_zero_copy() {
        let (all, _) = stream();
        let mut tap = SseTap::new(PASS);
        for piece in all.chunks(37) {
            let chunk = Bytes::copy_from_slice(piece);
            let out = tap.on_chunk(chunk.clone());
            assert_eq!(out.as_ptr(), chunk.as_ptr());
            assert_eq!(out.len(), chunk.len());
        }
        assert!(tap.finish().is_empty());
        check_stream_results(&tap);
    }

    #[test]
    fn pass_mode_holds_only_incomplete_line() {
        let mut tap = SseTap::new(PASS);
        tap.on_chunk(Bytes::from_static(
            b"data: {\"model\":\"m\"}\n\ndata: {\"mo",
        ));
        assert_eq!(tap.held_len(), "data: {\"mo".len());
        tap.on_chunk(Bytes::from_static(b"del\":\"x\"}\n"));
        assert_eq!(tap.held_len(), 0);
        tap.on_chunk(Bytes::from_static(b"\n"));
        assert_eq!(tap.held_len(), 0);
        assert_eq!(tap.data_events(), 2);
        assert!(tap.finish().is_empty());
    }

    #[test]
    fn hold_mode_forwards_complete_events_holds_incomplete() {
        let mut tap = SseTap::new(HOLD);
        let out = tap.on_chunk(Bytes::from_static(b"data: {\"a\":1}\n\ndata: {\"b\""));
        assert_eq!(&out[..], b"data: {\"a\":1}\n\n");
        assert_eq!(tap.held_len(), b"data: {\"b\"".len());
        let out = tap.on_chunk(Bytes::from_static(b":2}\n"));
        assert!(out.is_empty(), "event not complete until its blank line");
        let out = tap.on_chunk(Bytes::from_static(b"\n: ping\n"));
        assert_eq!(&out[..], b"data: {\"b\":2}\n\n");
        assert_eq!(tap.held_len(), b": ping\n".len());
        assert_eq!(&tap.finish()[..], b": ping\n");
        assert_eq!(tap.data_events(), 2);
    }

    #[test]
    fn hold_mode_returns_slices_when_nothing_held() {
        let mut tap = SseTap::new(HOLD);
        let chunk = Bytes::from(format!(
            "{}{}",
            content_event(1, "a"),
            content_event(2, "b")
        ));
        let out = tap.on_chunk(chunk.clone());
        assert_eq!((out.as_ptr(), out.len()), (chunk.as_ptr(), chunk.len()));
        // Complete events followed by an incomplete one: a prefix slice.
        let chunk = Bytes::from(format!("{}data: {{\"x\"", content_event(3, "c")));
        let out = tap.on_chunk(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(out.len(), content_event(3, "c").len());
        // A usage-only event at the end of a chunk: the rest is still a slice.
        let mut tap = SseTap::new(HOLD);
        let chunk = Bytes::from(format!("{}{}", content_event(1, "a"), USAGE_ONLY));
        let out = tap.on_chunk(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(&out[..], content_event(1, "a").as_bytes());
        assert_eq!(tap.usage(), u(11, 22, 33));
    }

    // ---- dropping -------------------------------------------------------------------------

    #[test]
    fn hold_mode_drops_usage_only_event() {
        let first = content_event(1, "hi");
        let input = format!("{first}{USAGE_ONLY}data: [DONE]\n\n");
        let (out, tap) = run1(HOLD, input.as_bytes());
        assert_eq!(out, format!("{first}data: [DONE]\n\n").as_bytes());
        assert_eq!(tap.usage(), u(11, 22, 33));
        assert!(tap.saw_done());
        // One chunk per event: the usage chunk forwards nothing.
        let mut tap = SseTap::new(HOLD);
        assert_eq!(tap.on_chunk(Bytes::from(first.clone())).len(), first.len());
        assert!(tap.on_chunk(Bytes::from(USAGE_ONLY)).is_empty());
        assert_eq!(
            &tap.on_chunk(Bytes::from_static(b"data: [DONE]\n\n"))[..],
            b"data: [DONE]\n\n"
        );
        assert_eq!(tap.usage(), u(11, 22, 33));
    }

    #[test]
    fn pass_mode_never_drops() {
        let input = format!("{}{USAGE_ONLY}data: [DONE]\n\n", content_event(1, "hi"));
        let (out, tap) = run1(PASS, input.as_bytes());
        assert_eq!(out, input.as_bytes());
        assert_eq!(tap.usage(), u(11, 22, 33));
    }

    #[test]
    fn hold_mode_keeps_everything_else_verbatim() {
        let keep = [
            // usage rides on a content chunk (vLLM/DeepSeek style)
            "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n",
            "data: {\"choices\":[],\"usage\":null}\n\n",
            "data: {\"choices\":[]}\n\n",
            "data: {\"usage\":{\"prompt_tokens\":1}}\n\n",           // no choices member at all
            "data: {\"choices\":{},\"usage\":{\"prompt_tokens\":1}}\n\n", // choices not an array
            "data: {\"choices\":[],\"usage\":7}\n\n",                // usage not an object
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}\n\n", // malformed (truncated)
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}} trailing\n\n", // malformed
            ": comment\n\n",
            "event: ping\nid: 42\nretry: 10\n\n",
            "data: [DONE]\n\n",
            "data:\n\n",
            "garbage line without colon\n\n",
        ];
        for k in keep {
            let (out, _) = run1(HOLD, k.as_bytes());
            assert_eq!(out, k.as_bytes(), "{k:?}");
        }
        let all: String = keep.concat();
        let (out, _) = run1(HOLD, all.as_bytes());
        assert_eq!(out, all.as_bytes());
    }

    #[test]
    fn dropped_event_includes_its_id_and_comment_lines() {
        let input = format!("id: 9\n: c\n{USAGE_ONLY}data: [DONE]\n\n");
        let (out, tap) = run1(HOLD, input.as_bytes());
        assert_eq!(out, b"data: [DONE]\n\n");
        assert_eq!(tap.usage(), u(11, 22, 33));
    }

    // ---- chunking properties --------------------------------------------------------------

    #[test]
    fn hold_mode_output_equals_input_minus_dropped_every_split() {
        let (all, kept) = stream();
        for opts in [HOLD, PASS] {
            let expect = if opts.drop_usage_only_event {
                &kept
            } else {
                &all
            };
            for i in 0..=all.len() {
                let (out, tap) = run(opts, &[&all[..i], &all[i..]]);
                assert!(
                    out == *expect,
                    "split at {i} ({opts:?}):\n{}",
                    String::from_utf8_lossy(&out)
                );
                check_stream_results(&tap);
            }
        }
    }

    #[test]
    fn output_equals_input_minus_dropped_random_multi_splits() {
        let (all, kept) = stream();
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for round in 0..3000 {
            let mut cuts: Vec<usize> = (0..1 + rng.below(if round % 2 == 0 { 8 } else { 60 }))
                .map(|_| rng.below(all.len() + 1))
                .collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut prev = 0;
            for c in cuts {
                pieces.push(&all[prev..c]); // may be empty: empty chunks must be harmless
                prev = c;
            }
            pieces.push(&all[prev..]);
            for opts in [HOLD, PASS] {
                let (out, tap) = run(opts, &pieces);
                let expect = if opts.drop_usage_only_event {
                    &kept
                } else {
                    &all
                };
                assert!(out == *expect, "round {round} ({opts:?})");
                check_stream_results(&tap);
            }
        }
    }

    #[test]
    fn one_byte_chunks() {
        let (all, kept) = stream();
        let pieces: Vec<&[u8]> = all.chunks(1).collect();
        let (out, tap) = run(HOLD, &pieces);
        assert_eq!(out, kept);
        check_stream_results(&tap);
    }

    // ---- line endings ------------------------------------------------------------------------

    #[test]
    fn line_endings_lf_crlf_cr() {
        for eol in ["\n", "\r\n", "\r"] {
            let s = format!(
                ": c{eol}data: {{\"model\":\"m\",{eol}data: \"choices\":[{{\"delta\":{{\"content\":\"a\"}}}}]}}{eol}{eol}\
                 data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":2,\"completion_tokens\":3}}}}{eol}{eol}data: [DONE]{eol}{eol}"
            );
            for opts in [HOLD, PASS] {
                let (out, tap) = run1(opts, s.as_bytes());
                assert_eq!(tap.model(), Some("m"), "{eol:?}");
                assert_eq!(tap.text(), "a");
                assert_eq!(tap.usage(), u(2, 3, 5));
                assert!(tap.saw_done());
                assert_eq!(tap.data_events(), 2);
                if opts.drop_usage_only_event {
                    let expect = format!(
                        ": c{eol}data: {{\"model\":\"m\",{eol}data: \"choices\":[{{\"delta\":{{\"content\":\"a\"}}}}]}}{eol}{eol}data: [DONE]{eol}{eol}"
                    );
                    assert_eq!(out, expect.as_bytes(), "{eol:?}");
                }
            }
        }
        // Mixed in one stream.
        let (_, tap) = run1(
            PASS,
            b"data: {\"model\":\"a\",\r\ndata: \"x\":1}\r\r\ndata: [DONE]\n\r\n",
        );
        assert_eq!(tap.model(), Some("a"));
        assert!(tap.saw_done());
    }

    #[test]
    fn crlf_split_across_chunks_is_one_line_break() {
        // If the split CRLF counted as two breaks, the blank line would dispatch the first
        // half of the two-line payload on its own (invalid JSON) and the model would be lost.
        let a: &[u8] = b"data: {\"model\":\r";
        let b: &[u8] = b"\ndata: \"m\"}\r\n\r\n";
        for opts in [HOLD, PASS] {
            let (out, tap) = run(opts, &[a, b]);
            assert_eq!(tap.model(), Some("m"), "{opts:?}");
            assert_eq!(tap.data_events(), 1);
            assert_eq!(out, [a, b].concat());
            // Also with the `\n` alone in its own chunk and an empty chunk in between.
            let (out, tap) = run(opts, &[&a[..a.len()], b"", b"\n", &b[1..]]);
            assert_eq!(tap.model(), Some("m"));
            assert_eq!(out, [a, b].concat());
        }
    }

    #[test]
    fn dropped_event_crlf_split_drops_its_lf() {
        let usage = USAGE_ONLY.replace("\n\n", "\r\n\r\n");
        let (head, tail) = usage.split_at(usage.len() - 1); // ... "\r\n\r" | "\n"
        let first = content_event(1, "x");
        let mut tap = SseTap::new(HOLD);
        let mut out = Vec::new();
        out.extend_from_slice(&tap.on_chunk(Bytes::from(first.clone())));
        out.extend_from_slice(&tap.on_chunk(Bytes::from(head.to_owned())));
        out.extend_from_slice(&tap.on_chunk(Bytes::from(format!("{tail}data: [DONE]\r\n\r\n"))));
        out.extend_from_slice(&tap.finish());
        assert_eq!(out, format!("{first}data: [DONE]\r\n\r\n").as_bytes());
        // And a kept event whose final CRLF is split keeps its LF.
        let kept = content_event(2, "y").replace("\n\n", "\r\n\r\n");
        let (h, t) = kept.split_at(kept.len() - 1);
        let (out, _) = run(HOLD, &[h.as_bytes(), t.as_bytes(), b"data: [DONE]\n\n"]);
        assert_eq!(out, format!("{kept}data: [DONE]\n\n").as_bytes());
    }

    // ---- field parsing -----------------------------------------------------------------------

    #[test]
    fn comments_and_other_fields_ignored() {
        let s = b": keep-alive\n:data: {\"model\":\"nope\"}\nevent: x\nid: 1\nretry: 5\ndatax: {\"model\":\"nope\"}\n\
                  Data: {\"model\":\"nope\"}\n\ndata: {\"model\":\"yes\"}\n\n";
        let (_, tap) = run1(PASS, s);
        assert_eq!(tap.model(), Some("yes"));
        assert_eq!(tap.data_events(), 1);
    }

    #[test]
    fn data_with_and_without_space() {
        for s in [
            &b"data:{\"model\":\"a\"}\n\n"[..],
            b"data: {\"model\":\"a\"}\n\n",
            b"data:  {\"model\":\"a\"}\n\n",
        ] {
            let (_, tap) = run1(PASS, s);
            assert_eq!(tap.model(), Some("a"), "{:?}", String::from_utf8_lossy(s));
        }
        // Only one space is stripped: "data:  [DONE]" has payload " [DONE]", which we still
        // recognise because payloads are trimmed.
        let (_, tap) = run1(PASS, b"data:  [DONE]\n\n");
        assert!(tap.saw_done());
    }

    #[test]
    fn multi_data_lines_joined_with_newline() {
        let (_, tap) = run1(
            PASS,
            b"data: {\"model\":\ndata: \"m\",\ndata:\"choices\":[]}\n\n",
        );
        assert_eq!(tap.model(), Some("m"));
        assert_eq!(tap.data_events(), 1);
        // Joined with a separator, not glued: `1` and `2` stay two tokens, which is invalid JSON.
        let (_, tap) = run1(PASS, b"data: {\"model\":\"m\",\"x\":1\ndata: 2}\n\n");
        assert_eq!(tap.model(), None);
        // A bare `data` line (no colon) is an empty data line.
        let (_, tap) = run1(PASS, b"data: {\"model\":\"m\"\ndata\ndata: }\n\n");
        assert_eq!(tap.model(), Some("m"));
    }

    #[test]
    fn empty_data_frames_ignored() {
        let (_, tap) = run1(PASS, b"data:\n\ndata: \n\ndata\n\ndata:\ndata:\n\n\n\n");
        assert_eq!(tap.data_events(), 0);
        assert!(!tap.first_content_seen());
    }

    #[test]
    fn done_sets_saw_done_and_is_not_a_data_event() {
        let (_, tap) = run1(PASS, b"data: {\"choices\":[]}\n\n");
        assert!(!tap.saw_done());
        let (_, tap) = run1(PASS, b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n");
        assert!(tap.saw_done());
        assert_eq!(tap.data_events(), 1);
    }

    #[test]
    fn bom_at_stream_start_is_ignored() {
        let (_, tap) = run(PASS, &[b"\xEF\xBB", b"\xBFdata: {\"model\":\"m\"}\n\n"]);
        assert_eq!(tap.model(), Some("m"));
    }

    // ---- usage ---------------------------------------------------------------------------------

    #[test]
    fn usage_openai_final_usage_only_chunk() {
        let s = format!(
            "{}{}{USAGE_ONLY}data: [DONE]\n\n",
            content_event(1, "a"),
            content_event(2, "b")
        );
        let (_, tap) = run1(PASS, s.as_bytes());
        assert_eq!(tap.usage(), u(11, 22, 33));
    }

    #[test]
    fn usage_null_on_intermediate_chunks_ignored() {
        let s = format!(
            "{USAGE_ONLY}{}{}",
            content_event(1, "a"),
            content_event(2, "b")
        );
        let (_, tap) = run1(PASS, s.as_bytes());
        assert_eq!(
            tap.usage(),
            u(11, 22, 33),
            "a later \"usage\":null must not erase it"
        );
    }

    #[test]
    fn usage_on_last_content_chunk() {
        let s = b"data: {\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}],\"usage\":null}\n\n\
                  data: {\"model\":\"deepseek-chat\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}],\
                  \"usage\":{\"prompt_tokens\":10,\"completion_tokens\":2,\"total_tokens\":12,\"prompt_cache_hit_tokens\":0}}\n\n\
                  data: [DONE]\n\n";
        for opts in [HOLD, PASS] {
            let (out, tap) = run1(opts, s);
            assert_eq!(out, s, "not usage-only: never dropped");
            assert_eq!(tap.usage(), u(10, 2, 12));
            assert_eq!(tap.model(), Some("deepseek-chat"));
        }
    }

    #[test]
    fn usage_cumulative_takes_last() {
        let mut s = String::new();
        for i in 1..=5 {
            s += &format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":\"t\"}}}}],\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":{i},\"total_tokens\":{}}}}}\n\n",
                7 + i
            );
        }
        let (_, tap) = run1(PASS, s.as_bytes());
        assert_eq!(tap.usage(), u(7, 5, 12));
    }

    #[test]
    fn no_usage_is_none() {
        let s = format!(
            "{}{}data: [DONE]\n\n",
            content_event(1, "a"),
            content_event(2, "b")
        );
        let (_, tap) = run1(PASS, s.as_bytes());
        assert_eq!(tap.usage(), None);
        let (_, tap) = run1(PASS, b"");
        assert_eq!(tap.usage(), None);
        assert_eq!(tap.model(), None);
    }

    #[test]
    fn model_from_first_event_that_has_one() {
        let s = b"data: {\"choices\":[]}\n\ndata: {\"model\":\"\"}\n\ndata: {\"model\":null}\n\n\
                  data: {\"model\":\"first\",\"model\":\"dup\"}\n\ndata: {\"model\":\"second\"}\n\n";
        let (_, tap) = run1(PASS, s);
        assert_eq!(tap.model(), Some("first"));
        let (_, tap) = run1(PASS, b"data: {\"model\":\"gpt\\u002d4o\"}\n\n");
        assert_eq!(tap.model(), Some("gpt-4o"));
    }

    // ---- text & time to first token ------------------------------------------------------------

    #[test]
    fn raw_usage_is_the_last_usage_object_and_only_kept_when_asked() {
        let usage = r#"{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33,"prompt_tokens_details":{"cached_tokens":4}}"#;
        let s = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"a\"}}}}],\"usage\":{{\"prompt_tokens\":1}}}}\n\n\
             data: {{\"choices\":[],\"usage\":null}}\n\n\
             data: {{\"choices\":[],\"usage\":{usage}}}\n\n\
             data: {{\"choices\":[],\"usage\":7}}\n\n\
             data: [DONE]\n\n"
        );
        let mut r = Rng(99);
        for opts in [PASS, HOLD] {
            for _ in 0..200 {
                let mut tap = SseTap::new(opts);
                tap.keep_raw_usage();
                let b = s.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    let n = 1 + r.below(30);
                    tap.on_chunk(Bytes::copy_from_slice(&b[i..(i + n).min(b.len())]));
                    i += n;
                }
                tap.finish();
                assert_eq!(tap.raw_usage(), Some(usage.as_bytes()));
                assert_eq!(tap.usage(), u(11, 22, 33));
            }
            let (_, tap) = run1(opts, s.as_bytes());
            assert_eq!(tap.raw_usage(), None, "not asked for");
        }
        let mut tap = SseTap::new(PASS);
        tap.keep_raw_usage();
        tap.on_chunk(Bytes::from_static(b"data: {\"choices\":[]}\n\n"));
        assert_eq!(tap.raw_usage(), None, "no usage seen");
    }

    #[test]
    fn capture_text_accumulates_delta_content() {
        let s = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
                  data: {\"choices\":[{\"delta\":{\"content\":\"Hi \\\"there\\\" \\ud83d\\ude00\"}},{\"delta\":{\"content\":\"+\"}}]}\n\n\
                  data: {\"choices\":[{\"delta\":{\"content\":null,\"tool_calls\":[{\"index\":0}]}}]}\n\n\
                  data: {\"choices\":[{\"delta\":{\"content\":[{\"type\":\"text\"}]}}]}\n\n\
                  data: {\"choices\":[{\"delta\":{\"content\":\"lost\"}}], broken\n\n";
        let (_, tap) = run1(PASS, s);
        assert_eq!(tap.text(), "Hi \"there\" \u{1F600}+");
        let (_, tap) = run1(
            SseTapOptions {
                capture_text: false,
                ..PASS
            },
            s,
        );
        assert_eq!(tap.text(), "");
    }

    #[test]
    fn captured_text_is_capped() {
        let big = "é".repeat(300_000); // 600 KB per event
        let ev = format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{big}\"}}}}]}}\n\n");
        let (_, tap) = run1(PASS, ev.repeat(3).as_bytes());
        assert!(tap.text().len() <= MAX_CAPTURED_TEXT && tap.text().len() > MAX_CAPTURED_TEXT - 4);
    }

    #[test]
    fn first_content_seen() {
        let (_, tap) = run1(
            PASS,
            format!(": c\n\n{USAGE_ONLY}data: {{\"choices\":null}}\n\ndata: [DONE]\n\n").as_bytes(),
        );
        assert!(!tap.first_content_seen());
        // Role-only first chunk (choices present, content empty) counts, as do tool-call deltas
        // that never carry content.
        let (_, tap) = run1(
            PASS,
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
        );
        assert!(tap.first_content_seen());
        let (_, tap) = run1(PASS, content_event(1, "x").as_bytes());
        assert!(tap.first_content_seen());
    }

    #[test]
    fn finish_parses_unterminated_final_event() {
        for opts in [HOLD, PASS] {
            let (out, tap) = run1(opts, b"data: {\"model\":\"m\"}\n\ndata: [DONE]");
            assert_eq!(out, b"data: {\"model\":\"m\"}\n\ndata: [DONE]");
            assert!(tap.saw_done());
            let (out, tap) = run1(opts, USAGE_ONLY.trim_end().as_bytes());
            assert_eq!(
                out,
                USAGE_ONLY.trim_end().as_bytes(),
                "held bytes are returned verbatim"
            );
            assert_eq!(tap.usage(), u(11, 22, 33));
        }
    }

    // ---- safety valve ---------------------------------------------------------------------------

    #[test]
    fn safety_valve_hold_mode() {
        let mut tap = SseTap::new(HOLD);
        let mut out = Vec::new();
        let mut input = Vec::new();
        let feed = |tap: &mut SseTap, b: &[u8], out: &mut Vec<u8>, input: &mut Vec<u8>| {
            input.extend_from_slice(b);
            out.extend_from_slice(&tap.on_chunk(Bytes::copy_from_slice(b)));
            assert!(tap.held_len() <= MAX_EVENT_BYTES, "held {}", tap.held_len());
        };
        // A provider that never sends a blank line: many short lines, one never-ending event.
        let line = b"data: {\"choices\":[{\"delta\":{\"content\":\"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\"}}]}\n";
        for _ in 0..(3 * MAX_EVENT_BYTES / 16384) {
            let chunk: Vec<u8> = line.iter().copied().cycle().take(16384).collect();
            feed(&mut tap, &chunk, &mut out, &mut input);
        }
        assert!(
            out.len() >= input.len() - MAX_EVENT_BYTES,
            "output must flow once the valve trips"
        );
        assert!(
            tap.held_len() < line.len(),
            "only the incomplete line is kept"
        );
        // Later events are still parsed, and no longer dropped.
        feed(&mut tap, b"\n\n", &mut out, &mut input);
        feed(&mut tap, USAGE_ONLY.as_bytes(), &mut out, &mut input);
        feed(
            &mut tap,
            b"data: {\"model\":\"late\"}\n\n",
            &mut out,
            &mut input,
        );
        out.extend_from_slice(&tap.finish());
        assert_eq!(out, input);
        assert_eq!(tap.usage(), u(11, 22, 33));
        assert_eq!(tap.model(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(
            tap.data_events(),
            3,
            "the oversized event, usage-only, late"
        );
    }

    #[test]
    fn safety_valve_single_huge_line() {
        for opts in [HOLD, PASS] {
            let mut tap = SseTap::new(opts);
            let mut out = Vec::new();
            let mut input = Vec::new();
            let mut chunk = b"data: {\"model\":\"huge\",\"x\":\"".to_vec();
            chunk.resize(65536, b'a');
            for i in 0..40 {
                input.extend_from_slice(&chunk);
                out.extend_from_slice(&tap.on_chunk(Bytes::from(chunk.clone())));
                assert!(
                    tap.held_len() <= MAX_EVENT_BYTES,
                    "{opts:?} chunk {i}: held {}",
                    tap.held_len()
                );
                chunk.iter_mut().for_each(|b| *b = b'a');
            }
            let tail = format!("\"}}\n\n{}data: [DONE]\n\n", content_event(1, "ok"));
            input.extend_from_slice(tail.as_bytes());
            out.extend_from_slice(&tap.on_chunk(Bytes::from(tail)));
            out.extend_from_slice(&tap.finish());
            assert_eq!(out, input, "{opts:?}");
            assert_eq!(
                tap.model(),
                Some("gpt-4o-mini-2024-07-18"),
                "the oversized event is skipped, not parsed"
            );
            assert_eq!(tap.text(), "ok");
            assert!(tap.saw_done());
            assert_eq!(tap.data_events(), 2);
        }
    }

    // ---- robustness -----------------------------------------------------------------------------

    #[test]
    fn random_bytes_never_panic_and_are_forwarded() {
        let mut rng = Rng(0xdead_beef_0bad_cafe);
        let alphabet =
            b"data: {}[]\"\\,:\r\n\r\n choices usage model [DONE] 0123456789\xEF\xBB\xBF\xff";
        for round in 0..2000 {
            let len = rng.below(600);
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    if round % 3 == 0 {
                        rng.next() as u8
                    } else {
                        alphabet[rng.below(alphabet.len())]
                    }
                })
                .collect();
            let mut pieces = Vec::new();
            let mut i = 0;
            while i < input.len() {
                let n = 1 + rng.below(64);
                pieces.push(&input[i..(i + n).min(input.len())]);
                i += n;
            }
            for opts in [HOLD, PASS, SseTapOptions::default()] {
                let (out, _) = run(opts, &pieces);
                assert_eq!(out, input, "round {round}");
            }
        }
    }

    #[test]
    fn random_realistic_usage_events_with_noise() {
        // Splice random droppable events into random noise and check the drop accounting.
        let mut rng = Rng(42);
        for _ in 0..300 {
            let mut all = Vec::new();
            let mut kept = Vec::new();
            for _ in 0..rng.below(12) {
                let (span, drop): (String, bool) = match rng.below(4) {
                    0 => (USAGE_ONLY.to_owned(), true),
                    1 => (content_event(rng.below(100) as u32, "w"), false),
                    2 => (": x\r\n\r\n".to_owned(), false),
                    _ => ("data: [DONE]\r\r".to_owned(), false),
                };
                all.extend_from_slice(span.as_bytes());
                if !drop {
                    kept.extend_from_slice(span.as_bytes());
                }
            }
            let mut pieces = Vec::new();
            let mut i = 0;
            while i < all.len() {
                let n = 1 + rng.below(300);
                pieces.push(&all[i..(i + n).min(all.len())]);
                i += n;
            }
            let (out, _) = run(HOLD, &pieces);
            assert_eq!(out, kept);
        }
    }

    #[test]
    fn find_eol_matches_naive() {
        let mut rng = Rng(7);
        for _ in 0..5000 {
            let len = rng.below(40);
            let s: Vec<u8> = (0..len)
                .map(|_| match rng.below(10) {
                    0 => b'\n',
                    1 => b'\r',
                    2 => 0x8a, // high-bit bytes near the targets
                    3 => 0x0c,
                    4 => 0x00,
                    _ => rng.next() as u8,
                })
                .collect();
            let naive = s.iter().position(|&c| c == b'\n' || c == b'\r');
            assert_eq!(find_eol(&s), naive, "{s:?}");
        }
    }
}
