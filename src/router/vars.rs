//! APISIX route `vars`: the lua-resty-expr (v1) language, compiled once per
//! route and evaluated against a [`RequestView`].
//!
//! Shape (as lua-resty-expr parses it):
//! * the top-level array is an AND of its elements, unless its first element
//!   is a logical operator, in which case the whole array is that group:
//!   `[["arg_a","==","1"], ["http_x","~~","^b"]]` or `["OR", rule, rule]`;
//! * an element whose first item is an array is itself an AND group;
//! * `["OR"|"AND"|"!OR"|"!AND", e1, e2, ...]` (case-insensitive, at least two
//!   elements) is a logical group; groups nest anywhere;
//! * a rule is `[var, op, value]`, `[var, "!", op, value]` (negated), or the
//!   legacy `[var, value]` meaning `==`.
//!
//! Semantics follow lua-resty-expr: a variable that is not set makes every
//! operator false except `~=`, which is true; `!` negates the operator's
//! result, including for unset variables. Where lua-resty-expr would silently
//! never match (an unknown operator or variable, `>` against a word, `in`
//! without an array, a regex PCRE accepts but nothing else could run), aigate
//! refuses the route at compile time with a message naming the element.

use std::borrow::Cow;
use std::cell::{Cell, OnceCell};
use std::collections::BTreeMap;
use std::fmt;

use http::header::{CONTENT_TYPE, COOKIE, HOST};
use http::{HeaderMap, HeaderName};
use regex::{Regex, RegexBuilder};
use serde::de::{self, Deserializer as _, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value as Json;

use super::cidr::{parse_ip, Cidr, Ip};
use super::host;
use super::RequestView;

/// A variable's value (or a `post_arg` value from the body).
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    Bool(bool),
    List(Vec<Value<'a>>),
}

/// Access to fields of the request body for `post_arg.a.b.c` variables.
///
/// `path` is the dotted name split at dots, with `[N]` indexes turned into
/// their own segment (`post_arg.messages[0].role` asks for
/// `["messages", "0", "role"]`). Return `None` when the field is absent (or
/// JSON `null`, or an object: neither compares equal to anything); arrays
/// come back as [`Value::List`], which `has` searches.
pub trait PostArgs {
    fn post_arg(&self, path: &[&str]) -> Option<Value<'_>>;

    /// A body kept as JSON text answers with the JSON text of the value at
    /// `path`, borrowed from the body and found without decoding anything
    /// else. The router then compares that text directly, decoding only what
    /// an operator needs, and looks each path up once per request however
    /// many routes read it. The default makes the router use
    /// [`post_arg`](PostArgs::post_arg) instead.
    fn post_arg_json(&self, _path: &[&str]) -> JsonArg<'_> {
        JsonArg::Unsupported
    }
}

/// What a body kept as JSON text holds at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonArg<'a> {
    /// Not a JSON-text body: use [`PostArgs::post_arg`].
    Unsupported,
    Absent,
    /// One complete JSON value, as it is written in a valid document.
    Found(&'a str),
}

impl Value<'static> {
    /// A decoded JSON value as a variable value: `null` is unset, an array a
    /// list of its elements (nulls dropped), an object its compact JSON text.
    /// This is what a `post_arg` body field has always meant; the router's
    /// comparisons on JSON text (`post_arg_json`) give the same answers
    /// without building it.
    pub fn from_json(v: Json) -> Option<Value<'static>> {
        Some(match v {
            Json::Null => return None,
            Json::Bool(b) => Value::Bool(b),
            Json::Number(n) => Value::Num(n.as_f64()?),
            Json::String(s) => Value::Str(Cow::Owned(s)),
            Json::Array(a) => Value::List(a.into_iter().filter_map(Value::from_json).collect()),
            o @ Json::Object(_) => Value::Str(Cow::Owned(o.to_string())),
        })
    }
}

/// The natural implementation over a parsed JSON body: object keys by name,
/// array elements by decimal index.
impl PostArgs for Json {
    fn post_arg(&self, path: &[&str]) -> Option<Value<'_>> {
        let mut cur = self;
        for seg in path {
            cur = match cur {
                Json::Object(map) => map.get(*seg)?,
                Json::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        json_value(cur)
    }
}

fn json_value(v: &Json) -> Option<Value<'_>> {
    match v {
        Json::Null | Json::Object(_) => None,
        Json::Bool(b) => Some(Value::Bool(*b)),
        Json::Number(n) => n.as_f64().map(Value::Num),
        Json::String(s) => Some(Value::Str(Cow::Borrowed(s))),
        Json::Array(items) => Some(Value::List(items.iter().filter_map(json_value).collect())),
    }
}

