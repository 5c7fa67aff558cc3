//! The resource store: the validated, compiled runtime view of routes and services.
//!
//! A `Snapshot` is built once from config (and, later, from admin API changes), fully validated,
//! and published through an `ArcSwap`. Each request loads the current snapshot once and uses it
//! to the end, so a config change never affects a request half-way through.

pub mod consumers;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::schema::{FileConfig, RouteConf, ServiceConf};
use crate::config::ConfigError;
use crate::plugins::consumer::Consumers;
use crate::plugins::{self, Chain, Plugin};
use crate::router::{vars::Expr, RouteEntry, Router};
use upstream::Upstream;

pub struct Route {
    pub id: Arc<str>,
    /// The route's plugins over its service's, in the order they run.
    pub chain: Arc<Chain>,
    pub upstream: Option<Arc<Upstream>>,
}

pub struct Snapshot {
    pub routes: Vec<Arc<Route>>,
    pub consumers: Consumers,
    pub router: Router,
    /// Every active health probe of this config (run by the health-check service).
    pub probes: Vec<Arc<crate::balancer::health::ActiveProbe>>,
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

impl Snapshot {
    /// Every credential value configured (auth headers and query parameters), for log scrubbing.
    pub fn credentials(&self) -> Vec<String> {
        let consumer_plugins = self.consumers.by_name.values().flat_map(|c| &c.plugins);
        self.routes
            .iter()
            .flat_map(|r| r.chain.plugins())
            .chain(consumer_plugins)
            .flat_map(|p| p.credentials())
            .chain(self.consumers.secrets().map(str::to_string))
            .collect()
    }

    pub fn build(file: &FileConfig) -> Result<Snapshot, ConfigError> {
        // A service's plugins are compiled once and shared by its routes (one balancer state and
        // one set of health probes), unless a route has its own config for that plugin.
        let mut services: HashMap<String, Service> = HashMap::new();
        for (index, conf) in file.services.iter().enumerate() {
            let path = format!("services[{index}]");
            let id = conf.id.to_string();
            let owner = plugins::Owner::Service(id.clone());
            let plugins = plugins::compile(conf.plugins.as_ref(), &path, &owner)?;
            let service = Service {
                index,
                conf,
                plugins,
            };
            if services.insert(id.clone(), service).is_some() {
                return Err(ConfigError::new(
                    format!("{path}.id"),
                    format!("duplicate service id {id:?}"),
                ));
            }
        }
        let mut seen = HashMap::new();
        let mut routes = Vec::with_capacity(file.routes.len());
        let mut entries = Vec::with_capacity(file.routes.len());
        for (i, r) in file.routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            if seen.insert(r.id.to_string(), i).is_some() {
                return Err(ConfigError::new(
                    format!("{path}.id"),
                    format!("duplicate route id {:?}", r.id.to_string()),
                ));
            }
            if r.status == Some(0) {
                continue; // disabled, as in APISIX
            }
            let service = match &r.service_id {
                Some(sid) => Some(services.get(&sid.to_string()).ok_or_else(|| {
                    ConfigError::new(
                        format!("{path}.service_id"),
                        format!("service {:?} does not exist", sid.to_string()),
                    )
                })?),
                None => None,
            };
            let (route, entry) = compile_route(r, &path, service, routes.len())?;
            routes.push(Arc::new(route));
            entries.push(entry);
        }
        let router = Router::new(entries).map_err(|m| ConfigError::new("routes", m))?;
        // A service's plugins are shared by its routes: collect each probe once.
        let mut probes: Vec<Arc<crate::balancer::health::ActiveProbe>> = Vec::new();
        let consumers = consumers::compile(&file.consumers)?;
        let consumer_plugins = consumers.by_name.values().flat_map(|c| c.plugins.iter());
        for p in routes
            .iter()
            .flat_map(|r| r.chain.plugins())
            .chain(consumer_plugins)
        {
            for probe in p.probes() {
                if !probes.iter().any(|q| Arc::ptr_eq(q, &probe)) {
                    probes.push(probe);
                }
            }
        }
        Ok(Snapshot {
            routes,
            consumers,
            router,
            probes,
        })
    }
}

/// A service while routes are compiled: its config, its place in the file, and its plugins
/// (compiled once and shared by its routes: one balancer state, one set of health probes).
struct Service<'a> {
    index: usize,
    conf: &'a ServiceConf,
    plugins: Vec<Arc<dyn Plugin>>,
}

