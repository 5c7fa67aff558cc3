//! Router and vars tests. The last ones check 5,000 generated routes against
//! a brute-force reference matcher written independently of the index.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value as Json};

use super::vars::{Expr, PostArgs, Value};
use super::*;

// ---------------------------------------------------------------- helpers

fn route(id: usize, uris: &[&str]) -> RouteEntry {
    RouteEntry {
        id,
        uris: uris.iter().map(|s| s.to_string()).collect(),
        methods: None,
        hosts: Vec::new(),
        remote_addrs: Vec::new(),
        vars: None,
        priority: 0,
    }
}

fn prio(mut e: RouteEntry, p: i64) -> RouteEntry {
    e.priority = p;
    e
}

fn methods(mut e: RouteEntry, m: &[&str]) -> RouteEntry {
    e.methods = Some(m.iter().map(|s| s.to_string()).collect());
    e
}

fn hosts(mut e: RouteEntry, h: &[&str]) -> RouteEntry {
    e.hosts = h.iter().map(|s| s.to_string()).collect();
    e
}

fn remotes(mut e: RouteEntry, r: &[&str]) -> RouteEntry {
    e.remote_addrs = r.iter().map(|s| s.to_string()).collect();
    e
}

fn with_vars(mut e: RouteEntry, v: Json) -> RouteEntry {
    e.vars = Some(Expr::compile(&v).expect("vars compile"));
    e
}

/// An owned request; `view()` borrows it as the router wants.
#[derive(Clone)]
struct Req {
    method: String,
    path: String,
    query: Option<String>,
    host: Option<String>,
    headers: HeaderMap,
    remote: Option<IpAddr>,
    scheme: String,
    port: u16,
    body: Option<Json>,
}

fn req(method: &str, path_and_query: &str) -> Req {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path_and_query.to_string(), None),
    };
    Req {
        method: method.into(),
        path,
        query,
        host: None,
        headers: HeaderMap::new(),
        remote: None,
        scheme: "http".into(),
        port: 9080,
        body: None,
    }
}

fn get(pq: &str) -> Req {
    req("GET", pq)
}

impl Req {
    fn host(mut self, h: &str) -> Req {
        self.host = Some(h.into());
        self
    }
    fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
        self
    }
    fn remote(mut self, ip: &str) -> Req {
        self.remote = Some(ip.parse().unwrap());
        self
    }
    fn body(mut self, b: Json) -> Req {
        self.body = Some(b);
        self
    }
    fn view(&self) -> RequestView<'_> {
        RequestView {
            consumer: None,
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            host: self.host.as_deref(),
            headers: &self.headers,
            remote_addr: self.remote,
            scheme: &self.scheme,
            server_port: self.port,
            body: self.body.as_ref().map(|b| b as &dyn PostArgs),
        }
    }
}

fn router(entries: Vec<RouteEntry>) -> Router {
    Router::new(entries).expect("router builds")
}

fn find(r: &Router, q: &Req) -> Option<usize> {
    r.find(&q.view())
}

/// Evaluates one vars expression against a request.
fn ev(vars: Json, q: &Req) -> bool {
    Expr::compile(&vars)
        .unwrap_or_else(|e| panic!("{vars}: {e}"))
        .eval(&q.view())
}