/// A compiled `vars` expression.
#[derive(Clone, Debug)]
pub struct Expr {
    root: Group,
    reads_body: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Logic {
    And,
    Or,
    NotAnd,
    NotOr,
}

#[derive(Clone, Debug)]
struct Group {
    logic: Logic,
    items: Vec<Node>,
}

#[derive(Clone, Debug)]
enum Node {
    Group(Group),
    Rule(Rule),
}

#[derive(Clone, Debug)]
struct Rule {
    var: Var,
    negate: bool,
    op: Op,
}

#[derive(Clone, Debug)]
enum Var {
    Uri,
    RequestUri,
    RequestMethod,
    Host,
    Scheme,
    ServerPort,
    RemoteAddr,
    QueryString,
    ContentType,
    /// The authenticated consumer (`$consumer_name`, `$remote_user`): unset while routes are
    /// matched (authentication runs after), set for plugins that read variables.
    ConsumerName,
    /// Query parameter name (case-sensitive, compared after percent-decoding).
    Arg(Box<str>),
    Http(HeaderName),
    Cookie(Box<str>),
    PostArg(BodyPath),
}

/// A `post_arg` path: its segments, and its slot in the router's per-request
/// memo of body look-ups ([`NO_SLOT`] outside a router).
#[derive(Clone, Debug)]
struct BodyPath {
    segs: Box<[Box<str>]>,
    slot: u32,
}

const NO_SLOT: u32 = u32::MAX;

/// A literal from the route. Strings keep their numeric value (if any) so
/// that a number variable compares numerically against `"5"`.
#[derive(Clone, Debug)]
enum Lit {
    Str(Box<str>, Option<f64>),
    Num(f64),
    Bool(bool),
}

#[derive(Clone, Debug)]
enum Op {
    Eq(Lit),
    Ne(Lit),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    In(Box<[Lit]>),
    Has(Lit),
    /// `~~` and `~*` (the latter compiled case-insensitive). Unanchored, like
    /// `ngx.re.find`.
    Regex(Regex),
    IpMatch(Box<[Cidr]>),
}

const OPERATORS: &[&str] = &[
    "==", "~=", ">", "<", ">=", "<=", "in", "has", "~~", "~*", "ipmatch",
];

fn logic_op(s: &str) -> Option<Logic> {
    match s.to_ascii_uppercase().as_str() {
        "AND" => Some(Logic::And),
        "OR" => Some(Logic::Or),
        "!AND" => Some(Logic::NotAnd),
        "!OR" => Some(Logic::NotOr),
        _ => None,
    }
}

impl Expr {
    /// Compiles APISIX/lua-resty-expr `vars` from the route's JSON.
    pub fn compile(v: &Json) -> Result<Expr, String> {
        let arr = v
            .as_array()
            .ok_or_else(|| format!("vars: must be an array of rules such as [[\"arg_name\", \"==\", \"json\"]], got {}", short(v)))?;
        let mut reads_body = false;
        let root = match arr.first() {
            None => Group { logic: Logic::And, items: Vec::new() },
            Some(Json::String(s)) => match logic_op(s) {
                Some(logic) => compile_group(logic, s, arr, "vars", &mut reads_body)?,
                None => {
                    return Err(format!(
                        "vars: each rule must be wrapped in its own array: write [[{0}, ...]] instead of [{0}, ...]",
                        short(&arr[0])
                    ))
                }
            },
            Some(_) => compile_and(arr, "vars", &mut reads_body)?,
        };
        Ok(Expr { root, reads_body })
    }

    /// Whether the request matches. Unset variables follow lua-resty-expr.
    pub fn eval(&self, req: &RequestView) -> bool {
        self.root.eval(req, None)
    }

    /// [`eval`](Expr::eval) with the request's memo of body look-ups.
    pub(crate) fn eval_memo<'a>(&self, req: &RequestView<'a>, memo: Option<&BodyMemo<'a>>) -> bool {
        self.root.eval(req, memo)
    }

    /// Gives every `post_arg` path this expression reads a slot in `paths`,
    /// the distinct paths of all routes: the same path (however written:
    /// `a.0.b` or `a[0].b`) gets the same slot, so it is looked up once per
    /// request.
    pub(crate) fn assign_body_slots(&mut self, paths: &mut Vec<Box<[Box<str>]>>) {
        self.root.assign_body_slots(paths)
    }

    /// Whether any rule reads `post_arg.*` (so the body must be read first).
    pub fn reads_body(&self) -> bool {
        self.reads_body
    }
}

