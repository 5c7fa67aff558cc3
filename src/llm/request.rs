//! The client's JSON request body: parsed once, rewritten once.
//!
//! Only the top level is parsed. Each field keeps its value as a byte range of the original body,
//! so `messages` (which is nearly all of a long conversation) is never decoded; the rewrite copies
//! those bytes once into the upstream body and splices in the plugin's options.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    Empty,
    InvalidJson(String),
    NotObject,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Empty => f.write_str("request body is empty; expected a JSON object"),
            BodyError::InvalidJson(e) => write!(f, "request body is not valid JSON: {e}"),
            BodyError::NotObject => f.write_str("request body must be a JSON object"),
        }
    }
}

/// A top-level member: its key and its value's JSON text, as ranges of the body.
struct Field {
    key: FieldKey,
    value: Range<usize>,
}

/// A key is a range of the body unless it had escapes and had to be decoded (rare): no
/// allocation per key for ordinary requests.
enum FieldKey {
    At(Range<usize>),
    Decoded(Box<str>),
}

/// A parsed chat-completion or embeddings request.
pub struct LlmRequest {
    body: Bytes,
    fields: Vec<Field>,
}

/// A plugin's `options`, each value serialized to JSON text once at config load.
#[derive(Debug, Clone, Default)]
pub struct BodyOptions {
    pub fields: Vec<(String, String)>,
    /// `model` among them, decoded once (not per request): `Some(None)` when it is there but
    /// not a string.
    model: Option<Option<String>>,
}

