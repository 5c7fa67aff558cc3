//! Provider drivers: what differs between LLM providers that speak OpenAI's format.
//!
//! Each provider is one file with one zero-sized driver. The differences are small (default
//! endpoint, whether `model` stays in the body, how embeddings are reached), so the trait's
//! defaults describe OpenAI and each driver overrides only what its provider does differently.

mod aimlapi;
mod anthropic;
mod azure_openai;
mod deepseek;
pub mod gcp_auth;
mod gemini;
pub mod instance;
mod openai;
mod openai_compatible;
mod openrouter;
pub mod vertex_ai;

use crate::config::schema::{ProviderConf, ProviderName};
use crate::net::endpoint::Endpoint;

pub trait Provider: Send + Sync + 'static {
    /// The name used in config (`provider: openai`) and in `ai-proxy-<provider>` instance names.
    fn name(&self) -> &'static str;

    /// The endpoint used when `override.endpoint` is absent. `Ok(None)` means the provider has no
    /// public endpoint and `override.endpoint` is required; `Err` explains what is missing.
    fn default_endpoint(&self, _conf: Option<&ProviderConf>) -> Result<Option<String>, String> {
        Ok(None)
    }

    /// Whether `model` is removed from the body (Azure names the deployment in the URL).
    fn drops_model(&self) -> bool {
        false
    }

    /// Where an embeddings request goes when the instance uses the provider's default chat
    /// endpoint. OpenAI-style APIs serve embeddings next to chat completions.
    fn default_embeddings_endpoint(&self, chat: &Endpoint) -> Option<Endpoint> {
        chat.path
            .strip_suffix("/chat/completions")
            .map(|base| chat.with_path(&format!("{base}/embeddings")))
    }

    /// Embeddings go through Vertex AI's `:predict` API instead of an OpenAI-style endpoint.
    fn embeddings_via_predict(&self) -> bool {
        false
    }
}

pub fn driver(name: ProviderName) -> &'static dyn Provider {
    match name {
        ProviderName::OpenAi => &openai::OpenAi,
        ProviderName::DeepSeek => &deepseek::DeepSeek,
        ProviderName::AimlApi => &aimlapi::AimlApi,
        ProviderName::Anthropic => &anthropic::Anthropic,
        ProviderName::Gemini => &gemini::Gemini,
        ProviderName::OpenRouter => &openrouter::OpenRouter,
        ProviderName::AzureOpenAi => &azure_openai::AzureOpenAi,
        ProviderName::OpenAiCompatible => &openai_compatible::OpenAiCompatible,
        ProviderName::VertexAi => &vertex_ai::VertexAi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_endpoints() {
        let cases = [
            (
                ProviderName::OpenAi,
                Some("https://api.openai.com/v1/chat/completions"),
            ),
            (
                ProviderName::DeepSeek,
                Some("https://api.deepseek.com/chat/completions"),
            ),
            (
                ProviderName::AimlApi,
                Some("https://api.aimlapi.com/chat/completions"),
            ),
            (
                ProviderName::Anthropic,
                Some("https://api.anthropic.com/v1/chat/completions"),
            ),
            (
                ProviderName::Gemini,
                Some("https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"),
            ),
            (
                ProviderName::OpenRouter,
                Some("https://openrouter.ai/api/v1/chat/completions"),
            ),
            (ProviderName::AzureOpenAi, None),
            (ProviderName::OpenAiCompatible, None),
        ];
        for (p, want) in cases {
            assert_eq!(
                driver(p).default_endpoint(None).unwrap().as_deref(),
                want,
                "{}",
                driver(p).name()
            );
        }
        let conf = ProviderConf {
            project_id: Some("p1".into()),
            region: Some("us-central1".into()),
        };
        assert_eq!(
            driver(ProviderName::VertexAi).default_endpoint(Some(&conf)).unwrap().as_deref(),
            Some("https://us-central1-aiplatform.googleapis.com/v1beta1/projects/p1/locations/us-central1/endpoints/openapi/chat/completions")
        );
        assert!(driver(ProviderName::VertexAi)
            .default_endpoint(None)
            .is_err());
        assert!(driver(ProviderName::AzureOpenAi).drops_model());
    }

    #[test]
    fn embeddings_sit_next_to_chat() {
        let chat = Endpoint::parse("https://api.openai.com/v1/chat/completions").unwrap();
        let e = driver(ProviderName::OpenAi)
            .default_embeddings_endpoint(&chat)
            .unwrap();
        assert_eq!(e.path, "/v1/embeddings");
    }
}
