//! Consumers: who a request comes from, once an authentication plugin (key-auth) has said so.
//!
//! A consumer's own plugins apply to its requests, over the route's of the same name (APISIX's
//! merge: consumer over route over service), so a quota configured on a consumer is that
//! consumer's own.

use std::collections::BTreeMap;
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
