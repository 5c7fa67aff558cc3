//! Token usage as reported by OpenAI-compatible providers.
//!
//! The `usage` object comes in two shapes:
//! * chat completions: `{"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21, ...}`
//! * embeddings: `{"prompt_tokens": 8, "total_tokens": 8}`
//!
//! Providers add extra members (`prompt_tokens_details`, `completion_tokens_details`,
//! `prompt_cache_hit_tokens`, ...); they are skipped. Quota accounting should not be lost
//! because one provider sends a token count as a float (`12.0`) or a quoted number, so
//! each count is read leniently: anything that is not a usable non-negative number counts
//! as "absent" for that field instead of failing the whole object.
//!
//! serde_json defines what is accepted. It runs once per proxied response, though, and costs
//! more than the rest of the response tap, so the common shape (`"key": <unsigned integer>`
//! members, other members any plain JSON value) is read by a small hand-written parser first.
//! That parser only accepts what it can read exactly as serde would, and hands anything else
//! (floats, strings or `true` as counts, escapes, non-ASCII, odd whitespace, invalid JSON) to
//! the serde path, so the result is the same either way; a test checks that on many inputs.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    /// Parse an OpenAI `usage` object (chat: prompt/completion/total; embeddings: prompt/total only).
    /// total = prompt + completion when absent. None for `null`, non-objects, or objects with none
    /// of the three fields.
    pub fn from_json(raw: &[u8]) -> Option<Usage> {
        // serde's derived struct visitor also accepts a JSON *array* (positional fields), so
        // insist on an object up front; this also rejects `null` without running the parser.
        let first = raw.iter().find(|b| !b.is_ascii_whitespace())?;
        if *first != b'{' {
            return None;
        }
        let counts = match fast::counts(raw) {
            Some(counts) => counts,
            None => serde_counts(raw)?,
        };
        Self::from_counts(counts)
    }

    /// prompt, completion, total as read (`None` = absent) to the usage they mean.
    fn from_counts([p, c, t]: Counts) -> Option<Usage> {
        if p.is_none() && c.is_none() && t.is_none() {
            return None;
        }
        let prompt_tokens = p.unwrap_or(0);
        let completion_tokens = c.unwrap_or(0);
        let total_tokens = t.unwrap_or_else(|| prompt_tokens.saturating_add(completion_tokens));
        Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
        })
    }
}

/// prompt_tokens, completion_tokens, total_tokens; `None` = absent.
type Counts = [Option<u64>; 3];

/// The reference reading: None if serde_json rejects `raw`.
fn serde_counts(raw: &[u8]) -> Option<Counts> {
    let wire: WireUsage = serde_json::from_slice(raw).ok()?;
    Some([
        wire.prompt_tokens.0,
        wire.completion_tokens.0,
        wire.total_tokens.0,
    ])
}

/// The fast path: a strict reader for a subset of JSON on which it gives serde's answer.
mod fast {
    use super::Counts;

    /// Nesting below the usage object worth following (details objects are one level deep).
    const MAX_DEPTH: u32 = 16;

    /// Bytes a string may hold on the fast path: printable ASCII minus `"` and `\`. Escapes,
    /// control bytes (invalid) and non-ASCII (UTF-8 checks) are left to serde.
    static PLAIN: [bool; 256] = {
        let mut t = [false; 256];
        let mut c = 0x20;
        while c < 0x80 {
            t[c] = c != b'"' as usize && c != b'\\' as usize;
            c += 1;
        }
        t
    };

