//! `provider: deepseek`: DeepSeek's OpenAI-compatible API (no `/v1` in its path).

use super::Provider;
use crate::config::schema::ProviderConf;

pub struct DeepSeek;

impl Provider for DeepSeek {
    fn name(&self) -> &'static str {
        "deepseek"
    }

    fn default_endpoint(&self, _conf: Option<&ProviderConf>) -> Result<Option<String>, String> {
        Ok(Some("https://api.deepseek.com/chat/completions".into()))
    }
}