fn compile_err(vars: Json) -> String {
    match Expr::compile(&vars) {
        Ok(_) => panic!("{vars} should not compile"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------- ordering

#[test]
fn exact_before_prefix_regardless_of_priority() {
    let r = router(vec![prio(route(1, &["/a/*"]), 100), route(2, &["/a/b"])]);
    assert_eq!(find(&r, &get("/a/b")), Some(2));
    assert_eq!(find(&r, &get("/a/c")), Some(1));
}

#[test]
fn longer_prefix_first_regardless_of_priority() {
    let r = router(vec![
        prio(route(1, &["/*"]), 100),
        prio(route(2, &["/a/*"]), 50),
        route(3, &["/a/b/*"]),
    ]);
    assert_eq!(find(&r, &get("/a/b/c")), Some(3));
    assert_eq!(find(&r, &get("/a/x")), Some(2));
    assert_eq!(find(&r, &get("/zzz")), Some(1));
    assert_eq!(find(&r, &get("/")), Some(1));
}

#[test]
fn priority_then_config_order_within_a_pattern() {
    let r = router(vec![
        route(1, &["/p"]),
        prio(route(2, &["/p"]), 5),
        route(3, &["/p"]),
        prio(route(4, &["/p"]), 5),
    ]);
    assert_eq!(find(&r, &get("/p")), Some(2));
    // Equal priority keeps config order: 1 before 3; negative priority last.
    let r = router(vec![
        route(1, &["/q/*"]),
        route(3, &["/q/*"]),
        prio(route(0, &["/q/*"]), -1),
    ]);
    assert_eq!(find(&r, &get("/q/x")), Some(1));
    let r = router(vec![
        methods(route(1, &["/q/*"]), &["POST"]),
        route(3, &["/q/*"]),
        prio(route(0, &["/q/*"]), -1),
    ]);
    assert_eq!(find(&r, &get("/q/x")), Some(3));
}

#[test]
fn fallthrough_from_exact_to_prefixes() {
    let r = router(vec![
        methods(route(1, &["/a/b"]), &["POST"]),
        methods(route(2, &["/a/*"]), &["PUT"]),
        route(3, &["/*"]),
    ]);
    assert_eq!(find(&r, &req("POST", "/a/b")), Some(1));
    assert_eq!(find(&r, &req("PUT", "/a/b")), Some(2));
    assert_eq!(find(&r, &get("/a/b")), Some(3));
}

#[test]
fn prefix_boundaries() {
    let r = router(vec![route(1, &["/x/*"])]);
    assert_eq!(find(&r, &get("/x/")), Some(1));
    assert_eq!(find(&r, &get("/x/y/z")), Some(1));
    assert_eq!(find(&r, &get("/x")), None);
    assert_eq!(find(&r, &get("/xy")), None);
    // A prefix without a slash is a plain byte prefix, as in radixtree.
    let r = router(vec![route(1, &["/x*"])]);
    assert_eq!(find(&r, &get("/x")), Some(1));
    assert_eq!(find(&r, &get("/xy")), Some(1));
    let r = router(vec![route(1, &["/*"])]);
    for p in ["/", "/a", "/a/b/c?", "//"] {
        assert_eq!(find(&r, &get(p)), Some(1), "{p}");
    }
    // Exact match is exact: no trailing-slash folding, query ignored.
    let r = router(vec![route(1, &["/a"])]);
    assert_eq!(find(&r, &get("/a?x=1")), Some(1));
    assert_eq!(find(&r, &get("/a/")), None);
    assert_eq!(find(&r, &get("/A")), None);
}

#[test]
fn several_uris_per_route() {
    let r = router(vec![
        route(1, &["/a", "/b/*"]),
        prio(route(2, &["/b/c"]), -5),
        route(3, &["/a", "/a"]),
    ]);
    assert_eq!(find(&r, &get("/a")), Some(1));
    assert_eq!(find(&r, &get("/b/c")), Some(2));
    assert_eq!(find(&r, &get("/b/d")), Some(1));
    assert_eq!(r.len(), 3);
}

#[test]
fn empty_router() {
    let r = router(vec![]);
    assert!(r.is_empty());
    assert_eq!(find(&r, &get("/")), None);
    assert!(!r.needs_body(&get("/").view()));
}

#[test]
fn no_match() {
    let r = router(vec![route(1, &["/a"]), route(2, &["/b/*"])]);
    for p in ["/", "/c", "/b", "", "a", "/a/b", "/bb/"] {
        assert_eq!(find(&r, &get(p)), None, "{p}");
    }
}

// ---------------------------------------------------------------- methods

#[test]
fn methods_filter() {
    let r = router(vec![
        methods(route(1, &["/m"]), &["GET", "HEAD"]),
        methods(route(2, &["/m"]), &["POST"]),
        methods(route(3, &["/m"]), &[]),
    ]);
    assert_eq!(find(&r, &req("GET", "/m")), Some(1));
    assert_eq!(find(&r, &req("HEAD", "/m")), Some(1));
    assert_eq!(find(&r, &req("POST", "/m")), Some(2));
    // Empty list = any method; unknown and lower-case request methods only match it.
    assert_eq!(find(&r, &req("DELETE", "/m")), Some(3));
    assert_eq!(find(&r, &req("PROPFIND", "/m")), Some(3));
    assert_eq!(find(&r, &req("post", "/m")), Some(3));
    for (i, m) in METHODS.iter().enumerate() {
        assert_eq!(method_bit(m), 1 << i, "{m}");
    }
    let all = METHODS;
    let r = router(vec![methods(route(1, &["/m"]), &all)]);
    for m in all {
        assert_eq!(find(&r, &req(m, "/m")), Some(1), "{m}");
    }
    assert_eq!(find(&r, &req("PROPFIND", "/m")), None);
}

// ---------------------------------------------------------------- hosts

#[test]
fn hosts_exact_case_and_port() {
    let r = router(vec![
        hosts(route(1, &["/*"]), &["API.example.com", "other.org"]),
        route(2, &["/*"]),
    ]);
    for h in [
        "api.example.com",
        "Api.Example.COM",
        "api.example.com:8443",
        "api.example.com.",
        "other.org:80",
    ] {
        assert_eq!(find(&r, &get("/").host(h)), Some(1), "{h}");
    }
    for h in [
        "example.com",
        "x.api.example.com",
        "api.example.co",
        "api.example.com.x",
    ] {
        assert_eq!(find(&r, &get("/").host(h)), Some(2), "{h}");
    }
    // No Host at all: routes with hosts cannot match.
    assert_eq!(find(&r, &get("/")), Some(2));
}

#[test]
fn hosts_wildcard() {
    let r = router(vec![hosts(route(1, &["/*"]), &["*.example.com"])]);
    for h in ["a.example.com", "a.b.example.com", "A.EXAMPLE.com:1"] {
        assert_eq!(find(&r, &get("/").host(h)), Some(1), "{h}");
    }
    for h in ["example.com", "badexample.com", "example.com.evil", ""] {
        assert_eq!(find(&r, &get("/").host(h)), None, "{h}");
    }
}

#[test]
fn hosts_ipv6_literal() {
    let r = router(vec![
        hosts(route(1, &["/*"]), &["[::1]"]),
        hosts(route(2, &["/*"]), &["127.0.0.1"]),
    ]);
    assert_eq!(find(&r, &get("/").host("[::1]:9080")), Some(1));
    assert_eq!(find(&r, &get("/").host("[::1]")), Some(1));
    assert_eq!(find(&r, &get("/").host("[0:0:0::1]:80")), Some(1));
    assert_eq!(find(&r, &get("/").host("[::2]:9080")), None);
    assert_eq!(find(&r, &get("/").host("127.0.0.1:9080")), Some(2));
    // Malformed host headers just don't match.
    for h in ["[::1", "[]:80", "[", ":", "::1]"] {
        assert_eq!(find(&r, &get("/").host(h)), None, "{h}");
    }
}

// ---------------------------------------------------------------- remote addrs

#[test]
fn remote_addrs_v4_v6() {
    let r = router(vec![
        remotes(route(1, &["/*"]), &["10.0.0.0/8", "192.168.1.5"]),
        remotes(route(2, &["/*"]), &["2001:db8::/32"]),
        route(3, &["/*"]),
    ]);
    assert_eq!(find(&r, &get("/").remote("10.20.30.40")), Some(1));
    assert_eq!(find(&r, &get("/").remote("192.168.1.5")), Some(1));
    assert_eq!(find(&r, &get("/").remote("::ffff:10.1.1.1")), Some(1));
    assert_eq!(find(&r, &get("/").remote("192.168.1.6")), Some(3));
    assert_eq!(find(&r, &get("/").remote("2001:db8:abcd::1")), Some(2));
    assert_eq!(find(&r, &get("/").remote("2001:db9::1")), Some(3));
    assert_eq!(find(&r, &get("/")), Some(3));
}

// ---------------------------------------------------------------- build errors

#[test]
fn build_errors_name_the_entry() {
    let cases: Vec<(RouteEntry, &str)> = vec![
        (route(7, &["a/b"]), "must start with '/'"),
        (route(7, &["/a*/b"]), "'*' is only allowed at the end"),
        (route(7, &["/a/**"]), "'*' is only allowed at the end"),
        (route(7, &[]), "no uris"),
        (
            methods(route(7, &["/a"]), &["GET", "FETCH"]),
            "unknown method \"FETCH\"",
        ),
        (
            methods(route(7, &["/a"]), &["get"]),
            "unknown method \"get\"",
        ),
        (
            hosts(route(7, &["/a"]), &["exa mple.com"]),
            "bad host pattern",
        ),
        (hosts(route(7, &["/a"]), &["*"]), "bad host pattern"),
        (
            hosts(route(7, &["/a"]), &["example.com:8080"]),
            "without a port",
        ),
        (remotes(route(7, &["/a"]), &["10.0.0.0/33"]), "remote_addrs"),
        (remotes(route(7, &["/a"]), &["not-an-ip"]), "remote_addrs"),
    ];
    for (e, want) in cases {
        let err = Router::new(vec![route(1, &["/ok"]), e]).unwrap_err();
        assert!(err.starts_with("route #1 (id 7): "), "{err}");
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }
}

// ---------------------------------------------------------------- vars: operators

#[test]
fn op_eq_ne() {
    let q = get("/?a=json&n=10&f=1.5");
    assert!(ev(json!([["arg_a", "==", "json"]]), &q));
    assert!(!ev(json!([["arg_a", "==", "JSON"]]), &q));
    assert!(ev(json!([["arg_a", "~=", "xml"]]), &q));
    assert!(!ev(json!([["arg_a", "~=", "json"]]), &q));
    // numeric comparison when the literal is a number
    assert!(ev(json!([["arg_n", "==", 10]]), &q));
    assert!(ev(json!([["arg_n", "==", 10.0]]), &q));
    assert!(ev(json!([["arg_f", "==", 1.5]]), &q));
    assert!(!ev(json!([["arg_a", "==", 10]]), &q));
    assert!(ev(json!([["arg_a", "~=", 10]]), &q));
    // string literal: string comparison
    assert!(ev(json!([["arg_n", "==", "10"]]), &q));
    assert!(!ev(json!([["arg_n", "==", "10.0"]]), &q));
    // a missing variable: == false, ~= true
    assert!(!ev(json!([["arg_zz", "==", "x"]]), &q));
    assert!(ev(json!([["arg_zz", "~=", "x"]]), &q));
    // operator names are case-insensitive
    assert!(ev(json!([["arg_a", "IN", ["json"]]]), &q));
}

#[test]
fn op_numeric_comparisons() {
    let q = get("/?n=10&s=abc&h=0x10");
    assert!(ev(json!([["arg_n", ">", 9]]), &q));
    assert!(!ev(json!([["arg_n", ">", 10]]), &q));
    assert!(ev(json!([["arg_n", ">=", 10]]), &q));
    assert!(ev(json!([["arg_n", "<", "10.5"]]), &q));
    assert!(ev(json!([["arg_n", "<=", 10]]), &q));
    assert!(!ev(json!([["arg_n", "<", 10]]), &q));
    assert!(ev(json!([["arg_h", "==", 16]]), &q));
    // non-numbers and missing variables make comparisons false
    for op in [">", ">=", "<", "<="] {
        assert!(!ev(json!([["arg_s", op, 1]]), &q), "{op}");
        assert!(!ev(json!([["arg_missing", op, 1]]), &q), "{op}");
    }
}

#[test]
fn op_in_has() {
    let q = get("/?a=b&n=3").body(json!({"tags": ["x", "y", 7, true], "one": "x"}));
    assert!(ev(json!([["arg_a", "in", ["a", "b"]]]), &q));
    assert!(!ev(json!([["arg_a", "in", ["c"]]]), &q));
    assert!(!ev(json!([["arg_a", "in", []]]), &q));
    assert!(ev(json!([["arg_n", "in", [1, 3]]]), &q));
    assert!(!ev(json!([["arg_missing", "in", ["a"]]]), &q));
    assert!(ev(json!([["post_arg.tags", "has", "y"]]), &q));
    assert!(ev(json!([["post_arg.tags", "has", 7]]), &q));
    assert!(ev(json!([["post_arg.tags", "has", true]]), &q));
    assert!(!ev(json!([["post_arg.tags", "has", "z"]]), &q));
    // has on a non-list is false
    assert!(!ev(json!([["post_arg.one", "has", "x"]]), &q));
    assert!(!ev(json!([["arg_a", "has", "b"]]), &q));
}

#[test]
fn op_regex() {
    let q = get("/v1/chat?m=GPT-4o").header("user-agent", "curl/8.1");
    assert!(ev(json!([["uri", "~~", "^/v1/"]]), &q));
    assert!(
        ev(json!([["uri", "~~", "chat"]]), &q),
        "unanchored like ngx.re.find"
    );
    assert!(!ev(json!([["arg_m", "~~", "^gpt"]]), &q));
    assert!(ev(json!([["arg_m", "~*", "^gpt"]]), &q));
    assert!(ev(json!([["http_user_agent", "~~", "^curl/\\d+"]]), &q));
    assert!(!ev(json!([["http_missing", "~~", ".*"]]), &q));
    // numbers are matched as their text
    assert!(ev(json!([["server_port", "~~", "^90[0-9]0$"]]), &q));
}

#[test]
fn op_ipmatch() {
    let q = get("/")
        .remote("10.1.2.3")
        .header("x-real-ip", "2001:db8::7");
    assert!(ev(json!([["remote_addr", "ipmatch", "10.0.0.0/8"]]), &q));
    assert!(ev(
        json!([["remote_addr", "ipmatch", ["192.168.0.0/16", "10.1.2.3"]]]),
        &q
    ));
    assert!(!ev(
        json!([["remote_addr", "ipmatch", ["192.168.0.0/16"]]]),
        &q
    ));
    assert!(ev(
        json!([["http_x_real_ip", "ipmatch", "2001:db8::/32"]]),
        &q
    ));
    assert!(!ev(
        json!([["http_x_real_ip", "ipmatch", "10.0.0.0/8"]]),
        &q
    ));
    assert!(!ev(json!([["http_missing", "ipmatch", "0.0.0.0/0"]]), &q));
    assert!(!ev(json!([["uri", "ipmatch", "0.0.0.0/0"]]), &q));
    assert!(!ev(
        json!([["remote_addr", "ipmatch", "0.0.0.0/0"]]),
        &get("/")
    ));
}

#[test]
fn negation() {
    let q = get("/?a=1");
    assert!(!ev(json!([["arg_a", "!", "==", "1"]]), &q));
    assert!(ev(json!([["arg_a", "!", "==", "2"]]), &q));
    assert!(ev(json!([["arg_a", "!", "~~", "^[a-z]+$"]]), &q));
    assert!(ev(json!([["arg_a", "!", "in", ["2", "3"]]]), &q));
    assert!(!ev(json!([["arg_a", "!", ">", 0]]), &q));
    // negating a missing variable: !(==) is true, !(~=) is false
    assert!(ev(json!([["arg_b", "!", "==", "1"]]), &q));
    assert!(!ev(json!([["arg_b", "!", "~=", "1"]]), &q));
}

#[test]
fn logical_groups() {
    let q = get("/?a=1&b=2");
    let t = json!(["arg_a", "==", "1"]);
    let f = json!(["arg_b", "==", "9"]);
    assert!(ev(json!([["OR", f, t]]), &q));
    assert!(!ev(json!([["OR", f, f]]), &q));
    assert!(!ev(json!([["AND", t, f]]), &q));
    assert!(ev(json!([["AND", t, t]]), &q));
    assert!(ev(json!([["!AND", t, f]]), &q));
    assert!(!ev(json!([["!OR", f, t]]), &q));
    assert!(ev(json!([["!OR", f, f]]), &q));
    // top level can itself be a group, in any case
    assert!(ev(json!(["OR", f, t]), &q));
    assert!(ev(json!(["or", f, t]), &q));
    assert!(!ev(json!(["!or", f, t]), &q));
    // deep nesting, and arrays of rules as AND groups
    assert!(ev(
        json!([["OR", ["AND", f, t], ["!AND", f, ["OR", f, f]]], t]),
        &q
    ));
    assert!(!ev(
        json!([["OR", ["AND", f, t], ["AND", t, ["!OR", f, t]]]]),
        &q
    ));
    assert!(ev(json!([[t, t], t]), &q));
    assert!(!ev(json!([[t, f]]), &q));
    // top-level array is an AND
    assert!(!ev(json!([t, f]), &q));
    // empty vars match everything
    assert!(ev(json!([]), &q));
}

#[test]
fn legacy_two_element_rule_means_eq() {
    let q = get("/?a=1");
    assert!(ev(json!([["arg_a", "1"]]), &q));
    assert!(!ev(json!([["arg_a", "2"]]), &q));
}

#[test]
fn bool_and_number_equality() {
    let q = get("/?flag&e=").body(json!({"stream": true, "n": 5, "s": "5"}));
    // A query parameter without '=' is boolean true (ngx.req.get_uri_args).
    assert!(ev(json!([["arg_flag", "==", true]]), &q));
    assert!(!ev(json!([["arg_flag", "==", "true"]]), &q));
    assert!(ev(json!([["arg_e", "==", ""]]), &q));
    assert!(ev(json!([["post_arg.stream", "==", true]]), &q));
    assert!(!ev(json!([["post_arg.stream", "==", false]]), &q));
    assert!(ev(json!([["post_arg.stream", "~=", false]]), &q));
    assert!(!ev(json!([["post_arg.stream", "==", "true"]]), &q));
    assert!(ev(json!([["post_arg.n", "==", 5]]), &q));
    assert!(
        ev(json!([["post_arg.n", "==", "5"]]), &q),
        "number vs numeric string compares numerically"
    );
    assert!(ev(json!([["post_arg.n", "==", "5.0"]]), &q));
    assert!(ev(json!([["post_arg.s", "==", 5]]), &q));
    assert!(ev(json!([["post_arg.n", ">", 4]]), &q));
    assert!(!ev(json!([["post_arg.stream", ">", 0]]), &q));
}

// ---------------------------------------------------------------- vars: variables

#[test]
fn var_request_basics() {
    let mut q = req("POST", "/v1/chat?x=1&y=2")
        .host("API.Example.com:8443")
        .remote("10.0.0.9");
    q.scheme = "https".into();
    q.port = 9443;
    assert!(ev(json!([["uri", "==", "/v1/chat"]]), &q));
    assert!(ev(json!([["request_uri", "==", "/v1/chat?x=1&y=2"]]), &q));
    assert!(ev(json!([["request_method", "==", "POST"]]), &q));
    assert!(ev(json!([["host", "==", "api.example.com"]]), &q));
    assert!(ev(json!([["scheme", "==", "https"]]), &q));
    assert!(ev(json!([["server_port", "==", 9443]]), &q));
    assert!(ev(json!([["server_port", "==", "9443"]]), &q));
    assert!(ev(json!([["remote_addr", "==", "10.0.0.9"]]), &q));
    assert!(ev(json!([["query_string", "==", "x=1&y=2"]]), &q));
    assert!(ev(json!([["args", "==", "x=1&y=2"]]), &q));
    assert!(
        ev(json!([["URI", "==", "/v1/chat"]]), &q),
        "fixed names are case-insensitive"
    );
    let bare = get("/p");
    assert!(ev(json!([["request_uri", "==", "/p"]]), &bare));
    assert!(
        ev(json!([["query_string", "~=", ""]]), &bare),
        "no query: unset"
    );
    assert!(!ev(json!([["host", "~~", ""]]), &bare), "no host: unset");
    assert!(!ev(json!([["remote_addr", "~~", ""]]), &bare));
    let v6 = get("/").host("[::1]:80").remote("::ffff:1.2.3.4");
    assert!(ev(json!([["host", "==", "[::1]"]]), &v6));
    assert!(ev(json!([["remote_addr", "==", "1.2.3.4"]]), &v6));
}

#[test]
fn var_args_percent_decoding() {
    let q = get(
        "/?name=hello%20world&plus=a+b&enc%5Fkey=v&dup=1&dup=2&bad=%zz%4&utf=%C3%A9&empty=&k=v=w",
    );
    assert!(ev(json!([["arg_name", "==", "hello world"]]), &q));
    assert!(ev(json!([["arg_plus", "==", "a b"]]), &q));
    assert!(
        ev(json!([["arg_enc_key", "==", "v"]]), &q),
        "names are decoded too"
    );
    assert!(ev(json!([["arg_dup", "==", "1"]]), &q), "first value wins");
    assert!(
        ev(json!([["arg_bad", "==", "%zz%4"]]), &q),
        "malformed escapes stay literal"
    );
    assert!(ev(json!([["arg_utf", "==", "é"]]), &q));
    assert!(ev(json!([["arg_empty", "==", ""]]), &q));
    assert!(ev(json!([["arg_k", "==", "v=w"]]), &q));
    assert!(
        !ev(json!([["arg_NAME", "==", "hello world"]]), &q),
        "names are case-sensitive"
    );
    assert!(!ev(json!([["arg_x", "~=", "1"]]), &get("/?x=1")));
    // invalid UTF-8 after decoding does not panic
    assert!(ev(json!([["arg_b", "~~", "^\u{fffd}"]]), &get("/?b=%ff")));
}

#[test]
fn var_headers() {
    let q = get("/")
        .header("x-user-id", "42")
        .header("X-Multi", "a")
        .header("x-multi", "b")
        .header("content-type", "application/json; charset=utf-8")
        .header("host", "h.example");
    assert!(ev(json!([["http_x_user_id", "==", "42"]]), &q));
    assert!(ev(json!([["http_X_USER_ID", "==", 42]]), &q));
    assert!(ev(json!([["http_x_multi", "==", "a, b"]]), &q));
    assert!(ev(json!([["content_type", "~~", "^application/json"]]), &q));
    assert!(ev(
        json!([["http_content_type", "~~", "^application/json"]]),
        &q
    ));
    assert!(ev(json!([["http_host", "==", "h.example"]]), &q));
    assert!(!ev(json!([["http_x_absent", "==", ""]]), &q));
    // HTTP/2: no Host header, :authority passed as `host`
    let h2 = get("/").host("h2.example:443");
    assert!(ev(json!([["http_host", "==", "h2.example:443"]]), &h2));
}

#[test]
fn var_cookies() {
    let q = get("/")
        .header("cookie", "session=abc; theme=dark ;  lang=en")
        .header("cookie", "extra=1; session=zzz");
    assert!(ev(json!([["cookie_session", "==", "abc"]]), &q));
    assert!(ev(json!([["cookie_theme", "==", "dark"]]), &q));
    assert!(ev(json!([["cookie_lang", "==", "en"]]), &q));
    assert!(ev(json!([["cookie_extra", "==", "1"]]), &q));
    assert!(
        !ev(json!([["cookie_Session", "==", "abc"]]), &q),
        "names are case-sensitive"
    );
    assert!(!ev(json!([["cookie_none", "==", ""]]), &q));
    assert!(!ev(json!([["cookie_a", "==", "1"]]), &get("/")));
    assert!(
        ev(json!([["http_cookie", "~~", "lang=en; extra=1"]]), &q),
        "joined with '; '"
    );
}

#[test]
fn var_post_arg() {
    let body = json!({
        "model": "gpt-4o",
        "stream": false,
        "max_tokens": 512,
        "meta": {"tenant": {"id": "t1"}},
        "messages": [{"role": "system", "content": "x"}, {"role": "user"}],
        "tags": ["a", "b"],
        "nothing": null
    });
    let q = get("/").body(body);
    assert!(ev(json!([["post_arg.model", "==", "gpt-4o"]]), &q));
    assert!(ev(json!([["post_arg.max_tokens", ">=", 500]]), &q));
    assert!(ev(json!([["post_arg.meta.tenant.id", "==", "t1"]]), &q));
    assert!(ev(json!([["post_arg.messages[1].role", "==", "user"]]), &q));
    assert!(ev(
        json!([["post_arg.messages.0.role", "==", "system"]]),
        &q
    ));
    assert!(ev(json!([["post_arg.tags", "has", "b"]]), &q));
    assert!(!ev(
        json!([["post_arg.meta.tenant.missing", "==", "t1"]]),
        &q
    ));
    assert!(!ev(json!([["post_arg.model.deeper", "==", "x"]]), &q));
    assert!(!ev(json!([["post_arg.nothing", "==", "x"]]), &q));
    assert!(ev(json!([["post_arg.nothing", "~=", "x"]]), &q));
    assert!(
        !ev(json!([["post_arg.meta", "==", "x"]]), &q),
        "objects compare unequal"
    );
    // Without a body the variable is unset.
    assert!(!ev(json!([["post_arg.model", "==", "gpt-4o"]]), &get("/")));
    assert!(ev(json!([["post_arg.model", "~=", "gpt-4o"]]), &get("/")));
    // Long paths go through the heap fallback.
    let deep: String = (0..20).map(|i| format!(".k{i}")).collect();
    let mut v = json!("leaf");
    for i in (0..20).rev() {
        v = json!({ format!("k{i}"): v });
    }
    assert!(ev(
        json!([[format!("post_arg{deep}"), "==", "leaf"]]),
        &get("/").body(v)
    ));
}

#[test]
fn post_args_json_impl() {
    let b = json!({"a": {"b": [1, "two", {"c": true}]}});
    assert_eq!(b.post_arg(&["a", "b", "0"]), Some(Value::Num(1.0)));
    assert_eq!(b.post_arg(&["a", "b", "1"]), Some(Value::Str("two".into())));
    assert_eq!(b.post_arg(&["a", "b", "2", "c"]), Some(Value::Bool(true)));
    assert_eq!(b.post_arg(&["a", "b", "x"]), None);
    assert_eq!(b.post_arg(&["a", "b", "9"]), None);
    // nested objects are dropped from lists; scalars stay
    assert_eq!(
        b.post_arg(&["a", "b"]),
        Some(Value::List(vec![Value::Num(1.0), Value::Str("two".into())]))
    );
}

#[test]
fn reads_body_flag() {
    assert!(Expr::compile(&json!([["post_arg.a", "==", "1"]]))
        .unwrap()
        .reads_body());
    assert!(Expr::compile(&json!([[
        "OR",
        ["arg_a", "==", "1"],
        ["AND", ["uri", "==", "/"], ["post_arg.x.y", "==", 1]]
    ]]))
    .unwrap()
    .reads_body());
    assert!(
        !Expr::compile(&json!([["arg_a", "==", "1"], ["http_x", "~~", "a"]]))
            .unwrap()
            .reads_body()
    );
}

// ---------------------------------------------------------------- vars: compile errors

#[test]
fn compile_errors() {
    let cases = [
        (
            json!([["arg_name", "=~", "x"]]),
            "vars[0]: unknown operator \"=~\"",
        ),
        (
            json!([["arg_a", "==", "1"], ["argname", "==", "json"]]),
            "vars[1]: unknown variable \"argname\"",
        ),
        (
            json!([["arg_", "==", "1"]]),
            "vars[0]: unknown variable \"arg_\"",
        ),
        (
            json!([["OR", ["arg_a", "==", "1"], ["arg_b", "lt", 2]]]),
            "vars[0][2]: unknown operator \"lt\"",
        ),
        (
            json!(["OR", ["arg_a", "==", "1"], ["nope", "==", 2]]),
            "vars[2]: unknown variable \"nope\"",
        ),
        (
            json!([["OR", ["arg_a", "==", "1"]]]),
            "vars[0]: logical group \"OR\" needs at least two",
        ),
        (
            json!([["arg_a", "==", "1", "x"]]),
            "vars[0]: a four-element rule must be",
        ),
        (
            json!([["arg_a", "!", "==", "1", "x"]]),
            "vars[0]: a rule is",
        ),
        (json!([["arg_a"]]), "vars[0]: a rule is"),
        (
            json!([["arg_a", "=="]]),
            "vars[0]: operator \"==\" has no value",
        ),
        (
            json!([["arg_a", ">", "ten"]]),
            "vars[0]: operator \">\" needs a number",
        ),
        (
            json!([["arg_a", "in", "a"]]),
            "vars[0]: operator \"in\" needs an array",
        ),
        (
            json!([["arg_a", "in", [["a"]]]]),
            "vars[0]: operator \"in\" needs a string, number or boolean",
        ),
        (
            json!([["arg_a", "==", null]]),
            "vars[0]: operator \"==\" needs a string, number or boolean",
        ),
        (
            json!([["arg_a", "==", {"x": 1}]]),
            "vars[0]: operator \"==\" needs",
        ),
        (
            json!([["arg_a", "~~", "(unclosed"]]),
            "vars[0]: bad regular expression",
        ),
        (
            json!([["arg_a", "~~", "(?<=a)b"]]),
            "vars[0]: bad regular expression",
        ),
        (
            json!([["arg_a", "~~", 5]]),
            "vars[0]: operator \"~~\" needs a regular expression string",
        ),
        (
            json!([["remote_addr", "ipmatch", "10.0.0.0/99"]]),
            "vars[0]: prefix length 99",
        ),
        (
            json!([["remote_addr", "ipmatch", []]]),
            "vars[0]: operator \"ipmatch\" needs at least one",
        ),
        (
            json!([["remote_addr", "ipmatch", [1]]]),
            "vars[0]: operator \"ipmatch\" needs IP/CIDR strings",
        ),
        (
            json!([["http_bad header", "==", "1"]]),
            "vars[0]: variable \"http_bad header\"",
        ),
        (
            json!([["post_arg.a..b", "==", "1"]]),
            "vars[0]: variable \"post_arg.a..b\": empty field name",
        ),
        (
            json!([["post_arg.a[*]", "==", "1"]]),
            "only numeric indexes",
        ),
        (json!([["post_arg.a[0", "==", "1"]]), "unclosed '['"),
        (
            json!([[5, "==", "1"]]),
            "vars[0]: the variable name must be a string",
        ),
        (
            json!([["arg_a", 5, "1"]]),
            "vars[0]: the operator must be a string",
        ),
        (json!([[]]), "vars[0]: empty rule"),
        (
            json!(["arg_a", "==", "1"]),
            "vars: each rule must be wrapped in its own array",
        ),
        (json!({"arg_a": 1}), "vars: must be an array"),
        (
            json!([["arg_a", "==", "1"], "x"]),
            "vars[1]: expected a rule",
        ),
        (
            json!([[["arg_a", "==", "1"], ["bad", "==", "1"]]]),
            "vars[0][1]: unknown variable \"bad\"",
        ),
    ];
    for (v, want) in cases {
        let err = compile_err(v.clone());
        assert!(
            err.starts_with(want) || err.contains(want),
            "{v}: got {err:?}, want {want:?}"
        );
    }
}

#[test]
fn route_with_vars() {
    let r = router(vec![
        with_vars(route(1, &["/v1/*"]), json!([["http_x_tenant", "==", "a"]])),
        with_vars(route(2, &["/v1/*"]), json!([["arg_model", "~~", "^gpt-"]])),
        route(3, &["/v1/*"]),
    ]);
    assert_eq!(find(&r, &get("/v1/x").header("x-tenant", "a")), Some(1));
    assert_eq!(find(&r, &get("/v1/x?model=gpt-4")), Some(2));
    assert_eq!(find(&r, &get("/v1/x?model=claude")), Some(3));
}

// ---------------------------------------------------------------- needs_body

#[test]
fn needs_body() {
    let body_route = with_vars(
        methods(route(1, &["/chat"]), &["POST"]),
        json!([["post_arg.model", "==", "gpt"]]),
    );
    let r = router(vec![body_route.clone(), route(2, &["/chat"])]);
    assert!(r.needs_body(&req("POST", "/chat").view()));
    assert!(
        !r.needs_body(&req("GET", "/chat").view()),
        "method rules the body route out"
    );
    assert!(
        !r.needs_body(&req("POST", "/other").view()),
        "no candidates"
    );
    assert_eq!(
        find(&r, &req("POST", "/chat")),
        Some(2),
        "without the body, post_arg is unset"
    );
    assert_eq!(
        find(&r, &req("POST", "/chat").body(json!({"model": "gpt"}))),
        Some(1)
    );

    // An earlier candidate that matches outright makes the body irrelevant.
    let r = router(vec![prio(route(0, &["/chat"]), 10), body_route.clone()]);
    assert!(!r.needs_body(&req("POST", "/chat").view()));
    // ... unless its own (non-body) vars fail for this request.
    let r = router(vec![
        prio(
            with_vars(route(0, &["/chat"]), json!([["http_x_fast", "==", "1"]])),
            10,
        ),
        body_route.clone(),
    ]);
    assert!(!r.needs_body(&req("POST", "/chat").header("x-fast", "1").view()));
    assert!(r.needs_body(&req("POST", "/chat").view()));
    // Host and remote address are checked before deciding.
    let r = router(vec![hosts(
        remotes(body_route.clone(), &["10.0.0.0/8"]),
        &["a.com"],
    )]);
    assert!(r.needs_body(&req("POST", "/chat").host("a.com").remote("10.0.0.1").view()));
    assert!(!r.needs_body(&req("POST", "/chat").host("b.com").remote("10.0.0.1").view()));
    assert!(!r.needs_body(&req("POST", "/chat").host("a.com").remote("11.0.0.1").view()));
    // Prefix candidates count too.
    let r = router(vec![
        route(1, &["/chat"]),
        with_vars(route(2, &["/*"]), json!([["post_arg.x", "==", 1]])),
    ]);
    assert!(!r.needs_body(&get("/chat").view()));
    assert!(r.needs_body(&get("/other").view()));
}

// ---------------------------------------------------------------- host-uri mode

#[test]
fn host_uri_mode_prefers_host_routes() {
    let entries = vec![
        route(1, &["/api/chat"]),
        hosts(route(2, &["/api/*"]), &["a.com"]),
        hosts(route(3, &["/*"]), &["*.a.com"]),
        hosts(route(4, &["/*"]), &["*.x.a.com"]),
        hosts(methods(route(5, &["/api/chat"]), &["POST"]), &["b.com"]),
        hosts(route(6, &["/*"]), &["[::1]"]),
    ];
    let uri = Router::new(entries.clone()).unwrap();
    let hu = Router::with_mode(entries, MatchMode::HostUri).unwrap();
    let q = get("/api/chat").host("A.com");
    assert_eq!(find(&uri, &q), Some(1), "radixtree_uri: exact uri wins");
    assert_eq!(
        find(&hu, &q),
        Some(2),
        "radixtree_host_uri: host route wins"
    );
    assert_eq!(
        find(&hu, &get("/api/chat").host("y.x.a.com:443")),
        Some(4),
        "longest wildcard first"
    );
    assert_eq!(find(&hu, &get("/api/chat").host("y.a.com")), Some(3));
    assert_eq!(
        find(&hu, &get("/api/chat").host("b.com")),
        Some(1),
        "host group miss falls back to host-less routes"
    );
    assert_eq!(find(&hu, &req("POST", "/api/chat").host("b.com")), Some(5));
    assert_eq!(find(&hu, &get("/api/chat").host("[::1]:1")), Some(6));
    assert_eq!(find(&hu, &get("/api/chat")), Some(1));
    assert_eq!(find(&hu, &get("/other").host("c.com")), None);
    assert_eq!(
        MatchMode::from_apisix("radixtree_host_uri"),
        Some(MatchMode::HostUri)
    );
    assert_eq!(
        MatchMode::from_apisix("radixtree_uri"),
        Some(MatchMode::Uri)
    );
    assert_eq!(MatchMode::from_apisix("radixtree_uri_with_parameter"), None);
}

#[test]
fn router_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Router>();
    check::<Expr>();
}

// ---------------------------------------------------------------- brute force

/// Deterministic xorshift so the test needs no RNG crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }
    fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
}

const SEGS: &[&str] = &[
    "v1",
    "v2",
    "chat",
    "completions",
    "team-1",
    "team-2",
    "team-3",
    "a",
    "ab",
    "abc",
    "models",
    "x",
];
const HOSTS: &[&str] = &[
    "a.com",
    "b.com",
    "api.a.com",
    "x.api.a.com",
    "c.org",
    "[::1]",
    "10.0.0.1",
];
const HOST_PATS: &[&str] = &[
    "a.com",
    "b.com",
    "api.a.com",
    "*.a.com",
    "*.api.a.com",
    "*a.com",
    "c.org",
    "[::1]",
    "10.0.0.1",
];
const REMOTE_PATS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.0.0/16",
    "192.168.0.1",
    "2001:db8::/32",
    "::1",
];
const REMOTES: &[&str] = &[
    "10.1.2.3",
    "10.2.0.1",
    "192.168.0.1",
    "192.168.0.2",
    "2001:db8::5",
    "::1",
    "::ffff:10.1.0.9",
];
const METHOD_SET: &[&str] = &["GET", "POST", "PUT", "DELETE"];