    /// The counts of a usage object of the common shape, or None when serde has to decide
    /// (which includes every input serde rejects).
    pub(super) fn counts(raw: &[u8]) -> Option<Counts> {
        let mut p = Reader { b: raw, i: 0 };
        p.ws();
        p.eat(b'{')?;
        p.ws();
        let mut counts: Counts = [None; 3];
        if p.peek()? == b'}' {
            p.i += 1;
        } else {
            loop {
                let key = p.string()?;
                p.ws();
                p.eat(b':')?;
                p.ws();
                let slot = match key {
                    b"prompt_tokens" => Some(0),
                    b"completion_tokens" => Some(1),
                    b"total_tokens" => Some(2),
                    _ => None,
                };
                match slot {
                    // A later duplicate replaces an earlier one, `null` included, as in serde.
                    Some(k) if p.peek()? == b'n' => {
                        p.literal(b"null")?;
                        counts[k] = None;
                    }
                    Some(k) => counts[k] = Some(p.uint()?),
                    None => p.skip_value(MAX_DEPTH)?,
                }
                p.ws();
                match p.peek()? {
                    b',' => {
                        p.i += 1;
                        p.ws();
                    }
                    b'}' => {
                        p.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        p.ws();
        (p.i == raw.len()).then_some(counts)
    }

    struct Reader<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl<'a> Reader<'a> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn eat(&mut self, c: u8) -> Option<()> {
            (self.peek()? == c).then(|| self.i += 1)
        }

        /// JSON whitespace, exactly the four bytes serde_json skips.
        fn ws(&mut self) {
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
                self.i += 1;
            }
        }

        fn digits(&mut self) -> usize {
            let start = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            self.i - start
        }

        /// A string of plain bytes only; its contents.
        fn string(&mut self) -> Option<&'a [u8]> {
            self.eat(b'"')?;
            let start = self.i;
            while PLAIN[self.peek()? as usize] {
                self.i += 1;
            }
            self.eat(b'"')?;
            Some(&self.b[start..self.i - 1])
        }

        fn literal(&mut self, word: &[u8]) -> Option<()> {
            self.b[self.i..]
                .starts_with(word)
                .then(|| self.i += word.len())
        }

        /// `0` or `[1-9][0-9]*` that fits in a u64 and is not followed by a fraction or
        /// exponent: what serde hands to `visit_u64`. Floats and overflow (which serde reads
        /// as a float) are left to serde.
        fn uint(&mut self) -> Option<u64> {
            let start = self.i;
            let n = self.digits();
            let d = &self.b[start..self.i];
            if n == 0 || (n > 1 && d[0] == b'0') || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
            {
                return None;
            }
            d.iter().try_fold(0u64, |v, &c| {
                v.checked_mul(10)?.checked_add(u64::from(c - b'0'))
            })
        }

        /// Skip one valid JSON value (its members are not counts whatever their names).
        fn skip_value(&mut self, depth: u32) -> Option<()> {
            match self.peek()? {
                b'"' => self.string().map(drop),
                b't' => self.literal(b"true"),
                b'f' => self.literal(b"false"),
                b'n' => self.literal(b"null"),
                b'-' | b'0'..=b'9' => self.number(),
                open @ (b'{' | b'[') => {
                    let depth = depth.checked_sub(1)?;
                    let close = if open == b'{' { b'}' } else { b']' };
                    self.i += 1;
                    self.ws();
                    if self.peek()? == close {
                        self.i += 1;
                        return Some(());
                    }
                    loop {
                        if open == b'{' {
                            self.string()?;
                            self.ws();
                            self.eat(b':')?;
                            self.ws();
                        }
                        self.skip_value(depth)?;
                        self.ws();
                        match self.peek()? {
                            b',' => {
                                self.i += 1;
                                self.ws();
                            }
                            c if c == close => {
                                self.i += 1;
                                return Some(());
                            }
                            _ => return None,
                        }
                    }
                }
                _ => None,
            }
        }

        /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, the JSON number grammar.
        fn number(&mut self) -> Option<()> {
            if self.peek() == Some(b'-') {
                self.i += 1;
            }
            match self.peek()? {
                b'0' => self.i += 1,
                b'1'..=b'9' => {
                    self.digits();
                }
                _ => return None,
            }
            if self.peek() == Some(b'.') {
                self.i += 1;
                if self.digits() == 0 {
                    return None;
                }
            }
            if matches!(self.peek(), Some(b'e' | b'E')) {
                self.i += 1;
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    self.i += 1;
                }
                if self.digits() == 0 {
                    return None;
                }
            }
            Some(())
        }
    }
}

/// Wire shape. Duplicate members are tolerated by keeping the last one (the derive would
/// reject them), which is what most JSON parsers do.
#[derive(Default)]
struct WireUsage {
    prompt_tokens: Count,
    completion_tokens: Count,
    total_tokens: Count,
}

