//! Control knobs: how one answer should (mis)behave.
//!
//! Each knob is set in one of three places, most specific first: an `x-mock-*`
//! request header, a process-wide default set with `POST /_mock/config`, or a CLI
//! flag. Headers are for one-off behaviour; the config endpoint is for traffic a
//! test cannot add headers to (health probes, token refreshes the gateway makes
//! on its own) or an instance that should misbehave for a whole scenario.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Upper bounds that keep a typo from making the mock allocate gigabytes.
pub const MAX_CHUNKS: usize = 1_000_000;
pub const MAX_DIMS: usize = 4 * 1024 * 1024;

/// Where usage goes in a streamed answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UsageMode {
    /// OpenAI: a trailing usage-only chunk, when the client asked for it.
    #[serde(rename = "final")]
    Final,
    /// Some OpenAI-compatible providers: usage on the finish chunk, always.
    #[serde(rename = "inline")]
    Inline,
    /// Providers that never report usage.
    #[serde(rename = "none")]
    Omit,
}

impl UsageMode {
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "final" => Ok(UsageMode::Final),
            "inline" => Ok(UsageMode::Inline),
            "none" => Ok(UsageMode::Omit),
            _ => Err(format!(
                "x-mock-usage must be final, inline or none, not {s:?}"
            )),
        }
    }
}

/// The resolved knobs for one request. Field names are the config keys; header
/// names are the same with `x-mock-` in front and dashes for underscores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Knobs {
    pub status: u16,
    pub error_body: Option<String>,
    pub error_content_type: Option<String>,
    pub delay_ms: u64,
    pub body_delay_ms: u64,
    pub chunk_delay_ms: u64,
    pub chunks: usize,
    pub content: Option<String>,
    pub split: bool,
    pub coalesce: bool,
    pub crlf: bool,
    pub comments: bool,
    pub usage: UsageMode,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub model: Option<String>,
    pub dims: usize,
    pub token_ttl: u64,
    pub close: bool,
    pub close_next: bool,
    pub truncate_at: Option<usize>,
    pub hang: bool,
    pub health_status: u16,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            status: 200,
            error_body: None,
            error_content_type: None,
            delay_ms: 0,
            body_delay_ms: 0,
            chunk_delay_ms: 0,
            chunks: 3,
            content: None,
            split: false,
            coalesce: false,
            crlf: false,
            comments: false,
            usage: UsageMode::Final,
            prompt_tokens: None,
            completion_tokens: None,
            cached_tokens: None,
            model: None,
            dims: 8,
            token_ttl: 3600,
            close: false,
            close_next: false,
            truncate_at: None,
            hang: false,
            health_status: 200,
        }
    }
}

fn parse_num<T: std::str::FromStr>(header: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("x-mock-{header} must be a non-negative integer, not {value:?}"))
}

fn parse_bool(header: &str, value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(format!(
            "x-mock-{header} must be true or false, not {value:?}"
        )),
    }
}

/// Config keys are forgiving about spelling: `delay-ms`, `x-mock-delay-ms` and
/// `delay_ms` all mean the same knob.
fn config_key(key: &str) -> String {
    let key = key.trim().to_ascii_lowercase().replace('-', "_");
    key.strip_prefix("x_mock_")
        .map(str::to_string)
        .unwrap_or(key)
}

impl Knobs {
    /// Applies one `x-mock-<key>` header. Unknown keys are errors so that a
    /// misspelt header fails the test loudly instead of being silently ignored.
    pub fn apply_header(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "status" => self.status = parse_num(key, value)?,
            "error-body" => self.error_body = Some(value.to_string()),
            "error-content-type" => self.error_content_type = Some(value.trim().to_string()),
            "delay-ms" => self.delay_ms = parse_num(key, value)?,
            "body-delay-ms" => self.body_delay_ms = parse_num(key, value)?,
            "chunk-delay-ms" => self.chunk_delay_ms = parse_num(key, value)?,
            "chunks" => self.chunks = parse_num(key, value)?,
            "content" => self.content = Some(value.to_string()),
            "split" => self.split = parse_bool(key, value)?,
            "coalesce" => self.coalesce = parse_bool(key, value)?,
            "crlf" => self.crlf = parse_bool(key, value)?,
            "comments" => self.comments = parse_bool(key, value)?,
            "usage" => self.usage = UsageMode::parse(value)?,
            "prompt-tokens" => self.prompt_tokens = Some(parse_num(key, value)?),
            "completion-tokens" => self.completion_tokens = Some(parse_num(key, value)?),
            "cached-tokens" => self.cached_tokens = Some(parse_num(key, value)?),
            "model" => self.model = Some(value.trim().to_string()),
            "dims" => self.dims = parse_num(key, value)?,
            "token-ttl" => self.token_ttl = parse_num(key, value)?,
            "close" => self.close = parse_bool(key, value)?,
            "close-next" => self.close_next = parse_bool(key, value)?,
            "truncate-at" => self.truncate_at = Some(parse_num(key, value)?),
            "hang" => self.hang = parse_bool(key, value)?,
            "health-status" => self.health_status = parse_num(key, value)?,
            _ => return Err(format!("unknown control header x-mock-{key}")),
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        for (knob, status) in [
            ("status", self.status),
            ("health_status", self.health_status),
        ] {
            if !(200..=599).contains(&status) {
                return Err(format!("{knob} must be between 200 and 599, not {status}"));
            }
        }
        if self.chunks > MAX_CHUNKS {
            return Err(format!("chunks must be at most {MAX_CHUNKS}"));
        }
        if self.dims > MAX_DIMS {
            return Err(format!("dims must be at most {MAX_DIMS}"));
        }
        // Goes into a response header: control characters would split the head.
        if self
            .error_content_type
            .as_deref()
            .is_some_and(|ct| ct.chars().any(char::is_control))
        {
            return Err("error_content_type must not contain control characters".into());
        }
        Ok(())
    }

