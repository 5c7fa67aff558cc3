//! Host patterns (`hosts` of a route) and normalisation of the request's Host.
//!
//! APISIX compares the route host, lower-cased, against nginx's `$host`, which
//! is the Host header lower-cased with the port removed. A pattern `*SUFFIX`
//! matches every host that ends with SUFFIX (lua-resty-radixtree's
//! `has_suffix`), so `*.example.com` matches `a.example.com` and
//! `a.b.example.com` but not `example.com`: the dot belongs to the suffix.
//!
//! Comparisons are ASCII case-insensitive in place so that no lower-cased copy
//! of the request host is allocated per request.

use std::net::Ipv6Addr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostPat {
    /// Lower-case host; IPv6 literals without brackets.
    Exact(Box<str>),
    /// Lower-case suffix (the pattern without its leading `*`).
    Suffix(Box<str>),
    /// IPv6 literal, compared as an address so `[::1]` equals `[0:0::1]`.
    V6(Ipv6Addr),
}

impl HostPat {
    /// Validates a route host the way APISIX's schema does
    /// (`^\*?[0-9a-zA-Z-._\[\]:]+$`), and additionally refuses a `:port`,
    /// which APISIX accepts but can never match because `$host` has no port.
    pub(crate) fn parse(raw: &str) -> Result<HostPat, String> {
        let (wild, body) = match raw.strip_prefix('*') {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if body.is_empty() {
            return Err(format!("bad host pattern {raw:?}: empty"));
        }
        let ok_chars = body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        });
        if !ok_chars {
            return Err(format!(
                "bad host pattern {raw:?}: only letters, digits, '-', '.', '_' and IPv6 literals are allowed, with an optional leading '*'"
            ));
        }
        if body.contains(['[', ']', ':']) {
            if wild {
                return Err(format!("bad host pattern {raw:?}: a wildcard cannot be combined with an IPv6 literal or port"));
            }
            let inner = body
                .strip_prefix('[')
                .and_then(|b| b.strip_suffix(']'))
                .unwrap_or(body);
            return match inner.parse::<Ipv6Addr>() {
                Ok(a) => Ok(HostPat::V6(a)),
                Err(_) => Err(format!(
                    "bad host pattern {raw:?}: hosts are matched without a port (write IPv6 literals as [::1])"
                )),
            };
        }
        let lower = body.to_ascii_lowercase();
        // nginx drops one trailing dot from $host; do the same to the pattern.
        let lower = lower.strip_suffix('.').map(str::to_owned).unwrap_or(lower);
        if lower.is_empty() {
            return Err(format!("bad host pattern {raw:?}: empty"));
        }
        Ok(if wild {
            HostPat::Suffix(lower.into_boxed_str())
        } else {
            HostPat::Exact(lower.into_boxed_str())
        })
    }

    /// `host` comes from [`normalize`]; its case is irrelevant.
    #[inline]
    pub(crate) fn matches(&self, host: &ReqHost<'_>) -> bool {
        match self {
            HostPat::Exact(p) => p.as_bytes().eq_ignore_ascii_case(host.bare.as_bytes()),
            HostPat::Suffix(s) => ends_with_ignore_case(host.bare, s),
            HostPat::V6(a) => host.v6 == Some(*a),
        }
    }
}

#[inline]
pub(crate) fn ends_with_ignore_case(host: &str, lower_suffix: &str) -> bool {
    let (h, s) = (host.as_bytes(), lower_suffix.as_bytes());
    h.len() >= s.len() && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
}

/// The request's Host, normalised for matching against [`HostPat`]s: port and
/// IPv6 brackets removed, one trailing dot removed. Case is left as is (all
/// comparisons ignore ASCII case), so nothing is allocated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReqHost<'a> {
    /// For pattern matching: `api.example.com`, `::1`.
    pub(crate) bare: &'a str,
    /// For the `host` variable, like nginx's `$host`: `api.example.com`,
    /// `[::1]` (brackets kept; lower-cased by the reader).
    pub(crate) var: &'a str,
    /// The address when the host is an IPv6 literal.
    pub(crate) v6: Option<Ipv6Addr>,
}

/// `None` for an empty host.
pub(crate) fn normalize(raw: &str) -> Option<ReqHost<'_>> {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('[') {
        // `[::1]:9080` -> bare `::1`, var `[::1]`. Without a closing bracket
        // the header is malformed; keep it whole (it will match nothing).
        return match rest.find(']') {
            Some(end) if end > 0 => {
                let bare = &rest[..end];
                Some(ReqHost {
                    bare,
                    var: &raw[..end + 2],
                    v6: bare.parse().ok(),
                })
            }
            _ => Some(ReqHost {
                bare: raw,
                var: raw,
                v6: None,
            }),
        };
    }
    let host = match raw.rfind(':') {
        // A single ':' separates the port. Several mean a bare IPv6 literal,
        // not valid in a Host header, but kept whole rather than cut.
        Some(i) if !raw[..i].contains(':') => &raw[..i],
        _ => raw,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    let v6 = if host.contains(':') {
        host.parse().ok()
    } else {
        None
    };
    Some(ReqHost {
        bare: host,
        var: host,
        v6,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_port_and_brackets() {
        let n = normalize("API.Example.com:8443").unwrap();
        assert_eq!((n.bare, n.var), ("API.Example.com", "API.Example.com"));
        let n = normalize("[::1]:9080").unwrap();
        assert_eq!(
            (n.bare, n.var, n.v6),
            ("::1", "[::1]", Some(Ipv6Addr::LOCALHOST))
        );
        let n = normalize("[::1]").unwrap();
        assert_eq!((n.bare, n.var), ("::1", "[::1]"));
        let n = normalize("example.com.").unwrap();
        assert_eq!(n.bare, "example.com");
        assert!(normalize("").is_none());
        assert!(normalize(":80").is_none());
        // malformed inputs do not panic
        for weird in ["[", "[]", "[:", "]:", "::", "a:b:c", "é.com:1", "[é]:1"] {
            let _ = normalize(weird);
        }
    }

    #[test]
    fn patterns() {
        let m = |p: &HostPat, h: &str| p.matches(&normalize(h).unwrap());
        let p = HostPat::parse("*.Example.com").unwrap();
        assert!(m(&p, "a.example.com"));
        assert!(m(&p, "A.B.EXAMPLE.COM:443"));
        assert!(!m(&p, "example.com"));
        assert!(!m(&p, "badexample.com"));
        let e = HostPat::parse("api.example.com").unwrap();
        assert!(m(&e, "API.example.COM"));
        assert!(!m(&e, "api.example.co"));
        let v6 = HostPat::parse("[::1]").unwrap();
        assert_eq!(v6, HostPat::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(HostPat::parse("0:0::1").unwrap(), v6);
        assert!(m(&v6, "[0:0::1]:9080"));
        assert!(!m(&v6, "[::2]"));
        for bad in [
            "",
            "*",
            "a b",
            "example.com:80",
            "*.[::1]",
            "exa/mple",
            "é.com",
        ] {
            assert!(HostPat::parse(bad).is_err(), "{bad:?}");
        }
    }
}
