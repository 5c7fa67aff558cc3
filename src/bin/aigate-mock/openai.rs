//! Provider wire formats: reading what matters out of a request and building the
//! exact JSON a provider answers with. Pure functions, so the bytes tests depend
//! on are pinned by unit tests here.
//!
//! Token counts are whitespace-separated words, not a real tokenizer: tests need
//! numbers they can predict from the request they sent.

use serde::Serialize;
use serde_json::Value;

use crate::knobs::UsageMode;

pub const DEFAULT_MODEL: &str = "mock-model";

pub fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Prompt tokens of a chat request: words of every string `content` in
/// `messages`, and of every `{"type":"text","text":..}` part; at least 1.
pub fn prompt_tokens(body: &Value) -> u64 {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let mut words = 0;
    for message in messages {
        match message.get("content") {
            Some(Value::String(text)) => words += count_words(text),
            Some(Value::Array(parts)) => {
                for part in parts {
                    if part.get("type").and_then(Value::as_str) == Some("text") {
                        words += part
                            .get("text")
                            .and_then(Value::as_str)
                            .map_or(0, count_words);
                    }
                }
            }
            _ => {}
        }
    }
    words.max(1)
}

/// Splits text into streaming pieces at word starts, keeping the spaces (so the
/// pieces concatenate back to the text): "Hi  there" -> ["Hi", "  there"].
pub fn split_pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    let mut piece_has_word = false;
    // Where the whitespace before the next word begins: pieces are cut there,
    // so the spaces travel with the word that follows them.
    let mut gap_start = 0;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word {
                gap_start = i;
            }
            in_word = false;
        } else {
            if !in_word && piece_has_word {
                pieces.push(text[start..gap_start].to_string());
                start = gap_start;
            }
            in_word = true;
            piece_has_word = true;
        }
    }
    if start < text.len() {
        pieces.push(text[start..].to_string());
    }
    pieces
}

/// The answer's content pieces: the given text split at words, or
/// "Hello", " from", " NAME" repeated/truncated to `chunks` pieces.
pub fn content_pieces(content: Option<&str>, chunks: usize, name: &str) -> Vec<String> {
    match content {
        Some(text) => split_pieces(text),
        None => {
            let base = ["Hello".to_string(), " from".to_string(), format!(" {name}")];
            (0..chunks).map(|i| base[i % base.len()].clone()).collect()
        }
    }
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// OpenAI's nested details, when `x-mock-cached-tokens` asks for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptTokensDetails {
    pub cached_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: None,
        }
    }
}

/// Everything an answer to one chat request is made of, streamed or not.
pub struct Completion<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub fingerprint: &'a str,
    pub pieces: &'a [String],
    pub usage: Usage,
}

/// Serialising our own plain structs cannot fail; the fallback only keeps the
/// mock free of panics.
fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

/// The non-streaming `chat.completion` body; `usage` is left out for `UsageMode::Omit`.
pub fn completion_body(c: &Completion, mode: UsageMode) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        model: &'a str,
        system_fingerprint: &'a str,
        choices: [Choice; 1],
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
    }
    #[derive(Serialize)]
    struct Choice {
        index: u32,
        message: Message,
        finish_reason: &'static str,
    }
    #[derive(Serialize)]
    struct Message {
        role: &'static str,
        content: String,
    }
    to_json(&Body {
        id: c.id,
        object: "chat.completion",
        created: c.created,
        model: c.model,
        system_fingerprint: c.fingerprint,
        choices: [Choice {
            index: 0,
            message: Message {
                role: "assistant",
                content: c.pieces.concat(),
            },
            finish_reason: "stop",
        }],
        usage: (mode != UsageMode::Omit).then_some(c.usage),
    })
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    /// Absent, `null`, or the usage object: OpenAI distinguishes all three.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

