//! Incremental extraction of the top-level `usage` and `model` of a JSON response body
//! (chat completion, embeddings, ...) while the body streams through the gateway.
//!
//! The body is never kept: a byte-level state machine follows the JSON structure across chunk
//! boundaries and looks only at the raw bytes of the depth-1 members it wants (`usage`, capped
//! at [`MAX_USAGE_BYTES`], and `model`), plus each depth-1 key. A key or value that lies within
//! one chunk (nearly always: most answers arrive in one or two chunks) is read in place; only
//! one split by a chunk boundary is copied aside and put together. Everything nested deeper
//! (e.g. an embeddings `data` array, which is ~all of a 1 MB body) is skipped by a tight loop
//! that only looks for quotes and brackets. Nested `usage` / `model` keys (inside
//! `choices[0].message`, say) are therefore never seen as top-level ones.
//!
//! Validation is structural: the top level must be an object of `"key": value` members, strings
//! and brackets must nest properly; scalar tokens are not checked character by character except
//! inside `usage`, whose raw bytes go through `Usage::from_json` (serde_json's rules). On
//! anything unexpected the tap stops quietly: what was already extracted is kept (a body
//! truncated after its `usage` was still billed), everything else stays `None`.
//!
//! On request (`keep_raw_usage`, for ai-rate-limiting's `cost_expr`) the raw `usage` text is
//! kept too: one copy of the bytes already read for parsing, so nothing more is scanned.

use super::usage::Usage;

/// Largest raw `usage` value captured; a larger one is ignored.
pub const MAX_USAGE_BYTES: usize = 64 << 10;
/// Largest raw (escaped, quoted) `model` string captured.
const MAX_MODEL_BYTES: usize = 1024;
/// Longest raw depth-1 key worth reading: `"usage"` spelled entirely in `\uXXXX` escapes is 32.
const MAX_KEY_BYTES: usize = 64;
/// Nesting deeper than this is treated as invalid (bounds the bracket stack to 8 KiB).
const MAX_DEPTH: usize = 1 << 16;
/// The first this many bytes of a string are searched without `memchr2` (see
/// `find_string_end`).
const SHORT_STR: usize = 32;
/// First allocation of `cap_buf` for a capture split across chunks: a usual `usage` fits.
const CAP_BUF_INITIAL: usize = 512;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    /// Before the top-level `{`.
    Start,
    /// Just after the top-level `{`: a key or `}`.
    KeyOrEnd,
    /// After a `,` at depth 1: a key.
    Key,
    /// Inside a depth-1 key string.
    InKey,
    InKeyEsc,
    /// After a depth-1 key: `:`.
    Colon,
    /// After `:`: a depth-1 value.
    Value,
    /// Inside a depth-1 string value.
    InStr,
    InStrEsc,
    /// Inside a depth-1 number or literal.
    Scalar,
    /// Inside a depth-1 array/object value, i.e. at depth >= 2.
    Nested,
    NestedStr,
    NestedStrEsc,
    /// After a depth-1 value: `,` or `}`.
    AfterValue,
    /// The top-level object is closed; the rest is ignored.
    Done,
    /// Not a JSON object, or invalid: nothing more is extracted.
    Failed,
}

/// The depth-1 member whose value is being read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Field {
    Usage,
    Model,
    Other,
}

/// What `cap` holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cap {
    None,
    Key,
    Model,
    Usage,
}

impl Cap {
    /// Largest raw capture kept; a longer one is ignored.
    fn limit(self) -> usize {
        match self {
            Cap::None => 0,
            Cap::Key => MAX_KEY_BYTES,
            Cap::Model => MAX_MODEL_BYTES,
            Cap::Usage => MAX_USAGE_BYTES,
        }
    }
}

/// Bytes that matter while skipping a nested value (outside strings).
static NESTED_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t
};

/// Bytes that can continue a number or literal token.
static SCALAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.';
        c += 1;
    }
    t
};

