//! `X-Request-Id`: the client's when it sent a sane one, else 32 random hex digits (APISIX's
//! request-id shape), so a request can be followed from client to gateway log to provider.

use std::fmt::Write;

pub fn from_client(value: Option<&[u8]>) -> Option<String> {
    let v = value?;
    if v.is_empty() || v.len() > 200 || !v.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    std::str::from_utf8(v).ok().map(str::to_string)
}

pub fn generate() -> String {
    let mut s = String::with_capacity(32);
    let _ = write!(s, "{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    s
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
        assert_ne!(g, generate());
    }
}