fn random_path(rng: &mut Rng) -> String {
    let depth = 1 + rng.below(4);
    let mut p = String::new();
    for _ in 0..depth {
        p.push('/');
        p.push_str(rng.pick(SEGS));
    }
    if rng.chance(10) {
        p.push('/');
    }
    p
}

struct Spec {
    uris: Vec<String>,
    methods: Option<Vec<String>>,
    hosts: Vec<String>,
    remotes: Vec<String>,
    tenant: Option<String>, // vars: http_x_tenant == tenant
    priority: i64,
}

fn random_spec(rng: &mut Rng) -> Spec {
    let mut uris = Vec::new();
    for _ in 0..1 + rng.below(2) {
        let mut u = random_path(rng);
        match rng.below(10) {
            0..=4 => {}
            5..=7 => {
                if !u.ends_with('/') {
                    u.push('/');
                }
                u.push('*');
            }
            8 => u.push('*'), // byte prefix such as /v1/ab*
            _ if rng.chance(5) => u = "/*".into(),
            _ => {}
        }
        uris.push(u);
    }
    let n_methods = rng.below(3);
    let methods = if rng.chance(60) {
        None
    } else {
        Some(
            (0..n_methods)
                .map(|_| rng.pick(METHOD_SET).to_string())
                .collect(),
        )
    };
    let hosts = if rng.chance(70) {
        Vec::new()
    } else {
        (0..1 + rng.below(2))
            .map(|_| rng.pick(HOST_PATS).to_string())
            .collect()
    };
    let remotes = if rng.chance(85) {
        Vec::new()
    } else {
        (0..1 + rng.below(2))
            .map(|_| rng.pick(REMOTE_PATS).to_string())
            .collect()
    };
    let catch_all = uris.iter().any(|u| u == "/*");
    let tenant = if rng.chance(80) && !catch_all {
        None
    } else {
        Some(format!("t{}", rng.below(3)))
    };
    Spec {
        uris,
        methods,
        hosts,
        remotes,
        tenant,
        priority: rng.below(3) as i64 - 1,
    }
}