/// Error-message rendering of a JSON value, cut so a huge value cannot
/// flood the log.
fn short(v: &Json) -> String {
    let s = v.to_string();
    if s.len() <= 80 {
        return s;
    }
    let mut end = 77;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// `[e0, e1, ...]` where e0 is an array: an AND of every element.
fn compile_and(arr: &[Json], path: &str, reads_body: &mut bool) -> Result<Group, String> {
    let items = arr
        .iter()
        .enumerate()
        .map(|(i, e)| compile_node(e, &format!("{path}[{i}]"), reads_body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Group {
        logic: Logic::And,
        items,
    })
}

/// `["OR", e1, e2, ...]`: element paths keep their position in the array.
fn compile_group(
    logic: Logic,
    name: &str,
    arr: &[Json],
    path: &str,
    reads_body: &mut bool,
) -> Result<Group, String> {
    if arr.len() < 3 {
        return Err(format!(
            "{path}: logical group {name:?} needs at least two expressions"
        ));
    }
    let items = arr
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, e)| compile_node(e, &format!("{path}[{i}]"), reads_body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Group { logic, items })
}

fn compile_node(v: &Json, path: &str, reads_body: &mut bool) -> Result<Node, String> {
    let arr = v.as_array().ok_or_else(|| {
        format!(
            "{path}: expected a rule [var, op, value] or a group, got {}",
            short(v)
        )
    })?;
    match arr.first() {
        None => Err(format!("{path}: empty rule")),
        Some(Json::Array(_)) => Ok(Node::Group(compile_and(arr, path, reads_body)?)),
        Some(Json::String(s)) => match logic_op(s) {
            Some(logic) => Ok(Node::Group(compile_group(logic, s, arr, path, reads_body)?)),
            None => Ok(Node::Rule(compile_rule(arr, path, reads_body)?)),
        },
        Some(other) => Err(format!(
            "{path}: the variable name must be a string, got {}",
            short(other)
        )),
    }
}

fn compile_rule(arr: &[Json], path: &str, reads_body: &mut bool) -> Result<Rule, String> {
    let (negate, op, value) = match arr.len() {
        4 => {
            if arr[1].as_str() != Some("!") {
                return Err(format!(
                    "{path}: a four-element rule must be [var, \"!\", op, value], got {}",
                    short(&arr[1])
                ));
            }
            (true, Some(&arr[2]), &arr[3])
        }
        3 => (false, Some(&arr[1]), &arr[2]),
        // lua-resty-expr's legacy `[var, value]`, meaning `==`.
        2 => {
            if let Some(s) = arr[1].as_str() {
                if OPERATORS.contains(&s.to_ascii_lowercase().as_str()) {
                    return Err(format!("{path}: operator {s:?} has no value"));
                }
            }
            (false, None, &arr[1])
        }
        n => {
            return Err(format!(
                "{path}: a rule is [var, op, value] or [var, \"!\", op, value], got {n} elements"
            ))
        }
    };
    let name = arr[0].as_str().unwrap_or_default();
    let var = parse_var(name).map_err(|e| format!("{path}: {e}"))?;
    if matches!(var, Var::PostArg(_)) {
        *reads_body = true;
    }
    let op_name = match op {
        None => "==".to_string(),
        Some(Json::String(s)) => s.to_ascii_lowercase(),
        Some(other) => {
            return Err(format!(
                "{path}: the operator must be a string, got {}",
                short(other)
            ))
        }
    };
    let op = compile_op(&op_name, value).map_err(|e| format!("{path}: {e}"))?;
    Ok(Rule { var, negate, op })
}

fn compile_op(op: &str, v: &Json) -> Result<Op, String> {
    let number = |v: &Json| -> Result<f64, String> {
        match v {
            Json::Number(n) => n
                .as_f64()
                .ok_or_else(|| format!("operator {op:?} needs a number, got {}", short(v))),
            Json::String(s) => parse_num(s)
                .ok_or_else(|| format!("operator {op:?} needs a number, got {}", short(v))),
            _ => Err(format!("operator {op:?} needs a number, got {}", short(v))),
        }
    };
    Ok(match op {
        "==" => Op::Eq(scalar(op, v)?),
        "~=" => Op::Ne(scalar(op, v)?),
        ">" => Op::Gt(number(v)?),
        ">=" => Op::Ge(number(v)?),
        "<" => Op::Lt(number(v)?),
        "<=" => Op::Le(number(v)?),
        "in" => match v {
            Json::Array(items) => Op::In(
                items
                    .iter()
                    .map(|i| scalar(op, i))
                    .collect::<Result<_, _>>()?,
            ),
            _ => {
                return Err(format!(
                    "operator \"in\" needs an array of values, got {}",
                    short(v)
                ))
            }
        },
        "has" => Op::Has(scalar(op, v)?),
        "~~" | "~*" => {
            let pat = v.as_str().ok_or_else(|| {
                format!(
                    "operator {op:?} needs a regular expression string, got {}",
                    short(v)
                )
            })?;
            let re = RegexBuilder::new(pat)
                .case_insensitive(op == "~*")
                .build()
                .map_err(|e| format!("bad regular expression {pat:?}: {e}"))?;
            Op::Regex(re)
        }
        "ipmatch" => {
            let list: Vec<&Json> = match v {
                Json::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            if list.is_empty() {
                return Err("operator \"ipmatch\" needs at least one IP or CIDR".to_string());
            }
            let nets = list
                .into_iter()
                .map(|i| match i.as_str() {
                    Some(s) => Cidr::parse(s),
                    None => Err(format!(
                        "operator \"ipmatch\" needs IP/CIDR strings, got {}",
                        short(i)
                    )),
                })
                .collect::<Result<_, _>>()?;
            Op::IpMatch(nets)
        }
        _ => return Err(format!("unknown operator {op:?}")),
    })
}

/// A comparison literal. `null`, arrays and objects are refused: in
/// lua-resty-expr they never compare equal to a variable's value.
fn scalar(op: &str, v: &Json) -> Result<Lit, String> {
    match v {
        Json::String(s) => Ok(Lit::Str(s.as_str().into(), parse_num(s))),
        Json::Number(n) => n
            .as_f64()
            .map(Lit::Num)
            .ok_or_else(|| format!("operator {op:?}: number {n} out of range")),
        Json::Bool(b) => Ok(Lit::Bool(*b)),
        _ => Err(format!(
            "operator {op:?} needs a string, number or boolean, got {}",
            short(v)
        )),
    }
}

fn parse_var(name: &str) -> Result<Var, String> {
    let lower = name.to_ascii_lowercase();
    // Fixed names are case-insensitive, like nginx variables.
    let fixed = match lower.as_str() {
        "uri" => Some(Var::Uri),
        "request_uri" => Some(Var::RequestUri),
        "request_method" => Some(Var::RequestMethod),
        "host" => Some(Var::Host),
        "scheme" => Some(Var::Scheme),
        "server_port" => Some(Var::ServerPort),
        "remote_addr" => Some(Var::RemoteAddr),
        "query_string" | "args" => Some(Var::QueryString),
        "content_type" => Some(Var::ContentType),
        "consumer_name" | "remote_user" => Some(Var::ConsumerName),
        _ => None,
    };
    if let Some(v) = fixed {
        return Ok(v);
    }
    // The prefixes are matched case-insensitively; what follows keeps its case
    // where it matters (query parameter, cookie and body field names).
    let rest = |prefix: &str| -> Option<&str> {
        if lower.starts_with(prefix) && name.len() > prefix.len() {
            name.get(prefix.len()..)
        } else {
            None
        }
    };
    if let Some(arg) = rest("arg_") {
        return Ok(Var::Arg(arg.into()));
    }
    if let Some(h) = rest("http_") {
        // `http_x_user_id` reads `X-User-Id`: lower-case, '_' -> '-'.
        let header = h.to_ascii_lowercase().replace('_', "-");
        return HeaderName::from_bytes(header.as_bytes())
            .map(Var::Http)
            .map_err(|_| format!("variable {name:?}: {header:?} is not a valid header name"));
    }
    if let Some(c) = rest("cookie_") {
        return Ok(Var::Cookie(c.into()));
    }
    if let Some(p) = rest("post_arg.") {
        return parse_body_path(p)
            .map(|segs| {
                Var::PostArg(BodyPath {
                    segs: segs.into_iter().map(Into::into).collect(),
                    slot: NO_SLOT,
                })
            })
            .map_err(|e| format!("variable {name:?}: {e}"));
    }
    Err(format!(
        "unknown variable {name:?} (known: uri, request_uri, request_method, host, scheme, server_port, remote_addr, \
         query_string, args, content_type, arg_NAME, http_NAME, cookie_NAME, post_arg.NAME)"
    ))
}

/// `a.b[0].c` -> `["a", "b", "0", "c"]`. JSONPath wildcards and recursive
/// descent are refused rather than silently never matching.
fn parse_body_path(p: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    for part in p.split('.') {
        let (key, mut idx) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() {
            return Err("empty field name in body path".to_string());
        }
        out.push(key);
        while !idx.is_empty() {
            let close = idx.find(']').ok_or("unclosed '[' in body path")?;
            let n = &idx[1..close];
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "only numeric indexes like [0] are supported in body paths, got [{n}]"
                ));
            }
            out.push(n);
            idx = &idx[close + 1..];
            if !idx.is_empty() && !idx.starts_with('[') {
                return Err(format!("unexpected {idx:?} after an index in body path"));
            }
        }
    }
    Ok(out)
}

