//! Request router with Apache APISIX matching semantics.
//!
//! A route matches when its uri, methods, hosts, remote_addrs and vars all
//! match. Candidates are tried in lua-resty-radixtree order (APISIX's
//! `radixtree_uri` router):
//!
//! 1. routes whose uri equals the path exactly;
//! 2. prefix routes (`/a/*`), the longest prefix first;
//!
//! and within one uri pattern, higher `priority` first, ties in config order.
//! The first candidate that passes every check wins.
//!
//! APISIX's default router since 3.x is `radixtree_host_uri`, which orders
//! differently: routes whose host matches come first (exact hosts, then
//! wildcard hosts longest suffix first), each host's routes in the order
//! above, and routes without hosts only after those. [`Router::with_mode`]
//! with [`MatchMode::HostUri`] gives that order; [`Router::new`] is the
//! `radixtree_uri` order.
//!
//! The path is matched as given: decoding and normalising it (nginx's `$uri`)
//! is the caller's job.
//!
//! Cost per request: one hash lookup for exact uris plus one trie walk over
//! the path's bytes for prefixes (see `table.rs`), then only the candidates
//! of the matching buckets. Nothing is allocated unless a candidate's vars
//! need it (e.g. a percent-decoded query parameter). In `Uri` mode the hosts
//! of a bucket's routes are a per-candidate filter, so thousands of
//! per-tenant routes on one uri are scanned; `HostUri` mode indexes them by
//! host instead.

pub mod vars;

pub mod cidr;
mod host;
mod table;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use cidr::{Cidr, Ip};
use host::{HostPat, ReqHost};
use table::{FastBuild, Table, UriPat};

/// One route as configured.
#[derive(Clone, Debug)]
pub struct RouteEntry {
    /// Opaque to the router; returned by [`Router::find`].
    pub id: usize,
    /// `/a/b` exact, or `/a/*` prefix (the text before the trailing `*`);
    /// `/*` matches every path.
    pub uris: Vec<String>,
    /// Upper-case method names; `None` (or an empty list) = any method.
    pub methods: Option<Vec<String>>,
    /// Empty = any host; `api.example.com` exact or `*.example.com`
    /// wildcard; case-insensitive.
    pub hosts: Vec<String>,
    /// Empty = any client; `10.0.0.1`, `10.0.0.0/8`, `2001:db8::/32`.
    pub remote_addrs: Vec<String>,
    pub vars: Option<vars::Expr>,
    /// Higher wins among routes with the same uri pattern.
    pub priority: i64,
}

/// The parts of a request the router looks at.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// No query.
    pub path: &'a str,
    /// Raw query string without '?'.
    pub query: Option<&'a str>,
    /// Host header (or :authority), possibly with ":port".
    pub host: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub remote_addr: Option<IpAddr>,
    /// "http" / "https".
    pub scheme: &'a str,
    pub server_port: u16,
    /// `None` when the body has not been read.
    pub body: Option<&'a dyn vars::PostArgs>,
    /// The authenticated consumer's name (never while routes are matched).
    pub consumer: Option<&'a str>,
}

impl<'a> RequestView<'a> {
    /// The view of a request header (plain HTTP; the Host header, else the URI's authority).
    pub fn of(
        req: &'a pingora_http::RequestHeader,
        remote_addr: Option<IpAddr>,
        server_port: u16,
        body: Option<&'a dyn vars::PostArgs>,
    ) -> RequestView<'a> {
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host());
        RequestView {
            method: req.method.as_str(),
            path: req.uri.path(),
            query: req.uri.query(),
            host,
            headers: &req.headers,
            remote_addr,
            scheme: "http",
            server_port,
            body,
            consumer: None,
        }
    }
}

/// Candidate order; see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatchMode {
    /// APISIX `radixtree_uri`: uri specificity first, hosts are a filter.
    #[default]
    Uri,
    /// APISIX `radixtree_host_uri` (APISIX's default): matching hosts first.
    HostUri,
}

impl MatchMode {
    /// Maps APISIX's `apisix.router.http` setting.
    pub fn from_apisix(name: &str) -> Option<MatchMode> {
        match name {
            "radixtree_uri" => Some(MatchMode::Uri),
            "radixtree_host_uri" => Some(MatchMode::HostUri),
            _ => None,
        }
    }
}

