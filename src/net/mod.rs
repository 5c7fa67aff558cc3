//! Networking shared by the proxy path, health probes and the gateway's own outbound calls:
//! endpoint URLs, DNS (`dns`), connecting to multi-address names (`connect`), building Pingora
//! peers, a small HTTP client on Pingora's connector, the process's outbound TLS settings
//! (`tls`), and a provider request's header and body in one TCP segment (`cork`).

pub mod client;
pub mod connect;
pub mod cork;
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
    decimal(req.headers.get(http::header::CONTENT_LENGTH)?.as_bytes())
}

/// A decimal number, as `str::parse::<u64>` reads it (an optional `+`, surrounding whitespace
/// ignored), straight from the bytes: no UTF-8 check first (it runs on every request).
fn decimal(b: &[u8]) -> Option<u64> {
    let b = b.trim_ascii();
    let digits = b.strip_prefix(b"+").unwrap_or(b);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &c| {
        let d = c.wrapping_sub(b'0');
        (d <= 9).then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimals_read_as_str_parse_reads_them() {
        for s in [
            "0",
            "7",
            "42",
            " 42 ",
            "+5",
            "++5",
            "-1",
            "",
            " ",
            "+",
            "1a",
            "a1",
            "1 2",
            "18446744073709551615",
            "18446744073709551616",
            "007",
            "\t9\t",
            "\u{663}",
        ] {
            assert_eq!(
                super::decimal(s.as_bytes()),
                s.trim_ascii().parse::<u64>().ok(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn number_values_are_their_digits() {
        for n in [0, 7, 1000, u64::MAX] {
            assert_eq!(super::number_value(n), n.to_string().as_str());
        }
    }
}