/// Lua `tonumber` for the inputs that matter: decimal (with exponent) and
/// `0x` hex, surrounding whitespace allowed; no `inf`/`nan` words.
pub(crate) fn parse_num(s: &str) -> Option<f64> {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let v = u64::from_str_radix(hex, 16).ok()? as f64;
        return Some(if neg { -v } else { v });
    }
    let plausible = body.bytes().any(|b| b.is_ascii_digit())
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if !plausible {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Numbers rendered like Lua's `tostring` for integers (`9080`, not `9080.0`),
/// for regex matching against a numeric variable.
fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

impl Group {
    fn eval<'a>(&self, req: &RequestView<'a>, memo: Option<&BodyMemo<'a>>) -> bool {
        let mut items = self.items.iter();
        match self.logic {
            Logic::And => items.all(|n| n.eval(req, memo)),
            Logic::Or => items.any(|n| n.eval(req, memo)),
            Logic::NotAnd => !items.all(|n| n.eval(req, memo)),
            Logic::NotOr => !items.any(|n| n.eval(req, memo)),
        }
    }

    fn assign_body_slots(&mut self, paths: &mut Vec<Box<[Box<str>]>>) {
        for item in &mut self.items {
            match item {
                Node::Group(g) => g.assign_body_slots(paths),
                Node::Rule(Rule {
                    var: Var::PostArg(p),
                    ..
                }) => {
                    let slot = match paths.iter().position(|q| *q == p.segs) {
                        Some(i) => i,
                        None => {
                            paths.push(p.segs.clone());
                            paths.len() - 1
                        }
                    };
                    p.slot = u32::try_from(slot).unwrap_or(NO_SLOT);
                }
                Node::Rule(_) => {}
            }
        }
    }
}

impl Node {
    fn eval<'a>(&self, req: &RequestView<'a>, memo: Option<&BodyMemo<'a>>) -> bool {
        match self {
            Node::Group(g) => g.eval(req, memo),
            Node::Rule(r) => r.eval(req, memo),
        }
    }
}

impl Rule {
    fn eval<'a>(&self, req: &RequestView<'a>, memo: Option<&BodyMemo<'a>>) -> bool {
        let hit = match (&self.var, &self.op) {
            // Fast path: no need to print the address only to parse it back.
            (Var::RemoteAddr, Op::IpMatch(nets)) => req.remote_addr.is_some_and(|a| {
                let ip = Ip::from_addr(a);
                nets.iter().any(|n| n.contains(ip))
            }),
            (Var::PostArg(path), _) => self.post_arg_hit(path, req, memo),
            _ => self.op.test(self.var.read(req).as_ref()),
        };
        hit != self.negate
    }

    /// Out of line: it keeps the other variables' path as small as it was.
    #[inline(never)]
    fn post_arg_hit<'a>(
        &self,
        path: &BodyPath,
        req: &RequestView<'a>,
        memo: Option<&BodyMemo<'a>>,
    ) -> bool {
        let Some(body) = req.body else {
            return self.op.test(None);
        };
        BodyMemo::with(memo, path, body, |found| match found {
            Found::Decoded => self.op.test(self.var.read(req).as_ref()),
            Found::Unset => self.op.test(None),
            Found::Json(v) => self.op.test_json(v),
        })
    }
}