pub struct Router {
    routes: Vec<Route>,
    layout: Layout,
    /// Whether any route reads `post_arg.*`; if not, `needs_body` is free.
    any_body: bool,
    /// The distinct `post_arg` paths the routes read; `find` looks each up at
    /// most once per request, in the slot of the same index.
    body_paths: Box<[Box<[Box<str>]>]>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.layout {
            Layout::Uri(_) => MatchMode::Uri,
            Layout::HostUri(_) => MatchMode::HostUri,
        };
        f.debug_struct("Router")
            .field("routes", &self.routes.len())
            .field("mode", &mode)
            .finish()
    }
}

/// A route compiled for matching.
#[derive(Debug)]
struct Route {
    id: usize,
    /// Bit set of METHODS; 0 = any.
    methods: u16,
    hosts: Box<[HostPat]>,
    remotes: Box<[Cidr]>,
    vars: Option<vars::Expr>,
    reads_body: bool,
}

/// The methods APISIX knows (its route schema enum and radixtree's bit set).
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

/// Bit of a method in METHODS order; 0 for anything else. Methods are
/// case-sensitive in HTTP: "get" is not GET.
#[inline]
fn method_bit(m: &str) -> u16 {
    match m {
        "GET" => 1,
        "POST" => 1 << 1,
        "PUT" => 1 << 2,
        "DELETE" => 1 << 3,
        "PATCH" => 1 << 4,
        "HEAD" => 1 << 5,
        "OPTIONS" => 1 << 6,
        "CONNECT" => 1 << 7,
        "TRACE" => 1 << 8,
        "PURGE" => 1 << 9,
        _ => 0,
    }
}

enum Layout {
    Uri(Table),
    HostUri(Box<HostTables>),
}

/// `radixtree_host_uri`: one uri table per host pattern, then one for the
/// routes without hosts. Routes in a host's table are there because their
/// host matched, so their hosts are not checked again.
struct HostTables {
    /// Lower-case exact host -> its routes.
    exact: HashMap<Box<str>, Table, FastBuild>,
    /// IPv6 literal hosts (rare; scanned).
    v6: Vec<(Ipv6Addr, Table)>,
    /// Lower-case wildcard suffix (`.example.com`) -> its routes.
    wild: HashMap<Box<str>, Table, FastBuild>,
    /// Distinct suffix lengths, longest first (a longer suffix is more
    /// specific, as in radixtree's reversed-host prefix search).
    wild_lens: Vec<usize>,
    no_host: Table,
}

/// Per-request facts computed once, not per candidate.
struct Prepared<'a> {
    method: u16,
    host: Option<ReqHost<'a>>,
    remote: Option<Ip>,
}

impl Route {
    /// The checks that need neither vars nor body.
    #[inline]
    fn pre_match(&self, p: &Prepared, check_host: bool) -> bool {
        if self.methods != 0 && self.methods & p.method == 0 {
            return false;
        }
        if !self.remotes.is_empty() {
            match p.remote {
                Some(ip) if self.remotes.iter().any(|c| c.contains(ip)) => {}
                _ => return false,
            }
        }
        if check_host && !self.hosts.is_empty() {
            match &p.host {
                Some(h) if self.hosts.iter().any(|pat| pat.matches(h)) => {}
                _ => return false,
            }
        }
        true
    }
}

fn parse_uri(u: &str) -> Result<UriPat, String> {
    if !u.starts_with('/') {
        return Err(format!("uri {u:?} must start with '/'"));
    }
    match u.find('*') {
        None => Ok(UriPat::Exact(u.to_string())),
        Some(i) if i == u.len() - 1 => Ok(UriPat::Prefix(u[..i].to_string())),
        Some(_) => Err(format!(
            "uri {u:?}: '*' is only allowed at the end (prefix match)"
        )),
    }
}

fn compile_route(e: RouteEntry) -> Result<(Route, Vec<UriPat>, i64), String> {
    if e.uris.is_empty() {
        return Err("no uris".to_string());
    }
    let uris = e
        .uris
        .iter()
        .map(|u| parse_uri(u))
        .collect::<Result<Vec<_>, _>>()?;
    let mut methods = 0u16;
    for m in e.methods.iter().flatten() {
        match method_bit(m) {
            0 => {
                return Err(format!(
                    "unknown method {m:?} (expected one of {})",
                    METHODS.join(", ")
                ))
            }
            b => methods |= b,
        }
    }
    let hosts = e
        .hosts
        .iter()
        .map(|h| HostPat::parse(h))
        .collect::<Result<Vec<_>, _>>()?;
    let remotes = e
        .remote_addrs
        .iter()
        .map(|a| Cidr::parse(a).map_err(|err| format!("remote_addrs: {err}")))
        .collect::<Result<Vec<_>, _>>()?;
    let reads_body = e.vars.as_ref().is_some_and(|v| v.reads_body());
    let route = Route {
        id: e.id,
        methods,
        hosts: hosts.into(),
        remotes: remotes.into(),
        vars: e.vars,
        reads_body,
    };
    Ok((route, uris, e.priority))
}

