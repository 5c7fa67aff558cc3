//! Networking shared by the proxy path, health probes and the gateway's own outbound calls:
//! endpoint URLs, DNS (`dns`), connecting to multi-address names (`connect`), building Pingora
//! peers, a small HTTP client on Pingora's connector, and the process's outbound TLS
//! settings (`tls`).

pub mod client;
pub mod connect;
pub mod dns;
pub mod endpoint;
pub mod peer;
pub mod tls;

/// A number as a header value, in one allocation: `HeaderValue::from(u64)` makes two (a 20-byte
/// buffer, then a shrunken copy when it is frozen), and the gateway writes several per request
/// (`Content-Length`, a quota's three headers).
pub fn number_value(n: u64) -> http::HeaderValue {
    http::HeaderValue::from_bytes(itoa::Buffer::new().format(n).as_bytes())
        .expect("digits are a valid header value")
}

/// The body length a request declares in `Content-Length` (`None` when absent or not a number),
/// for the gateway's own body reads: the proxy's and the admin API's.
pub fn declared_length(req: &pingora_http::RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn number_values_are_their_digits() {
        for n in [0, 7, 1000, u64::MAX] {
            assert_eq!(super::number_value(n), n.to_string().as_str());
        }
    }
}
