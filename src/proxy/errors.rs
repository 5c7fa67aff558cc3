//! Errors the gateway answers itself, in OpenAI's error shape:
//! `{"error":{"message":"...","type":"...","code":"..."}}`.
//!
//! Messages are written for the API user and never carry secrets (keys, tokens, auth headers,
//! endpoint query strings).

use bytes::Bytes;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

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

/// Write `err` as the complete response. Errors writing (client gone) are ignored: there is no
/// one left to tell.
pub async fn respond(session: &mut Session, request_id: &str, err: &GatewayError) {
    let body = err.body();
    let Ok(mut resp) = ResponseHeader::build(err.status, Some(4)) else {
        return;
    };
    let _ = resp.insert_header("Content-Type", "application/json");
    let _ = resp.insert_header("Content-Length", body.len().to_string());
    if !request_id.is_empty() {
        let _ = resp.insert_header("X-Request-Id", request_id);
    }
    if err.status == 503 {
        // The gateway's own 503 means it is busy (`server_busy`): say when to come back.
        let _ = resp.insert_header("Retry-After", "1");
    }
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_ok()
    {
        let _ = session.write_response_body(Some(body), true).await;
    }
}

/// Map a proxying failure to what the client is told. `None`: the client is gone (nobody to
/// answer; logged as 499 like nginx).
pub fn classify(e: &Error, timeout_ms: Option<u64>) -> Option<GatewayError> {
    use ErrorType::*;
    if let HTTPStatus(code) = e.etype() {
        let message = e.context.as_ref().map(|c| c.as_str());
        let code = *code;
        return Some(match code {
            502 => {
                GatewayError::bad_gateway("upstream_error", message.unwrap_or("upstream failed"))
            }
            504 => GatewayError::timeout(message.unwrap_or("upstream timed out")),
            _ => GatewayError::new(
                code,
                "api_error",
                "gateway_error",
                message.unwrap_or("request failed"),
            ),
        });
    }
    let after = timeout_ms
        .map(|t| format!(" after {t} ms"))
        .unwrap_or_default();
    match e.esource() {
        ErrorSource::Downstream => None,
        ErrorSource::Upstream => Some(match e.etype() {
            ConnectTimedout | TLSHandshakeTimedout => {
                GatewayError::timeout(format!("connecting to the provider timed out{after}"))
            }
            ReadTimedout => {
                GatewayError::timeout(format!("the provider did not answer in time{after}"))
            }
            WriteTimedout => GatewayError::timeout(format!(
                "sending the request to the provider timed out{after}"
            )),
            ConnectRefused => GatewayError::bad_gateway(
                "upstream_unreachable",
                "the provider refused the connection",
            ),
            ConnectNoRoute | ConnectError | ConnectProxyFailure | BindError | SocketError => {
                GatewayError::bad_gateway(
                    "upstream_unreachable",
                    "could not connect to the provider",
                )
            }
            TLSHandshakeFailure | InvalidCert | TLSWantX509Lookup => GatewayError::bad_gateway(
                "upstream_tls_error",
                "TLS handshake with the provider failed",
            ),
            ConnectionClosed => {
                GatewayError::bad_gateway("upstream_closed", "the provider closed the connection")
            }
            _ => GatewayError::bad_gateway("upstream_error", "invalid response from the provider"),
        }),
        _ => Some(GatewayError::internal("internal gateway error")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let e = GatewayError::bad_request("invalid_json", "nope");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["message"], "nope");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_json");
    }

    #[test]
    fn classification() {
        let mut e = Error::new(ErrorType::ReadTimedout);
        e.as_up();
        assert_eq!(classify(&e, Some(100)).unwrap().status, 504);
        let mut e = Error::new(ErrorType::ConnectRefused);
        e.as_up();
        assert_eq!(classify(&e, None).unwrap().status, 502);
        let mut e = Error::new(ErrorType::ConnectionClosed);
        e.as_down();
        assert!(classify(&e, None).is_none());
        let e = GatewayError::bad_gateway("x", "y").to_pingora();
        assert_eq!(classify(&e, None).unwrap().status, 502);
    }
}