impl Router {
    /// Builds a router with APISIX `radixtree_uri` ordering. Fails with a
    /// message naming the entry (position and id) and the problem.
    pub fn new(entries: Vec<RouteEntry>) -> Result<Router, String> {
        Router::with_mode(entries, MatchMode::Uri)
    }

    /// Builds a router with the given candidate order.
    pub fn with_mode(entries: Vec<RouteEntry>, mode: MatchMode) -> Result<Router, String> {
        if entries.len() >= u32::MAX as usize {
            return Err(format!("too many routes: {}", entries.len()));
        }
        let mut routes = Vec::with_capacity(entries.len());
        let mut uris = Vec::with_capacity(entries.len());
        let mut priorities = Vec::with_capacity(entries.len());
        let mut body_paths = Vec::new();
        for (i, e) in entries.into_iter().enumerate() {
            let id = e.id;
            let (mut route, pats, prio) =
                compile_route(e).map_err(|err| format!("route #{i} (id {id}): {err}"))?;
            if let Some(v) = &mut route.vars {
                v.assign_body_slots(&mut body_paths);
            }
            routes.push(route);
            uris.push(pats);
            priorities.push(prio);
        }
        let prio = |r: u32| priorities[r as usize];
        let items_of = |filter: &dyn Fn(usize) -> bool| -> Vec<(u32, &UriPat)> {
            uris.iter()
                .enumerate()
                .filter(|(r, _)| filter(*r))
                .flat_map(|(r, pats)| pats.iter().map(move |p| (r as u32, p)))
                .collect()
        };
        let layout = match mode {
            MatchMode::Uri => Layout::Uri(Table::build(&items_of(&|_| true), prio)),
            MatchMode::HostUri => {
                // Group routes by host pattern, keeping config order in each.
                let mut exact: HashMap<Box<str>, Vec<usize>> = HashMap::new();
                let mut v6: Vec<(Ipv6Addr, Vec<usize>)> = Vec::new();
                let mut wild: HashMap<Box<str>, Vec<usize>> = HashMap::new();
                for (r, route) in routes.iter().enumerate() {
                    for h in route.hosts.iter() {
                        let list = match h {
                            HostPat::Exact(s) => exact.entry(s.clone()).or_default(),
                            HostPat::Suffix(s) => wild.entry(s.clone()).or_default(),
                            HostPat::V6(a) => {
                                let i = v6.iter().position(|(x, _)| x == a).unwrap_or_else(|| {
                                    v6.push((*a, Vec::new()));
                                    v6.len() - 1
                                });
                                &mut v6[i].1
                            }
                        };
                        if list.last() != Some(&r) {
                            list.push(r);
                        }
                    }
                }
                let build = |members: &[usize]| {
                    let items: Vec<(u32, &UriPat)> = members
                        .iter()
                        .flat_map(|&r| uris[r].iter().map(move |p| (r as u32, p)))
                        .collect();
                    Table::build(&items, prio)
                };
                let mut wild_lens: Vec<usize> = wild.keys().map(|k| k.len()).collect();
                wild_lens.sort_unstable_by(|a, b| b.cmp(a));
                wild_lens.dedup();
                Layout::HostUri(Box::new(HostTables {
                    exact: exact.into_iter().map(|(k, m)| (k, build(&m))).collect(),
                    v6: v6.into_iter().map(|(a, m)| (a, build(&m))).collect(),
                    wild: wild.into_iter().map(|(k, m)| (k, build(&m))).collect(),
                    wild_lens,
                    no_host: Table::build(&items_of(&|r| routes[r].hosts.is_empty()), prio),
                }))
            }
        };
        let any_body = routes.iter().any(|r| r.reads_body);
        Ok(Router {
            routes,
            layout,
            any_body,
            body_paths: body_paths.into(),
        })
    }