/// The reference: enumerate every (host group, uri) placement of every
/// route, sort by the APISIX ordering keys, take the first that passes.
fn reference(specs: &[Spec], q: &Req, mode: MatchMode) -> Option<usize> {
    let host = q.host.as_deref().and_then(|h| {
        // Independent normalisation: strip port / brackets, lower-case.
        let h = h.to_ascii_lowercase();
        if let Some(rest) = h.strip_prefix('[') {
            return rest.split(']').next().map(|s| s.to_string());
        }
        Some(
            h.split(':')
                .next()
                .unwrap_or("")
                .trim_end_matches('.')
                .to_string(),
        )
    });
    let host_matches = |pat: &str| -> Option<(u8, i64)> {
        let h = host.as_deref()?;
        if let Some(suffix) = pat.strip_prefix('*') {
            return h.ends_with(suffix).then_some((2, -(suffix.len() as i64)));
        }
        let pat = pat.trim_start_matches('[').trim_end_matches(']');
        let v6 = pat.contains(':');
        (pat == h).then_some((if v6 { 1 } else { 0 }, 0))
    };
    let tenant = q.headers.get("x-tenant").and_then(|v| v.to_str().ok());
    let remote = q.remote.map(|ip| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    });
    let in_cidr = |pat: &str| -> bool {
        let Some(ip) = remote else { return false };
        let (net, len) = pat
            .split_once('/')
            .unwrap_or((pat, if pat.contains(':') { "128" } else { "32" }));
        let len: u32 = len.parse().unwrap();
        match (net.parse::<IpAddr>().unwrap(), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                u32::from(n) & m == u32::from(a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                u128::from(n) & m == u128::from(a) & m
            }
            _ => false,
        }
    };

    // (host group class, host specificity, uri class, -prefix len, -priority, config index)
    type Key = (u8, i64, u8, i64, i64, usize);
    let mut cands: Vec<(Key, usize)> = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let mut groups: Vec<(u8, i64)> = Vec::new();
        match mode {
            MatchMode::Uri => groups.push((0, 0)),
            MatchMode::HostUri => {
                if s.hosts.is_empty() {
                    groups.push((3, 0));
                } else {
                    groups.extend(s.hosts.iter().filter_map(|h| host_matches(h)));
                }
            }
        }
        for u in &s.uris {
            let uri_key = match u.strip_suffix('*') {
                None => (u == &q.path).then_some((0u8, 0i64)),
                Some(p) => q.path.starts_with(p).then_some((1u8, -(p.len() as i64))),
            };
            if let Some((uc, ul)) = uri_key {
                for &(gc, gs) in &groups {
                    cands.push(((gc, gs, uc, ul, -s.priority, i), i));
                }
            }
        }
    }
    cands.sort();
    for (_, i) in cands {
        let s = &specs[i];
        if let Some(ms) = &s.methods {
            if !ms.is_empty() && !ms.iter().any(|m| m == &q.method) {
                continue;
            }
        }
        if mode == MatchMode::Uri
            && !s.hosts.is_empty()
            && !s.hosts.iter().any(|h| host_matches(h).is_some())
        {
            continue;
        }
        if !s.remotes.is_empty() && !s.remotes.iter().any(|r| in_cidr(r)) {
            continue;
        }
        if let Some(t) = &s.tenant {
            if tenant != Some(t.as_str()) {
                continue;
            }
        }
        return Some(i);
    }
    None
}

