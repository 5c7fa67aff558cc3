//! Building the Pingora server from a config file.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;

use crate::balancer::health::HealthCheckService;
use crate::config::{self, ConfigError};
use crate::observability::access_log::{AccessLog, AccessLogService, Format, DEFAULT_FORMAT};
use crate::proxy::body_budget::BodyBudget;
use crate::proxy::Gateway;
use crate::store::{Snapshot, Store};

/// Everything validated from the config, ready to serve.
pub struct Prepared {
    pub server_conf: ServerConf,
    pub listen: Vec<SocketAddr>,
    pub snapshot: Snapshot,
    pub access_log_path: String,
    pub access_log_format: Format,
    pub max_body_size: u64,
    pub max_inflight_body_bytes: Option<u64>,
}

/// Load and fully validate a config file. Nothing is opened or written.
pub fn prepare(path: &str) -> Result<Prepared, ConfigError> {
    let loaded = config::load_file(path)?;
    // Any message below may quote a value that came from the environment (an API key put in the
    // wrong field): redact them all in one place.
    let secrets = loaded.secrets.clone();
    let prepared = validate(loaded).map_err(|e| ConfigError {
        message: config::env::redact(&e.message, &secrets),
        ..e
    })?;
    // Every credential the config holds is scrubbed from the error log from now on, whatever
    // component (Pingora included) would print it. (Only credentials: other env values, such as a
    // listen address, are redacted from config errors but are useful in the error log.)
    crate::observability::redact::set_secrets(prepared.snapshot.credentials());
    Ok(prepared)
}

fn validate(loaded: config::Loaded) -> Result<Prepared, ConfigError> {
    let gw = &loaded.file.gateway;
    let listen_list = gw.listen.to_vec();
    if listen_list.is_empty() {
        return Err(ConfigError::new(
            "gateway.listen",
            "at least one address is required",
        ));
    }
    let mut listen = Vec::new();
    for (i, l) in listen_list.iter().enumerate() {
        let path = if listen_list.len() == 1 {
            "gateway.listen".to_string()
        } else {
            format!("gateway.listen[{i}]")
        };
        listen.push(
            l.parse::<SocketAddr>()
                .map_err(|_| ConfigError::new(path, format!("{l:?} is not an ip:port address")))?,
        );
    }
    if gw.max_body_size == 0 {
        return Err(ConfigError::new(
            "gateway.max_body_size",
            "must be greater than 0",
        ));
    }
    if let Some(budget) = gw.max_inflight_body_bytes {
        let path = "gateway.max_inflight_body_bytes";
        if budget == 0 {
            return Err(ConfigError::new(path, "must be greater than 0"));
        }
        // Below one maximal body, such a body would be refused even by an idle gateway.
        if budget < gw.max_body_size {
            return Err(ConfigError::new(
                path,
                format!(
                    "must be at least gateway.max_body_size ({} bytes), not {budget}",
                    gw.max_body_size
                ),
            ));
        }
    }
    let access_log_format =
        Format::parse(gw.access_log.format.as_deref().unwrap_or(DEFAULT_FORMAT))
            .map_err(|m| ConfigError::new("gateway.access_log.format", m))?;
    if let Some(admin) = &gw.admin {
        if let Some(l) = &admin.listen {
            l.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    "gateway.admin.listen",
                    format!("{l:?} is not an ip:port address"),
                )
            })?;
        }
    }
    let snapshot = Snapshot::build(&loaded.file)?;
    Ok(Prepared {
        server_conf: loaded.server,
        listen,
        snapshot,
        access_log_path: gw.access_log.path.clone(),
        access_log_format,
        max_body_size: gw.max_body_size,
        max_inflight_body_bytes: gw.max_inflight_body_bytes,
    })
}

/// Start serving; returns only when the server shuts down.
pub fn run(prepared: Prepared, upgrade: bool, daemon: bool) -> Result<(), String> {
    let access_log = Arc::new(
        AccessLog::new(&prepared.access_log_path, prepared.access_log_format)
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
    let mut server = Server::new_with_opt_and_conf(opt, prepared.server_conf);
    server.bootstrap();

    let store = Arc::new(Store::new(prepared.snapshot));
    let gateway = Gateway {
        store: store.clone(),
        access_log: access_log.clone(),
        max_body_size: prepared.max_body_size,
        body_budget: prepared.max_inflight_body_bytes.map(BodyBudget::new),
    };
    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "aigate data plane",
    );
    for addr in &prepared.listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "aigate access log",
        AccessLogService(access_log.clone()),
    ));
    // Active health probes of whatever config is live (ai-proxy-multi `checks.active`).
    server.add_service(background_service(
        "aigate health checks",
        HealthCheckService(store),
    ));

    if !daemon {
        // Pingora writes the pid file only when it daemonizes; systemd uses -d, but tests and
        // containers run in the foreground and still want it.
        if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
            log::warn!("cannot write pid file {pid_file}: {e}");
        }
    }
    for addr in &prepared.listen {
        log::info!("aigate listening on {addr}");
    }
    server.run(pingora_core::server::RunArgs::default());
    access_log.close();
    if !daemon {
        let _ = std::fs::remove_file(&pid_file);
    }
    Ok(())
}
