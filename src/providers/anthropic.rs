//! `provider: anthropic`: Anthropic's OpenAI-compatible endpoint (the native Messages API is a separate driver to come).

use super::Provider;
use crate::config::schema::ProviderConf;

pub struct Anthropic;

impl Provider for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn default_endpoint(&self, _conf: Option<&ProviderConf>) -> Result<Option<String>, String> {
        Ok(Some("https://api.anthropic.com/v1/chat/completions".into()))
    }
}