fn check_against_reference(mode: MatchMode, seed: u64) {
    let mut rng = Rng(seed);
    let specs: Vec<Spec> = (0..5000).map(|_| random_spec(&mut rng)).collect();
    let entries: Vec<RouteEntry> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| RouteEntry {
            id: i,
            uris: s.uris.clone(),
            methods: s.methods.clone(),
            hosts: s.hosts.clone(),
            remote_addrs: s.remotes.clone(),
            vars: s
                .tenant
                .as_ref()
                .map(|t| Expr::compile(&json!([["http_x_tenant", "==", t]])).unwrap()),
            priority: s.priority,
        })
        .collect();
    let r = Router::with_mode(entries, mode).unwrap();
    assert_eq!(r.len(), 5000);
    let mut hits = 0;
    for n in 0..3000 {
        // Half the requests use a configured uri (prefix routes get a tail).
        let path = if rng.chance(50) {
            let s = &specs[rng.below(specs.len())];
            let u = rng.pick(&s.uris);
            match u.strip_suffix('*') {
                Some(p) => format!("{p}{}", if rng.chance(50) { "" } else { rng.pick(SEGS) }),
                None => u,
            }
        } else if rng.chance(20) {
            // A first segment no route uses: only `/*` routes can match.
            format!("/nope{}", random_path(&mut rng))
        } else {
            random_path(&mut rng)
        };
        let mut q = req(rng.pick(&["GET", "POST", "PUT", "DELETE", "PATCH"]), &path);
        if rng.chance(80) {
            let h = rng.pick(HOSTS).to_string();
            let h = if rng.chance(30) {
                h.to_ascii_uppercase()
            } else {
                h
            };
            q = q.host(&if rng.chance(30) {
                format!("{h}:8080")
            } else {
                h
            });
        }
        if rng.chance(80) {
            q = q.remote(rng.pick(REMOTES));
        }
        if rng.chance(50) {
            q = q.header("x-tenant", &format!("t{}", rng.below(3)));
        }
        let want = reference(&specs, &q, mode);
        let got = find(&r, &q);
        assert_eq!(
            got, want,
            "request #{n}: {} {} host={:?} remote={:?} headers={:?}",
            q.method, q.path, q.host, q.remote, q.headers
        );
        hits += usize::from(got.is_some());
    }
    eprintln!("{mode:?}: {hits} hits of 3000");
    // The generator must exercise both outcomes.
    assert!(hits > 500 && hits < 2950, "hits = {hits}");
}