/// Equality as lua-resty-expr does it, made symmetric: a number equals a
/// numeric string of the same value, bools only equal bools, lists nothing.
fn eq(v: &Value, lit: &Lit) -> bool {
    match (v, lit) {
        (Value::Str(s), Lit::Str(t, _)) => s.as_ref() == t.as_ref(),
        (Value::Str(s), Lit::Num(n)) => parse_num(s) == Some(*n),
        (Value::Num(x), Lit::Num(n)) => x == n,
        (Value::Num(x), Lit::Str(_, Some(n))) => x == n,
        (Value::Bool(a), Lit::Bool(b)) => a == b,
        _ => false,
    }
}

fn to_num(v: &Value) -> Option<f64> {
    match v {
        Value::Str(s) => parse_num(s),
        Value::Num(x) => Some(*x),
        _ => None,
    }
}

impl Op {
    fn test(&self, v: Option<&Value>) -> bool {
        let Some(v) = v else {
            // Unset variable: only "not equal" holds.
            return matches!(self, Op::Ne(_));
        };
        match self {
            Op::Eq(l) => eq(v, l),
            Op::Ne(l) => !eq(v, l),
            Op::Gt(n) => to_num(v).is_some_and(|x| x > *n),
            Op::Ge(n) => to_num(v).is_some_and(|x| x >= *n),
            Op::Lt(n) => to_num(v).is_some_and(|x| x < *n),
            Op::Le(n) => to_num(v).is_some_and(|x| x <= *n),
            Op::In(list) => list.iter().any(|l| eq(v, l)),
            Op::Has(l) => matches!(v, Value::List(items) if items.iter().any(|i| eq(i, l))),
            Op::Regex(re) => match v {
                Value::Str(s) => re.is_match(s),
                Value::Num(x) => re.is_match(&fmt_num(*x)),
                _ => false,
            },
            Op::IpMatch(nets) => match v {
                Value::Str(s) => parse_ip(s).is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
                _ => false,
            },
        }
    }
}

// ---------------------------------------------------------------- post_arg on JSON text
//
// A `post_arg` value is compared where it lies in the body, as JSON text, and
// decoded only as far as the operator needs: a number or a boolean when it is
// found, a string when it is compared (borrowed unless it has escapes), a list
// element by element while `has` searches it. The answers are those of the
// decoded value (`Value::from_json`), which the property tests check. Memory
// does not grow with the value, except for the rare operators that need an
// object's text (a regex, or equality with a literal that starts with `{`):
// a regex gets one copy of the object's text, equality compares it piece by
// piece and stops at the literal's length.

/// Body look-ups of one request, one slot per distinct `post_arg` path of the
/// router's routes (see [`Expr::assign_body_slots`]), so routes reading the
/// same path share one look-up and one decoded value.
pub(crate) struct BodyMemo<'a> {
    inline: [OnceCell<Found<'a>>; INLINE_SLOTS],
    spill: Box<[OnceCell<Found<'a>>]>,
}

/// Slots kept on the stack: routers rarely read more distinct paths.
const INLINE_SLOTS: usize = 4;

/// A `post_arg` look-up.
pub(crate) enum Found<'a> {
    /// The body is not JSON text: read the decoded value.
    Decoded,
    /// Absent, JSON `null`, or a number serde_json cannot hold.
    Unset,
    Json(JsonOperand<'a>),
}

impl<'a> BodyMemo<'a> {
    pub(crate) fn new(paths: usize) -> BodyMemo<'a> {
        BodyMemo {
            inline: Default::default(),
            spill: (INLINE_SLOTS..paths).map(|_| OnceCell::new()).collect(),
        }
    }

    fn slot(&self, slot: u32) -> Option<&OnceCell<Found<'a>>> {
        let i = slot as usize;
        match i.checked_sub(INLINE_SLOTS) {
            None => self.inline.get(i),
            Some(j) => self.spill.get(j),
        }
    }

    /// Runs `f` on the look-up of `path`, from the memo when there is one.
    fn with<R>(
        memo: Option<&Self>,
        path: &BodyPath,
        body: &'a dyn PostArgs,
        f: impl FnOnce(&Found<'a>) -> R,
    ) -> R {
        let look = || match with_segs(&path.segs, |segs| body.post_arg_json(segs)) {
            JsonArg::Unsupported => Found::Decoded,
            JsonArg::Absent => Found::Unset,
            JsonArg::Found(json) => JsonOperand::new(json).map_or(Found::Unset, Found::Json),
        };
        match memo.and_then(|m| m.slot(path.slot)) {
            Some(cell) => f(cell.get_or_init(look)),
            None => f(&look()),
        }
    }
}

/// A `post_arg` value as JSON text, with what has been decoded of it.
pub(crate) struct JsonOperand<'a> {
    json: &'a str,
    kind: Kind,
    /// Strings: the unescaped text. Objects: the compact JSON text with sorted
    /// keys (what `Value::from_json` compares). Decoded on first need; `None`
    /// when it cannot be (a lone surrogate escape), which compares like unset.
    text: OnceCell<Option<Cow<'a, str>>>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    Num(f64),
    Bool(bool),
    List,
    Object,
}