fn compile_route(
    r: &RouteConf,
    path: &str,
    service: Option<&Service>,
    index: usize,
) -> Result<(Route, RouteEntry), ConfigError> {
    let err = |f: &str, m: String| ConfigError::new(format!("{path}{f}"), m);
    // Errors name the field the user wrote: `uri`, `uris[1]` or `paths[0]`.
    let (uris, field): (Vec<String>, &str) = match (&r.uri, &r.uris, &r.paths) {
        (Some(u), None, None) => (vec![u.clone()], "uri"),
        (None, Some(u), None) => (u.clone(), "uris"),
        (None, None, Some(u)) => (u.clone(), "paths"),
        (None, None, None) => return Err(err("", "one of uri, uris or paths is required".into())),
        _ => return Err(err("", "give only one of uri, uris and paths".into())),
    };
    if uris.is_empty() {
        return Err(err(&format!(".{field}"), "must not be empty".into()));
    }
    for (j, u) in uris.iter().enumerate() {
        let at = if field == "uri" {
            ".uri".to_string()
        } else {
            format!(".{field}[{j}]")
        };
        if !u.starts_with('/') {
            return Err(err(&at, format!("{u:?} must start with '/'")));
        }
        if u.find('*').is_some_and(|p| p != u.len() - 1) {
            return Err(err(&at, format!("{u:?}: '*' is only allowed at the end")));
        }
    }
    let methods = match &r.methods {
        Some(ms) => {
            for (j, m) in ms.iter().enumerate() {
                if !METHODS.contains(&m.as_str()) {
                    return Err(err(
                        &format!(".methods[{j}]"),
                        format!("unknown method {m:?}"),
                    ));
                }
            }
            Some(ms.clone())
        }
        None => None,
    };
    let hosts = match (&r.host, &r.hosts) {
        (Some(h), None) => vec![h.clone()],
        (None, Some(h)) => h.clone(),
        (None, None) => service
            .and_then(|s| s.conf.hosts.clone())
            .unwrap_or_default(),
        _ => return Err(err("", "give only one of host and hosts".into())),
    };
    let remote_addrs = match (&r.remote_addr, &r.remote_addrs) {
        (Some(a), None) => vec![a.clone()],
        (None, Some(a)) => a.clone(),
        (None, None) => Vec::new(),
        _ => {
            return Err(err(
                "",
                "give only one of remote_addr and remote_addrs".into(),
            ))
        }
    };
    let vars = match &r.vars {
        Some(v) => Some(Expr::compile(v).map_err(|m| err(".vars", m))?),
        None => None,
    };
    let service_path = service
        .map(|s| format!("services[{}]", s.index))
        .unwrap_or_default();
    let own = plugins::compile(
        r.plugins.as_ref(),
        path,
        &plugins::Owner::Route(r.id.to_string()),
    )?;
    let chain = Chain::new(Chain::merge(
        service.map(|s| s.plugins.as_slice()).unwrap_or(&[]),
        &own,
    ));
    let serving: Vec<&str> = chain
        .plugins()
        .iter()
        .filter(|p| p.serves_request())
        .map(|p| p.name())
        .collect();
    for p in chain.plugins() {
        if let Err(e) = p.check_route(&chain) {
            // Name the plugin where it was written: on the route, else on its service.
            let owner = if own.iter().any(|o| o.name() == p.name()) {
                path.to_string()
            } else {
                service_path.clone()
            };
            let at = match e.path.as_str() {
                "" => format!("{owner}.plugins.{}", p.name()),
                sub => format!("{owner}.plugins.{}.{sub}", p.name()),
            };
            return Err(ConfigError::new(at, e.message));
        }
    }
    if serving.len() > 1 {
        return Err(err(
            ".plugins",
            format!(
                "{} {} apply to this route; use one of them",
                serving.join(" and "),
                if serving.len() == 2 { "both" } else { "all" }
            ),
        ));
    }
    let upstream = match (&r.upstream, service.and_then(|s| s.conf.upstream.as_ref())) {
        (Some(u), _) => Some(Arc::new(Upstream::build(u, &format!("{path}.upstream"))?)),
        (None, Some(u)) => Some(Arc::new(Upstream::build(
            u,
            &format!("{service_path}.upstream"),
        )?)),
        (None, None) => None,
    };
    if !chain.serves_request() && upstream.is_none() {
        return Err(err(
            "",
            "route has nothing to proxy to: add ai-proxy, ai-proxy-multi or an upstream".into(),
        ));
    }
    if chain.plugins().iter().any(|p| p.needs_route_upstream()) && upstream.is_none() {
        return Err(err(
            ".upstream",
            "ai-proxy passthrough needs the route's upstream to send the answer to".into(),
        ));
    }
    let entry = RouteEntry {
        id: index,
        uris,
        methods,
        hosts,
        remote_addrs,
        vars,
        priority: r.priority.unwrap_or(0),
    };
    Ok((
        Route {
            id: r.id.to_string().into(),
            chain: Arc::new(chain),
            upstream,
        },
        entry,
    ))
}

/// The live snapshot, swapped atomically on change.
pub struct Store {
    current: ArcSwap<Snapshot>,
}

impl crate::balancer::health::ProbeSource for Arc<Store> {
    fn probes(&self) -> Vec<Arc<crate::balancer::health::ActiveProbe>> {
        self.load().probes.clone()
    }
}

impl Store {
    pub fn new(s: Snapshot) -> Store {
        Store {
            current: ArcSwap::from_pointee(s),
        }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}
