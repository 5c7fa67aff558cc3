//! APISIX `upstream` objects: where plain routes and `passthrough` send requests.

use std::time::Duration;

use crate::balancer::swrr::SmoothWrr;
use crate::config::schema::{Nodes, UpstreamConf};
use crate::config::{limits, ConfigError};
use crate::net::peer::PeerOptions;

#[derive(Debug, Clone)]
pub struct Node {
    pub host: String,
    /// `host` made ready for look-ups once, not per request.
    pub dns: crate::net::dns::Host,
    pub port: u16,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassHost {
    /// The client's Host header (APISIX default).
    Pass,
    /// The node's host.
    Node,
    /// `upstream_host`.
    Rewrite(String),
}

pub struct Upstream {
    pub nodes: Vec<Node>,
    pub tls: bool,
    pub pass_host: PassHost,
    pub peer: PeerOptions,
    balancer: SmoothWrr,
}

impl Upstream {
    pub fn build(conf: &UpstreamConf, path: &str) -> Result<Upstream, ConfigError> {
        let err = |f: &str, m: &str| ConfigError::new(format!("{path}{f}"), m);
        match conf.type_.as_deref() {
            None | Some("roundrobin") => {}
            Some(other) => {
                return Err(err(
                    ".type",
                    &format!("upstream type {other:?} is not supported (supported: roundrobin)"),
                ))
            }
        }
        let tls = match conf.scheme.as_deref() {
            None | Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(err(".scheme", "must be http or https")),
        };
        let default_port = if tls { 443 } else { 80 };
        let nodes: Vec<Node> = match &conf.nodes {
            Nodes::Map(m) => m
                .iter()
                .map(|(k, w)| {
                    let (host, port) = split_host_port(k, default_port)
                        .filter(|(_, p)| *p != 0)
                        .ok_or_else(|| err(&format!(".nodes.{k}"), "expected host or host:port"))?;
                    Ok(Node {
                        dns: crate::net::dns::Host::of(&host),
                        host,
                        port,
                        weight: *w,
                    })
                })
                .collect::<Result<_, ConfigError>>()?,
            Nodes::List(l) => l
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let (host, port) = split_host_port(&n.host, default_port).ok_or_else(|| {
                        err(&format!(".nodes[{i}].host"), "expected a host name or IP")
                    })?;
                    if n.port == Some(0) || port == 0 {
                        return Err(err(
                            &format!(".nodes[{i}].port"),
                            "must be between 1 and 65535",
                        ));
                    }
                    Ok(Node {
                        dns: crate::net::dns::Host::of(&host),
                        host,
                        port: n.port.unwrap_or(port),
                        weight: n.weight,
                    })
                })
                .collect::<Result<_, ConfigError>>()?,
        };
        if nodes.is_empty() {
            return Err(err(".nodes", "at least one node is required"));
        }
        let pass_host = match conf.pass_host.as_deref() {
            None | Some("pass") => PassHost::Pass,
            Some("node") => PassHost::Node,
            Some("rewrite") => match &conf.upstream_host {
                Some(h) if !h.is_empty() => PassHost::Rewrite(h.clone()),
                _ => {
                    return Err(err(
                        ".upstream_host",
                        "is required when pass_host is rewrite",
                    ))
                }
            },
            Some(_) => return Err(err(".pass_host", "must be pass, node or rewrite")),
        };
        let t = conf.timeout;
        let secs = |v: Option<f64>, field: &str| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(Duration::from_secs(60)),
                Some(s) => limits::secs(s).map_err(|m| err(&format!(".timeout.{field}"), &m)),
            }
        };
        // APISIX's `keepalive_pool`: `idle_timeout` is how long an idle connection to the
        // upstream is kept. `size` and `requests` would need a pool per upstream; aigate's
        // connections live in Pingora's one pool per process, so only APISIX's defaults are
        // accepted.
        let pool = conf.keepalive_pool.unwrap_or_default();
        for (field, value, default) in [("size", pool.size, 320), ("requests", pool.requests, 1000)]
        {
            limits::apisix_default_only(value, default, limits::ONE_PROCESS_POOL)
                .map_err(|m| err(&format!(".keepalive_pool.{field}"), &m))?;
        }
        let idle_timeout = match pool.idle_timeout {
            None => Duration::from_secs(60),
            Some(s) => limits::secs(s).map_err(|m| err(".keepalive_pool.idle_timeout", &m))?,
        };
        let peer = PeerOptions {
            connect_timeout: secs(t.and_then(|t| t.connect), "connect")?,
            read_timeout: secs(t.and_then(|t| t.read), "read")?,
            write_timeout: secs(t.and_then(|t| t.send), "send")?,
            idle_timeout: Some(idle_timeout),
            verify_tls: true,
        };
        let weights: Vec<u32> = nodes.iter().map(|n| n.weight).collect();
        Ok(Upstream {
            balancer: SmoothWrr::new(&weights),
            nodes,
            tls,
            pass_host,
            peer,
        })
    }

    /// The index of the node for the next request.
    pub fn pick(&self) -> usize {
        self.balancer.next().unwrap_or(0)
    }
}

fn split_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    if s.is_empty() {
        return None;
    }
    if let Some(v6) = s.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if rest.is_empty() => default_port,
            None => return None,
        };
        return Some((h.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => Some((s.to_string(), default_port)), // bare IPv6
        None => Some((s.to_string(), default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("httpbin.org", 80),
            Some(("httpbin.org".into(), 80))
        );
        assert_eq!(
            split_host_port("127.0.0.1:8080", 80),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(split_host_port("[::1]:81", 80), Some(("::1".into(), 81)));
        assert_eq!(split_host_port("a:b", 80), None);
    }
}
