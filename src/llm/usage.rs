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
        let wire: WireUsage = serde_json::from_slice(raw).ok()?;
        let (p, c, t) = (
            wire.prompt_tokens.0,
            wire.completion_tokens.0,
            wire.total_tokens.0,
        );
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
}