impl<'a> JsonOperand<'a> {
    /// `None` for `null` and for numbers serde_json refuses (out of f64 range):
    /// both read as unset.
    fn new(json: &'a str) -> Option<JsonOperand<'a>> {
        let kind = match json.as_bytes().first()? {
            b'n' => return None,
            b't' => Kind::Bool(true),
            b'f' => Kind::Bool(false),
            b'"' => Kind::Str,
            b'[' => Kind::List,
            b'{' => Kind::Object,
            _ => Kind::Num(
                serde_json::from_str::<serde_json::Number>(json)
                    .ok()?
                    .as_f64()?,
            ),
        };
        Some(JsonOperand {
            json,
            kind,
            text: OnceCell::new(),
        })
    }

    fn text(&self) -> Option<&str> {
        self.text
            .get_or_init(|| match self.kind {
                Kind::Str => unescape(self.json),
                Kind::Object => {
                    let mut out = Collect(Vec::new());
                    canonical(self.json, &mut out, 0)
                        .then(|| String::from_utf8(out.0).ok())
                        .flatten()
                        .map(Cow::Owned)
                }
                _ => None,
            })
            .as_deref()
    }

    /// `eq` on the decoded value.
    fn eq(&self, lit: &Lit) -> bool {
        match (self.kind, lit) {
            (Kind::Num(x), _) => eq(&Value::Num(x), lit),
            (Kind::Bool(b), _) => eq(&Value::Bool(b), lit),
            (Kind::Str, Lit::Str(t, _)) => {
                // Unescaping only shrinks a string, at most six times (`\u0041` is `A`): a
                // string whose JSON is outside those bounds cannot equal `t`, so a huge value
                // is not decoded only to find that out.
                let inner = self.json.len() - 2;
                if self.text.get().is_none() && (t.len() > inner || inner > t.len() * 6) {
                    return false;
                }
                self.text() == Some(&**t)
            }
            (Kind::Str, Lit::Num(n)) => self.text().and_then(parse_num) == Some(*n),
            (Kind::Object, Lit::Str(t, _)) if t.starts_with('{') => match self.text.get() {
                Some(text) => text.as_deref() == Some(&**t),
                None => {
                    let mut cmp = Compare {
                        want: t.as_bytes(),
                        at: 0,
                    };
                    canonical(self.json, &mut cmp, 0) && cmp.at == t.len()
                }
            },
            // A string never equals a boolean; an object's text is neither a number nor a
            // boolean; a list equals nothing.
            _ => false,
        }
    }

    /// `to_num` on the decoded value.
    fn num(&self) -> Option<f64> {
        match self.kind {
            Kind::Num(x) => Some(x),
            Kind::Str => self.text().and_then(parse_num),
            _ => None,
        }
    }
}

impl Op {
    /// [`test`](Op::test) on a value still in JSON text, with the same answers.
    fn test_json(&self, v: &JsonOperand) -> bool {
        match v.kind {
            Kind::Num(x) => return self.test(Some(&Value::Num(x))),
            Kind::Bool(b) => return self.test(Some(&Value::Bool(b))),
            Kind::Str | Kind::List | Kind::Object => {}
        }
        match self {
            Op::Eq(l) => v.eq(l),
            Op::Ne(l) => !v.eq(l),
            Op::Gt(n) => v.num().is_some_and(|x| x > *n),
            Op::Ge(n) => v.num().is_some_and(|x| x >= *n),
            Op::Lt(n) => v.num().is_some_and(|x| x < *n),
            Op::Le(n) => v.num().is_some_and(|x| x <= *n),
            Op::In(list) => list.iter().any(|l| v.eq(l)),
            Op::Has(l) => matches!(v.kind, Kind::List) && list_has(v.json, l),
            Op::Regex(re) => {
                !matches!(v.kind, Kind::List) && v.text().is_some_and(|s| re.is_match(s))
            }
            // An object's text starts with '{': never an address.
            Op::IpMatch(nets) => {
                matches!(v.kind, Kind::Str)
                    && v.text()
                        .and_then(parse_ip)
                        .is_some_and(|ip| nets.iter().any(|n| n.contains(ip)))
            }
        }
    }
}

/// Whether the JSON array `json` has an element equal to `lit`, reading one
/// element at a time and stopping at the first.
fn list_has(json: &str, lit: &Lit) -> bool {
    struct Search<'l, 'c> {
        lit: &'l Lit,
        found: &'c Cell<bool>,
    }
    impl<'de> Visitor<'de> for Search<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(item) = seq.next_element::<&'de RawValue>()? {
                if JsonOperand::new(item.get()).is_some_and(|v| v.eq(self.lit)) {
                    self.found.set(true);
                    // serde_json insists that a visitor reads the whole array; an error is
                    // the way to stop at the first hit.
                    return Err(de::Error::custom("found"));
                }
            }
            Ok(())
        }
    }
    let found = Cell::new(false);
    let _ = serde_json::Deserializer::from_str(json).deserialize_seq(Search { lit, found: &found });
    found.get()
}

/// A JSON string's text, borrowed unless it has escapes; `None` if an escape
/// is a lone surrogate (serde_json refuses those too).
fn unescape(json: &str) -> Option<Cow<'_, str>> {
    struct Text;
    impl<'de> Visitor<'de> for Text {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON string")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
    }
    serde_json::Deserializer::from_str(json)
        .deserialize_str(Text)
        .ok()
}