impl BodyOptions {
    pub fn from_map(map: &serde_json::Map<String, serde_json::Value>) -> BodyOptions {
        BodyOptions {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            model: map.get("model").map(|v| v.as_str().map(str::to_owned)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_bytes(key.as_bytes())
    }

    fn get_bytes(&self, key: &[u8]) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.as_bytes() == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What the rewrite must do besides applying options.
#[derive(Debug, Clone, Copy, Default)]
pub struct RewriteSpec {
    /// Remove `model` (Azure OpenAI names the deployment in the URL).
    pub drop_model: bool,
}

/// Facts about the rewritten body the proxy needs afterwards.
#[derive(Debug, Clone, Default)]
pub struct Rewritten {
    pub body: Bytes,
    /// The model sent upstream (after options), if any.
    pub model: Option<String>,
    /// The upstream answer will be an SSE stream.
    pub stream: bool,
    /// `stream_options.include_usage` was added by the gateway, not asked for by the client, so
    /// the usage-only final event must not be forwarded.
    pub usage_injected: bool,
}

impl LlmRequest {
    pub fn parse(body: Bytes) -> Result<LlmRequest, BodyError> {
        if body.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(BodyError::Empty);
        }
        let mut de = serde_json::Deserializer::from_slice(&body);
        let top = TopLevel {
            base: body.as_ptr() as usize,
        };
        let fields = match top.deserialize(&mut de).and_then(|t| de.end().map(|_| t)) {
            Ok(t) => t,
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                return Err(BodyError::NotObject)
            }
            Err(e) => return Err(BodyError::InvalidJson(e.to_string())),
        };
        Ok(LlmRequest { body, fields })
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// A field's key, as UTF-8 bytes (a range came from a borrowed `&str` over this very body).
    fn key<'a>(&'a self, f: &'a Field) -> &'a [u8] {
        match &f.key {
            FieldKey::At(r) => &self.body[r.clone()],
            FieldKey::Decoded(k) => k.as_bytes(),
        }
    }

    /// The raw JSON text of a top-level field (the last one, as JSON parsers do with duplicates).
    pub fn raw(&self, key: &str) -> Option<&str> {
        let f = self
            .fields
            .iter()
            .rev()
            .find(|f| self.key(f) == key.as_bytes())?;
        // The range came from a &RawValue (valid UTF-8 JSON) over this very buffer.
        std::str::from_utf8(&self.body[f.value.clone()]).ok()
    }

    pub fn has(&self, key: &str) -> bool {
        self.fields.iter().any(|f| self.key(f) == key.as_bytes())
    }

    pub fn model(&self) -> Option<String> {
        self.raw("model")
            .and_then(|v| serde_json::from_str::<String>(v).ok())
    }

    pub fn stream(&self) -> bool {
        self.raw("stream").is_some_and(|v| v.trim() == "true")
    }

    /// An embeddings call: `input` instead of `messages`.
    pub fn is_embeddings(&self) -> bool {
        self.has("input") && !self.has("messages")
    }

    fn client_asked_usage(&self) -> bool {
        self.raw("stream_options")
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
            .and_then(|v| v.get("include_usage").and_then(|b| b.as_bool()))
            .unwrap_or(false)
    }

    /// The body for one upstream attempt: the client's fields, overwritten by `options`, with
    /// `stream_options.include_usage` forced on for streams so the final event carries usage.
    pub fn rewrite(&self, options: &BodyOptions, spec: RewriteSpec) -> Rewritten {
        let opt = |k: &str| options.get(k);
        let stream = match opt("stream") {
            Some(v) => v.trim() == "true",
            None => self.stream(),
        };
        let stream_options = if stream {
            let base = opt("stream_options").or_else(|| self.raw("stream_options"));
            let mut map = base
                .and_then(|v| {
                    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(v).ok()
                })
                .unwrap_or_default();
            map.insert("include_usage".into(), serde_json::Value::Bool(true));
            Some(serde_json::Value::Object(map).to_string())
        } else {
            None
        };
        // Only the client's own request counts as asking: usage added by options or by the gateway
        // is the gateway's business and is not forwarded.
        let usage_injected = stream && !self.client_asked_usage();

        let extra: usize = options
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum();
        let mut out = BytesMut::with_capacity(self.body.len() + extra + 48);
        out.put_u8(b'{');
        let mut first = true;
        let mut put = |out: &mut BytesMut, key: &[u8], value: &[u8]| {
            if !first {
                out.put_u8(b',');
            }
            first = false;
            write_json_key(out, key);
            out.put_u8(b':');
            out.extend_from_slice(value);
        };
        for f in &self.fields {
            let key = self.key(f);
            if options.get_bytes(key).is_some()
                || (spec.drop_model && key == b"model")
                || (stream_options.is_some() && key == b"stream_options")
            {
                continue;
            }
            put(&mut out, key, &self.body[f.value.clone()]);
        }
        for (k, v) in &options.fields {
            if (spec.drop_model && k == "model")
                || (stream_options.is_some() && k == "stream_options")
            {
                continue;
            }
            put(&mut out, k.as_bytes(), v.as_bytes());
        }
        if let Some(so) = &stream_options {
            put(&mut out, b"stream_options", so.as_bytes());
        }
        out.put_u8(b'}');

        let model = match &options.model {
            Some(configured) => configured.clone(),
            None => self.model(),
        };
        Rewritten {
            body: out.freeze(),
            model,
            stream,
            usage_injected,
        }
    }

    /// The `input` of an embeddings call as a list of strings.
    pub fn embedding_inputs(&self) -> Vec<String> {
        match self
            .raw("input")
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        {
            Some(serde_json::Value::String(s)) => vec![s],
            Some(serde_json::Value::Array(items)) => items
                .into_iter()
                .filter_map(|i| match i {
                    serde_json::Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Text of the prompt for payload logging: `messages` or `input`, as JSON text.
    pub fn prompt_json(&self) -> Option<&str> {
        self.raw("messages").or_else(|| self.raw("input"))
    }

    /// A quick size-based estimate of prompt tokens (≈ 4 bytes a token) for quota reservations.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        let bytes = self.prompt_json().map(str::len).unwrap_or(self.body.len());
        (bytes as u64 / 4).max(1)
    }

    /// `post_arg.a.b`: the JSON text of a field of the body, borrowed from the body, descending
    /// into objects by key and into arrays by decimal index.
    ///
    /// Only the path is read. Each level is one streaming pass over its container that skips the
    /// other members without decoding them (serde's `IgnoredAny`) and captures the wanted one as a
    /// `&RawValue`, so memory does not grow with the body, with what is skipped or with the value
    /// found; deciding what the value means is left to whoever compares it. An object is read to
    /// its end because the last of duplicate keys wins (as for the top-level fields and in
    /// `serde_json::Value`); an array is left right after the element.
    pub fn lookup(&self, path: &[&str]) -> Option<&str> {
        let (first, rest) = path.split_first()?;
        let mut cur = self.raw(first)?;
        for seg in rest {
            cur = json_member(cur, seg)?;
        }
        Some(cur)
    }
}

/// The member `seg` of the JSON object or array `json` (one complete JSON value), as JSON text.
fn json_member<'a>(json: &'a str, seg: &str) -> Option<&'a str> {
    let mut de = serde_json::Deserializer::from_str(json);
    match json.as_bytes().first()? {
        b'{' => de
            .deserialize_map(Member(seg))
            .ok()
            .flatten()
            .map(RawValue::get),
        b'[' => {
            // `usize::from_str`, as the index was always read ("+1" and "01" are 1).
            let index: usize = seg.parse().ok()?;
            let found = Cell::new(None);
            // The pass ends with an error once the element is captured (see `Element`).
            let _ = de.deserialize_seq(Element {
                index,
                found: &found,
            });
            found.get().map(RawValue::get)
        }
        _ => None,
    }
}

/// Visits an object for the last member named `.0`.
struct Member<'k>(&'k str);

impl<'de> Visitor<'de> for Member<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(hit) = map.next_key_seed(KeyIs(self.0))? {
            if hit {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Compares a key with the wanted name without keeping it (an escaped key is decoded into the
/// parser's scratch buffer only).
struct KeyIs<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// Visits an array for element `index`. serde_json checks that a visitor consumed the whole
/// array, so stopping early is an error by construction: the element is handed out through
/// `found` and the pass is abandoned with an error, which saves skipping the rest of a long array
/// (all of `messages` for `messages.1.role`).
struct Element<'c, 'de> {
    index: usize,
    found: &'c Cell<Option<&'de RawValue>>,
}

impl<'de> Visitor<'de> for Element<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        for _ in 0..self.index {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        if let Some(v) = seq.next_element::<&'de RawValue>()? {
            self.found.set(Some(v));
            return Err(de::Error::custom("element found"));
        }
        Ok(())
    }
}

fn write_json_key(out: &mut BytesMut, key: &[u8]) {
    if key.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.put_u8(b'"');
        out.extend_from_slice(key);
        out.put_u8(b'"');
    } else {
        // A decoded key with quotes or control characters: serde escapes it again.
        let key = String::from_utf8_lossy(key);
        out.extend_from_slice(
            serde_json::Value::String(key.into_owned())
                .to_string()
                .as_bytes(),
        );
    }
}

/// Reads the top-level object into `Field`s: keys and values as ranges of the input, which starts
/// at `base`. One vector is all it allocates.
struct TopLevel {
    base: usize,
}

impl<'de> DeserializeSeed<'de> for TopLevel {
    type Value = Vec<Field>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel {
    type Value = Vec<Field>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let range = |s: &str| {
            let start = s.as_ptr() as usize - self.base;
            start..start + s.len()
        };
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            let v: &'de RawValue = map.next_value()?;
            let key = match k {
                Cow::Borrowed(k) => FieldKey::At(range(k)),
                Cow::Owned(k) => FieldKey::Decoded(k.into()),
            };
            fields.push(Field {
                key,
                value: range(v.get()),
            });
        }
        Ok(fields)
    }
}

/// A key that borrows from the input unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> LlmRequest {
        LlmRequest::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn json(b: &Bytes) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn classifies_bad_bodies() {
        assert_eq!(
            LlmRequest::parse(Bytes::new()).err(),
            Some(BodyError::Empty)
        );
        assert_eq!(
            LlmRequest::parse(Bytes::from_static(b"  \n")).err(),
            Some(BodyError::Empty)
        );
        assert_eq!(
            LlmRequest::parse(Bytes::from_static(b"[1]")).err(),
            Some(BodyError::NotObject)
        );
        assert_eq!(
            LlmRequest::parse(Bytes::from_static(b"\"x\"")).err(),
            Some(BodyError::NotObject)
        );
        assert_eq!(
            LlmRequest::parse(Bytes::from_static(b"42")).err(),
            Some(BodyError::NotObject)
        );
        assert!(matches!(
            LlmRequest::parse(Bytes::from_static(b"{\"a\":")),
            Err(BodyError::InvalidJson(_))
        ));
        assert!(matches!(
            LlmRequest::parse(Bytes::from_static(b"{} x")),
            Err(BodyError::InvalidJson(_))
        ));
    }