#[test]
fn brute_force_5000_routes_uri_mode() {
    check_against_reference(MatchMode::Uri, 0x9e37_79b9_7f4a_7c15);
}

#[test]
fn brute_force_5000_routes_host_uri_mode() {
    check_against_reference(MatchMode::HostUri, 0x2545_f491_4f6c_dd1d);
}

// ---------------------------------------------------------------- robustness

#[test]
fn hostile_inputs_do_not_panic() {
    let r = router(vec![
        hosts(route(1, &["/*"]), &["*.a.com"]),
        with_vars(
            route(2, &["/é/*"]),
            json!([
                ["arg_é", "==", "x"],
                ["cookie_c", "~=", "1"],
                ["host", "~~", "."]
            ]),
        ),
    ]);
    let hr = Router::with_mode(
        vec![hosts(route(1, &["/*"]), &["*.a.com", "e.com"])],
        MatchMode::HostUri,
    )
    .unwrap();
    let long_host = "é".repeat(300);
    let weird_paths = ["", "*", "é", "/é/", "/é/x?", "\u{0}", "/%", "//////"];
    let weird_hosts = [
        "",
        ":",
        "[",
        "]",
        "[:]",
        "é.a.com",
        "x.é.a.com:1",
        long_host.as_str(),
        "A.A.COM.",
        "...",
    ];
    for p in weird_paths {
        for h in weird_hosts {
            for qs in [None, Some(""), Some("&&=&é=%"), Some("%é=x&arg_é=%C3")] {
                let mut q = get(p).host(h).header("cookie", ";;=;c").remote("::");
                q.query = qs.map(str::to_string);
                let _ = r.find(&q.view());
                let _ = r.needs_body(&q.view());
                let _ = hr.find(&q.view());
            }
        }
    }
}

#[test]
fn random_vars_never_panic() {
    fn gen(rng: &mut Rng, depth: usize) -> Json {
        const ATOMS: &[&str] = &[
            "OR",
            "!and",
            "!",
            "==",
            "~=",
            ">",
            "in",
            "has",
            "~~",
            "~*",
            "ipmatch",
            "arg_a",
            "http_x",
            "cookie_c",
            "post_arg.a.b",
            "post_arg.a[0]",
            "uri",
            "host",
            "remote_addr",
            "10.0.0.0/8",
            "(",
            "a",
            "",
        ];
        match rng.below(if depth > 3 { 4 } else { 7 }) {
            0 => Json::String(rng.pick(ATOMS).to_string()),
            1 => json!(rng.below(20) as i64 - 5),
            2 => json!(rng.chance(50)),
            3 => Json::Null,
            _ => Json::Array((0..rng.below(6)).map(|_| gen(rng, depth + 1)).collect()),
        }
    }
    let mut rng = Rng(42);
    let q = get("/x?a=1&b")
        .header("x", "10.1.1.1")
        .header("cookie", "c=1")
        .host("h")
        .remote("::1")
        .body(json!({"a": {"b": [1]}}));
    let mut compiled = 0;
    for _ in 0..20_000 {
        let v = gen(&mut rng, 0);
        if let Ok(e) = Expr::compile(&v) {
            compiled += 1;
            let _ = e.eval(&q.view());
            let _ = e.eval(&get("/").view());
        }
    }
    assert!(compiled > 100, "compiled {compiled}");
}

// ---------------------------------------------------------------- post_arg on JSON text
//
// The gateway's body (`BodyArgs` over an `LlmRequest`) is compared as JSON
// text. The oracle is what post_arg meant before: the whole top-level field
// parsed into a `serde_json::Value`, descended, and converted into a `Value`,
// evaluated by the same operators.

use std::cell::Cell;

use bytes::Bytes;

use crate::llm::request::LlmRequest;
use crate::proxy::request::BodyArgs;
use vars::JsonArg;

/// The old look-up and conversion, kept verbatim as the oracle.
struct OldArgs<'a>(&'a LlmRequest);

impl PostArgs for OldArgs<'_> {
    fn post_arg(&self, path: &[&str]) -> Option<Value<'_>> {
        fn lookup(r: &LlmRequest, path: &[&str]) -> Option<Json> {
            let (first, rest) = path.split_first()?;
            let raw = r.raw(first)?;
            let mut v: Json = serde_json::from_str(raw).ok()?;
            for seg in rest {
                v = match v {
                    Json::Object(mut m) => m.remove(*seg)?,
                    Json::Array(mut a) => {
                        let i: usize = seg.parse().ok()?;
                        if i < a.len() {
                            a.swap_remove(i)
                        } else {
                            return None;
                        }
                    }
                    _ => return None,
                };
            }
            Some(v)
        }
        fn conv(v: Json) -> Option<Value<'static>> {
            Some(match v {
                Json::Null => return None,
                Json::Bool(b) => Value::Bool(b),
                Json::Number(n) => Value::Num(n.as_f64()?),
                Json::String(s) => Value::Str(std::borrow::Cow::Owned(s)),
                Json::Array(a) => Value::List(a.into_iter().filter_map(conv).collect()),
                o @ Json::Object(_) => Value::Str(std::borrow::Cow::Owned(o.to_string())),
            })
        }
        conv(lookup(self.0, path)?)
    }
}

