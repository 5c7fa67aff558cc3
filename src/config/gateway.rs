//! The `gateway:` section, checked and turned into the settings the process runs with.

use std::net::SocketAddr;
use std::time::Duration;

use super::schema::{AdminConf, DnsConf, GatewayConf, MetricsConf};
use super::{limits, ConfigError};
use crate::downstream::{self, ClientLimits};
use crate::net::dns::DnsSettings;
use crate::observability::access_log::{Format, DEFAULT_FORMAT};
use crate::observability::metrics::{self, MetricsSettings};
use crate::router::cidr::Cidr;

/// `gateway:`, validated.
pub struct GatewaySettings {
    pub listen: Vec<SocketAddr>,
    pub access_log_path: String,
    pub access_log_format: Format,
    pub max_body_size: u64,
    pub max_inflight_body_bytes: Option<u64>,
    /// `gateway.debug_headers`.
    pub debug_headers: bool,
    pub limits: ClientLimits,
    /// `gateway.max_connections` as configured (`None`: derived from the fd limit at start).
    pub max_connections: Option<u64>,
    pub dns: DnsSettings,
    /// `gateway.admin`, when the admin API is on.
    pub admin: Option<AdminSettings>,
    /// `gateway.store`: etcd for a cluster (`None`: `gateway.data_dir`).
    pub store: Option<crate::sources::etcd::client::EtcdSettings>,
    /// `gateway.metrics`, when metrics are on.
    pub metrics: Option<MetricsSettings>,
}

/// `gateway.admin`, validated.
#[derive(Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// `None`: no key configured (only allowed on a loopback address): no auth.
    pub key: Option<String>,
    /// Empty: any client address.
    pub allow: Vec<Cidr>,
    pub redact_secrets: bool,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("AdminSettings")
            .field("listen", &self.listen)
            .field("key", &self.key.as_ref().map(|_| "******"))
            .field("allow", &self.allow)
            .field("redact_secrets", &self.redact_secrets)
            .finish()
    }
}

/// A listener's `ip:port` (`default` when absent); `path` names the field in errors.
fn listen_addr(value: Option<&str>, default: &str, path: &str) -> Result<SocketAddr, ConfigError> {
    let l = value.unwrap_or(default);
    l.parse()
        .map_err(|_| ConfigError::new(path, format!("{l:?} is not an ip:port address")))
}

/// The metrics listener's default address, as APISIX's `prometheus` export address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9091";

fn metrics_settings(m: &MetricsConf) -> Result<MetricsSettings, ConfigError> {
    let listen = listen_addr(
        m.listen.as_deref(),
        DEFAULT_METRICS_LISTEN,
        "gateway.metrics.listen",
    )?;
    let prefix = m
        .metric_prefix
        .clone()
        .unwrap_or_else(|| metrics::DEFAULT_PREFIX.to_string());
    // Prometheus's metric name syntax, [a-zA-Z_:][a-zA-Z0-9_:]*; empty is allowed.
    let valid = prefix.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if !valid {
        return Err(ConfigError::new(
            "gateway.metrics.metric_prefix",
            format!("{prefix:?} is not a valid start of a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"),
        ));
    }
    let max_model_labels = m
        .max_model_labels
        .unwrap_or(metrics::DEFAULT_MAX_MODEL_LABELS as u64);
    if !(1..=10_000).contains(&max_model_labels) {
        return Err(ConfigError::new(
            "gateway.metrics.max_model_labels",
            "must be between 1 and 10000",
        ));
    }
    Ok(MetricsSettings {
        listen,
        prefix,
        max_model_labels: max_model_labels as usize,
    })
}

/// The admin API's default address, as APISIX's.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9180";

