//! `provider: openrouter`: OpenRouter.

use super::Provider;
use crate::config::schema::ProviderConf;

pub struct OpenRouter;

impl Provider for OpenRouter {
    fn name(&self) -> &'static str {
        "openrouter"
    }

    fn default_endpoint(&self, _conf: Option<&ProviderConf>) -> Result<Option<String>, String> {
        Ok(Some("https://openrouter.ai/api/v1/chat/completions".into()))
    }
}