fn llm(body: &str) -> LlmRequest {
    LlmRequest::parse(Bytes::copy_from_slice(body.as_bytes()))
        .unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn view_of<'a>(q: &'a Req, body: &'a dyn PostArgs) -> RequestView<'a> {
    RequestView {
        consumer: None,
        body: Some(body),
        ..q.view()
    }
}

/// A JSON string in a random but valid spelling: any character may be a
/// `\u` escape (surrogate pairs beyond the BMP), some have short escapes.
fn json_str(rng: &mut Rng, s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\t' => Some("\\t"),
            '/' => Some("\\/"),
            _ => None,
        };
        if rng.chance(15) || (c as u32) < 0x20 {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        } else if let Some(e) = short.filter(|_| c == '"' || c == '\\' || rng.chance(50)) {
            out.push_str(e);
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

const P_STRINGS: &[&str] = &[
    "",
    "gpt-4o",
    "5",
    " 5",
    "5.0",
    "0x10",
    "1e2",
    "10.1.2.3",
    " 10.0.0.1",
    "[::1]",
    "::1",
    "a\"b",
    "back\\slash",
    "é",
    "日本",
    "😀",
    "tab\there",
    "new\nline",
    "a/b",
    "{\"a\":1}",
    "{}",
    "true",
    "x",
    "model-1",
];
const P_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "5",
    "5.0",
    "5e0",
    "50E-1",
    "-3",
    "3.25",
    "1e300",
    "-1.5e-7",
    "0.1",
    "1E2",
    "100",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890",
];
const P_KEYS: &[&str] = &["a", "b", "model", "tags", "0", "1", "é", "k\"q", "x/y", ""];

fn ws(rng: &mut Rng) -> &'static str {
    ["", "", "", " ", "\n  ", "\t"][rng.below(6)]
}

/// A random JSON value as text: small objects (duplicate keys happen, the
/// pool is small) and arrays, every kind of leaf, random whitespace.
fn gen_json(rng: &mut Rng, depth: usize) -> String {
    if depth >= 4 || rng.chance(45) {
        return match rng.below(8) {
            0..=2 => {
                let s = rng.pick(P_STRINGS);
                json_str(rng, s)
            }
            3 | 4 => rng.pick(P_NUMBERS).to_string(),
            5 => "true".into(),
            6 => "false".into(),
            _ => "null".into(),
        };
    }
    let n = rng.below(5);
    let object = rng.chance(50);
    let items: Vec<String> = (0..n)
        .map(|_| {
            let v = gen_json(rng, depth + 1);
            if object {
                let k = rng.pick(P_KEYS);
                let k = json_str(rng, k);
                format!("{}{k}{}:{}{v}", ws(rng), ws(rng), ws(rng))
            } else {
                format!("{}{v}", ws(rng))
            }
        })
        .collect();
    let (open, close) = if object { ("{", "}") } else { ("[", "]") };
    format!("{open}{}{}{close}", items.join(","), ws(rng))
}

/// A request body: an object of random fields, always with `model`.
fn gen_body(rng: &mut Rng) -> String {
    let mut fields = vec![format!("\"model\":{}", gen_json(rng, 1))];
    for _ in 0..rng.below(4) {
        let k = rng.pick(P_KEYS);
        let k = json_str(rng, k);
        fields.push(format!("{k}:{}{}", ws(rng), gen_json(rng, 0)));
    }
    if rng.chance(30) {
        // A duplicate top-level key: the last one counts.
        fields.push(format!("\"model\":{}", gen_json(rng, 1)));
    }
    format!("{{{}}}", fields.join(&format!(",{}", ws(rng))))
}

/// Every path into `v` (as segments), the value itself excluded.
fn all_paths(v: &Json, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let children: Vec<(String, &Json)> = match v {
        Json::Object(m) => m.iter().map(|(k, v)| (k.clone(), v)).collect(),
        Json::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => return,
    };
    for (k, child) in children {
        prefix.push(k);
        out.push(prefix.clone());
        all_paths(child, prefix, out);
        prefix.pop();
    }
}

/// Every value in `v`, nested ones included.
fn all_values<'j>(v: &'j Json, out: &mut Vec<&'j Json>) {
    out.push(v);
    match v {
        Json::Object(m) => m.values().for_each(|c| all_values(c, out)),
        Json::Array(a) => a.iter().for_each(|c| all_values(c, out)),
        _ => {}
    }
}

/// `post_arg.` + segments, indexes written `.N` or `[N]` at random; `None`
/// for keys a path cannot spell.
fn var_name(rng: &mut Rng, segs: &[String]) -> Option<String> {
    let mut name = String::from("post_arg");
    for (i, seg) in segs.iter().enumerate() {
        if seg.is_empty() || seg.contains(['.', '[', ']']) {
            return None;
        }
        if i > 0 && seg.bytes().all(|b| b.is_ascii_digit()) && rng.chance(50) {
            name.push_str(&format!("[{seg}]"));
        } else {
            name.push('.');
            name.push_str(seg);
        }
    }
    Some(name)
}

/// A random rule on `var`, its literal drawn from the body's own values (so
/// that equalities and regexes hit) or from a fixed pool.
fn gen_rule(rng: &mut Rng, var: &str, values: &[&Json]) -> Json {
    let body_lit = |rng: &mut Rng| -> Json {
        let v: &Json = rng.pick(values);
        match v {
            Json::Object(_) | Json::Array(_) => Json::String(v.to_string()),
            Json::Null => json!("null"),
            Json::Number(n) if rng.chance(30) => Json::String(n.to_string()),
            _ => v.clone(),
        }
    };
    let lit = |rng: &mut Rng| -> Json {
        if rng.chance(60) {
            body_lit(rng)
        } else {
            rng.pick(&[
                json!("x"),
                json!(5),
                json!("5"),
                json!(true),
                json!(false),
                json!(0),
                json!("{}"),
                json!(" 5"),
                json!(1e300),
            ])
        }
    };
    let (op, val) = match rng.below(11) {
        0 => ("==", lit(rng)),
        1 => ("~=", lit(rng)),
        2..=5 => {
            let op = [">", ">=", "<", "<="][rng.below(4)];
            let n = match rng.below(3) {
                0 => json!(rng.below(12) as i64 - 2),
                1 => json!("5"),
                _ => json!(3.25),
            };
            (op, n)
        }
        6 => (
            "in",
            Json::Array((0..rng.below(4)).map(|_| lit(rng)).collect()),
        ),
        7 => ("has", lit(rng)),
        8 | 9 => {
            let pat = match body_lit(rng) {
                Json::String(s) if rng.chance(60) => {
                    let mut p = regex::escape(&s);
                    if rng.chance(30) {
                        let mut cut = p.len() / 2;
                        while !p.is_char_boundary(cut) {
                            cut -= 1;
                        }
                        p.truncate(cut);
                        while !p.is_empty() && regex::Regex::new(&p).is_err() {
                            p.pop();
                        }
                    }
                    p
                }
                _ => rng
                    .pick(&[
                        "^gpt", "o$", "5", "\\{", "\"a\"", "^$", "é", ".", "^1\\.0", "^-?\\d+$",
                        "true",
                    ])
                    .to_string(),
            };
            (if rng.chance(50) { "~~" } else { "~*" }, Json::String(pat))
        }
        _ => ("ipmatch", json!(["10.0.0.0/8", "::1"])),
    };
    if rng.chance(20) {
        json!([var, "!", op, val])
    } else {
        json!([var, op, val])
    }
}

#[test]
fn post_arg_on_json_text_matches_the_decoded_value() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let q = req("POST", "/chat");
    // (operator, outcome) pairs seen, so the test shows it exercised both answers of each.
    let mut seen: std::collections::HashSet<(String, bool)> = Default::default();
    let mut rules_checked = 0;
    for case in 0..3000 {
        let text = gen_body(&mut rng);
        let parsed = llm(&text);
        let tree: Json = serde_json::from_str(&text).unwrap();
        let mut paths = Vec::new();
        all_paths(&tree, &mut Vec::new(), &mut paths);
        let mut values = Vec::new();
        all_values(&tree, &mut values);
        let (old, new) = (OldArgs(&parsed), BodyArgs(&parsed));

        let mut exprs = Vec::new();
        for _ in 0..8 {
            let segs: Vec<String> = if rng.chance(80) && !paths.is_empty() {
                let mut p = rng.pick(&paths);
                if rng.chance(10) {
                    p.push(rng.pick(&["0", "a", "1", "zz"]).to_string());
                }
                p
            } else {
                (0..1 + rng.below(3))
                    .map(|_| rng.pick(&["model", "a", "0", "tags", "b", "1"]).to_string())
                    .collect()
            };
            let Some(var) = var_name(&mut rng, &segs) else {
                continue;
            };
            let rule = json!([gen_rule(&mut rng, &var, &values)]);
            let Ok(expr) = Expr::compile(&rule) else {
                continue;
            };
            let want = expr.eval(&view_of(&q, &old));
            let got = expr.eval(&view_of(&q, &new));
            assert_eq!(got, want, "case {case}: {rule}\nbody: {text}");
            seen.insert((rule[0][1].as_str().unwrap().to_string(), want));
            rules_checked += 1;
            exprs.push((rule, expr, want));
        }

        // The same rules sharing one memo, as a router evaluates them: a value decoded by
        // one rule is reused by the next, whatever the order.
        let mut slots = Vec::new();
        for (_, e, _) in &mut exprs {
            e.assign_body_slots(&mut slots);
        }
        let memo = vars::BodyMemo::new(slots.len());
        for i in (0..exprs.len()).rev().chain(0..exprs.len()) {
            let (rule, e, want) = &exprs[i];
            assert_eq!(
                e.eval_memo(&view_of(&q, &new), Some(&memo)),
                *want,
                "case {case}, memoized: {rule}\nbody: {text}"
            );
        }
        // And through a router: the first matching route wins either way.
        let entries: Vec<RouteEntry> = exprs
            .iter()
            .enumerate()
            .map(|(i, (rule, _, _))| with_vars(route(i, &["/chat"]), rule.clone()))
            .collect();
        let r = router(entries);
        assert_eq!(
            r.find(&view_of(&q, &new)),
            r.find(&view_of(&q, &old)),
            "case {case}: body: {text}"
        );
    }
    assert!(rules_checked > 15_000, "{rules_checked}");
    for op in [
        "==", "~=", ">", ">=", "<", "<=", "in", "has", "~~", "~*", "ipmatch", "!",
    ] {
        for outcome in [true, false] {
            assert!(
                seen.contains(&(op.to_string(), outcome)),
                "no rule with {op:?} came out {outcome}"
            );
        }
    }
}

