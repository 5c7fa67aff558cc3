//! Building the Pingora server from a config file.

use std::sync::Arc;

use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;

use crate::balancer::health::HealthCheckService;
use crate::config::gateway::GatewaySettings;
use crate::config::{self, ConfigError};
use crate::downstream::{fdlimit, Downstream};
use crate::observability::access_log::{AccessLog, AccessLogService};
use crate::observability::metrics_http::MetricsService;
use crate::proxy::body_budget::BodyBudget;
use crate::proxy::Gateway;
use crate::resources::Resources;
use crate::runtime::Store;
use crate::sources::admin::AdminService;
use crate::sources::data_dir::DataDir;
use crate::sources::etcd::{EtcdStore, EtcdSync};
use crate::sources::file::ReloadOnHangup;

/// Everything validated from the config, ready to serve.
pub struct Prepared {
    pub server_conf: ServerConf,
    /// The live configuration, compiled from the file's resources.
    pub store: Store,
    pub gateway: GatewaySettings,
    /// Re-read on SIGHUP.
    pub config_path: String,
    /// `gateway.data_dir`: where the admin API's changes are kept.
    pub data_dir: String,
}

/// Load and fully validate a config file. Nothing is opened or written.
pub fn prepare(path: &str) -> Result<Prepared, ConfigError> {
    let loaded = config::load_file(path)?;
    // Any message below may quote a value that came from the environment (an API key put in the
    // wrong field): redact them all in one place.
    let secrets = loaded.secrets.clone();
    // Every credential the config holds is scrubbed from the error log from now on, whatever
    // component (Pingora included) would print it (the store does it on every change). Only
    // credentials: other env values, such as a listen address, are redacted from config errors
    // but are useful in the error log.
    validate(loaded, path).map_err(|e| ConfigError {
        message: config::env::redact(&e.message, &secrets),
        ..e
    })
}

fn validate(loaded: config::Loaded, path: &str) -> Result<Prepared, ConfigError> {
    let gateway = GatewaySettings::from_conf(&loaded.file.gateway)?;
    if let Some(key) = gateway.admin.as_ref().and_then(|a| a.key.as_deref()) {
        // Whatever logs a request's headers (Pingora's tracing) never shows the admin key.
        crate::observability::redact::keep_secret(key);
    }
    // Before the config is compiled: every route compiled from now on is measured.
    if let Some(m) = &gateway.metrics {
        crate::observability::metrics::init(m.clone())
            .map_err(|msg| ConfigError::new("gateway.metrics", msg))?;
    }
    // Before the config is compiled: its health probes get their connectors as they are built.
    crate::net::tls::init(&loaded.server);
    let mut resources = Resources::from_file(&loaded.file, &loaded.raw)?;
    // What the admin API stored, next to the file's (one id in both is refused). With etcd, its
    // resources arrive once the sync service runs (a node starts even while etcd is down).
    if gateway.store.is_none() {
        let data_dir = DataDir::new(&loaded.file.gateway.data_dir);
        let stored = data_dir
            .load()
            .map_err(|m| ConfigError::new("gateway.data_dir", m))?;
        resources
            .merge_stored(stored)
            .map_err(|m| ConfigError::new("gateway.data_dir", m))?;
    }
    let store = Store::new(resources)?;
    Ok(Prepared {
        server_conf: loaded.server,
        store,
        gateway,
        config_path: path.to_string(),
        data_dir: loaded.file.gateway.data_dir.clone(),
    })
}