    #[test]
    fn options_overwrite_client_fields() {
        let r = req(
            r#"{"model":"client","messages":[{"role":"user","content":"hi"}],"temperature":0.2}"#,
        );
        let opts = BodyOptions::from_map(
            serde_json::json!({"model":"gpt-4","temperature":1.0,"max_tokens":512})
                .as_object()
                .unwrap(),
        );
        let out = r.rewrite(&opts, RewriteSpec::default());
        let v = json(&out.body);
        assert_eq!(v["model"], "gpt-4");
        assert_eq!(v["temperature"], 1.0);
        assert_eq!(v["max_tokens"], 512);
        assert_eq!(v["messages"][0]["content"], "hi");
        assert_eq!(out.model.as_deref(), Some("gpt-4"));
        assert!(!out.stream);
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn the_call_model_is_the_configured_one_else_the_clients() {
        let r = req(r#"{"model":"client","messages":[]}"#);
        let model = |opts: serde_json::Value| {
            let opts = BodyOptions::from_map(opts.as_object().unwrap());
            r.rewrite(&opts, RewriteSpec::default()).model
        };
        assert_eq!(
            model(serde_json::json!({"model": "gpt-4"})).as_deref(),
            Some("gpt-4")
        );
        assert_eq!(
            model(serde_json::json!({"model": "a\"b"})).as_deref(),
            Some("a\"b")
        );
        assert_eq!(model(serde_json::json!({})).as_deref(), Some("client"));
        // Configured but not a string: sent as configured, and no model is named.
        assert_eq!(model(serde_json::json!({"model": 5})), None);
    }

    #[test]
    fn azure_drops_model() {
        let r = req(r#"{"model":"x","messages":[]}"#);
        let opts = BodyOptions::from_map(serde_json::json!({"model":"gpt-4"}).as_object().unwrap());
        let out = r.rewrite(&opts, RewriteSpec { drop_model: true });
        assert!(json(&out.body).get("model").is_none());
    }

    #[test]
    fn streams_get_include_usage() {
        let r = req(r#"{"messages":[],"stream":true}"#);
        let out = r.rewrite(&BodyOptions::default(), RewriteSpec::default());
        assert_eq!(json(&out.body)["stream_options"]["include_usage"], true);
        assert!(out.stream && out.usage_injected);

        let r =
            req(r#"{"messages":[],"stream":true,"stream_options":{"include_usage":true,"x":1}}"#);
        let out = r.rewrite(&BodyOptions::default(), RewriteSpec::default());
        let v = json(&out.body);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["x"], 1);
        assert!(out.stream && !out.usage_injected);

        let r = req(r#"{"messages":[],"stream_options":{"include_usage":false}}"#);
        let opts = BodyOptions::from_map(serde_json::json!({"stream":true}).as_object().unwrap());
        let out = r.rewrite(&opts, RewriteSpec::default());
        assert_eq!(json(&out.body)["stream_options"]["include_usage"], true);
        assert!(out.stream && out.usage_injected);
    }

    #[test]
    fn escaped_keys_and_whitespace_survive() {
        let r = req("{ \"a\\\"b\" : [1, 2] ,\n \"messages\":[] }");
        let out = r.rewrite(&BodyOptions::default(), RewriteSpec::default());
        let v = json(&out.body);
        assert_eq!(v["a\"b"], serde_json::json!([1, 2]));
        // An escaped key is decoded (kept apart from the body) and still found by its name.
        let r = req(r#"{"mod\u0065l":"x","messages":[]}"#);
        assert_eq!(r.model().as_deref(), Some("x"));
        assert!(r.has("messages") && !r.is_embeddings());
    }

    #[test]
    fn lookup_descends() {
        let r =
            req(r#"{"model":"gpt-4","metadata":{"team":{"id":7}},"tags":["a","b"],"e":"x\"y"}"#);
        assert_eq!(r.lookup(&["model"]), Some(r#""gpt-4""#));
        assert_eq!(r.lookup(&["metadata", "team"]), Some(r#"{"id":7}"#));
        assert_eq!(r.lookup(&["metadata", "team", "id"]), Some("7"));
        assert_eq!(r.lookup(&["tags", "1"]), Some(r#""b""#));
        assert_eq!(r.lookup(&["tags", "+1"]), Some(r#""b""#), "usize::from_str");
        assert_eq!(r.lookup(&["e"]), Some(r#""x\"y""#), "raw, still escaped");
        assert_eq!(r.lookup(&["nope"]), None);
        assert_eq!(r.lookup(&["tags", "2"]), None);
        assert_eq!(r.lookup(&["tags", "x"]), None);
        assert_eq!(r.lookup(&["model", "0"]), None, "no members in a string");
        assert_eq!(r.lookup(&["metadata", "team", "id", "x"]), None);
        assert_eq!(r.lookup(&[]), None);
    }

    #[test]
    fn lookup_last_duplicate_wins_and_keys_unescape() {
        let r = req(
            r#"{"m": {"a": 1, "b": [10, 20], "a": {"c": 2}}, "k": {"x\u0079": "found", "xy ": 0}}"#,
        );
        assert_eq!(r.lookup(&["m", "a"]), Some(r#"{"c": 2}"#));
        assert_eq!(r.lookup(&["m", "a", "c"]), Some("2"));
        assert_eq!(r.lookup(&["m", "b", "1"]), Some("20"));
        assert_eq!(r.lookup(&["k", "xy"]), Some(r#""found""#));
    }

    #[test]
    fn lookup_skips_whatever_surrounds_the_path() {
        // Elements before the index are skipped, whatever they hold; elements after it, even
        // deeply nested, are never looked at.
        let before = "[[[{\"role\":1}]]],".repeat(1000);
        let after = "[".repeat(5000) + &"]".repeat(5000);
        let body = format!(r#"{{"messages":[{before}{{"role":"user"}},{after}],"model":"m"}}"#);
        let r = req(&body);
        assert_eq!(r.lookup(&["messages", "1000", "role"]), Some(r#""user""#));
        assert_eq!(r.lookup(&["messages", "1001"]).map(str::len), Some(10_000));
        assert_eq!(r.lookup(&["model"]), Some(r#""m""#));
    }

    #[test]
    fn big_body_is_copied_intact() {
        let content = "x".repeat(1 << 20);
        let body = format!(r#"{{"messages":[{{"role":"user","content":"{content}"}}]}}"#);
        let r = req(&body);
        let opts = BodyOptions::from_map(serde_json::json!({"model":"m"}).as_object().unwrap());
        let out = r.rewrite(&opts, RewriteSpec::default());
        let v = json(&out.body);
        assert_eq!(v["messages"][0]["content"].as_str().unwrap().len(), 1 << 20);
        assert_eq!(v["model"], "m");
    }
}
