//! Health of balanced instances.
//!
//! Active: pingora-load-balancing's own health checks (`HttpHealthCheck` / `TcpHealthCheck`) with
//! their consecutive success/failure thresholds. Each instance gets its own one-backend
//! `Backends` view, because instances differ in what they probe (path, Host, auth headers) and
//! because Pingora identifies backends by address and weight, which would merge two instances of
//! one provider host.
//!
//! A probed name is ONE backend whatever its addresses: pingora-load-balancing keeps a backend's
//! health history only while the backend stays in the discovered set, so a backend per resolved
//! address would lose its failure count whenever DNS rotates or changes (the threshold would
//! never be reached, or a threshold of 1 would flap). The backend of a name is therefore a fixed
//! placeholder, and the probe connects like a request does: through `net::connect`'s
//! `NameConnector`, to whichever of the name's current addresses answers (Happy Eyeballs).
//!
//! Passive (beyond APISIX): real requests report their outcome; an instance that fails a number
//! of requests in a row is skipped for a cool-down, even without active checks, then tried again.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_http::RequestHeader;
use pingora_load_balancing::discovery::Static;
use pingora_load_balancing::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::{Backend, Backends};

use crate::config::limits;
use crate::config::schema::{ActiveCheckConf, PassiveCheckConf};
use crate::net::connect::NameConnector;
use crate::net::dns;
use crate::net::endpoint::Endpoint;

/// Milliseconds since the process started (monotonic), for atomics.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

// ------------------------------------------------------------------------------------------------
// Passive health

/// What a real request to an instance ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    ConnectFailure,
    Timeout,
}

pub struct PassiveHealth {
    unhealthy_statuses: Vec<u16>,
    http_failures: u32,
    tcp_failures: u32,
    timeouts: u32,
    cooldown: Duration,
    consecutive: AtomicU32,
    down_until_ms: AtomicU64,
}

impl PassiveHealth {
    pub fn new(conf: Option<&PassiveCheckConf>) -> Result<PassiveHealth, String> {
        let u = conf.and_then(|c| c.unhealthy.as_ref());
        let cooldown = limits::secs_or_zero(conf.and_then(|c| c.cooldown).unwrap_or(10.0))
            .map_err(|m| format!("cooldown {m}"))?;
        let statuses = u
            .and_then(|u| u.http_statuses.clone())
            .unwrap_or_else(|| vec![429, 500, 502, 503, 504]);
        check_statuses(&statuses)?;
        Ok(PassiveHealth {
            unhealthy_statuses: statuses,
            http_failures: u.and_then(|u| u.http_failures).unwrap_or(3).max(1),
            tcp_failures: u.and_then(|u| u.tcp_failures).unwrap_or(2).max(1),
            timeouts: u.and_then(|u| u.timeouts).unwrap_or(3).max(1),
            cooldown,
            consecutive: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
        })
    }

    pub fn record(&self, outcome: Outcome) -> bool {
        let threshold = match outcome {
            Outcome::Status(s) if !self.unhealthy_statuses.contains(&s) => {
                self.consecutive.store(0, Ordering::Relaxed);
                return false;
            }
            Outcome::Status(_) => self.http_failures,
            Outcome::ConnectFailure => self.tcp_failures,
            Outcome::Timeout => self.timeouts,
        };
        // Saturating: with `cooldown: 0` the streak is never reset and may count past u32::MAX.
        let n = self
            .consecutive
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n >= threshold && !self.cooldown.is_zero() {
            self.consecutive.store(0, Ordering::Relaxed);
            self.down_until_ms.store(
                now_ms().saturating_add(self.cooldown.as_millis() as u64),
                Ordering::Relaxed,
            );
            return true;
        }
        false
    }

    pub fn cooling_down(&self) -> bool {
        // An instance never marked down (0) needs no clock read: this runs for every instance
        // of every pick.
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }
}

fn check_statuses(s: &[u16]) -> Result<(), String> {
    match s.iter().find(|c| !(100..=599).contains(*c)) {
        Some(c) => Err(format!("{c} is not an HTTP status")),
        None => Ok(()),
    }
}

// ------------------------------------------------------------------------------------------------
// Active health

/// The one backend that stands for `host:port`, and how to connect to it. An IP literal is its
/// own address; a name gets a fixed placeholder (`0.0.0.0:port`, never dialled) and a connector
/// that resolves the name at each probe.
fn probe_target(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(Backend, Option<Arc<NameConnector>>), String> {
    let invalid = |_| "invalid probe address".to_string();
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok((
            Backend::new(&std::net::SocketAddr::new(ip, port).to_string()).map_err(invalid)?,
            None,
        )),
        Err(_) => Ok((
            Backend::new(&format!("0.0.0.0:{port}")).map_err(invalid)?,
            Some(Arc::new(NameConnector {
                name: dns::name(host),
                port,
                timeout,
            })),
        )),
    }
}

