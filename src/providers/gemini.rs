//! `provider: gemini`: Google AI Studio's OpenAI-compatible endpoint. Its key goes in `Authorization: Bearer` or `auth.query.key`.

use super::Provider;
use crate::config::schema::ProviderConf;

pub struct Gemini;

impl Provider for Gemini {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn default_endpoint(&self, _conf: Option<&ProviderConf>) -> Result<Option<String>, String> {
        Ok(Some(
            "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions".into(),
        ))
    }
}