/// Counts the look-ups the router asks of the body.
struct Counting<'a>(BodyArgs<'a>, Cell<usize>);

impl PostArgs for Counting<'_> {
    fn post_arg(&self, path: &[&str]) -> Option<Value<'_>> {
        self.0.post_arg(path)
    }
    fn post_arg_json(&self, path: &[&str]) -> JsonArg<'_> {
        self.1.set(self.1.get() + 1);
        self.0.post_arg_json(path)
    }
}

#[test]
fn each_post_arg_path_is_looked_up_once_per_request() {
    let r = router(vec![
        with_vars(
            route(1, &["/chat"]),
            json!([["post_arg.model", "==", "gpt-4o"]]),
        ),
        with_vars(
            route(2, &["/chat"]),
            json!([["post_arg.model", "in", ["o1", "o3"]]]),
        ),
        with_vars(
            route(3, &["/chat"]),
            json!([
                ["post_arg.messages[0].role", "==", "system"],
                ["post_arg.model", "~~", "^claude"]
            ]),
        ),
        with_vars(
            route(4, &["/chat"]),
            json!([["post_arg.messages.0.role", "==", "user"]]),
        ),
        route(5, &["/chat"]),
    ]);
    let mut paths: Vec<Vec<&str>> = r.body_paths().collect();
    paths.sort();
    assert_eq!(
        paths,
        [vec!["messages", "0", "role"], vec!["model"]],
        "`messages[0]` and `messages.0` are one path"
    );
    let q = req("POST", "/chat");
    let find_counting = |body: &str| {
        let parsed = llm(body);
        let args = Counting(BodyArgs(&parsed), Cell::new(0));
        let found = r.find(&view_of(&q, &args));
        (found, args.1.get())
    };
    // Every candidate is evaluated up to route 4: two distinct paths, two look-ups.
    assert_eq!(
        find_counting(r#"{"model":"claude-3","messages":[{"role":"user"}]}"#),
        (Some(4), 2)
    );
    assert_eq!(
        find_counting(r#"{"model":"claude-3","messages":[{"role":"system"}]}"#),
        (Some(3), 2)
    );
    assert_eq!(
        find_counting(r#"{"model":"x"}"#),
        (Some(5), 2),
        "absent is remembered too"
    );
    assert_eq!(
        find_counting(r#"{"model":"gpt-4o"}"#),
        (Some(1), 1),
        "nothing read past the match"
    );
    // Without a body nothing is looked up; needs_body never reads it.
    assert_eq!(r.find(&q.view()), Some(5));
    let parsed = llm(r#"{"model":"o1"}"#);
    let args = Counting(BodyArgs(&parsed), Cell::new(0));
    assert!(r.needs_body(&view_of(&q, &args)));
    assert_eq!(args.1.get(), 0);
}

/// Evaluates one rule against a body as the gateway holds it, and checks the
/// oracle agrees.
#[track_caller]
fn on_body(rule: Json, body: &LlmRequest) -> bool {
    let q = req("POST", "/");
    let expr = Expr::compile(&json!([rule])).unwrap_or_else(|e| panic!("{rule}: {e}"));
    let got = expr.eval(&view_of(&q, &BodyArgs(body)));
    assert_eq!(got, expr.eval(&view_of(&q, &OldArgs(body))), "{rule}");
    got
}

#[test]
fn post_arg_on_json_text_examples() {
    let b = llm(concat!(
        r#"{"model": "gpt\u002d4o", "n": 5.0, "big": 1e300, "flag": true, "nothing": null,"#,
        r#" "tags": ["a", null, 7, [1], {"k": "v", "a": [1, 2.50]}, "b\"q"],"#,
        r#" "meta": {"z": 1, "a": {"y": "\u00e9", "x": null}, "z": 2},"#,
        r#" "ip": " 10.1.2.3", "smile": "\ud83d\ude00", "s5": " 5 "}"#
    ));
    // Strings compare unescaped.
    assert!(on_body(json!(["post_arg.model", "==", "gpt-4o"]), &b));
    assert!(on_body(json!(["post_arg.model", "~~", "^gpt-4"]), &b));
    assert!(on_body(json!(["post_arg.smile", "==", "😀"]), &b));
    assert!(on_body(json!(["post_arg.tags.5", "==", "b\"q"]), &b));
    // Numbers as f64, numeric strings numerically.
    assert!(on_body(json!(["post_arg.n", "==", 5]), &b));
    assert!(on_body(json!(["post_arg.n", "~~", "^5$"]), &b));
    assert!(on_body(json!(["post_arg.big", ">", 1e299]), &b));
    assert!(on_body(json!(["post_arg.s5", "==", 5]), &b));
    assert!(on_body(json!(["post_arg.s5", "<=", "5"]), &b));
    assert!(!on_body(json!(["post_arg.s5", "==", "5"]), &b));
    assert!(on_body(json!(["post_arg.flag", "==", true]), &b));
    assert!(on_body(
        json!(["post_arg.ip", "ipmatch", ["10.0.0.0/8"]]),
        &b
    ));
    // null is unset.
    assert!(!on_body(json!(["post_arg.nothing", "==", "null"]), &b));
    assert!(on_body(json!(["post_arg.nothing", "~=", "x"]), &b));
    // A list is searched by `has` (nulls and nested lists never match), equals nothing.
    assert!(on_body(json!(["post_arg.tags", "has", "a"]), &b));
    assert!(on_body(json!(["post_arg.tags", "has", 7]), &b));
    assert!(on_body(json!(["post_arg.tags", "has", "7"]), &b));
    assert!(!on_body(json!(["post_arg.tags", "has", 1]), &b));
    assert!(on_body(
        json!(["post_arg.tags", "has", "{\"a\":[1,2.5],\"k\":\"v\"}"]),
        &b
    ));
    assert!(!on_body(json!(["post_arg.tags", "==", "a"]), &b));
    assert!(on_body(json!(["post_arg.tags", "~=", "a"]), &b));
    assert!(!on_body(json!(["post_arg.tags", "~~", "a"]), &b));
    // An object is its compact JSON text: keys sorted, the last duplicate kept.
    let meta = r#"{"a":{"x":null,"y":"é"},"z":2}"#;
    assert!(on_body(json!(["post_arg.meta", "==", meta]), &b));
    assert!(on_body(json!(["post_arg.meta", "in", ["x", meta]]), &b));
    assert!(!on_body(
        json!(["post_arg.meta", "==", &meta[..meta.len() - 1]]),
        &b
    ));
    assert!(!on_body(
        json!(["post_arg.meta", "==", format!("{meta} ")]),
        &b
    ));
    assert!(on_body(json!(["post_arg.meta", "~~", "\"z\":2}$"]), &b));
    assert!(!on_body(json!(["post_arg.meta", "~~", "\"z\":1"]), &b));
    assert!(on_body(json!(["post_arg.meta.a.y", "==", "é"]), &b));
    assert!(on_body(json!(["post_arg.meta.z", "==", 2]), &b));
}

#[test]
fn a_field_elsewhere_that_serde_json_refuses_no_longer_hides_the_path() {
    // Decoding the whole top-level field used to fail on a number beyond f64 (or a lone
    // surrogate escape, or nesting past 127 levels) anywhere in it, and every path into that
    // field read as unset. Now only the value compared is decoded. The value itself being
    // undecodable still reads as unset.
    let b = llm(r#"{"meta": {"a": "x", "huge": 1e400, "bad": "\ud800"}, "n": 1e400}"#);
    let q = req("POST", "/");
    let new = |rule: Json| {
        Expr::compile(&json!([rule]))
            .unwrap()
            .eval(&view_of(&q, &BodyArgs(&b)))
    };
    let old = |rule: Json| {
        Expr::compile(&json!([rule]))
            .unwrap()
            .eval(&view_of(&q, &OldArgs(&b)))
    };
    assert!(new(json!(["post_arg.meta.a", "==", "x"])));
    assert!(!old(json!(["post_arg.meta.a", "==", "x"])));
    for rule in [
        json!(["post_arg.meta.huge", ">", 0]),
        json!(["post_arg.meta.bad", "~~", ""]),
        json!(["post_arg.n", "<", 0]),
    ] {
        assert!(!new(rule.clone()) && !old(rule.clone()), "{rule}");
    }
    assert!(new(json!(["post_arg.n", "~=", 1])) && old(json!(["post_arg.n", "~=", 1])));
}
