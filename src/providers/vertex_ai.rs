//! `provider: vertex-ai`: Google Cloud Vertex AI.
//!
//! Chat goes to Vertex's OpenAI-compatible endpoint for the project and region in
//! `provider_conf`. Embeddings have no OpenAI-compatible endpoint on Vertex: a body with `input`
//! is converted to the `:predict` API (`{"instances":[{"content":..}]}`) and its answer is rebuilt
//! into OpenAI's embeddings shape, with usage summed from each prediction's token count. Auth is
//! normally a GCP service account (`auth.gcp`), see `gcp_auth`.

use bytes::Bytes;
use serde::Deserialize;

use super::Provider;
use crate::config::schema::ProviderConf;
use crate::net::endpoint::Endpoint;

pub struct VertexAi;

impl Provider for VertexAi {
    fn name(&self) -> &'static str {
        "vertex-ai"
    }

    fn default_endpoint(&self, conf: Option<&ProviderConf>) -> Result<Option<String>, String> {
        let (p, r) = project_region(conf)?;
        Ok(Some(format!(
            "https://{r}-aiplatform.googleapis.com/v1beta1/projects/{p}/locations/{r}/endpoints/openapi/chat/completions"
        )))
    }

    fn embeddings_via_predict(&self) -> bool {
        true
    }
}

fn project_region(conf: Option<&ProviderConf>) -> Result<(&str, &str), String> {
    let conf =
        conf.ok_or("vertex-ai needs provider_conf {project_id, region} or override.endpoint")?;
    match (conf.project_id.as_deref(), conf.region.as_deref()) {
        (Some(p), Some(r)) if !p.is_empty() && !r.is_empty() => Ok((p, r)),
        _ => Err("vertex-ai provider_conf needs both project_id and region".into()),
    }
}

/// The `:predict` URL for an embeddings model, from `provider_conf`.
pub fn predict_endpoint(conf: Option<&ProviderConf>, model: &str) -> Result<Endpoint, String> {
    let (p, r) = project_region(conf)?;
    let mut model_enc = String::new();
    crate::net::endpoint::encode_query_component(model, &mut model_enc);
    Endpoint::parse(&format!(
        "https://{r}-aiplatform.googleapis.com/v1/projects/{p}/locations/{r}/publishers/google/models/{model_enc}:predict"
    ))
}

/// OpenAI embeddings input → Vertex predict request.
pub fn predict_body(inputs: &[String]) -> Bytes {
    let instances: Vec<serde_json::Value> = inputs
        .iter()
        .map(|c| serde_json::json!({ "content": c }))
        .collect();
    Bytes::from(serde_json::json!({ "instances": instances }).to_string())
}

#[derive(Deserialize)]
struct PredictResponse {
    #[serde(default)]
    predictions: Vec<Prediction>,
}
#[derive(Deserialize)]
struct Prediction {
    embeddings: PredEmbeddings,
}
#[derive(Deserialize)]
struct PredEmbeddings {
    values: Vec<f64>,
    #[serde(default)]
    statistics: Option<Statistics>,
}
#[derive(Deserialize)]
struct Statistics {
    #[serde(default)]
    token_count: f64,
}

/// Vertex predict answer → OpenAI embeddings answer, plus the token count.
pub fn embeddings_from_predict(body: &[u8], model: &str) -> Result<(Bytes, u64), String> {
    let resp: PredictResponse = serde_json::from_slice(body)
        .map_err(|e| format!("unexpected Vertex AI predict answer: {e}"))?;
    let mut tokens = 0u64;
    let data: Vec<serde_json::Value> = resp
        .predictions
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            tokens += p
                .embeddings
                .statistics
                .map(|s| s.token_count as u64)
                .unwrap_or(0);
            serde_json::json!({"object": "embedding", "index": i, "embedding": p.embeddings.values})
        })
        .collect();
    let out = serde_json::json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok((Bytes::from(out.to_string()), tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_round_trip() {
        let conf = ProviderConf {
            project_id: Some("p".into()),
            region: Some("europe-west4".into()),
        };
        let e = predict_endpoint(Some(&conf), "text-embedding-005").unwrap();
        assert_eq!(e.host, "europe-west4-aiplatform.googleapis.com");
        assert_eq!(e.path, "/v1/projects/p/locations/europe-west4/publishers/google/models/text-embedding-005:predict");
        let body = predict_body(&["hello world".into(), "x".into()]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["instances"][1]["content"], "x");
        let answer = br#"{"predictions":[{"embeddings":{"values":[0.1,0.2],"statistics":{"token_count":2,"truncated":false}}},{"embeddings":{"values":[0.3],"statistics":{"token_count":1}}}]}"#;
        let (out, tokens) = embeddings_from_predict(answer, "text-embedding-005").unwrap();
        assert_eq!(tokens, 3);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["data"][0]["embedding"][1], 0.2);
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(v["model"], "text-embedding-005");
    }
}
