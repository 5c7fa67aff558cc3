//! `provider: openai-compatible`: any server speaking OpenAI's chat format (vLLM, Ollama, Together,
//! Groq, an internal service). There is no default endpoint; `override.endpoint` is required.

use super::Provider;

pub struct OpenAiCompatible;

impl Provider for OpenAiCompatible {
    fn name(&self) -> &'static str {
        "openai-compatible"
    }
}
