//! Scrubbing configured credentials out of the error log.
//!
//! aigate never logs its credentials itself, but the components it runs on may: Pingora's debug
//! tracing prints whole upstream request headers, including a query string that carries an
//! `auth.query` key. Every error-log line goes through `scrub`, which replaces each configured
//! secret (auth header values, auth query values, values substituted from the environment) with
//! `***`. Only lines that are actually emitted pay for it.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

/// Shorter values are not treated as secrets (they would blank out ordinary words).
const MIN_LEN: usize = 6;

static SECRETS: RwLock<Option<Arc<Vec<String>>>> = RwLock::new(None);

/// Secrets of the process itself (the admin API key): kept whatever the config changes to.
static PERMANENT: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Scrub `secret` from every log line from now on, across config changes.
pub fn keep_secret(secret: &str) {
    if secret.len() < MIN_LEN {
        return;
    }
    if let Ok(mut g) = PERMANENT.write() {
        if !g.iter().any(|s| s == secret) {
            g.push(secret.to_string());
        }
    }
    // Take effect now, before the next config change.
    let current = SECRETS
        .read()
        .ok()
        .and_then(|g| g.clone())
        .map(|v| v.to_vec())
        .unwrap_or_default();
    set_secrets(current);
}

pub fn set_secrets(mut secrets: Vec<String>) {
    if let Ok(p) = PERMANENT.read() {
        secrets.extend(p.iter().cloned());
    }
    secrets.retain(|s| s.len() >= MIN_LEN);
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    if let Ok(mut g) = SECRETS.write() {
        *g = Some(Arc::new(secrets));
    }
}

pub fn scrub(msg: &str) -> Cow<'_, str> {
    let Some(secrets) = SECRETS.read().ok().and_then(|g| g.clone()) else {
        return Cow::Borrowed(msg);
    };
    let mut out = Cow::Borrowed(msg);
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = Cow::Owned(out.replace(s.as_str(), "***"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_registered_secrets_only() {
        set_secrets(vec![
            "sk-secret-123".into(),
            "short".into(),
            "Bearer sk-secret-123".into(),
        ]);
        assert_eq!(
            scrub("uri: /v1?key=sk-secret-123 ok"),
            "uri: /v1?key=*** ok"
        );
        assert_eq!(scrub("auth Bearer sk-secret-123"), "auth ***");
        assert_eq!(scrub("short words stay"), "short words stay");
    }
}
