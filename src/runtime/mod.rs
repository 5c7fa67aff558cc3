//! The compiled runtime: the resources (`crate::resources`) compiled into the objects requests
//! use, published as one `Snapshot` behind an `ArcSwap`.
//!
//! Each request loads the current snapshot once and uses it to the end, so a config change never
//! affects a request half-way through: requests in flight finish on the configuration they
//! started with. A change builds only what it touches: compiled services, routes and the
//! consumers index are kept in a `Cache` keyed by id with the fingerprints of the configs they
//! were built from, and reused (the same `Arc`) when those did not change. The router's index is
//! rebuilt from the routes' entries (cheap); nothing is recompiled for an unrelated change.
//! Runtime state that must outlive a rebuild of its owner (health, balancer rotation, quota
//! windows) is kept outside compiled objects, keyed by owner (`crate::balancer::state`,
//! `crate::quota`).

pub mod consumers;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::schema::{FileConfig, RouteConf, ServiceConf};
use crate::config::ConfigError;
use crate::plugins::consumer::Consumers;
use crate::plugins::{self, Chain, Plugin};
use crate::resources::{Change, ChangeError, Kind, Resource, Resources, Typed};
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
    pub consumers: Arc<Consumers>,
    pub router: Router,
    /// Every active health probe of this config (run by the health-check service).
    pub probes: Vec<Arc<crate::balancer::health::ActiveProbe>>,
}

const WEBSOCKET: &str = "WebSocket proxying is not supported (leave enable_websocket out or false)";

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

/// Compiled objects by id, with the fingerprints of what they were built from.
#[derive(Default, Clone)]
/// Cloned for every change (a failed change leaves the old one intact): keys and values are
/// shared pointers, so a clone copies the table, not the entries.
pub struct Cache {
    services: HashMap<Arc<str>, Arc<CachedService>>,
    routes: HashMap<Arc<str>, Arc<CachedRoute>>,
    consumers: Option<(u64, Arc<Consumers>)>,
}

/// A compiled service with the fingerprints of its config and of its upstream object.
type CachedService = (u64, Option<u64>, Arc<Service>);
/// A compiled route, its router entry, and what it was built from.
type CachedRoute = (RouteKey, Arc<Route>, RouteEntry);

/// What a compiled route depends on: its own config, its service's, the upstream object's.
type RouteKey = (u64, Option<u64>, Option<u64>, Option<u64>);

impl Snapshot {
    /// Every credential value configured (auth headers and query parameters), for log scrubbing.
    pub fn credentials(&self) -> Vec<String> {
        let consumer_plugins = self.consumers.by_name.values().flat_map(|c| &c.plugins);
        let mut out: Vec<String> = self
            .routes
            .iter()
            .flat_map(|r| r.chain.plugins())
            .chain(consumer_plugins)
            .flat_map(|p| p.credentials())
            .collect();
        out.extend(self.consumers.secrets().map(str::to_string));
        out
    }

    /// Compile a whole config file (for `-t` and tests).
    pub fn build(file: &FileConfig) -> Result<Snapshot, ConfigError> {
        let resources = Resources::from_file(file, &serde_json::Value::Null)?;
        Snapshot::compile(&resources, &mut Cache::default())
    }

