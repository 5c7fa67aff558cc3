//! `X-Request-Id`: the client's when it sent a sane one, else 32 random hex digits (APISIX's
//! request-id shape), so a request can be followed from client to gateway log to provider.

pub fn from_client(value: Option<&[u8]>) -> Option<String> {
    let v = value?;
    if v.is_empty() || v.len() > 200 || !v.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    std::str::from_utf8(v).ok().map(str::to_string)
}

/// The header's name, parsed once.
pub static HEADER: http::HeaderName = http::HeaderName::from_static("x-request-id");

pub fn generate() -> String {
    // Hex digits by table rather than `format!("{:016x}")`: this runs for every request, and
    // core::fmt's padding and radix machinery cost several times the work.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for n in [fastrand::u64(..), fastrand::u64(..)] {
        for i in 0..16 {
            out.push(char::from(HEX[(n >> (60 - 4 * i)) as usize & 0xf]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_sane_ids_only() {
        assert_eq!(from_client(Some(b"abc-123")), Some("abc-123".into()));
        assert_eq!(from_client(Some(b"a b")), None);
        assert_eq!(from_client(Some(b"")), None);
        assert_eq!(from_client(None), None);
        let g = generate();
        assert_eq!(g.len(), 32);
        assert!(g
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(g, generate());
    }
}
