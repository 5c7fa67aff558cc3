//! Consumers: who a request comes from, once an authentication plugin (key-auth) has said so.
//!
//! A consumer's own plugins apply to its requests, over the route's of the same name (APISIX's
//! merge: consumer over route over service), so a quota configured on a consumer is that
//! consumer's own.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
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

/// A key-auth key and whose it is.
type KeyEntry = (Box<str>, Arc<Consumer>);

/// Every consumer of a config, and the index authentication plugins look requests up in.
#[derive(Default)]
pub struct Consumers {
    pub by_name: HashMap<String, Arc<Consumer>>,
    /// key-auth keys by their keyed hash (SipHash with this index's own random key): a lookup
    /// costs one hash of the presented key, whatever the number of consumers. A client can
    /// neither aim at a bucket nor learn how close a guess was from the lookup's timing, since it
    /// does not know the hash key; the stored key is then compared in constant time. (It was
    /// SHA-256, which cost ~2.5k instructions per request for the same guarantees.)
    keys: HashMap<u64, Vec<KeyEntry>>,
    hasher: RandomState,
}

impl Consumers {
    /// Index `key` for `consumer`; `Err` if another credential already uses it.
    pub fn add_key(&mut self, key: &str, consumer: &Arc<Consumer>) -> Result<(), String> {
        if let Some(other) = self.by_key(key.as_bytes()) {
            return Err(format!(
                "this key is already used by consumer {:?}",
                other.username
            ));
        }
        let hash = self.hasher.hash_one(key.as_bytes());
        self.keys
            .entry(hash)
            .or_default()
            .push((key.into(), consumer.clone()));
        Ok(())
    }

    /// The consumer a key-auth key belongs to.
    pub fn by_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        let same_hash = self.keys.get(&self.hasher.hash_one(key))?;
        // Almost always one entry; different keys share a 64-bit hash only by rare chance.
        same_hash
            .iter()
            .find(|(stored, _)| constant_time_eq(stored.as_bytes(), key))
            .map(|(_, consumer)| consumer)
    }

    /// Every key (secrets to scrub from logs).
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.keys.values().flatten().map(|(k, _)| &**k)
    }
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
