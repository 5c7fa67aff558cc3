//! Provider endpoint URLs (`override.endpoint`, default endpoints, `token_uri`).

use std::fmt;
use std::sync::OnceLock;

use http::HeaderValue;

/// A parsed `http(s)://host[:port][/path][?query]` URL. Parsed once at config load; the request
/// path only reads fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// Host name or IP literal, without brackets.
    pub host: String,
    pub port: u16,
    /// Path, at least "/".
    pub path: String,
    /// Query without the '?', if any.
    pub query: Option<String>,
    /// The `Host` value and the request target without extra query, built on first use: every
    /// request to this endpoint sends the same (and formatting and parsing them per request
    /// showed under callgrind).
    host_value: Cache<HeaderValue>,
    plain_uri: Cache<http::Uri>,
    dns_host: Cache<crate::net::dns::Host>,
}

/// A value derived from the endpoint's fields: not part of what the endpoint is, so it takes no
/// part in comparisons or in `Debug` (which health-state fingerprints hash).
#[derive(Clone)]
struct Cache<T>(OnceLock<T>);

impl<T> fmt::Debug for Cache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("..")
    }
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache(OnceLock::new())
    }
}

impl<T> PartialEq for Cache<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for Cache<T> {}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let invalid =
            || format!("invalid endpoint \"{url}\": expected http(s)://host[:port][/path][?query]");
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(invalid());
        };
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..auth_end];
        let tail = &rest[auth_end..];
        if authority.is_empty()
            || authority.contains('@')
            || authority.contains(char::is_whitespace)
        {
            return Err(invalid());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let close = v6.find(']').ok_or_else(invalid)?;
            let host = &v6[..close];
            host.parse::<std::net::Ipv6Addr>().map_err(|_| invalid())?;
            let after = &v6[close + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(invalid()),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(invalid());
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(invalid)?,
            None if tls => 443,
            None => 80,
        };
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string()).filter(|q| !q.is_empty())),
            None => (tail, None),
        };
        if path.contains(char::is_whitespace)
            || query
                .as_deref()
                .is_some_and(|q| q.contains(char::is_whitespace))
        {
            return Err(invalid());
        }
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        };
        Ok(Endpoint {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            path,
            query,
            host_value: Cache::default(),
            plain_uri: Cache::default(),
            dns_host: Cache::default(),
        })
    }

    /// The Host header value: the port is left out when it is the scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if (self.tls && self.port == 443) || (!self.tls && self.port == 80) {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// `authority()` as a header value, built once.
    pub fn host_value(&self) -> Option<HeaderValue> {
        if let Some(v) = self.host_value.0.get() {
            return Some(v.clone());
        }
        let v = HeaderValue::from_str(&self.authority()).ok()?;
        Some(self.host_value.0.get_or_init(|| v).clone())
    }

    /// Look the host up (an IP literal is parsed, and a name's cache entry found, only once).
    pub async fn resolve(&self) -> Result<crate::net::dns::Resolved, String> {
        self.dns_host
            .0
            .get_or_init(|| crate::net::dns::Host::of(&self.host))
            .resolve()
            .await
    }

    /// The request target (`path_and_query(extra)`) as a URI; built once when `extra` is empty.
    pub fn uri(&self, extra: &str) -> Option<http::Uri> {
        if !extra.is_empty() {
            return self.path_and_query(extra).parse().ok();
        }
        if let Some(u) = self.plain_uri.0.get() {
            return Some(u.clone());
        }
        let u: http::Uri = self.path_and_query("").parse().ok()?;
        Some(self.plain_uri.0.get_or_init(|| u).clone())
    }

    /// Path plus the endpoint's own query, merged with `extra` (already URL-encoded pairs).
    pub fn path_and_query(&self, extra: &str) -> String {
        let mut s = String::with_capacity(self.path.len() + extra.len() + 16);
        s.push_str(&self.path);
        match (&self.query, extra.is_empty()) {
            (Some(q), true) => {
                s.push('?');
                s.push_str(q);
            }
            (Some(q), false) => {
                s.push('?');
                s.push_str(q);
                s.push('&');
                s.push_str(extra);
            }
            (None, false) => {
                s.push('?');
                s.push_str(extra);
            }
            (None, true) => {}
        }
        s
    }

    /// The same endpoint with another path (vertex-ai embeddings, OpenAI-style embeddings).
    pub fn with_path(&self, path: &str) -> Endpoint {
        Endpoint {
            path: path.to_string(),
            plain_uri: Cache::default(),
            ..self.clone()
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never prints the query: it may carry an API key (auth.query / Gemini's `key=`).
        write!(
            f,
            "{}://{}{}",
            if self.tls { "https" } else { "http" },
            self.authority(),
            self.path
        )
    }
}

/// Percent-encode a query component (RFC 3986 unreserved characters pass).
pub fn encode_query_component(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(b & 15) as usize]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_urls() {
        let e = Endpoint::parse("https://x.openai.azure.com/openai/deployments/gpt-4/chat/completions?api-version=2024-02-15-preview").unwrap();
        assert!(e.tls);
        assert_eq!(e.port, 443);
        assert_eq!(e.path, "/openai/deployments/gpt-4/chat/completions");
        assert_eq!(e.query.as_deref(), Some("api-version=2024-02-15-preview"));
        assert_eq!(
            e.path_and_query("key=a"),
            "/openai/deployments/gpt-4/chat/completions?api-version=2024-02-15-preview&key=a"
        );
        let e = Endpoint::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("127.0.0.1", 8000, "/")
        );
        assert_eq!(e.authority(), "127.0.0.1:8000");
        let e = Endpoint::parse("http://[::1]:9/v1").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.authority(), "[::1]:9");
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "ftp://x",
            "http://",
            "https://:80/x",
            "http://a:b",
            "http://a:99999",
            "api.openai.com/v1",
            "http://u@h/",
            "http://a b/",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_hides_query() {
        let e = Endpoint::parse("https://g.com/v1?key=secret").unwrap();
        assert!(!e.to_string().contains("secret"));
    }

    #[test]
    fn encodes_query() {
        let mut s = String::new();
        encode_query_component("a b&c=d/é", &mut s);
        assert_eq!(s, "a%20b%26c%3Dd%2F%C3%A9");
    }
}