fn admin_settings(a: &AdminConf) -> Result<AdminSettings, ConfigError> {
    let listen = listen_addr(
        a.listen.as_deref(),
        DEFAULT_ADMIN_LISTEN,
        "gateway.admin.listen",
    )?;
    let key = a.key.clone().filter(|k| !k.is_empty());
    if key.is_none() && !listen.ip().is_loopback() {
        return Err(ConfigError::new(
            "gateway.admin.key",
            "required when gateway.admin.listen is not a loopback address",
        ));
    }
    let allow = match &a.allow {
        None => Vec::new(),
        Some(list) if list.is_empty() => {
            return Err(ConfigError::new(
                "gateway.admin.allow",
                "must not be empty (leave it out to allow any address)",
            ))
        }
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Cidr::parse(s.trim())
                    .map_err(|m| ConfigError::new(format!("gateway.admin.allow[{i}]"), m))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(AdminSettings {
        listen,
        key,
        allow,
        redact_secrets: a.redact_secrets,
    })
}

impl GatewaySettings {
    pub fn from_conf(gw: &GatewayConf) -> Result<GatewaySettings, ConfigError> {
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
                l.parse::<SocketAddr>().map_err(|_| {
                    ConfigError::new(path, format!("{l:?} is not an ip:port address"))
                })?,
            );
        }
        // Bodies (and the provider answers aigate must read whole) are held in memory.
        let max_body = limits::MAX_BODY_SIZE;
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
        let admin = gw.admin.as_ref().map(admin_settings).transpose()?;
        let store = gw.store.as_ref().map(store_settings).transpose()?;
        let metrics = gw.metrics.as_ref().map(metrics_settings).transpose()?;
        if let Some(m) = metrics.as_ref().filter(|m| listen.contains(&m.listen)) {
            return Err(ConfigError::new(
                "gateway.metrics.listen",
                format!("{} is also in gateway.listen", m.listen),
            ));
        }
        if let (Some(m), Some(a)) = (&metrics, &admin) {
            if m.listen == a.listen {
                return Err(ConfigError::new(
                    "gateway.metrics.listen",
                    format!("{} is also gateway.admin.listen", m.listen),
                ));
            }
        }
        let limits = client_limits(gw)?;
        let dns = dns_settings(&gw.dns)?;
        Ok(GatewaySettings {
            listen,
            access_log_path: gw.access_log.path.clone(),
            access_log_format,
            max_body_size: gw.max_body_size,
            max_inflight_body_bytes: gw.max_inflight_body_bytes,
            debug_headers: gw.debug_headers,
            limits,
            max_connections: gw.max_connections,
            dns,
            admin,
            store,
            metrics,
        })
    }
}

fn client_limits(gw: &GatewayConf) -> Result<ClientLimits, ConfigError> {
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

fn dns_settings(c: &DnsConf) -> Result<DnsSettings, ConfigError> {
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

/// `gateway.store`, checked (the endpoints by the etcd client itself).
fn store_settings(
    c: &crate::config::schema::StoreConf,
) -> Result<crate::sources::etcd::client::EtcdSettings, ConfigError> {
    use crate::sources::etcd::client::{EtcdClient, EtcdSettings};
    if c.type_ != "etcd" {
        return Err(ConfigError::new(
            "gateway.store.type",
            format!(
                "must be etcd, not {:?} (without gateway.store, gateway.data_dir is used)",
                c.type_
            ),
        ));
    }
    if c.endpoints.is_empty() {
        return Err(ConfigError::new(
            "gateway.store.endpoints",
            "at least one etcd endpoint is required, e.g. [\"http://127.0.0.1:2379\"]",
        ));
    }
    let timeout = limits::secs(c.timeout.unwrap_or(5.0))
        .map_err(|m| ConfigError::new("gateway.store.timeout", m))?;
    let settings = EtcdSettings {
        endpoints: c.endpoints.clone(),
        prefix: c.prefix.clone().unwrap_or_else(|| "/aigate".into()),
        timeout,
        user: c.user.clone().filter(|u| !u.is_empty()),
        password: c.password.clone().filter(|p| !p.is_empty()),
    };
    EtcdClient::new(settings.clone()).map_err(|m| ConfigError::new("gateway.store", m))?;
    Ok(settings)
}
