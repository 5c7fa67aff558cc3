//! `provider: openai`: OpenAI's own API.

use super::Provider;
use crate::config::schema::ProviderConf;

pub struct OpenAi;

impl Provider for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn default_endpoint(&self, _conf: Option<&ProviderConf>) -> Result<Option<String>, String> {
        Ok(Some("https://api.openai.com/v1/chat/completions".into()))
    }
}
