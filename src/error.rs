//! Errors the gateway answers itself, in OpenAI's error shape:
//! `{"error":{"message":"...","type":"...","code":"..."}}`.
//!
//! Messages are written for the API user and never carry secrets (keys, tokens, auth headers,
//! endpoint query strings). Plugins refuse requests with them too (`Rejection`).

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_error::{Error, ErrorType};

#[derive(Debug, Clone)]
pub struct GatewayError {
    pub status: u16,
    /// OpenAI's `type`: `invalid_request_error`, `api_error`, ...
    pub kind: &'static str,
    /// A stable machine-readable code.
    pub code: &'static str,
    pub message: String,
}

impl GatewayError {
    pub fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        GatewayError {
            status,
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", code, message)
    }

    pub fn not_found() -> Self {
        Self::new(
            404,
            "invalid_request_error",
            "route_not_found",
            "no route matches this request",
        )
    }

    pub fn too_large(limit: u64) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("request body exceeds the {limit} byte limit"),
        )
    }

    pub fn bad_gateway(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(502, "api_error", code, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "api_error", "upstream_timeout", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "api_error", "internal_error", message)
    }

    pub fn body(&self) -> Bytes {
        let v = serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "code": self.code }
        });
        Bytes::from(v.to_string())
    }

    /// A Pingora error with this status, for hooks that must return one. The full error (type,
    /// code) travels in the request context; this only carries status and message.
    pub fn to_pingora(&self) -> Box<Error> {
        Error::explain(ErrorType::HTTPStatus(self.status), self.message.clone())
    }
}

/// A request refused before it went upstream: the error the client gets, and the headers it
/// carries with it (a quota's `X-AI-RateLimit-*` headers on its 503).
#[derive(Debug, Clone)]
pub struct Rejection {
    pub error: GatewayError,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl From<GatewayError> for Rejection {
    fn from(error: GatewayError) -> Self {
        Rejection {
            error,
            headers: Vec::new(),
        }
    }
}