impl<'de> Deserialize<'de> for WireUsage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireUsage;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a usage object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireUsage, A::Error> {
                let mut w = WireUsage::default();
                while let Some(key) = map.next_key::<Field>()? {
                    match key {
                        Field::PromptTokens => w.prompt_tokens = map.next_value()?,
                        Field::CompletionTokens => w.completion_tokens = map.next_value()?,
                        Field::TotalTokens => w.total_tokens = map.next_value()?,
                        Field::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(w)
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    #[serde(other)]
    Other,
}

/// A token count read leniently: integers, non-negative finite floats (truncated) and
/// numeric strings are accepted; `null`, negatives and anything else mean "absent".
#[derive(Default)]
struct Count(Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                Ok(Count(u64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                // `as` saturates at u64::MAX, which is what a bogus huge count deserves.
                Ok(Count((v.is_finite() && v >= 0.0).then_some(v as u64)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Count, E> {
                Ok(Count(v.trim().parse::<u64>().ok()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Count, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(p: u64, c: u64, t: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: t,
        })
    }

    #[test]
    fn chat_usage() {
        assert_eq!(
            Usage::from_json(br#"{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}"#),
            u(9, 12, 21)
        );
    }

    #[test]
    fn chat_usage_with_details_and_whitespace() {
        let raw = br#"
          { "prompt_tokens" : 19, "completion_tokens": 10, "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "accepted_prediction_tokens": [1,2]},
            "prompt_cache_hit_tokens": 0 }  "#;
        assert_eq!(Usage::from_json(raw), u(19, 10, 29));
    }

    #[test]
    fn embeddings_usage_has_no_completion() {
        assert_eq!(
            Usage::from_json(br#"{"prompt_tokens":8,"total_tokens":8}"#),
            u(8, 0, 8)
        );
    }

    #[test]
    fn total_defaults_to_sum() {
        assert_eq!(
            Usage::from_json(br#"{"prompt_tokens":5,"completion_tokens":7}"#),
            u(5, 7, 12)
        );
        assert_eq!(Usage::from_json(br#"{"completion_tokens":7}"#), u(0, 7, 7));
        assert_eq!(
            Usage::from_json(br#"{"prompt_tokens":5,"completion_tokens":7,"total_tokens":null}"#),
            u(5, 7, 12)
        );
    }

    #[test]
    fn explicit_total_is_kept_even_if_it_disagrees() {
        assert_eq!(
            Usage::from_json(br#"{"prompt_tokens":5,"completion_tokens":7,"total_tokens":100}"#),
            u(5, 7, 100)
        );
    }

    #[test]
    fn null_non_object_and_empty_are_none() {
        for raw in [
            &b"null"[..],
            b"",
            b"   ",
            b"5",
            b"\"x\"",
            b"[9,12,21]",
            b"true",
            b"{}",
            br#"{"foo":1,"bar":{"prompt_tokens":3}}"#,
            br#"{"prompt_tokens":null}"#,
            br#"{"prompt_tokens":1"#,    // truncated
            br#"{"prompt_tokens":1} x"#, // trailing garbage
        ] {
            assert_eq!(
                Usage::from_json(raw),
                None,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn lenient_counts() {
        assert_eq!(
            Usage::from_json(br#"{"prompt_tokens":5.0,"completion_tokens":"7"}"#),
            u(5, 7, 12)
        );
        assert_eq!(
            Usage::from_json(br#"{"prompt_tokens":-5,"completion_tokens":7}"#),
            u(0, 7, 7)
        );
        assert_eq!(
            Usage::from_json(
                br#"{"prompt_tokens":[1],"completion_tokens":{"a":1},"total_tokens":3}"#
            ),
            u(0, 0, 3)
        );
        assert_eq!(
            Usage::from_json(br#"{"prompt_tokens":1,"prompt_tokens":2}"#),
            u(2, 0, 2)
        );
        assert_eq!(
            Usage::from_json(br#"{"prompt_tokens":18446744073709551615,"completion_tokens":1}"#),
            u(u64::MAX, 1, u64::MAX)
        );
    }

    #[test]
    fn escaped_key_names() {
        assert_eq!(Usage::from_json(br#"{"prompt\u005ftokens":3}"#), u(3, 0, 3));
    }

    /// Both readers on one input: whenever the fast path answers, serde must agree.
    fn agree(raw: &[u8]) -> bool {
        let fast = fast::counts(raw);
        if let Some(f) = fast {
            assert_eq!(
                Some(f),
                serde_counts(raw),
                "fast path disagrees with serde on {:?}",
                String::from_utf8_lossy(raw)
            );
        }
        fast.is_some()
    }

    #[test]
    fn fast_path_takes_the_common_shapes() {
        for raw in [
            &br#"{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}"#[..],
            br#"{"prompt_tokens":8,"total_tokens":8}"#,
            br#"{}"#,
            br#" { "prompt_tokens" : 19 ,
                "completion_tokens": 10, "total_tokens": 29,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "accepted_prediction_tokens": [1,2]},
                "prompt_cache_hit_tokens": 0 }  "#,
            // Groq: timings as floats next to the counts.
            br#"{"queue_time":0.037,"prompt_tokens":18,"prompt_time":6.8e-4,"completion_tokens":556,"completion_time":0.463,"total_tokens":574,"total_time":-0.464}"#,
            br#"{"prompt_tokens":1,"prompt_tokens":null,"x":[true,false,null,"s",{},[]]}"#,
            br#"{"prompt_tokens":18446744073709551615,"completion_tokens":0}"#,
        ] {
            assert!(agree(raw), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn fast_path_agrees_with_serde_on_handwritten_cases() {
        let values = [
            "0",
            "7",
            "00",
            "01",
            "-0",
            "-5",
            "1e3",
            "1E+2",
            "2e-1",
            "12.7",
            "12.0",
            "1.",
            ".5",
            "-",
            "+1",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
            "1e400",
            r#""12""#,
            r#"" 7 ""#,
            r#""x""#,
            r#""a\"b""#,
            "\"caf\u{e9}\"",
            "\"\t\"",
            "null",
            "nul",
            "nullx",
            "true",
            "false",
            "[1,2]",
            "[1,]",
            "[]",
            "{}",
            r#"{"cached_tokens":0,"audio_tokens":0}"#,
            r#"{"a":[1,{"b":null}],"c":"d"}"#,
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
            "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]",
            "7 8",
            "",
        ];
        let keys = [
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "prompt_tokens_details",
            "other",
            "",
            r"prompt\u005ftokens",
            "t\u{f6}tal",
        ];
        for k in keys {
            for v in values {
                for sep in ["", " ", "\n  ", "\u{c}"] {
                    let one = format!("{{{sep}\"{k}\"{sep}:{sep}{v}{sep}}}");
                    agree(one.as_bytes());
                    let two = format!(r#"{{"prompt_tokens":3,"{k}":{v},"total_tokens":5}}"#);
                    agree(two.as_bytes());
                }
            }
        }
        for raw in [
            "{",
            "{\"prompt_tokens\":1",
            "{\"prompt_tokens\":1}x",
            "{\"prompt_tokens\":1}}",
            "{\"prompt_tokens\":1,}",
            "{\"prompt_tokens\" 1}",
            "{\"prompt_tokens\":1 \"total_tokens\":2}",
            "{,}",
            "{prompt_tokens:1}",
            "[{\"prompt_tokens\":1}]",
        ] {
            agree(raw.as_bytes());
            assert_eq!(Usage::from_json(raw.as_bytes()), None, "{raw:?}");
        }
    }

    #[test]
    fn fast_path_agrees_with_serde_on_generated_objects() {
        use crate::llm::test_util::Rng;
        const KEYS: [&str; 6] = [
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "prompt_tokens_details",
            "cached_tokens",
            "total_time",
        ];
        const SCALARS: [&str; 14] = [
            "0",
            "1",
            "42",
            "-3",
            "2.5",
            "1e2",
            "null",
            "true",
            r#""9""#,
            "18446744073709551615",
            "18446744073709551616",
            "-0",
            "012",
            r#""é""#,
        ];
        const WS: [&str; 5] = ["", "", " ", "\n    ", "\r\n\t"];
        fn value(rng: &mut Rng, depth: usize, out: &mut String) {
            match if depth > 2 { 0 } else { rng.below(5) } {
                0..=2 => out.push_str(SCALARS[rng.below(SCALARS.len())]),
                3 => {
                    out.push('[');
                    for j in 0..rng.below(3) {
                        if j > 0 {
                            out.push(',');
                        }
                        value(rng, depth + 1, out);
                    }
                    out.push(']');
                }
                _ => object(rng, depth + 1, out),
            }
        }
        fn object(rng: &mut Rng, depth: usize, out: &mut String) {
            out.push('{');
            for j in 0..rng.below(6) {
                if j > 0 {
                    out.push(',');
                }
                out.push_str(WS[rng.below(WS.len())]);
                out.push('"');
                out.push_str(KEYS[rng.below(KEYS.len())]);
                out.push('"');
                out.push_str(WS[rng.below(WS.len())]);
                out.push(':');
                out.push_str(WS[rng.below(WS.len())]);
                value(rng, depth, out);
                out.push_str(WS[rng.below(WS.len())]);
            }
            out.push('}');
        }
        let mut rng = Rng(2024);
        let (mut fast, mut total) = (0, 0);
        for round in 0..20_000 {
            let mut s = String::new();
            object(&mut rng, 0, &mut s);
            let mut raw = s.into_bytes();
            // Some broken ones: a byte dropped or replaced.
            if round % 5 == 0 && !raw.is_empty() {
                let i = rng.below(raw.len());
                if rng.below(2) == 0 {
                    raw.remove(i);
                } else {
                    raw[i] = b"{}[]\",: 0-.e"[rng.below(12)];
                }
            }
            total += 1;
            fast += usize::from(agree(&raw));
        }
        // Most generated objects must actually exercise the fast path.
        assert!(fast * 4 > total, "fast path taken {fast} of {total}");
    }
}