/// Where [`canonical`] writes; `put` returning false stops it.
trait Sink {
    fn put(&mut self, bytes: &[u8]) -> bool;
    /// Bytes it can still take.
    fn room(&self) -> usize;
}

struct Collect(Vec<u8>);

impl Sink for Collect {
    fn put(&mut self, bytes: &[u8]) -> bool {
        self.0.extend_from_slice(bytes);
        true
    }
    fn room(&self) -> usize {
        usize::MAX
    }
}

/// Compares what is written with `want`, stopping at the first difference.
struct Compare<'t> {
    want: &'t [u8],
    at: usize,
}

impl Sink for Compare<'_> {
    fn put(&mut self, bytes: &[u8]) -> bool {
        let end = self.at + bytes.len();
        if self.want.get(self.at..end) == Some(bytes) {
            self.at = end;
            true
        } else {
            false
        }
    }
    fn room(&self) -> usize {
        self.want.len() - self.at
    }
}

struct SinkWriter<'s>(&'s mut dyn Sink);

impl std::io::Write for SinkWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.0.put(bytes) {
            Ok(bytes.len())
        } else {
            Err(std::io::ErrorKind::WriteZero.into())
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// serde_json builds no value nested deeper than this; neither does [`canonical`].
const MAX_DEPTH: usize = 128;

/// Writes the JSON value `json` as `serde_json::Value`'s `to_string` would
/// (keys sorted, the last of duplicate keys kept, no whitespace, numbers and
/// escapes in serde_json's spelling) without building it: an object's members
/// are held as (key, JSON text) pairs while they are sorted, everything else is
/// written as it is read. False when the sink stops it or the value cannot be
/// decoded.
fn canonical(json: &str, out: &mut dyn Sink, depth: usize) -> bool {
    if depth >= MAX_DEPTH {
        return false;
    }
    let mut de = serde_json::Deserializer::from_str(json);
    match json.as_bytes().first() {
        Some(b'{') => {
            // Every member takes at least four bytes (`"":0`): more members than that cannot
            // fit, whatever they hold.
            let mut members = BTreeMap::new();
            let max = out.room() / 4 + 1;
            if de
                .deserialize_map(Members {
                    map: &mut members,
                    max,
                })
                .is_err()
            {
                return false;
            }
            if !out.put(b"{") {
                return false;
            }
            for (i, (k, v)) in members.iter().enumerate() {
                if (i > 0 && !out.put(b","))
                    || !put_str(out, k)
                    || !out.put(b":")
                    || !canonical(v.get(), out, depth + 1)
                {
                    return false;
                }
            }
            out.put(b"}")
        }
        Some(b'[') => {
            out.put(b"[")
                && de
                    .deserialize_seq(Items {
                        out: &mut *out,
                        depth,
                    })
                    .is_ok()
                && out.put(b"]")
        }
        Some(b'"') => {
            // Unescaped text is at least a sixth of the escaped one; quoted, it needs 2 more.
            if (json.len() - 2) / 6 + 2 > out.room() {
                return false;
            }
            unescape(json).is_some_and(|s| put_str(out, &s))
        }
        Some(b't' | b'f' | b'n') => out.put(json.as_bytes()),
        Some(_) => serde_json::from_str::<serde_json::Number>(json)
            .is_ok_and(|n| out.put(n.to_string().as_bytes())),
        None => false,
    }
}

/// A string in serde_json's escaping.
fn put_str(out: &mut dyn Sink, s: &str) -> bool {
    serde_json::to_writer(SinkWriter(out), s).is_ok()
}

/// Collects an object's members, the last of duplicate keys winning, and
/// gives up past `max` distinct keys.
struct Members<'m, 'de> {
    map: &'m mut BTreeMap<Cow<'de, str>, &'de RawValue>,
    max: usize,
}

impl<'de> Visitor<'de> for Members<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<(), A::Error> {
        while let Some(Key(k)) = access.next_key()? {
            let v: &'de RawValue = access.next_value()?;
            self.map.insert(k, v);
            if self.map.len() > self.max {
                return Err(de::Error::custom("too many members"));
            }
        }
        Ok(())
    }
}

/// Writes an array's elements as they are read.
struct Items<'s> {
    out: &'s mut dyn Sink,
    depth: usize,
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut first = true;
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if (!first && !self.out.put(b",")) || !canonical(item.get(), self.out, self.depth + 1) {
                return Err(de::Error::custom("stopped"));
            }
            first = false;
        }
        Ok(())
    }
}

/// An object key, borrowed from the body unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Key(Cow::Owned(v.to_owned())))
    }
}