    /// The knobs after applying a `POST /_mock/config` body: keys present are
    /// changed, `null` puts a key back to its CLI default, others stay as they are.
    pub fn patched(&self, cli: &Knobs, patch: &Value) -> Result<Knobs, String> {
        let patch = patch
            .as_object()
            .ok_or("the config must be a JSON object")?;
        // Round-trip through JSON so that serde does the type checking and the
        // error messages name the offending key.
        let (Ok(Value::Object(mut merged)), Ok(Value::Object(cli))) =
            (serde_json::to_value(self), serde_json::to_value(cli))
        else {
            return Err("internal error: knobs are not a JSON object".into());
        };
        for (key, value) in patch {
            let name = config_key(key);
            let Some(default) = cli.get(&name) else {
                let known: Vec<&String> = cli.keys().collect();
                return Err(format!("unknown config key {key:?}; known keys: {known:?}"));
            };
            let value = if value.is_null() {
                default.clone()
            } else {
                value.clone()
            };
            merged.insert(name, value);
        }
        let knobs: Knobs = serde_json::from_value(Value::Object(merged))
            .map_err(|e| format!("invalid config: {e}"))?;
        knobs.validate()?;
        Ok(knobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_override_fields() {
        let mut k = Knobs::default();
        k.apply_header("status", " 429 ").unwrap();
        k.apply_header("split", "TRUE").unwrap();
        k.apply_header("usage", "inline").unwrap();
        k.apply_header("content", "Hi there").unwrap();
        k.apply_header("prompt-tokens", "7").unwrap();
        assert_eq!((k.status, k.split, k.usage), (429, true, UsageMode::Inline));
        assert_eq!(
            (k.content.as_deref(), k.prompt_tokens),
            (Some("Hi there"), Some(7))
        );
        assert!(k
            .apply_header("delay", "5")
            .unwrap_err()
            .contains("unknown control header"));
        assert!(k.apply_header("chunks", "-1").is_err());
        assert!(k.apply_header("hang", "maybe").is_err());
        k.apply_header("status", "99").unwrap();
        assert!(k.validate().is_err());
    }

    #[test]
    fn config_patch_merges_and_resets() {
        let cli = Knobs {
            delay_ms: 5,
            ..Knobs::default()
        };
        let k = cli
            .patched(
                &cli,
                &json!({"status": 429, "delay-ms": 300, "x-mock-health-status": 500}),
            )
            .unwrap();
        assert_eq!((k.status, k.delay_ms, k.health_status), (429, 300, 500));
        let k = k
            .patched(&cli, &json!({"usage": "none", "content": "x"}))
            .unwrap();
        assert_eq!(
            (k.status, k.usage, k.content.as_deref()),
            (429, UsageMode::Omit, Some("x"))
        );
        let k = k
            .patched(
                &cli,
                &json!({"status": null, "delay_ms": null, "content": null}),
            )
            .unwrap();
        assert_eq!((k.status, k.delay_ms, k.content.as_deref()), (200, 5, None));
        assert!(k
            .patched(&cli, &json!({"stauts": 500}))
            .unwrap_err()
            .contains("unknown config key"));
        assert!(k.patched(&cli, &json!({"status": "500"})).is_err());
        assert!(k.patched(&cli, &json!({"status": 700})).is_err());
        assert!(k.patched(&cli, &json!([1])).is_err());
    }
}