pub struct ActiveProbe {
    /// For log lines.
    pub instance: String,
    backends: Backends,
    healthy: AtomicBool,
    interval_healthy: Duration,
    interval_unhealthy: Duration,
    next_due_ms: AtomicU64,
    running: AtomicBool,
}

impl ActiveProbe {
    /// A probe of `endpoint`'s host (`checks.active.port` overrides the port), sending the
    /// instance's auth headers and query along with `req_headers`.
    pub fn new(
        instance: &str,
        conf: &ActiveCheckConf,
        endpoint: &Endpoint,
        auth_headers: &[(HeaderName, HeaderValue)],
        auth_query: &str,
    ) -> Result<ActiveProbe, String> {
        let kind = conf.type_.as_deref().unwrap_or("http");
        let timeout =
            limits::secs(conf.timeout.unwrap_or(1.0)).map_err(|m| format!("timeout {m}"))?;
        let healthy = conf.healthy.clone().unwrap_or_default();
        let unhealthy = conf.unhealthy.clone().unwrap_or_default();
        let secs = |v: Option<f64>, what: &str| -> Result<Duration, String> {
            limits::secs(v.unwrap_or(1.0)).map_err(|m| format!("{what} {m}"))
        };
        let interval_healthy = secs(healthy.interval, "healthy.interval")?;
        let interval_unhealthy = secs(unhealthy.interval, "unhealthy.interval")?;
        let successes = healthy.successes.unwrap_or(2).max(1) as usize;
        let port = conf.port.unwrap_or(endpoint.port);

        let (backend, name_connector) = probe_target(&endpoint.host, port, timeout)?;
        let mut backends = Backends::new(Static::new(BTreeSet::from([backend])));
        let summary = {
            let (name, host) = (instance.to_string(), endpoint.host.clone());
            move |_: &Backend| format!("instance {name} ({host}:{port})")
        };
        match kind {
            "http" | "https" => {
                let tls = kind == "https";
                let host = conf.host.clone().unwrap_or_else(|| endpoint.authority());
                let sni_host = conf.host.clone().unwrap_or_else(|| endpoint.host.clone());
                // The process's outbound TLS settings (`server.ca_file`), as for real requests.
                let connector = pingora_core::connectors::http::Connector::new(
                    crate::net::tls::connector_options(),
                );
                let mut hc = HttpHealthCheck::new_custom(&sni_host, tls, connector);
                let mut path = conf.http_path.clone().unwrap_or_else(|| "/".into());
                if !path.starts_with('/') {
                    return Err("http_path must start with '/'".into());
                }
                if !auth_query.is_empty() {
                    path.push(if path.contains('?') { '&' } else { '?' });
                    path.push_str(auth_query);
                }
                let mut req = RequestHeader::build("GET", path.as_bytes(), None)
                    .map_err(|_| "invalid http_path".to_string())?;
                req.insert_header("Host", host.as_str())
                    .map_err(|_| "invalid host".to_string())?;
                req.insert_header("User-Agent", "aigate-health-check")
                    .map_err(|_| "invalid header".to_string())?;
                for (k, v) in auth_headers {
                    req.insert_header(k.clone(), v.clone())
                        .map_err(|_| "invalid auth header".to_string())?;
                }
                for (i, h) in conf.req_headers.iter().flatten().enumerate() {
                    let (k, v) = h.split_once(':').ok_or_else(|| {
                        format!("req_headers[{i}] must look like \"Name: value\"")
                    })?;
                    req.append_header(k.trim().to_string(), v.trim())
                        .map_err(|_| format!("req_headers[{i}] is not a valid header"))?;
                }
                hc.req = req;
                hc.peer_template.options.connection_timeout = Some(timeout);
                hc.peer_template.options.custom_l4 = name_connector
                    .clone()
                    .map(|c| c as Arc<dyn pingora_core::connectors::L4Connect + Send + Sync>);
                hc.backend_summary_callback = Some(Box::new(summary));
                hc.peer_template.options.read_timeout = Some(timeout);
                hc.peer_template.options.write_timeout = Some(timeout);
                hc.peer_template.options.verify_cert =
                    conf.https_verify_certificate.unwrap_or(true);
                hc.peer_template.options.verify_hostname =
                    conf.https_verify_certificate.unwrap_or(true);
                hc.consecutive_success = successes;
                // Pingora counts failures of any kind against one threshold: a timed-out probe
                // is a failure too, so the stricter of http_failures and timeouts applies.
                let failures = unhealthy
                    .http_failures
                    .unwrap_or(5)
                    .min(unhealthy.timeouts.unwrap_or(u32::MAX));
                hc.consecutive_failure = failures.max(1) as usize;
                let ok_statuses = healthy
                    .http_statuses
                    .clone()
                    .unwrap_or_else(|| vec![200, 302]);
                check_statuses(&ok_statuses)?;
                // A probe passes only on a healthy status; `unhealthy.http_statuses` (checked for
                // validity) name statuses that already fail by not being healthy ones.
                check_statuses(unhealthy.http_statuses.as_deref().unwrap_or(&[]))?;
                hc.validator = Some(Box::new(move |resp| {
                    let s = resp.status.as_u16();
                    if ok_statuses.contains(&s) {
                        Ok(())
                    } else {
                        pingora_error::Error::e_explain(
                            pingora_error::ErrorType::CustomCode("unhealthy status", s),
                            "health probe",
                        )
                    }
                }));
                backends.set_health_check(Box::new(hc));
            }
            "tcp" => {
                let mut hc = TcpHealthCheck::new();
                hc.set_connector(pingora_core::connectors::TransportConnector::new(
                    crate::net::tls::connector_options(),
                ));
                hc.peer_template.options.connection_timeout = Some(timeout);
                hc.peer_template.options.custom_l4 = name_connector
                    .clone()
                    .map(|c| c as Arc<dyn pingora_core::connectors::L4Connect + Send + Sync>);
                hc.consecutive_success = successes;
                let failures = unhealthy
                    .tcp_failures
                    .unwrap_or(2)
                    .min(unhealthy.timeouts.unwrap_or(u32::MAX));
                hc.consecutive_failure = failures.max(1) as usize;
                backends.set_health_check(hc);
            }
            other => return Err(format!("type must be http, https or tcp, not {other:?}")),
        }
        Ok(ActiveProbe {
            instance: instance.to_string(),
            backends,
            healthy: AtomicBool::new(true),
            interval_healthy,
            interval_unhealthy,
            next_due_ms: AtomicU64::new(0),
            running: AtomicBool::new(false),
        })
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Start a probe round if one is due and none is running.
    fn claim(&self, now: u64) -> bool {
        now >= self.next_due_ms.load(Ordering::Relaxed)
            && self
                .running
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// One round: refresh the address, probe, publish the result.
    pub async fn run_once(&self) {
        if let Err(e) = self.backends.update(|_| {}).await {
            log::warn!("health check of instance {}: {e}", self.instance);
        }
        self.backends.run_health_check(false).await;
        let ready = self
            .backends
            .get_backend()
            .iter()
            .next()
            .is_some_and(|b| self.backends.ready(b));
        let was = self.healthy.swap(ready, Ordering::Relaxed);
        if was != ready {
            if ready {
                log::info!("instance {} is healthy again", self.instance);
            } else {
                log::warn!(
                    "instance {} failed its health checks and leaves the pool",
                    self.instance
                );
            }
        }
        let interval = if ready {
            self.interval_healthy
        } else {
            self.interval_unhealthy
        };
        self.next_due_ms.store(
            now_ms().saturating_add(interval.as_millis() as u64),
            Ordering::Relaxed,
        );
        self.running.store(false, Ordering::Release);
    }
}

/// Where the probes come from: the live config (so a config change brings its own probes).
pub trait ProbeSource: Send + Sync {
    fn probes(&self) -> Vec<Arc<ActiveProbe>>;
}

/// A Pingora background service that runs every due probe of the current config.
pub struct HealthCheckService<S: ProbeSource>(pub S);

#[async_trait]
impl<S: ProbeSource + 'static> BackgroundService for HealthCheckService<S> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let now = now_ms();
            for probe in self.0.probes() {
                if probe.claim(now) {
                    tokio::spawn(async move { probe.run_once().await });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_cooldown_after_consecutive_failures() {
        let p = PassiveHealth::new(None).unwrap();
        assert!(!p.record(Outcome::Status(500)));
        assert!(!p.record(Outcome::Status(200))); // success resets the streak
        assert!(!p.record(Outcome::Status(500)));
        assert!(!p.record(Outcome::Status(503)));
        assert!(!p.cooling_down());
        assert!(p.record(Outcome::Status(429)));
        assert!(p.cooling_down());
        let p = PassiveHealth::new(None).unwrap();
        p.record(Outcome::ConnectFailure);
        assert!(p.record(Outcome::ConnectFailure));
        let conf = PassiveCheckConf {
            cooldown: Some(0.0),
            ..Default::default()
        };
        let p = PassiveHealth::new(Some(&conf)).unwrap();
        for _ in 0..10 {
            p.record(Outcome::Timeout);
        }
        assert!(!p.cooling_down(), "cooldown 0 disables skipping");
    }

    #[test]
    fn passive_cooldown_ends() {
        let conf = PassiveCheckConf {
            cooldown: Some(0.05),
            ..Default::default()
        };
        let p = PassiveHealth::new(Some(&conf)).unwrap();
        p.record(Outcome::ConnectFailure);
        p.record(Outcome::ConnectFailure);
        assert!(p.cooling_down());
        std::thread::sleep(Duration::from_millis(80));
        assert!(!p.cooling_down());
    }
}