/// Start serving; returns only when the server shuts down.
pub fn run(prepared: Prepared, upgrade: bool, daemon: bool) -> Result<(), String> {
    let gw = prepared.gateway;
    let access_log = Arc::new(
        AccessLog::new(&gw.access_log_path, gw.access_log_format)
            .map_err(|m| format!("gateway.access_log: {m}"))?,
    );
    let pid_file = prepared.server_conf.pid_file.clone();
    let opt = Opt {
        upgrade,
        daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    crate::net::dns::configure(gw.dns.clone());
    let fd_limit = fdlimit::raise();
    let mut limits = gw.limits.clone();
    limits.max_connections = match gw.max_connections {
        Some(n) => {
            if !fdlimit::fits(n, fd_limit) {
                log::warn!(
                    "gateway.max_connections {n} may not fit the file-descriptor limit {fd_limit} \
                     (each client connection can hold an upstream one too)"
                );
            }
            n
        }
        None => fdlimit::default_max_connections(fd_limit),
    } as usize;
    let mut server = Server::new_with_opt_and_conf(opt, prepared.server_conf);
    server.bootstrap();

    let store = Arc::new(prepared.store);
    let gateway = Gateway {
        store: store.clone(),
        access_log: access_log.clone(),
        max_body_size: gw.max_body_size,
        body_total_timeout: limits.body_total_timeout,
        body_budget: gw.max_inflight_body_bytes.map(BodyBudget::new),
        debug_headers: gw.debug_headers,
    };
    // The proxy runs inside `Downstream`, which enforces the client-side limits around it.
    let proxy = pingora_proxy::http_proxy(&server.configuration, gateway);
    let mut proxy = pingora_core::services::listening::Service::new(
        "aigate data plane".to_string(),
        Downstream::new(proxy, limits.clone()),
    );
    for addr in &gw.listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "aigate access log",
        AccessLogService(access_log.clone()),
    ));
    // Where the admin API's changes are kept: etcd for a cluster (every node syncs from it),
    // else gateway.data_dir. Either way they are written before they are served.
    let persist: Arc<dyn crate::sources::Persist> = match &gw.store {
        Some(settings) => {
            let etcd = EtcdStore::new(settings.clone())?;
            server.add_service(background_service(
                "aigate etcd sync",
                EtcdSync {
                    etcd: etcd.clone(),
                    store: store.clone(),
                },
            ));
            etcd
        }
        None => Arc::new(DataDir::new(&prepared.data_dir)),
    };
    if let Some(admin) = &gw.admin {
        let mut service = pingora_core::services::listening::Service::new(
            "aigate admin API".to_string(),
            AdminService::new(store.clone(), persist, admin),
        );
        service.add_tcp(&admin.listen.to_string());
        server.add_service(service);
        if admin.key.as_deref().unwrap_or("").is_empty() {
            log::warn!(
                "the admin API on {} has no key: any local process can change the configuration \
                 (set gateway.admin.key)",
                admin.listen
            );
        }
        log::info!(
            "admin API listening on {}{}",
            admin.listen,
            if admin.key.is_none() {
                " (no key: loopback only)"
            } else {
                ""
            }
        );
    }
    if let (Some(settings), Some(metrics)) = (&gw.metrics, crate::observability::metrics::global())
    {
        let mut service = pingora_core::services::listening::Service::new(
            "aigate metrics".to_string(),
            MetricsService {
                metrics: metrics.clone(),
                store: store.clone(),
            },
        );
        service.add_tcp(&settings.listen.to_string());
        server.add_service(service);
        log::info!("metrics listening on http://{}/metrics", settings.listen);
    }
    // Active health probes of whatever config is live (ai-proxy-multi `checks.active`).
    server.add_service(background_service(
        "aigate health checks",
        HealthCheckService(store.clone()),
    ));
    // SIGHUP re-reads the config file's resources.
    server.add_service(background_service(
        "aigate config reload",
        ReloadOnHangup {
            path: prepared.config_path.clone(),
            store,
        },
    ));

    if !daemon {
        // Pingora writes the pid file only when it daemonizes; systemd uses -d, but tests and
        // containers run in the foreground and still want it.
        if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
            log::warn!("cannot write pid file {pid_file}: {e}");
        }
    }
    for addr in &gw.listen {
        log::info!("aigate listening on {addr}");
    }
    log::info!(
        "client limits: max_connections {}, header {:?}, keep-alive {:?}",
        limits.max_connections,
        limits.header_timeout,
        limits.keepalive_timeout
    );
    server.run(pingora_core::server::RunArgs::default());
    access_log.close();
    if !daemon {
        let _ = std::fs::remove_file(&pid_file);
    }
    Ok(())
}