    fn prepare<'a>(req: &RequestView<'a>) -> Prepared<'a> {
        Prepared {
            method: method_bit(req.method),
            host: req.host.and_then(host::normalize),
            remote: req.remote_addr.map(Ip::from_addr),
        }
    }

    /// Walks the candidates for `req` in order, calling `f(route, check_host)`
    /// until it returns `Some`.
    #[inline]
    fn visit<R>(
        &self,
        req: &RequestView,
        p: &Prepared,
        f: &mut impl FnMut(&Route, bool) -> Option<R>,
    ) -> Option<R> {
        match &self.layout {
            Layout::Uri(t) => t.visit(req.path, &mut |r| f(&self.routes[r as usize], true)),
            Layout::HostUri(ht) => {
                let mut g = |r: u32| f(&self.routes[r as usize], false);
                if let Some(h) = &p.host {
                    let found = with_lower(h.bare, |lower| {
                        if let Some(t) = ht.exact.get(lower) {
                            if let Some(x) = t.visit(req.path, &mut g) {
                                return Some(x);
                            }
                        }
                        if let Some(a) = h.v6 {
                            for (_, t) in ht.v6.iter().filter(|(x, _)| *x == a) {
                                if let Some(x) = t.visit(req.path, &mut g) {
                                    return Some(x);
                                }
                            }
                        }
                        for &len in &ht.wild_lens {
                            let Some(suffix) =
                                lower.len().checked_sub(len).and_then(|i| lower.get(i..))
                            else {
                                continue;
                            };
                            if let Some(t) = ht.wild.get(suffix) {
                                if let Some(x) = t.visit(req.path, &mut g) {
                                    return Some(x);
                                }
                            }
                        }
                        None
                    });
                    if found.is_some() {
                        return found;
                    }
                }
                ht.no_host.visit(req.path, &mut g)
            }
        }
    }

    /// Whether `find`'s answer for this request could depend on the body:
    /// some candidate that passes the uri, method, host and remote checks
    /// has vars that read `post_arg.*` (its other rules are not evaluated
    /// here), and no candidate before it matches outright. When true, read
    /// the body and call `find` with it.
    pub fn needs_body(&self, req: &RequestView) -> bool {
        if !self.any_body {
            return false;
        }
        let p = Router::prepare(req);
        self.visit(req, &p, &mut |route, check_host| {
            if !route.pre_match(&p, check_host) {
                return None;
            }
            if route.reads_body {
                return Some(true);
            }
            // This route wins whatever the body holds, so later ones don't matter.
            match &route.vars {
                Some(v) if !v.eval(req) => None,
                _ => Some(false),
            }
        })
        .unwrap_or(false)
    }

    /// The matching route's id, or None. Body vars of a request without a
    /// body (`body: None`) read as unset. Each `post_arg` path is looked up at
    /// most once, however many candidates read it.
    pub fn find(&self, req: &RequestView) -> Option<usize> {
        match req.body {
            Some(_) if !self.body_paths.is_empty() => {
                let memo = vars::BodyMemo::new(self.body_paths.len());
                self.find_with(req, Some(&memo))
            }
            // Requests routed without their body keep the memo off the stack.
            _ => self.find_with(req, None),
        }
    }

    #[inline]
    fn find_with<'a>(
        &self,
        req: &RequestView<'a>,
        memo: Option<&vars::BodyMemo<'a>>,
    ) -> Option<usize> {
        let p = Router::prepare(req);
        self.visit(req, &p, &mut |route, check_host| {
            if route.pre_match(&p, check_host)
                && route.vars.as_ref().is_none_or(|v| v.eval_memo(req, memo))
            {
                Some(route.id)
            } else {
                None
            }
        })
    }

    /// The distinct `post_arg` paths the routes read, as segments
    /// (`messages[0].role` is `["messages", "0", "role"]`).
    pub fn body_paths(&self) -> impl Iterator<Item = Vec<&str>> + '_ {
        self.body_paths
            .iter()
            .map(|p| p.iter().map(|s| &**s).collect())
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Runs `f` on the ASCII-lower-cased `s`, using a stack buffer so the usual
/// host needs no allocation.
fn with_lower<R>(s: &str, f: impl FnOnce(&str) -> R) -> R {
    if !s.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(s);
    }
    let mut buf = [0u8; 256];
    match buf.get_mut(..s.len()) {
        Some(dst) => {
            dst.copy_from_slice(s.as_bytes());
            dst.make_ascii_lowercase();
            // Lower-casing ASCII bytes keeps UTF-8 valid; fall back anyway.
            match std::str::from_utf8(dst) {
                Ok(lower) => f(lower),
                Err(_) => f(&s.to_ascii_lowercase()),
            }
        }
        None => f(&s.to_ascii_lowercase()),
    }
}
