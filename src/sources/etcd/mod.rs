//! Resources kept in etcd, for a cluster (`gateway.store: {type: etcd, ...}`), as APISIX keeps
//! them: every node loads the prefix, watches it, and applies what changes within about a
//! second; the admin API of any node writes to etcd (`Persist`), so every node serves the change.
//!
//! Keys, relative to the prefix: `/routes/<id>`, `/services/<id>`, `/upstreams/<id>`,
//! `/consumers/<username>`, `/consumers/<username>/credentials/<id>`; values are the resources'
//! JSON as the admin API shows them.
//!
//! **Failures.** A node that loses etcd keeps serving its last good configuration, logs the
//! outage once, and retries every second; when etcd answers again it loads the whole prefix
//! (full resync: what changed meanwhile, deletions included) and watches from there. A watch
//! from a compacted revision is a full resync too. An object written to etcd by hand that is not
//! valid JSON, names no resource, does not parse or does not compile is logged and skipped; it
//! never takes the node down, and the rest of the prefix is served.
//!
//! **One runtime for etcd.** Every etcd call runs on the sync service's runtime (the admin API
//! hands its writes over and waits, bounded), so the client's pooled connections are always
//! driven by the runtime that made them. Store changes from the sync loop run on the blocking
//! pool: the store's lock may be held by an admin write that waits for this very runtime.

pub mod client;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::Value;

use super::Persist;
use crate::resources::{Change, ChangeError, Kind, Origin, Resources};
use crate::runtime::{ApplyError, Store};
use client::{EtcdClient, EtcdSettings, Kv, WatchEvent};

/// How long to wait before asking an unreachable etcd again.
const RETRY: Duration = Duration::from_secs(1);

/// Full loads in a row that this node's own admin writes may overtake before waiting `RETRY`.
const STALE_LOADS: u32 = 5;

/// The etcd key of a resource, relative to the prefix.
pub fn key_of(kind: Kind, id: &str) -> String {
    match kind {
        Kind::Credentials => {
            let (user, cred) = id.split_once('/').unwrap_or((id, ""));
            format!("/consumers/{user}/credentials/{cred}")
        }
        k => format!("/{}/{id}", k.as_str()),
    }
}

/// The resource a key names.
pub fn parse_key(key: &str) -> Option<(Kind, String)> {
    let parts: Vec<&str> = key.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["consumers", user, "credentials", cred] if !user.is_empty() && !cred.is_empty() => {
            Some((Kind::Credentials, format!("{user}/{cred}")))
        }
        [kind, id] if !id.is_empty() => Kind::parse(kind)
            .filter(|k| *k != Kind::Credentials)
            .map(|k| (k, id.to_string())),
        _ => None,
    }
}

pub struct EtcdStore {
    client: EtcdClient,
    timeout: Duration,
    /// etcd's content as this node last saw it (its watch, its own writes), by key.
    known: Mutex<Known>,
    /// The sync service's runtime, once it runs.
    handle: OnceLock<tokio::runtime::Handle>,
    /// How many admin writes etcd has taken from this node. A full load read before the last
    /// of them may miss it, and must not replace what the write already serves.
    writes: AtomicU64,
}

#[derive(Default)]
struct Known {
    values: HashMap<String, Arc<Value>>,
    /// Keys of the resources this node serves from etcd: a save deletes those it no longer has.
    served: HashSet<String>,
}