impl Var {
    fn read<'a>(&self, req: &RequestView<'a>) -> Option<Value<'a>> {
        let s = |x: &'a str| Some(Value::Str(Cow::Borrowed(x)));
        match self {
            Var::Uri => s(req.path),
            Var::RequestUri => match req.query {
                Some(q) => Some(Value::Str(Cow::Owned(format!("{}?{}", req.path, q)))),
                None => s(req.path),
            },
            Var::RequestMethod => s(req.method),
            Var::Host => {
                let h = host::normalize(req.host?)?.var;
                Some(Value::Str(lower(h)))
            }
            Var::Scheme => s(req.scheme),
            Var::ServerPort => Some(Value::Num(f64::from(req.server_port))),
            Var::RemoteAddr => {
                let ip = Ip::from_addr(req.remote_addr?).to_ip_addr();
                Some(Value::Str(Cow::Owned(ip.to_string())))
            }
            Var::QueryString => s(req.query?),
            Var::ContentType => header(req.headers, &CONTENT_TYPE),
            Var::ConsumerName => s(req.consumer?),
            Var::Arg(name) => query_arg(req.query?, name),
            Var::Http(name) => {
                let v = header(req.headers, name);
                // HTTP/2 carries the host in :authority, which the gateway
                // passes as `host` rather than as a header.
                if v.is_none() && *name == HOST {
                    return req.host.map(|h| Value::Str(Cow::Borrowed(h)));
                }
                v
            }
            Var::Cookie(name) => cookie(req.headers, name),
            Var::PostArg(path) => {
                let body = req.body?;
                with_segs(&path.segs, |segs| body.post_arg(segs))
            }
        }
    }
}

/// Runs `f` on the path as `&str` segments, on the stack for the usual short
/// paths.
fn with_segs<R>(segs: &[Box<str>], f: impl FnOnce(&[&str]) -> R) -> R {
    let mut buf: [&str; 16] = [""; 16];
    if segs.len() <= buf.len() {
        for (slot, seg) in buf.iter_mut().zip(segs.iter()) {
            *slot = seg;
        }
        f(&buf[..segs.len()])
    } else {
        let v: Vec<&str> = segs.iter().map(|s| &**s).collect();
        f(&v)
    }
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// A request header as nginx's `$http_NAME` gives it: repeated headers are
/// joined with ", " (with "; " for Cookie), as nginx 1.23+ does.
fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Value<'a>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut out = String::from_utf8_lossy(first.as_bytes());
    let sep = if name == COOKIE { "; " } else { ", " };
    for more in values {
        let o = out.to_mut();
        o.push_str(sep);
        o.push_str(&String::from_utf8_lossy(more.as_bytes()));
    }
    Some(Value::Str(out))
}

/// `cookie_NAME`: the first cookie of that (case-sensitive) name in any
/// Cookie header, value as sent (not decoded), like lua-resty-cookie.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<Value<'a>> {
    for hv in headers.get_all(COOKIE) {
        for pair in hv.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => continue,
            };
            if k.trim_ascii() == name.as_bytes() {
                return Some(Value::Str(String::from_utf8_lossy(v.trim_ascii())));
            }
        }
    }
    None
}

/// `arg_NAME` as APISIX reads it (`ngx.req.get_uri_args()`): names and values
/// percent-decoded with '+' as space, first occurrence wins, and a parameter
/// without '=' is the boolean `true`.
fn query_arg<'a>(query: &'a str, name: &str) -> Option<Value<'a>> {
    for part in query.split('&') {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (part, None),
        };
        if !k.is_empty() && decoded_eq(k, name) {
            return Some(match v {
                None => Value::Bool(true),
                Some(v) => Value::Str(percent_decode(v)),
            });
        }
    }
    None
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The decoded byte at `i` and how many input bytes it used. Malformed
/// escapes stay literal, as nginx leaves them.
fn decode_at(r: &[u8], i: usize) -> (u8, usize) {
    match r[i] {
        b'+' => (b' ', 1),
        b'%' => decode_pct(r, i),
        b => (b, 1),
    }
}

fn decode_pct(r: &[u8], i: usize) -> (u8, usize) {
    match (
        r.get(i + 1).copied().and_then(hex_val),
        r.get(i + 2).copied().and_then(hex_val),
    ) {
        (Some(h), Some(l)) => (h << 4 | l, 3),
        _ => (b'%', 1),
    }
}

/// Compares a raw (encoded) query key with a name without allocating.
fn decoded_eq(raw: &str, want: &str) -> bool {
    let (r, w) = (raw.as_bytes(), want.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < r.len() {
        let (b, used) = decode_at(r, i);
        if w.get(j) != Some(&b) {
            return false;
        }
        i += used;
        j += 1;
    }
    j == w.len()
}

pub(crate) fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let r = s.as_bytes();
    let mut out = Vec::with_capacity(r.len());
    let mut i = 0;
    while i < r.len() {
        let (b, used) = decode_at(r, i);
        out.push(b);
        i += used;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// One APISIX variable (`remote_addr`, `arg_user`, `http_x_user_id`, `cookie_sid`, ...) read on
/// its own, for keys built from request variables (ai-proxy-multi's `chash` balancer).
#[derive(Clone, Debug)]
pub struct Variable(Var);

impl Variable {
    pub fn parse(name: &str) -> Result<Variable, String> {
        parse_var(name.strip_prefix('$').unwrap_or(name)).map(Variable)
    }

    /// The value as text (lists joined with `,`), or None when the request does not have it.
    pub fn read_string(&self, req: &RequestView) -> Option<String> {
        fn text(v: Value<'_>, out: &mut String) {
            match v {
                Value::Str(s) => out.push_str(&s),
                Value::Num(n) => out.push_str(&n.to_string()),
                Value::Bool(b) => out.push_str(if b { "true" } else { "false" }),
                Value::List(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        text(item, out);
                    }
                }
            }
        }
        let v = self.0.read(req)?;
        let mut out = String::new();
        text(v, &mut out);
        Some(out)
    }
}
