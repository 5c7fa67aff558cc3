//! Writing the gateway's own errors (`crate::error::GatewayError`) to the client, and mapping
//! Pingora's proxying failures to them.

use http::{HeaderName, HeaderValue};
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

pub use crate::error::GatewayError;

/// Write `err` as the complete response. Errors writing (client gone) are ignored: there is no
/// one left to tell.
pub async fn respond(session: &mut Session, request_id: &str, err: &GatewayError) {
    respond_with(session, request_id, err, &[]).await
}

/// `respond`, with extra headers (a plugin's refusal carries its own, e.g. quota headers).
pub async fn respond_with(
    session: &mut Session,
    request_id: &str,
    err: &GatewayError,
    headers: &[(HeaderName, HeaderValue)],
) {
    let body = err.body();
    let Ok(mut resp) = ResponseHeader::build(err.status, Some(4 + headers.len())) else {
        return;
    };
    for (k, v) in headers {
        let _ = resp.append_header(k.clone(), v.clone());
    }
    let _ = resp.insert_header("Content-Type", "application/json");
    let _ = resp.insert_header("Content-Length", body.len().to_string());
    if !request_id.is_empty() {
        let _ = resp.insert_header("X-Request-Id", request_id);
    }
    if err.status == 503 && !headers.iter().any(|(k, _)| k == http::header::RETRY_AFTER) {
        // The gateway's own 503 means it is busy (`server_busy`): say when to come back. (A
        // quota's refusal says when its window resets instead.)
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
