//! The config file as a source: its resources at start, and again on SIGHUP.
//!
//! On SIGHUP the file is read, substituted and validated again, and its routes, services,
//! upstreams and consumers replace the file's previous ones through `Store::replace_origin`
//! (what the admin API added is kept). A file that does not load or compile is refused, logged,
//! and the running configuration kept. `server:` and `gateway:` settings (listeners, limits, the
//! log) are read at start only: changing them needs a restart or a graceful upgrade (`-u`).

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::config::{self, ConfigError};
use crate::resources::{Origin, Resources};
use crate::runtime::Store;

/// The resources `path` defines. Values from the environment are redacted from errors.
pub fn resources(path: &str) -> Result<Resources, ConfigError> {
    let loaded = config::load_file(path)?;
    Resources::from_file(&loaded.file, &loaded.raw).map_err(|e| ConfigError {
        message: config::env::redact(&e.message, &loaded.secrets),
        ..e
    })
}

/// Re-read `path` into `store`: what SIGHUP does.
pub fn reload(path: &str, store: &Store) -> Result<(), String> {
    let loaded = config::load_file(path).map_err(|e| e.to_string())?;
    let redact = |m: String| config::env::redact(&m, &loaded.secrets);
    let resources =
        Resources::from_file(&loaded.file, &loaded.raw).map_err(|e| redact(e.to_string()))?;
    store
        .replace_origin(Origin::File, resources)
        .map_err(|e| redact(e.to_string()))
}

/// Reloads the config file's resources on SIGHUP.
pub struct ReloadOnHangup {
    pub path: String,
    pub store: Arc<Store>,
}

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!(
                    "cannot listen for SIGHUP ({e}): the config file is read at start only"
                );
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                _ = shutdown.changed() => return,
            }
            let path = self.path.clone();
            let store = self.store.clone();
            // Compiling can take a while on a big config: off the async workers.
            let result = tokio::task::spawn_blocking(move || reload(&path, &store)).await;
            match result {
                Ok(Ok(())) => log::info!(
                    "SIGHUP: reloaded {} ({} routes live)",
                    self.path,
                    self.store.load().routes.len()
                ),
                Ok(Err(e)) => log::error!(
                    "SIGHUP: {} not applied, the running config is kept: {e}",
                    self.path
                ),
                Err(e) => log::error!("SIGHUP: reload failed: {e}"),
            }
        }
    }
}