/// Position of the first `"` or `\` in `s`: the end of a string or an escape in it.
///
/// Most strings are short (keys, ids, roles) or are cut short by an escape (`\"`, `\u00e9` in
/// message text), and `memchr2`'s SIMD set-up costs more than it saves on a few bytes. So the
/// first `SHORT_STR` bytes are tested 8 at a time in a u64 (SWAR), and only the rest of a
/// longer string (message content, base64 embeddings) goes to `memchr2`.
#[inline]
fn find_string_end(s: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let head = s.len().min(SHORT_STR);
    let mut i = 0;
    while i + 8 <= head {
        let w = u64::from_le_bytes(s[i..i + 8].try_into().unwrap());
        let (q, e) = (w ^ (ONES * b'"' as u64), w ^ (ONES * b'\\' as u64));
        // High bit set in each byte of `q` / `e` that is zero, i.e. a `"` / `\` in `w`. A
        // borrow can also flag a byte above a real match, never below one, so the lowest flag
        // is exact.
        let hit = (q.wrapping_sub(ONES) & !q | e.wrapping_sub(ONES) & !e) & HIGH;
        if hit != 0 {
            return Some(i + (hit.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    while i < head {
        if matches!(s[i], b'"' | b'\\') {
            return Some(i);
        }
        i += 1;
    }
    memchr::memchr2(b'"', b'\\', &s[head..]).map(|at| head + at)
}

/// Where a string being skipped stopped.
enum StrEnd {
    /// Closed: the index just past its closing quote.
    Closed(usize),
    /// The chunk ended inside the string ...
    Open,
    /// ... right after a backslash.
    OpenEsc,
}

/// Skip the rest of a string from `buf[i]` (just past its opening quote or an escaped byte),
/// escapes included; `esc` is set if there was one. The escaped byte can't end the string
/// (`\"`, `\\`); `\uXXXX` hex digits are plain bytes, so skipping the one byte after `\` is
/// enough.
#[inline]
fn skip_string(buf: &[u8], mut i: usize, esc: &mut bool) -> StrEnd {
    loop {
        let Some(at) = find_string_end(&buf[i..]) else {
            return StrEnd::Open;
        };
        i += at;
        if buf[i] == b'"' {
            return StrEnd::Closed(i + 1);
        }
        *esc = true;
        i += 2;
        if i > buf.len() {
            return StrEnd::OpenEsc;
        }
    }
}

/// Incremental scanner of a JSON object response body (chat completion, embeddings) that pulls the
/// top-level `usage` and `model` out as the bytes stream past, without keeping the body.
pub struct JsonTap {
    st: St,
    field: Field,
    /// Bracket stack below depth 1, one bit per level (1 = object), `nest` levels deep: the
    /// first 64 levels in `stack0` (no allocation for ordinary answers), the rest in `stack`.
    stack0: u64,
    stack: Vec<u64>,
    nest: usize,
    cap: Cap,
    /// Raw bytes of the key / value being captured (quotes included for strings), from the
    /// chunks before the current one; empty while the capture began in the current chunk (a
    /// kept part is never empty: it holds at least the opening byte).
    cap_buf: Vec<u8>,
    /// The capture outgrew its limit: its value will be ignored.
    cap_over: bool,
    /// The key / string value being read has an escape (noted while scanning it, so that the
    /// common unescaped one needs no second look).
    cap_esc: bool,
    usage: Option<Usage>,
    model: Option<String>,
    keep_raw_usage: bool,
    raw_usage: Option<Vec<u8>>,
}

impl Default for JsonTap {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonTap {
    pub fn new() -> Self {
        JsonTap {
            st: St::Start,
            field: Field::Other,
            stack0: 0,
            stack: Vec::new(),
            nest: 0,
            cap: Cap::None,
            cap_buf: Vec::new(),
            cap_over: false,
            cap_esc: false,
            usage: None,
            model: None,
            keep_raw_usage: false,
            raw_usage: None,
        }
    }

    /// Also keep the raw text of the top-level `usage` (see `raw_usage`).
    pub fn keep_raw_usage(&mut self) {
        self.keep_raw_usage = true;
    }

    /// The raw JSON text of the top-level `usage` that `usage()` was read from, when
    /// `keep_raw_usage` was asked for.
    pub fn raw_usage(&self) -> Option<&[u8]> {
        self.raw_usage.as_deref()
    }

    /// The top-level `usage`, once its value has been read completely.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The first top-level non-empty string `model`, unescaped.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if matches!(self.st, St::Done | St::Failed) {
            return;
        }
        let buf = chunk;
        let n = buf.len();
        // Start of the not yet captured part of the current capture within `buf`.
        let mut cap_from = 0;
        let mut i = 0;
        while i < n {
            match self.st {
                St::Nested => {
                    // Hot loop: only quotes and brackets change anything at depth >= 2. Strings
                    // are skipped right here too: back to the dispatch only when the value or
                    // the chunk ends.
                    loop {
                        while i < n && !NESTED_SPECIAL[buf[i] as usize] {
                            i += 1;
                        }
                        if i == n {
                            break;
                        }
                        let b = buf[i];
                        i += 1;
                        match b {
                            b'"' => match skip_string(buf, i, &mut false) {
                                StrEnd::Closed(end) => i = end,
                                StrEnd::Open => {
                                    self.st = St::NestedStr;
                                    i = n;
                                    break;
                                }
                                StrEnd::OpenEsc => {
                                    self.st = St::NestedStrEsc;
                                    i = n;
                                    break;
                                }
                            },
                            b'{' | b'[' => {
                                if !self.push(b == b'{') {
                                    return self.fail();
                                }
                            }
                            close => {
                                if !self.pop(close == b'}') {
                                    return self.fail();
                                }
                                if self.nest == 0 {
                                    self.end_value(buf, &mut cap_from, i);
                                    break;
                                }
                            }
                        }
                    }
                }
                St::NestedStr | St::InStr | St::InKey => {
                    let mut esc = false;
                    let end = skip_string(buf, i, &mut esc);
                    self.cap_esc |= esc;
                    match end {
                        StrEnd::Closed(end) => {
                            i = end;
                            match self.st {
                                St::NestedStr => self.st = St::Nested,
                                St::InStr => self.end_value(buf, &mut cap_from, end),
                                _ => {
                                    self.end_key(buf, cap_from, end);
                                    self.st = St::Colon;
                                }
                            }
                        }
                        StrEnd::Open => break,
                        StrEnd::OpenEsc => {
                            self.st = match self.st {
                                St::NestedStr => St::NestedStrEsc,
                                St::InStr => St::InStrEsc,
                                _ => St::InKeyEsc,
                            };
                            break;
                        }
                    }
                }
                // A chunk ended right after a backslash: the escaped byte can't end the string.
                St::NestedStrEsc => {
                    self.st = St::NestedStr;
                    i += 1;
                }
                St::InStrEsc => {
                    self.st = St::InStr;
                    i += 1;
                }
                St::InKeyEsc => {
                    self.st = St::InKey;
                    i += 1;
                }
                St::Scalar => {
                    while i < n && SCALAR[buf[i] as usize] {
                        i += 1;
                    }
                    if i == n {
                        break;
                    }
                    // The delimiter is not part of the value: handled by AfterValue next.
                    self.end_value(buf, &mut cap_from, i);
                }
                st => {
                    let b = buf[i];
                    if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                        i += 1;
                        continue;
                    }
                    match (st, b) {
                        (St::Start, b'{') => self.st = St::KeyOrEnd,
                        (St::KeyOrEnd | St::Key, b'"') => {
                            self.start_capture(Cap::Key);
                            cap_from = i;
                            self.st = St::InKey;
                        }
                        (St::KeyOrEnd | St::AfterValue, b'}') => {
                            self.st = St::Done;
                            self.release();
                            return;
                        }
                        (St::Colon, b':') => self.st = St::Value,
                        (St::AfterValue, b',') => self.st = St::Key,
                        (St::Value, _) => {
                            let cap = match (self.field, b) {
                                (Field::Usage, _) => Cap::Usage,
                                // Only the first model counts: a later one needn't be read.
                                (Field::Model, b'"') if self.model.is_none() => Cap::Model,
                                _ => Cap::None,
                            };
                            if cap != Cap::None {
                                self.start_capture(cap);
                                cap_from = i;
                            }
                            match b {
                                b'"' => self.st = St::InStr,
                                b'{' | b'[' => {
                                    self.st = St::Nested;
                                    self.push(b == b'{'); // first level: can't be too deep
                                }
                                b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => self.st = St::Scalar,
                                _ => return self.fail(),
                            }
                        }
                        _ => return self.fail(),
                    }
                    i += 1;
                }
            }
        }
        // Chunk exhausted mid-capture: keep the part seen so far.
        if self.cap != Cap::None {
            self.capture(&buf[cap_from..]);
        }
    }

    /// Open a level; false if that is too deep.
    fn push(&mut self, object: bool) -> bool {
        if self.nest == MAX_DEPTH {
            return false;
        }
        let bit = 1 << (self.nest % 64);
        let word = match self.nest / 64 {
            0 => &mut self.stack0,
            w => {
                if w > self.stack.len() {
                    self.stack.push(0);
                }
                &mut self.stack[w - 1]
            }
        };
        if object {
            *word |= bit;
        } else {
            *word &= !bit;
        }
        self.nest += 1;
        true
    }

    /// Close a level; false if the bracket doesn't match the one that opened it.
    fn pop(&mut self, object: bool) -> bool {
        if self.nest == 0 {
            return false;
        }
        self.nest -= 1;
        let word = match self.nest / 64 {
            0 => self.stack0,
            w => self.stack[w - 1],
        };
        (word >> (self.nest % 64) & 1 == 1) == object
    }

    fn start_capture(&mut self, cap: Cap) {
        self.cap = cap;
        self.cap_buf.clear();
        self.cap_over = false;
        self.cap_esc = false;
    }

    /// Keep `bytes` of a capture that a chunk boundary splits.
    fn capture(&mut self, bytes: &[u8]) {
        if self.cap_over || bytes.is_empty() {
            return;
        }
        let limit = self.cap.limit();
        if self.cap_buf.len() + bytes.len() > limit {
            self.cap_over = true;
            self.cap_buf.clear();
        } else {
            if self.cap_buf.capacity() == 0 {
                // One allocation for the usual split capture instead of a few doublings.
                self.cap_buf
                    .reserve(bytes.len().max(CAP_BUF_INITIAL.min(limit)));
            }
            self.cap_buf.extend_from_slice(bytes);
        }
    }

    /// End the capture that ends at `buf[..end]` and began at `buf[from]` or in an earlier
    /// chunk: its whole raw bytes, or None if they outgrew the limit. One that began in this
    /// chunk is read in place; only a split one is put together in `cap_buf`.
    fn finish_capture<'a>(
        &'a mut self,
        buf: &'a [u8],
        from: usize,
        end: usize,
    ) -> Option<&'a [u8]> {
        let cap = std::mem::replace(&mut self.cap, Cap::None);
        let part = &buf[from..end];
        if self.cap_buf.is_empty() && !self.cap_over {
            return (part.len() <= cap.limit()).then_some(part);
        }
        self.cap = cap;
        self.capture(part);
        self.cap = Cap::None;
        (!self.cap_over).then_some(&self.cap_buf[..])
    }

    /// A depth-1 key ends at `buf[..end]` (closing quote included).
    fn end_key(&mut self, buf: &[u8], cap_from: usize, end: usize) {
        let esc = self.cap_esc;
        self.field = match self.finish_capture(buf, cap_from, end) {
            Some(b"\"usage\"") => Field::Usage,
            Some(b"\"model\"") => Field::Model,
            // Only an escaped spelling can still match; rare, so unescape the slow way.
            Some(raw) if esc => match serde_json::from_slice::<String>(raw).as_deref() {
                Ok("usage") => Field::Usage,
                Ok("model") => Field::Model,
                _ => Field::Other,
            },
            _ => Field::Other,
        };
    }

    /// A depth-1 value ends at `buf[..end]`.
    fn end_value(&mut self, buf: &[u8], cap_from: &mut usize, end: usize) {
        self.st = St::AfterValue;
        let cap = self.cap;
        if cap == Cap::None {
            return;
        }
        let from = std::mem::replace(cap_from, end);
        let (keep_raw, esc) = (self.keep_raw_usage, self.cap_esc);
        let Some(raw) = self.finish_capture(buf, from, end) else {
            return;
        };
        match cap {
            Cap::Usage => {
                if let Some(u) = Usage::from_json(raw) {
                    let raw = keep_raw.then(|| raw.to_vec());
                    self.usage = Some(u);
                    if raw.is_some() {
                        self.raw_usage = raw;
                    }
                }
            }
            Cap::Model => {
                // Quotes included in the capture; without escapes the inside is the value.
                let inside = &raw[1..raw.len() - 1];
                let model = if inside.is_empty() {
                    None
                } else if esc {
                    serde_json::from_slice::<String>(raw).ok()
                } else {
                    std::str::from_utf8(inside).ok().map(str::to_owned)
                };
                self.model = model.filter(|m| !m.is_empty());
            }
            _ => {}
        }
    }

    fn fail(&mut self) {
        self.st = St::Failed;
        self.release();
    }

    /// Nothing more will be extracted: give the buffers back.
    fn release(&mut self) {
        self.cap = Cap::None;
        self.cap_buf = Vec::new();
        self.stack = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::llm::test_util::{u, Rng};

    fn tap_chunks(chunks: &[&[u8]]) -> JsonTap {
        let mut t = JsonTap::new();
        for c in chunks {
            t.feed(c);
        }
        t
    }

    fn tap(s: &[u8]) -> JsonTap {
        tap_chunks(&[s])
    }

    /// A chat completion with everything that can trip a scanner: escapes in keys and strings,
    /// nested `usage`/`model` keys, whitespace between key and colon, literals and numbers.
    const CHAT: &str = r#"{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object" : "chat.completion",
  "created": 1741570283,
  "model"  :	"gpt-4o-2024-08-06",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Caf\u00e9 \"quoted\" {not: json} [ ] \\ end\\",
        "model": "nested-model",
        "usage": {"prompt_tokens": 999, "completion_tokens": 999},
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage"
     :
  {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "accepted_prediction_tokens": 0}
  },
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035",
  "n": -1.5e+3, "t": true, "f": false, "z": null
}"#;

    fn check_chat(t: &JsonTap) {
        assert_eq!(t.usage(), u(1117, 46, 1163));
        assert_eq!(t.model(), Some("gpt-4o-2024-08-06"));
    }

    #[test]
    fn chat_completion_whole() {
        let t = tap(CHAT.as_bytes());
        check_chat(&t);
        assert_eq!(t.st, St::Done);
    }

    #[test]
    fn chat_completion_every_split_point() {
        let b = CHAT.as_bytes();
        for i in 0..=b.len() {
            check_chat(&tap_chunks(&[&b[..i], &b[i..]]));
        }
    }

    #[test]
    fn chat_completion_random_multi_splits_and_single_bytes() {
        let b = CHAT.as_bytes();
        check_chat(&tap_chunks(&b.chunks(1).collect::<Vec<_>>()));
        let mut rng = Rng(99);
        for _ in 0..2000 {
            let mut cuts: Vec<usize> = (0..1 + rng.below(12))
                .map(|_| rng.below(b.len() + 1))
                .collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut prev = 0;
            for c in cuts {
                pieces.push(&b[prev..c]);
                prev = c;
            }
            pieces.push(&b[prev..]);
            check_chat(&tap_chunks(&pieces));
        }
    }

    /// A compact short answer, the common case: read in place when it comes in one chunk.
    const SMALL: &[u8] = br#"{"id":"chatcmpl-mock-6601","object":"chat.completion","created":1795702559,"model":"x","system_fingerprint":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from m"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}"#;

    #[test]
    fn small_answer_split_at_every_pair_of_points() {
        let raw = &SMALL[SMALL.len() - 59..SMALL.len() - 1];
        assert!(raw.starts_with(b"{\"prompt") && raw.ends_with(b"4}"));
        let check = |chunks: &[&[u8]]| {
            let mut t = JsonTap::new();
            t.keep_raw_usage();
            for c in chunks {
                t.feed(c);
            }
            assert_eq!(
                (t.usage(), t.model(), t.raw_usage(), t.st),
                (u(1, 3, 4), Some("x"), Some(raw), St::Done),
                "{:?}",
                chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
            );
        };
        check(&[SMALL]);
        for i in 0..=SMALL.len() {
            for j in i..=SMALL.len() {
                check(&[&SMALL[..i], &SMALL[i..j], &SMALL[j..]]);
            }
        }
    }

    #[test]
    fn model_cap_in_place_and_split() {
        // The cap counts the raw string, quotes included.
        for (len, want) in [(MAX_MODEL_BYTES - 2, true), (MAX_MODEL_BYTES - 1, false)] {
            let model = "m".repeat(len);
            let body = format!(r#"{{"model":"{model}","usage":{{"total_tokens":1}}}}"#);
            for size in [body.len(), 100, 7, 1] {
                let t = tap_chunks(&body.as_bytes().chunks(size).collect::<Vec<_>>());
                assert_eq!(t.model(), want.then_some(&model[..]), "{len} in {size}");
                assert_eq!(t.usage(), u(0, 0, 1));
            }
        }
    }

    #[test]
    fn find_string_end_matches_a_plain_search() {
        let mut rng = Rng(31);
        for _ in 0..20_000 {
            let len = rng.below(100);
            let s: Vec<u8> = (0..len)
                .map(|_| match rng.below(40) {
                    0 => b'"',
                    1 => b'\\',
                    2 => 0x80 | rng.next() as u8,
                    3 => b'"' ^ 0x80,
                    _ => b'a' + rng.below(26) as u8,
                })
                .collect();
            let want = s.iter().position(|&b| b == b'"' || b == b'\\');
            assert_eq!(find_string_end(&s), want, "{s:?}");
        }
    }

    #[test]
    fn nested_usage_and_model_are_ignored() {
        let t = tap(br#"{"choices":[{"message":{"model":"x","usage":{"prompt_tokens":5}}}],"data":{"usage":{"total_tokens":3},"model":"y"}}"#);
        assert_eq!(t.usage(), None);
        assert_eq!(t.model(), None);
        // A *string* containing what looks like a top-level member.
        let t =
            tap(br#"{"note":"\",\"usage\":{\"prompt_tokens\":5},\"model\":\"x","model":"real"}"#);
        assert_eq!(t.usage(), None);
        assert_eq!(t.model(), Some("real"));
    }

    #[test]
    fn model_is_unescaped() {
        let t = tap(br#"{"model":"gpt\u002d4o \"mini\" caf\u00e9 \ud83d\ude00"}"#);
        assert_eq!(t.model(), Some("gpt-4o \"mini\" caf\u{e9} \u{1F600}"));
        let b = br#"{"model":"a\\b\/c"}"#;
        for i in 0..=b.len() {
            assert_eq!(
                tap_chunks(&[&b[..i], &b[i..]]).model(),
                Some("a\\b/c"),
                "split {i}"
            );
        }
    }

    #[test]
    fn first_model_wins_and_non_strings_are_ignored() {
        assert_eq!(tap(br#"{"model":"a","model":"b"}"#).model(), Some("a"));
        assert_eq!(tap(br#"{"model":null,"model":"b"}"#).model(), Some("b"));
        assert_eq!(tap(br#"{"model":"","model":"b"}"#).model(), Some("b"));
        assert_eq!(tap(br#"{"model":{"name":"x"}}"#).model(), None);
        assert_eq!(tap(br#"{"model":7}"#).model(), None);
    }

    #[test]
    fn escaped_top_level_keys_are_recognised() {
        let t = tap(br#"{"us\u0061ge":{"prompt_tokens":1,"completion_tokens":2},"\u006d\u006f\u0064\u0065\u006c":"m"}"#);
        assert_eq!(t.usage(), u(1, 2, 3));
        assert_eq!(t.model(), Some("m"));
        let b = br#"{ "us\u0061ge" : {"prompt_tokens":1} , "mod\u0065l":"m\u00e9" }"#;
        for i in 0..=b.len() {
            let t = tap_chunks(&[&b[..i], &b[i..]]);
            assert_eq!(
                (t.usage(), t.model()),
                (u(1, 0, 1), Some("m\u{e9}")),
                "split {i}"
            );
        }
        // Near misses.
        let t = tap(br#"{"usage ":{"prompt_tokens":1},"Model":"m","usages":{"prompt_tokens":1},"modelx":"m"}"#);
        assert_eq!((t.usage(), t.model()), (None, None));
        let long_key = format!(r#"{{"{}":1,"model":"m"}}"#, "k".repeat(500));
        assert_eq!(tap(long_key.as_bytes()).model(), Some("m"));
    }

    #[test]
    fn whitespace_everywhere() {
        let t = tap(b" \r\n\t{ \r\n\t\"model\" \r\n\t: \r\n\t\"m\" \r\n\t, \r\n\t\"usage\" \r\n\t: \r\n\t{ \"prompt_tokens\" : 3 } \r\n\t} \r\n\t");
        assert_eq!(t.usage(), u(3, 0, 3));
        assert_eq!(t.model(), Some("m"));
    }

    #[test]
    fn usage_scalar_forms() {
        assert_eq!(tap(br#"{"usage":null,"model":"m"}"#).usage(), None);
        assert_eq!(tap(br#"{"usage":null,"model":"m"}"#).model(), Some("m"));
        assert_eq!(tap(br#"{"usage":12}"#).usage(), None);
        assert_eq!(tap(br#"{"usage":"x"}"#).usage(), None);
        assert_eq!(tap(br#"{"usage":[1,2,3]}"#).usage(), None);
        assert_eq!(tap(br#"{"usage":{}}"#).usage(), None);
        // Usage as the last member, no whitespace.
        assert_eq!(
            tap(br#"{"a":[{"b":[]}],"usage":{"prompt_tokens":4,"total_tokens":4}}"#).usage(),
            u(4, 0, 4)
        );
    }

    #[test]
    fn usage_over_cap_is_ignored() {
        let pad = "x".repeat(MAX_USAGE_BYTES);
        let body = format!(r#"{{"usage":{{"prompt_tokens":1,"pad":"{pad}"}},"model":"m"}}"#);
        let t = tap(body.as_bytes());
        assert_eq!(t.usage(), None);
        assert_eq!(
            t.model(),
            Some("m"),
            "scanning continues after an oversized usage"
        );
        assert!(t.cap_buf.capacity() <= MAX_USAGE_BYTES + 1024);
        // Just under the cap is fine.
        let pad = "x".repeat(MAX_USAGE_BYTES - 100);
        let body = format!(r#"{{"usage":{{"prompt_tokens":1,"pad":"{pad}"}}}}"#);
        assert_eq!(tap(body.as_bytes()).usage(), u(1, 0, 1));
    }

    fn embeddings(n_vectors: usize, dims: usize, usage_first: bool) -> Vec<u8> {
        let mut rng = Rng(5);
        let mut s = String::from("{\n  \"object\": \"list\",\n");
        let usage = "  \"usage\": {\n    \"prompt_tokens\": 8,\n    \"total_tokens\": 8\n  }";
        if usage_first {
            s += usage;
            s += ",\n";
        }
        s += "  \"data\": [\n";
        for v in 0..n_vectors {
            s += &format!("    {{\n      \"object\": \"embedding\",\n      \"index\": {v},\n      \"embedding\": [\n");
            for d in 0..dims {
                let x = (rng.next() % 2_000_000) as f64 / 1e8 - 0.01;
                s += &format!("        {x:.9}{}\n", if d + 1 < dims { "," } else { "" });
            }
            s += &format!(
                "      ]\n    }}{}\n",
                if v + 1 < n_vectors { "," } else { "" }
            );
        }
        s += "  ],\n  \"model\": \"text-embedding-3-small\"";
        if !usage_first {
            s += ",\n";
            s += usage;
        }
        s += "\n}\n";
        s.into_bytes()
    }

    #[test]
    fn embeddings_1mb_in_1_byte_and_16k_chunks() {
        let body = embeddings(31, 1536, false);
        assert!(body.len() > 1_000_000, "{}", body.len());
        for size in [1, 16 << 10] {
            let mut t = JsonTap::new();
            for c in body.chunks(size) {
                t.feed(c);
            }
            assert_eq!(t.usage(), u(8, 0, 8), "chunk size {size}");
            assert_eq!(t.model(), Some("text-embedding-3-small"));
            assert_eq!(t.st, St::Done);
        }
        let body = embeddings(2, 64, true);
        let t = tap_chunks(&body.chunks(7).collect::<Vec<_>>());
        assert_eq!(t.usage(), u(8, 0, 8));
    }

    #[test]
    fn raw_usage_is_kept_only_when_asked_whatever_the_chunking() {
        let body = CHAT.as_bytes();
        let start = CHAT.find("{\n    \"prompt_tokens\": 1117").unwrap();
        let end = start + CHAT[start..].find('}').unwrap() + 1;
        let end = end + CHAT[end..].find('}').unwrap() + 1; // the details objects
        let end = end + CHAT[end..].find('}').unwrap() + 1; // the usage object itself
        let want = &body[start..end];
        assert!(Usage::from_json(want).is_some());
        let mut r = Rng(7);
        for _ in 0..300 {
            let mut t = JsonTap::new();
            t.keep_raw_usage();
            let mut i = 0;
            while i < body.len() {
                let n = 1 + r.below(40);
                t.feed(&body[i..(i + n).min(body.len())]);
                i += n;
            }
            assert_eq!(t.raw_usage(), Some(want));
            assert_eq!(t.usage(), u(1117, 46, 1163));
        }
        assert_eq!(tap(body).raw_usage(), None, "not asked for");
        // A usage that is not a usage object is not kept either.
        let mut t = JsonTap::new();
        t.keep_raw_usage();
        t.feed(br#"{"usage":{"foo":1},"model":"m"}"#);
        assert_eq!(t.raw_usage(), None);
    }

    #[test]
    fn non_objects_are_none() {
        for s in [
            &b""[..],
            b"   ",
            b"[{\"usage\":{\"prompt_tokens\":1},\"model\":\"m\"}]",
            b"\"usage\"",
            b"42",
            b"null",
            b"<html>502 Bad Gateway</html>",
            b"\xEF\xBB\xBF{\"model\":\"m\"}",
        ] {
            let t = tap(s);
            assert_eq!(
                (t.usage(), t.model()),
                (None, None),
                "{:?}",
                String::from_utf8_lossy(s)
            );
        }
    }

    #[test]
    fn invalid_json_stops_quietly() {
        for s in [
            &br#"{"model" "m","usage":{"prompt_tokens":1}}"#[..],
            br#"{"a":1 "usage":{"prompt_tokens":1},"model":"m"}"#,
            br#"{usage:{"prompt_tokens":1},"model":"m"}"#,
            br#"{"a":[1,2},"usage":{"prompt_tokens":1},"model":"m"}"#,
            br#"{"a":{"b":1]],"usage":{"prompt_tokens":1},"model":"m"}"#,
            br#"{"a":,"usage":{"prompt_tokens":1},"model":"m"}"#,
            br#"{,"usage":{"prompt_tokens":1},"model":"m"}"#,
            br#"{"a":1,}"usage":{"prompt_tokens":1}"#,
        ] {
            let t = tap(s);
            assert_eq!(
                (t.usage(), t.model()),
                (None, None),
                "{:?}",
                String::from_utf8_lossy(s)
            );
            assert_eq!(t.st, St::Failed, "{:?}", String::from_utf8_lossy(s));
        }
        // Already extracted values survive a later error or truncation.
        let t = tap(br#"{"model":"m","usage":{"prompt_tokens":1},"x":]"#);
        assert_eq!((t.usage(), t.model()), (u(1, 0, 1), Some("m")));
        let t = tap(br#"{"model":"m","usage":{"prompt_tokens":1"#);
        assert_eq!((t.usage(), t.model()), (None, Some("m")));
        // Invalid JSON inside the usage value: serde_json rejects it.
        assert_eq!(tap(br#"{"usage":{"prompt_tokens":1,,}}"#).usage(), None);
        // Content after the top-level object is ignored.
        let t = tap(br#"{"model":"m"} {"model":"n","usage":{"prompt_tokens":1}}"#);
        assert_eq!((t.usage(), t.model()), (None, Some("m")));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut body = b"{\"a\":".to_vec();
        body.extend(std::iter::repeat_n(b'[', MAX_DEPTH + 10));
        let mut t = JsonTap::new();
        t.feed(&body);
        assert_eq!(t.st, St::Failed);
        let mut body = b"{\"a\":".to_vec();
        body.extend(std::iter::repeat_n(b'[', 1000));
        body.extend(std::iter::repeat_n(b']', 1000));
        body.extend(br#","model":"m"}"#);
        assert_eq!(tap(&body).model(), Some("m"));
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = Rng(1234);
        let alphabet = b"{}[]\":,\\ \nusagemodel0123456789.-eEtruefalsnl\xc3\xa9";
        for round in 0..5000 {
            let len = rng.below(300);
            let s: Vec<u8> = (0..len)
                .map(|_| {
                    if round % 4 == 0 {
                        rng.next() as u8
                    } else {
                        alphabet[rng.below(alphabet.len())]
                    }
                })
                .collect();
            let mut t = JsonTap::new();
            for c in s.chunks(1 + rng.below(20)) {
                t.feed(c);
            }
            let _ = (t.usage(), t.model());
        }
        // Mutations of a valid document.
        let base = CHAT.as_bytes();
        for _ in 0..3000 {
            let mut s = base.to_vec();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(s.len());
                s[i] = alphabet[rng.below(alphabet.len())];
            }
            let mut t = JsonTap::new();
            for c in s.chunks(1 + rng.below(64)) {
                t.feed(c);
            }
            let _ = (t.usage(), t.model());
        }
    }
}