    /// Compile `resources`, reusing from `cache` what did not change; `cache` is updated to
    /// what this snapshot uses (on error it may hold new entries: pass a copy).
    pub fn compile(resources: &Resources, cache: &mut Cache) -> Result<Snapshot, ConfigError> {
        let mut services: HashMap<&str, Arc<Service>> = HashMap::new();
        let mut next_services = HashMap::with_capacity(cache.services.len());
        for (id, r) in resources.map(Kind::Services) {
            let Typed::Service(conf) = &r.typed else {
                continue;
            };
            let up_fp = upstream_fp(resources, conf.upstream_id.as_ref());
            let (k, e) = match cache.services.get_key_value(id.as_str()) {
                Some((k, e)) if e.0 == r.fingerprint && e.1 == up_fp => (k.clone(), e.clone()),
                _ => {
                    let service = Arc::new(Service::build(id, r, conf.clone(), resources)?);
                    (
                        Arc::from(id.as_str()),
                        Arc::new((r.fingerprint, up_fp, service)),
                    )
                }
            };
            services.insert(id, e.2.clone());
            next_services.insert(k, e);
        }
        cache.services = next_services;

        let mut routes = Vec::with_capacity(resources.map(Kind::Routes).len());
        let mut entries = Vec::with_capacity(routes.capacity());
        let mut next_routes = HashMap::with_capacity(cache.routes.len());
        // Config order breaks ties between equal routes: the file's order, then creation order.
        let mut ordered: Vec<(&String, &Resource)> = resources.map(Kind::Routes).iter().collect();
        ordered.sort_by_key(|(id, r)| (r.created_index, *id));
        for (id, r) in ordered {
            let Typed::Route(conf) = &r.typed else {
                continue;
            };
            if conf.status == Some(0) {
                continue; // disabled, as in APISIX
            }
            let service = match &conf.service_id {
                Some(sid) => Some(services.get(sid.to_string().as_str()).ok_or_else(|| {
                    ConfigError::new(
                        format!("{}.service_id", r.path),
                        format!("service {:?} does not exist", sid.to_string()),
                    )
                })?),
                None => None,
            };
            let key: RouteKey = (
                r.fingerprint,
                service.map(|s| s.fingerprint),
                upstream_fp(resources, conf.upstream_id.as_ref()),
                service.and_then(|s| s.upstream_fp),
            );
            let (k, c) = match cache.routes.get_key_value(id.as_str()) {
                Some((k, c)) if c.0 == key => (k.clone(), c.clone()),
                _ => {
                    let (route, entry) =
                        compile_route(conf, &r.path, service.map(|s| &**s), resources)?;
                    (
                        Arc::from(id.as_str()),
                        Arc::new((key, Arc::new(route), entry)),
                    )
                }
            };
            let mut entry = c.2.clone();
            entry.id = routes.len();
            routes.push(c.1.clone());
            entries.push(entry);
            next_routes.insert(k, c);
        }
        cache.routes = next_routes;
        let router = Router::new(entries).map_err(|m| ConfigError::new("routes", m))?;

        let consumers_fp = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for kind in [Kind::Consumers, Kind::Credentials] {
                for (id, r) in resources.map(kind) {
                    (id, r.fingerprint).hash(&mut h);
                }
            }
            h.finish()
        };
        let consumers = match &cache.consumers {
            Some((fp, c)) if *fp == consumers_fp => c.clone(),
            _ => {
                let c = Arc::new(consumers::compile(resources)?);
                cache.consumers = Some((consumers_fp, c.clone()));
                c
            }
        };

