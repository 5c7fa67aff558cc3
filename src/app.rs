//! Building the Pingora server from a config file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;

use crate::balancer::health::HealthCheckService;
use crate::config::{self, limits, ConfigError};
use crate::downstream::{self, fdlimit, ClientLimits, Downstream};
use crate::net::dns::DnsSettings;
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
    pub limits: ClientLimits,
    /// `gateway.max_connections` as configured (`None`: derived from the fd limit at start).
    pub max_connections: Option<u64>,
    pub dns: DnsSettings,
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
    // Bodies (and the provider answers aigate must read whole) are held in memory.
    let max_body = config::limits::MAX_BODY_SIZE;
    if !(1..=max_body).contains(&gw.max_body_size) {
        return Err(ConfigError::new(
            "gateway.max_body_size",
            format!("must be between 1 and {max_body} (bytes)"),
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
    let limits = client_limits(gw)?;
    let dns = dns_settings(&gw.dns)?;
    // Before the config is compiled: its health probes get their connectors as they are built.
    crate::net::tls::init(&loaded.server);
    let snapshot = Snapshot::build(&loaded.file)?;
    Ok(Prepared {
        server_conf: loaded.server,
        listen,
        snapshot,
        access_log_path: gw.access_log.path.clone(),
        access_log_format,
        max_body_size: gw.max_body_size,
        max_inflight_body_bytes: gw.max_inflight_body_bytes,
        limits,
        max_connections: gw.max_connections,
        dns,
    })
}

fn client_limits(gw: &config::schema::GatewayConf) -> Result<ClientLimits, ConfigError> {
    let secs = |v, field: &str, default| secs_field(v, &format!("gateway.{field}"), default, false);
    let max_header_size = gw
        .max_header_size
        .unwrap_or(downstream::DEFAULT_MAX_HEADER_SIZE as u64);
    // What `Downstream` reads ahead for a header (at most this plus one byte) is handed to
    // Pingora, which refuses anything past 1 MiB: half of that leaves room for any header.
    if !(1024..=downstream::MAX_HEADER_SIZE_LIMIT as u64).contains(&max_header_size) {
        return Err(ConfigError::new(
            "gateway.max_header_size",
            format!(
                "must be between 1024 and {} bytes, not {max_header_size}",
                downstream::MAX_HEADER_SIZE_LIMIT
            ),
        ));
    }
    if gw.max_connections == Some(0) {
        return Err(ConfigError::new(
            "gateway.max_connections",
            "must be at least 1",
        ));
    }
    Ok(ClientLimits {
        header_timeout: secs(
            gw.client_header_timeout,
            "client_header_timeout",
            downstream::DEFAULT_HEADER_TIMEOUT,
        )?,
        body_timeout: secs(
            gw.client_body_timeout,
            "client_body_timeout",
            downstream::DEFAULT_BODY_TIMEOUT,
        )?,
        body_total_timeout: secs(
            gw.client_body_total_timeout,
            "client_body_total_timeout",
            downstream::DEFAULT_BODY_TOTAL_TIMEOUT,
        )?,
        keepalive_timeout: secs(
            gw.keepalive_timeout,
            "keepalive_timeout",
            downstream::DEFAULT_KEEPALIVE_TIMEOUT,
        )?,
        send_timeout: secs(
            gw.send_timeout,
            "send_timeout",
            downstream::DEFAULT_SEND_TIMEOUT,
        )?,
        max_header_size: max_header_size as usize,
        // Settled at start, from the file-descriptor limit the process really has.
        max_connections: gw.max_connections.unwrap_or(u64::MAX) as usize,
    })
}

/// A seconds field: `default` when absent, else within `config::limits` (0 only if `zero_ok`).
fn secs_field(
    v: Option<f64>,
    path: &str,
    default: Duration,
    zero_ok: bool,
) -> Result<Duration, ConfigError> {
    let Some(v) = v else {
        return Ok(default);
    };
    let d = if zero_ok {
        limits::secs_or_zero(v)
    } else {
        limits::secs(v)
    };
    d.map_err(|m| ConfigError::new(path, m))
}

fn dns_settings(c: &config::schema::DnsConf) -> Result<DnsSettings, ConfigError> {
    let d = DnsSettings::default();
    let nameservers = match &c.nameservers {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ConfigError::new(
                "gateway.dns.nameservers",
                "must not be empty (leave it out to use /etc/resolv.conf)",
            ))
        }
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    s.parse::<SocketAddr>()
                        .or_else(|_| {
                            s.parse::<std::net::IpAddr>()
                                .map(|ip| SocketAddr::new(ip, 53))
                        })
                        .map_err(|_| {
                            ConfigError::new(
                                format!("gateway.dns.nameservers[{i}]"),
                                format!("{s:?} is not an ip or ip:port address"),
                            )
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let timeout = secs_field(c.timeout, "gateway.dns.timeout", d.timeout, false)?;
    if timeout > Duration::from_secs(60) {
        return Err(ConfigError::new(
            "gateway.dns.timeout",
            "must be at most 60 seconds",
        ));
    }
    let min_ttl = secs_field(c.min_ttl, "gateway.dns.min_ttl", d.min_ttl, true)?;
    let max_ttl = secs_field(c.max_ttl, "gateway.dns.max_ttl", d.max_ttl, true)?;
    if max_ttl < min_ttl {
        return Err(ConfigError::new(
            "gateway.dns.max_ttl",
            "must not be less than gateway.dns.min_ttl",
        ));
    }
    let error_ttl = secs_field(c.error_ttl, "gateway.dns.error_ttl", d.error_ttl, true)?;
    Ok(DnsSettings {
        nameservers,
        timeout,
        min_ttl,
        max_ttl,
        error_ttl,
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
    crate::net::dns::configure(prepared.dns.clone());
    let fd_limit = fdlimit::raise();
    let mut limits = prepared.limits.clone();
    limits.max_connections = match prepared.max_connections {
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

    let store = Arc::new(Store::new(prepared.snapshot));
    let gateway = Gateway {
        store: store.clone(),
        access_log: access_log.clone(),
        max_body_size: prepared.max_body_size,
        body_total_timeout: limits.body_total_timeout,
        body_budget: prepared.max_inflight_body_bytes.map(BodyBudget::new),
    };
    // The proxy runs inside `Downstream`, which enforces the client-side limits around it.
    let proxy = pingora_proxy::http_proxy(&server.configuration, gateway);
    let mut proxy = pingora_core::services::listening::Service::new(
        "aigate data plane".to_string(),
        Downstream::new(proxy, limits.clone()),
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