/// The payloads of a streamed answer, one per SSE event, ending with `[DONE]`.
pub fn stream_events(c: &Completion, include_usage: bool, mode: UsageMode) -> Vec<String> {
    let chunk = |delta: Option<Delta>, finish_reason, usage| {
        let choices = delta
            .map(|delta| ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            })
            .into_iter()
            .collect();
        let chunk = Chunk {
            id: c.id,
            object: "chat.completion.chunk",
            created: c.created,
            model: c.model,
            choices,
            usage,
        };
        String::from_utf8(to_json(&chunk)).unwrap_or_default()
    };
    // Once a client asks for usage, OpenAI puts `"usage": null` on every chunk
    // before the one that carries it.
    let before_usage = (include_usage && mode != UsageMode::Omit).then_some(None);

    let mut events = Vec::with_capacity(c.pieces.len() + 4);
    events.push(chunk(
        Some(Delta {
            role: Some("assistant"),
            content: Some(""),
        }),
        None,
        before_usage,
    ));
    for piece in c.pieces {
        events.push(chunk(
            Some(Delta {
                role: None,
                content: Some(piece),
            }),
            None,
            before_usage,
        ));
    }
    let finish_usage = if mode == UsageMode::Inline {
        Some(Some(c.usage))
    } else {
        before_usage
    };
    events.push(chunk(Some(Delta::default()), Some("stop"), finish_usage));
    if mode == UsageMode::Final && include_usage {
        events.push(chunk(None, None, Some(Some(c.usage))));
    }
    events.push("[DONE]".to_string());
    events
}

/// One embeddings input: how many tokens it counts for, and the seed that makes
/// its vector deterministic (same text, same vector).
#[derive(Debug, PartialEq, Eq)]
pub struct EmbeddingInput {
    pub tokens: u64,
    pub seed: u64,
}

impl EmbeddingInput {
    fn text(text: &str) -> Self {
        EmbeddingInput {
            tokens: count_words(text),
            seed: fnv1a(text.as_bytes()),
        }
    }

    fn token_ids(ids: &[Value]) -> Self {
        EmbeddingInput {
            tokens: ids.len() as u64,
            seed: fnv1a(Value::Array(ids.to_vec()).to_string().as_bytes()),
        }
    }
}

/// OpenAI's `input`: a string, an array of strings, an array of token ids, or
/// an array of token-id arrays.
pub fn embedding_inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput>, String> {
    match input {
        Some(Value::String(text)) => Ok(vec![EmbeddingInput::text(text)]),
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_number) => {
            Ok(vec![EmbeddingInput::token_ids(items)])
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Ok(EmbeddingInput::text(text)),
                Value::Array(ids) if ids.iter().all(Value::is_number) => {
                    Ok(EmbeddingInput::token_ids(ids))
                }
                _ => Err("input items must be strings or arrays of token ids".to_string()),
            })
            .collect(),
        None | Some(Value::Null) => Err("missing required parameter: input".into()),
        Some(_) => Err("input must be a string or an array of strings".into()),
    }
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A deterministic pseudo-embedding in [-1, 1), rounded to 6 decimals to keep big
/// responses readable.
pub fn embedding_vector(seed: u64, dims: usize) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..dims)
        .map(|_| ((rng.f64() * 2.0 - 1.0) * 1e6).round() as f32 / 1e6)
        .collect()
}