        // A service's plugins are shared by its routes: collect each probe once.
        let mut probes: Vec<Arc<crate::balancer::health::ActiveProbe>> = Vec::new();
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

fn upstream_fp(resources: &Resources, id: Option<&crate::config::schema::Id>) -> Option<u64> {
    id.and_then(|id| resources.get(Kind::Upstreams, &id.to_string()))
        .map(|u| u.fingerprint)
}

/// A compiled service: its config, its plugins (compiled once and shared by its routes: one
/// balancer state, one set of health probes) and its upstream object, if it names one.
pub struct Service {
    conf: Arc<ServiceConf>,
    path: Arc<str>,
    fingerprint: u64,
    upstream_fp: Option<u64>,
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Service {
    fn build(
        id: &str,
        r: &Resource,
        conf: Arc<ServiceConf>,
        resources: &Resources,
    ) -> Result<Service, ConfigError> {
        if conf.enable_websocket == Some(true) {
            return Err(ConfigError::new(
                format!("{}.enable_websocket", r.path),
                WEBSOCKET,
            ));
        }
        let owner = plugins::Owner::Service(id.to_string());
        let plugins = plugins::compile(conf.plugins.as_ref(), &r.path, &owner)?;
        Ok(Service {
            upstream_fp: upstream_fp(resources, conf.upstream_id.as_ref()),
            conf,
            path: r.path.clone(),
            fingerprint: r.fingerprint,
            plugins,
        })
    }
}

fn compile_route(
    r: &RouteConf,
    path: &str,
    service: Option<&Service>,
    resources: &Resources,
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
    // APISIX fields aigate does not act on are refused rather than silently ignored.
    if r.timeout.is_some() {
        return Err(err(
            ".timeout",
            "a route-level timeout is not supported: set it on the upstream (upstream.timeout) \
             or on ai-proxy / ai-proxy-multi (timeout)"
                .into(),
        ));
    }
    if r.enable_websocket == Some(true) {
        return Err(err(".enable_websocket", WEBSOCKET.into()));
    }
    let vars = match &r.vars {
        Some(v) => Some(Expr::compile(v).map_err(|m| err(".vars", m))?),
        None => None,
    };
    let service_path = service.map(|s| s.path.to_string()).unwrap_or_default();
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
    // The route's own upstream (inline, else by id), else its service's.
    let by_id =
        |id: &crate::config::schema::Id, at: &str| -> Result<Option<Arc<Upstream>>, ConfigError> {
            let r = resources
                .get(Kind::Upstreams, &id.to_string())
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{at}.upstream_id"),
                        format!("upstream {:?} does not exist", id.to_string()),
                    )
                })?;
            let Typed::Upstream(u) = &r.typed else {
                return Ok(None);
            };
            Ok(Some(Arc::new(Upstream::build(u, &r.path)?)))
        };
    let upstream = match (&r.upstream, &r.upstream_id, service) {
        (Some(u), _, _) => Some(Arc::new(Upstream::build(u, &format!("{path}.upstream"))?)),
        (None, Some(id), _) => by_id(id, path)?,
        (None, None, Some(s)) => match (&s.conf.upstream, &s.conf.upstream_id) {
            (Some(u), _) => Some(Arc::new(Upstream::build(
                u,
                &format!("{service_path}.upstream"),
            )?)),
            (None, Some(id)) => by_id(id, &service_path)?,
            (None, None) => None,
        },
        (None, None, None) => None,
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
    let chain = match crate::observability::metrics::global() {
        Some(m) => with_metrics(m, chain, r, service, upstream.as_deref()),
        None => chain,
    };
    let entry = RouteEntry {
        id: 0,
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

/// `gateway.metrics` is on: the route's chain with a `prometheus` bound to this route (in
/// place of one configured on the route or its service, whose `prefer_name` it keeps).
fn with_metrics(
    m: &Arc<crate::observability::metrics::Metrics>,
    chain: Chain,
    r: &RouteConf,
    service: Option<&Service>,
    upstream: Option<&Upstream>,
) -> Chain {
    use crate::plugins::prometheus::{Prometheus, RouteLabels, NAME};
    let route_id = r.id.to_string();
    let service_id = service.map(|s| s.conf.id.to_string());
    let bound = Prometheus::bind(
        m,
        &chain,
        RouteLabels {
            id: &route_id,
            name: r.name.as_deref(),
            service_id: service_id.as_deref(),
            service_name: service.and_then(|s| s.conf.name.as_deref()),
            upstream_nodes: upstream
                .map(|u| {
                    u.nodes
                        .iter()
                        .map(|n| format!("{}:{}", n.host, n.port))
                        .collect()
                })
                .unwrap_or_default(),
        },
    );
    let mut plugins: Vec<Arc<dyn Plugin>> = chain
        .plugins()
        .iter()
        .filter(|p| p.name() != NAME)
        .cloned()
        .collect();
    plugins.push(Arc::new(bound));
    Chain::new(plugins)
}

/// The live configuration: the desired state and the snapshot compiled from it, swapped
/// atomically on every change. Every source (the config file and SIGHUP, the admin API, etcd)
/// changes it through `apply` or `replace_origin`: validate, build what changed, swap.
pub struct Store {
    current: ArcSwap<Snapshot>,
    desired: Mutex<Desired>,
}

struct Desired {
    resources: Resources,
    cache: Cache,
}

impl crate::balancer::health::ProbeSource for Arc<Store> {
    fn probes(&self) -> Vec<Arc<crate::balancer::health::ActiveProbe>> {
        self.load().probes.clone()
    }
}

impl Store {
    /// Compile `resources` into the first snapshot.
    pub fn new(resources: Resources) -> Result<Store, ConfigError> {
        let mut cache = Cache::default();
        let snapshot = Snapshot::compile(&resources, &mut cache)?;
        crate::observability::redact::set_secrets(snapshot.credentials());
        Ok(Store {
            current: ArcSwap::from_pointee(snapshot),
            desired: Mutex::new(Desired { resources, cache }),
        })
    }

    /// The snapshot requests use (load once per request).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Read the desired state (the admin API's GETs). Writers wait meanwhile: keep it short.
    pub fn read<R>(&self, f: impl FnOnce(&Resources) -> R) -> R {
        f(&self.lock().resources)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Desired> {
        self.desired.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply `changes`, all or none: each is checked, the result compiled (reusing what did not
    /// change), `persist` given the resources of the admin origin (a store writes them), and only
    /// then the new snapshot published. Returns each change's resource (the deleted one for a
    /// delete).
    pub fn apply(
        &self,
        changes: Vec<Change>,
        persist: impl FnOnce(&Resources) -> Result<(), String>,
    ) -> Result<Vec<Resource>, ApplyError> {
        let mut d = self.lock();
        let mut next = d.resources.clone();
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            if let Some(r) = next.apply(c).map_err(ApplyError::Change)? {
                out.push(r);
            }
        }
        self.publish(&mut d, next, persist)?;
        Ok(out)
    }

    /// Replace every resource of `origin` by `resources` (SIGHUP re-reading the file, a store's
    /// full resync), keeping the other origin's. One id in both is refused.
    pub fn replace_origin(
        &self,
        origin: crate::resources::Origin,
        resources: Resources,
    ) -> Result<(), ApplyError> {
        self.replace_origin_if(origin, resources, || true).map(drop)
    }

    /// `replace_origin`, only if `still_fresh` says so under the store's lock (which every change
    /// holds while it is written): false, and nothing changed, when it does not.
    pub fn replace_origin_if(
        &self,
        origin: crate::resources::Origin,
        resources: Resources,
        still_fresh: impl FnOnce() -> bool,
    ) -> Result<bool, ApplyError> {
        let mut d = self.lock();
        if !still_fresh() {
            return Ok(false);
        }
        let other = match origin {
            crate::resources::Origin::File => crate::resources::Origin::Admin,
            crate::resources::Origin::Admin => crate::resources::Origin::File,
        };
        let (mut base, add) = match origin {
            crate::resources::Origin::File => (resources, d.resources.of_origin(other)),
            crate::resources::Origin::Admin => (d.resources.of_origin(other), resources),
        };
        base.index = base.index.max(d.resources.index);
        base.merge_stored(add).map_err(ApplyError::Conflict)?;
        self.publish(&mut d, base, |_| Ok(()))?;
        Ok(true)
    }

    fn publish(
        &self,
        d: &mut Desired,
        next: Resources,
        persist: impl FnOnce(&Resources) -> Result<(), String>,
    ) -> Result<(), ApplyError> {
        let mut cache = d.cache.clone();
        let snapshot = Snapshot::compile(&next, &mut cache)
            .map_err(|e| ApplyError::Change(ChangeError::Invalid(e)))?;
        persist(&next).map_err(ApplyError::Store)?;
        crate::observability::redact::set_secrets(snapshot.credentials());
        self.current.store(Arc::new(snapshot));
        d.resources = next;
        d.cache = cache;
        Ok(())
    }
}

/// Why `Store::apply` changed nothing.
#[derive(Debug)]
pub enum ApplyError {
    /// The change itself, or the config it makes, is not valid.
    Change(ChangeError),
    /// The store that keeps the change could not write it.
    Store(String),
    /// Two origins define the same resource.
    Conflict(String),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyError::Change(e) => write!(f, "{e}"),
            ApplyError::Store(m) | ApplyError::Conflict(m) => f.write_str(m),
        }
    }
}
