//! `provider: azure-openai`: every Azure resource has its own host and names the deployment in
//! the URL, so `override.endpoint` is required and `model` is removed from the body (Azure
//! rejects or ignores it). The key goes in the `api-key` header.

use super::Provider;

pub struct AzureOpenAi;

impl Provider for AzureOpenAi {
    fn name(&self) -> &'static str {
        "azure-openai"
    }

    fn drops_model(&self) -> bool {
        true
    }
}