pub fn embeddings_body(
    inputs: &[EmbeddingInput],
    dims: usize,
    model: &str,
    base64: bool,
    prompt_tokens: u64,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        object: &'static str,
        data: Vec<Item>,
        model: &'a str,
        usage: EmbeddingUsage,
    }
    #[derive(Serialize)]
    struct Item {
        object: &'static str,
        index: usize,
        embedding: Embedding,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Embedding {
        Floats(Vec<f32>),
        /// `encoding_format: "base64"`: little-endian f32s, as the OpenAI SDKs request by default.
        Base64(String),
    }
    #[derive(Serialize)]
    struct EmbeddingUsage {
        prompt_tokens: u64,
        total_tokens: u64,
    }
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = embedding_vector(input.seed, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Embedding::Base64(base64_encode(&bytes))
            } else {
                Embedding::Floats(vector)
            };
            Item {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    to_json(&Body {
        object: "list",
        data,
        model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
}

/// Vertex AI text-embedding `:predict` answer for `{"instances":[{"content":..}]}`.
pub fn predict_body(body: &Value, dims: usize) -> Result<Vec<u8>, String> {
    #[derive(Serialize)]
    struct Body {
        predictions: Vec<Prediction>,
    }
    #[derive(Serialize)]
    struct Prediction {
        embeddings: Embeddings,
    }
    #[derive(Serialize)]
    struct Embeddings {
        values: Vec<f32>,
        statistics: Statistics,
    }
    #[derive(Serialize)]
    struct Statistics {
        token_count: u64,
        truncated: bool,
    }
    let instances = body
        .get("instances")
        .and_then(Value::as_array)
        .ok_or("missing required field: instances")?;
    let predictions = instances
        .iter()
        .map(|instance| {
            let content = instance
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or("");
            Prediction {
                embeddings: Embeddings {
                    values: embedding_vector(fnv1a(content.as_bytes()), dims),
                    statistics: Statistics {
                        token_count: count_words(content),
                        truncated: false,
                    },
                },
            }
        })
        .collect();
    Ok(to_json(&Body { predictions }))
}

/// OpenAI's error shape: `{"error":{"message","type","code"}}`.
pub fn error_body(message: &str, kind: &str, code: u16) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'a> {
        error: Error<'a>,
    }
    #[derive(Serialize)]
    struct Error<'a> {
        message: &'a str,
        #[serde(rename = "type")]
        kind: &'a str,
        code: u16,
    }
    to_json(&Body {
        error: Error {
            message,
            kind,
            code,
        },
    })
}

pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn completion<'a>(pieces: &'a [String]) -> Completion<'a> {
        Completion {
            id: "chatcmpl-mock-1",
            created: 7,
            model: "m",
            fingerprint: "fp",
            pieces,
            usage: Usage::new(4, 3),
        }
    }

    #[test]
    fn prompt_tokens_count_words_in_strings_and_text_parts() {
        let body = json!({"messages": [
            {"role": "system", "content": "You are  terse."},
            {"role": "user", "content": [
                {"type": "text", "text": "two words"},
                {"type": "image_url", "image_url": {"url": "x y z"}}
            ]},
            {"role": "assistant", "content": null}
        ]});
        assert_eq!(prompt_tokens(&body), 5);
        assert_eq!(prompt_tokens(&json!({})), 1);
        assert_eq!(prompt_tokens(&json!({"messages": [{"content": ""}]})), 1);
    }

    #[test]
    fn pieces_split_at_words_and_keep_spaces() {
        assert_eq!(
            split_pieces("Hello brave  world"),
            ["Hello", " brave", "  world"]
        );
        assert_eq!(split_pieces("  lead trail "), ["  lead", " trail "]);
        assert_eq!(split_pieces("héllo wörld"), ["héllo", " wörld"]);
        assert!(split_pieces("").is_empty());
        assert_eq!(
            content_pieces(None, 5, "a"),
            ["Hello", " from", " a", "Hello", " from"]
        );
        assert_eq!(content_pieces(None, 2, "a"), ["Hello", " from"]);
        assert_eq!(content_pieces(Some("x y"), 9, "a"), ["x", " y"]);
    }

    #[test]
    fn non_streaming_body_is_exact() {
        let pieces = content_pieces(None, 3, "fp");
        let body =
            String::from_utf8(completion_body(&completion(&pieces), UsageMode::Final)).unwrap();
        assert_eq!(
            body,
            r#"{"id":"chatcmpl-mock-1","object":"chat.completion","created":7,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from fp"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}}"#
        );
        let body =
            String::from_utf8(completion_body(&completion(&pieces), UsageMode::Omit)).unwrap();
        assert!(!body.contains("usage"));
    }

    #[test]
    fn stream_events_follow_openai_usage_rules() {
        let pieces = vec!["Hi".to_string()];
        let c = completion(&pieces);
        let head = r#"{"id":"chatcmpl-mock-1","object":"chat.completion.chunk","created":7,"model":"m","choices":"#;
        let usage = r#"{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}"#;

        let plain = stream_events(&c, false, UsageMode::Final);
        assert_eq!(
            plain,
            [
                format!(
                    r#"{head}[{{"index":0,"delta":{{"role":"assistant","content":""}},"finish_reason":null}}]}}"#
                ),
                format!(
                    r#"{head}[{{"index":0,"delta":{{"content":"Hi"}},"finish_reason":null}}]}}"#
                ),
                format!(r#"{head}[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}"#),
                "[DONE]".to_string(),
            ]
        );

        let with_usage = stream_events(&c, true, UsageMode::Final);
        assert_eq!(with_usage.len(), 5);
        assert!(with_usage[..3]
            .iter()
            .all(|e| e.ends_with(r#","usage":null}"#)));
        assert_eq!(with_usage[3], format!(r#"{head}[],"usage":{usage}}}"#));

        let inline = stream_events(&c, false, UsageMode::Inline);
        assert_eq!(inline.len(), 4);
        assert_eq!(
            inline[2],
            format!(
                r#"{head}[{{"index":0,"delta":{{}},"finish_reason":"stop"}}],"usage":{usage}}}"#
            )
        );
        assert!(!inline[1].contains("usage"));

        let none = stream_events(&c, true, UsageMode::Omit);
        assert_eq!(none.len(), 4);
        assert!(none.iter().all(|e| !e.contains("usage")));
    }

    #[test]
    fn embedding_inputs_and_body() {
        let inputs = embedding_inputs(Some(&json!(["a b", "c"]))).unwrap();
        assert_eq!(inputs.iter().map(|i| i.tokens).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(embedding_inputs(Some(&json!([1, 2, 3]))).unwrap().len(), 1);
        assert_eq!(
            embedding_inputs(Some(&json!([[1, 2], [3]]))).unwrap()[0].tokens,
            2
        );
        assert!(embedding_inputs(None).is_err());
        assert!(embedding_inputs(Some(&json!({"x": 1}))).is_err());
        assert!(embedding_inputs(Some(&json!([{"x": 1}]))).is_err());

        let body: Value =
            serde_json::from_slice(&embeddings_body(&inputs, 8, "e", false, 3)).unwrap();
        assert_eq!(body["object"], "list");
        assert_eq!(body["data"][1]["index"], 1);
        assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 8);
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 3, "total_tokens": 3})
        );
        // Same text, same vector.
        assert_eq!(
            embedding_vector(fnv1a(b"a b"), 8),
            embedding_vector(fnv1a(b"a b"), 8)
        );

        let body: Value =
            serde_json::from_slice(&embeddings_body(&inputs[..1], 4, "e", true, 2)).unwrap();
        assert_eq!(body["data"][0]["embedding"].as_str().unwrap().len(), 24); // 16 bytes
    }

    #[test]
    fn predict_body_counts_words_per_instance() {
        let body: Value = serde_json::from_slice(
            &predict_body(
                &json!({"instances": [{"content": "one two"}, {"content": "x"}]}),
                8,
            )
            .unwrap(),
        )
        .unwrap();
        let stats: Vec<u64> = (0..2)
            .map(|i| {
                body["predictions"][i]["embeddings"]["statistics"]["token_count"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(stats, [2, 1]);
        assert_eq!(
            body["predictions"][0]["embeddings"]["values"]
                .as_array()
                .unwrap()
                .len(),
            8
        );
        assert!(predict_body(&json!({}), 8).is_err());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(raw.as_bytes()), encoded);
        }
    }

    #[test]
    fn error_body_shape() {
        assert_eq!(
            String::from_utf8(error_body("mock m error 429", "mock_error", 429)).unwrap(),
            r#"{"error":{"message":"mock m error 429","type":"mock_error","code":429}}"#
        );
    }
}
