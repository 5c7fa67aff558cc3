//! Consumers: who a request comes from, once an authentication plugin (key-auth) has said so.
//!
//! A consumer's own plugins apply to its requests, over the route's of the same name (APISIX's
//! merge: consumer over route over service), so a quota configured on a consumer is that
//! consumer's own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::Plugin;

pub struct Consumer {
    pub username: String,
    pub desc: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The consumer's plugins, authentication credentials excluded.
    pub plugins: Vec<Arc<dyn Plugin>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("username", &self.username)
            .finish()
    }
}

/// A consumer's credential for an authentication plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `key-auth: {key}`.
    Key(String),
}

/// Every consumer of a config, and the index authentication plugins look requests up in.
#[derive(Default)]
pub struct Consumers {
    pub by_name: HashMap<String, Arc<Consumer>>,
    /// key-auth keys by their SHA-256: a lookup costs one hash of the presented key, whatever
    /// the number of consumers, and compares digests, not the secrets themselves, so how long
    /// it takes says nothing about how close a guess was.
    keys: HashMap<[u8; 32], (Box<str>, Arc<Consumer>)>,
}

impl Consumers {
    /// Index `key` for `consumer`; `Err` if another credential already uses it.
    pub fn add_key(&mut self, key: &str, consumer: &Arc<Consumer>) -> Result<(), String> {
        let digest = key_digest(key);
        if let Some((_, other)) = self.keys.get(&digest) {
            return Err(format!(
                "this key is already used by consumer {:?}",
                other.username
            ));
        }
        self.keys.insert(digest, (key.into(), consumer.clone()));
        Ok(())
    }

    /// The consumer a key-auth key belongs to.
    pub fn by_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        let (stored, consumer) = self.keys.get(&key_digest_bytes(key))?;
        // The digests matched; the keys themselves are compared in constant time too.
        constant_time_eq(stored.as_bytes(), key).then_some(consumer)
    }

    /// Every key (secrets to scrub from logs).
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.keys.values().map(|(k, _)| &**k)
    }
}

fn key_digest(key: &str) -> [u8; 32] {
    key_digest_bytes(key.as_bytes())
}

fn key_digest_bytes(key: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equal, in a time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(name: &str) -> Arc<Consumer> {
        Arc::new(Consumer {
            username: name.into(),
            desc: None,
            labels: BTreeMap::new(),
            plugins: Vec::new(),
        })
    }

    #[test]
    fn keys_find_their_consumer_and_are_unique() {
        let mut c = Consumers::default();
        let jack = consumer("jack");
        c.add_key("jack-key", &jack).unwrap();
        c.add_key("jack-key-2", &jack).unwrap();
        assert!(c.add_key("jack-key", &consumer("jill")).is_err());
        assert_eq!(c.by_key(b"jack-key").unwrap().username, "jack");
        assert_eq!(c.by_key(b"jack-key-2").unwrap().username, "jack");
        assert!(c.by_key(b"jack-ke").is_none());
        assert!(c.by_key(b"").is_none());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
