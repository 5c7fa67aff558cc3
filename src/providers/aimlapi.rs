//! `provider: aimlapi`: AI/ML API's OpenAI-compatible endpoint.

use super::Provider;
use crate::config::schema::ProviderConf;

pub struct AimlApi;

impl Provider for AimlApi {
    fn name(&self) -> &'static str {
        "aimlapi"
    }

    fn default_endpoint(&self, _conf: Option<&ProviderConf>) -> Result<Option<String>, String> {
        Ok(Some("https://api.aimlapi.com/chat/completions".into()))
    }
}