impl EtcdStore {
    pub fn new(settings: EtcdSettings) -> Result<Arc<EtcdStore>, String> {
        let timeout = settings.timeout;
        Ok(Arc::new(EtcdStore {
            client: EtcdClient::new(settings)?,
            timeout,
            known: Mutex::new(Known::default()),
            handle: OnceLock::new(),
            writes: AtomicU64::new(0),
        }))
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Persist for EtcdStore {
    /// Write what the admin API changed to etcd, and wait (bounded) for etcd to take it: a change
    /// etcd did not take is not served either.
    fn save(&self, admin: &Resources) -> Result<(), String> {
        // Right after start the sync service may not run yet: wait for it, bounded.
        let deadline = std::time::Instant::now() + self.timeout;
        let handle = loop {
            if let Some(h) = self.handle.get() {
                break h;
            }
            if std::time::Instant::now() >= deadline {
                return Err("etcd is not connected yet; retry".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut ops: Vec<(String, Option<Arc<Value>>)> = Vec::new();
        let mut now_served = HashSet::new();
        {
            let known = self.known();
            for (kind, id, r) in admin.iter_origin(Origin::Admin) {
                let key = key_of(kind, id);
                if known.values.get(&key).is_none_or(|v| **v != *r.value) {
                    ops.push((key.clone(), Some(r.value.clone())));
                }
                now_served.insert(key);
            }
            for key in &known.served {
                if !now_served.contains(key) {
                    ops.push((key.clone(), None));
                }
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        let client = self.client.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let todo = ops.clone();
        handle.spawn(async move {
            let mut result = Ok(());
            for (key, value) in todo {
                let r = match value {
                    Some(v) => client
                        .put(&key, &serde_json::to_vec(&*v).unwrap_or_default())
                        .await
                        .map(drop),
                    None => client.delete(&key).await.map(drop),
                };
                if let Err(e) = r {
                    result = Err(e.to_string());
                    break;
                }
            }
            let _ = tx.send(result);
        });
        // Each call is bounded by the client's timeout.
        let wait = self.timeout * (ops.len() as u32).min(16) + Duration::from_secs(1);
        match rx.recv_timeout(wait) {
            Ok(Ok(())) => {
                // Counted under the store's lock (save runs inside `Store::apply`), which a full
                // load's replacement takes too: see `EtcdSync::resync`.
                self.writes.fetch_add(1, Ordering::SeqCst);
                let mut known = self.known();
                for (key, value) in ops {
                    match value {
                        Some(v) => known.values.insert(key, v),
                        None => known.values.remove(&key),
                    };
                }
                known.served = now_served;
                Ok(())
            }
            Ok(Err(e)) => Err(format!("etcd did not take the change: {e}")),
            Err(_) => Err("etcd did not answer in time".into()),
        }
    }
}

/// Keeps the store in step with etcd: full load, then watch; again after any failure.
pub struct EtcdSync {
    pub etcd: Arc<EtcdStore>,
    pub store: Arc<Store>,
}

#[async_trait]
impl BackgroundService for EtcdSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = self.etcd.handle.set(tokio::runtime::Handle::current());
        let mut down = false;
        loop {
            self.sync(&mut shutdown, &mut down).await;
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl EtcdSync {
    /// One full load and the watch after it, until the watch breaks or the server stops.
    async fn sync(&self, shutdown: &mut ShutdownWatch, down: &mut bool) {
        let client = &self.etcd.client;
        // An admin write on this node between the read and its replacement would be undone by
        // the older snapshot until the watch brings it back (a 404 right after a 201): such a
        // load is read again. A node written to without pause falls back to the retry pace.
        let mut attempts = 0;
        let (n, revision) = loop {
            let writes = self.etcd.writes.load(Ordering::SeqCst);
            let (kvs, revision) = match client.get_prefix("/").await {
                Ok(r) => r,
                Err(e) => {
                    if !*down {
                        log::error!("etcd is unavailable ({e}): serving the last good configuration; retrying every second");
                        *down = true;
                    }
                    return;
                }
            };
            let n = kvs.len();
            if self.resync(kvs, writes).await {
                break (n, revision);
            }
            attempts += 1;
            if attempts == STALE_LOADS {
                log::warn!(
                    "etcd: this node's admin writes kept overtaking the full load; loading again"
                );
                return;
            }
        };
        if *down {
            log::warn!("etcd is available again: {n} keys loaded");
            *down = false;
        } else {
            log::info!("etcd: {n} keys loaded at revision {revision}");
        }
        let mut watch = match client.watch("/", revision + 1).await {
            Ok(w) => w,
            Err(e) => {
                log::warn!("etcd watch: {e}; loading again");
                return;
            }
        };
        loop {
            tokio::select! {
                events = watch.next() => match events {
                    Ok(events) => self.apply_events(events).await,
                    Err(e) => {
                        log::warn!("etcd watch ended ({e}); loading again");
                        return;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Replace the etcd-origin resources by the prefix's content, skipping what is not valid;
    /// false (and nothing replaced) when this node's admin wrote to etcd since `writes` was read
    /// before the prefix was.
    async fn resync(&self, kvs: Vec<Kv>, writes: u64) -> bool {
        let store = self.store.clone();
        let etcd = self.etcd.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut resources = Resources::default();
            let mut values = HashMap::new();
            let mut keys: HashMap<(Kind, String), String> = HashMap::new();
            for kv in kvs {
                let Some(value) = decode(&kv) else { continue };
                values.insert(kv.key.clone(), Arc::new(value.clone()));
                let Some((kind, id)) = parse_key(&kv.key) else {
                    log::warn!("etcd: skipping key {:?}: it names no resource", kv.key);
                    continue;
                };
                if store.read(|r| r.get(kind, &id).is_some_and(|x| x.origin == Origin::File)) {
                    log::error!(
                        "etcd: skipping {} {id:?}: it is defined in the config file",
                        kind.singular()
                    );
                    continue;
                }
                let created = u64::try_from(kv.create_revision).unwrap_or(0);
                let modified = u64::try_from(kv.mod_revision).unwrap_or(0);
                match resources.insert_stored(kind, id.clone(), value, created, modified) {
                    Ok(()) => {
                        keys.insert((kind, id), kv.key.clone());
                    }
                    Err(e) => log::error!("etcd: skipping {}: {e}", kv.key),
                }
            }
            // What does not compile is named by the error's path (`routes/1.plugins...`): drop
            // it and try again, so one bad object never keeps the rest out.
            let fresh = || etcd.writes.load(Ordering::SeqCst) == writes;
            for _ in 0..=keys.len() {
                match store.replace_origin_if(Origin::Admin, resources.clone(), fresh) {
                    Ok(true) => break,
                    Ok(false) => return false,
                    Err(ApplyError::Change(ChangeError::Invalid(e))) => {
                        let Some((kind, id)) = named(&e.path, &resources) else {
                            log::error!("etcd: the stored configuration does not compile: {e}");
                            return true;
                        };
                        log::error!("etcd: skipping {} {id:?}: {e}", kind.singular());
                        resources = without(&resources, kind, &id);
                        keys.remove(&(kind, id));
                    }
                    Err(e) => {
                        log::error!("etcd: the stored configuration was not applied: {e}");
                        return true;
                    }
                }
            }
            let mut known = etcd.known();
            known.values = values;
            known.served = keys.into_values().collect();
            true
        });
        done.await.unwrap_or(true)
    }

    async fn apply_events(&self, events: Vec<WatchEvent>) {
        let store = self.store.clone();
        let etcd = self.etcd.clone();
        let done = tokio::task::spawn_blocking(move || {
            for ev in events {
                let (key, change) = match &ev {
                    WatchEvent::Put(kv) => {
                        let Some(value) = decode(kv) else { continue };
                        etcd.known()
                            .values
                            .insert(kv.key.clone(), Arc::new(value.clone()));
                        let Some((kind, id)) = parse_key(&kv.key) else {
                            log::warn!("etcd: skipping key {:?}: it names no resource", kv.key);
                            continue;
                        };
                        // This node's own write coming back: nothing to do.
                        if store.read(|r| r.get(kind, &id).is_some_and(|x| *x.value == value)) {
                            etcd.known().served.insert(kv.key.clone());
                            continue;
                        }
                        (kv.key.clone(), Change::Stored { kind, id, value })
                    }
                    WatchEvent::Delete { key, .. } => {
                        etcd.known().values.remove(key);
                        let Some((kind, id)) = parse_key(key) else {
                            continue;
                        };
                        (key.clone(), Change::Unstored { kind, id })
                    }
                };
                let put = matches!(change, Change::Stored { .. });
                match store.apply(vec![change], |_| Ok(())) {
                    Ok(_) => {
                        let mut known = etcd.known();
                        if put {
                            known.served.insert(key);
                        } else {
                            known.served.remove(&key);
                        }
                    }
                    Err(e) => log::error!("etcd: skipping {key}: {e}"),
                }
            }
        });
        let _ = done.await;
    }
}

/// A value as JSON, or logged and skipped.
fn decode(kv: &Kv) -> Option<Value> {
    match serde_json::from_slice::<Value>(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            log::error!("etcd: skipping {}: not JSON ({e})", kv.key);
            None
        }
    }
}

/// The resource a compile error's path starts with (`routes/1.plugins.ai-proxy...`).
fn named(path: &str, resources: &Resources) -> Option<(Kind, String)> {
    let head = path.split('.').next()?;
    let (kind, id) = head.split_once('/')?;
    let kind = Kind::parse(kind)?;
    resources.get(kind, id).map(|_| (kind, id.to_string()))
}

fn without(resources: &Resources, kind: Kind, id: &str) -> Resources {
    let mut out = resources.clone();
    let _ = out.apply(Change::Unstored {
        kind,
        id: id.to_string(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_resources_both_ways() {
        for (kind, id) in [
            (Kind::Routes, "1"),
            (Kind::Services, "s-1"),
            (Kind::Upstreams, "u"),
            (Kind::Consumers, "jack"),
            (Kind::Credentials, "jack/c1"),
        ] {
            let key = key_of(kind, id);
            assert_eq!(parse_key(&key), Some((kind, id.to_string())), "{key}");
        }
        assert_eq!(
            key_of(Kind::Credentials, "jack/c1"),
            "/consumers/jack/credentials/c1"
        );
        for bad in [
            "/",
            "/routes",
            "/routes/",
            "/nope/1",
            "/credentials/a",
            "/routes/1/x",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }
}
