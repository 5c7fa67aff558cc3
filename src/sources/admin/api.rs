//! The admin API's requests and answers, without the network: a method, a path, a query and a
//! body in, a status and a JSON body out, in APISIX v3's shapes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::json as patch;
use crate::plugins::registry;
use crate::resources::{Change, ChangeError, Kind, Origin, Resource};
use crate::runtime::{ApplyError, Store};
use crate::sources::Persist;

/// One answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn new(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// APISIX's error shape.
    pub fn error(status: u16, msg: impl Into<String>) -> Reply {
        Reply::new(status, json!({ "error_msg": msg.into() }))
    }

    /// APISIX's answer for an id that does not exist.
    pub fn key_not_found() -> Reply {
        Reply::new(404, json!({"message": "Key not found"}))
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq)]
enum Target<'a> {
    /// `/routes`, or `/consumers/{username}/credentials` (with the username).
    Collection(Kind, Option<&'a str>),
    /// One resource (credentials: `username/id`), and the sub-path after it, if any.
    One(Kind, String, Vec<&'a str>),
    PluginList,
    Plugin(&'a str),
}

fn target(path: &str) -> Option<Target<'_>> {
    let rest = path.strip_prefix("/apisix/admin/")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let kind = |s: &str| Kind::parse(s).filter(|k| *k != Kind::Credentials);
    Some(match segs.as_slice() {
        ["plugins", "list"] => Target::PluginList,
        ["plugins", name] => Target::Plugin(name),
        ["consumers", user, "credentials"] => Target::Collection(Kind::Credentials, Some(user)),
        ["consumers", user, "credentials", id, sub @ ..] => {
            Target::One(Kind::Credentials, format!("{user}/{id}"), sub.to_vec())
        }
        [k] => Target::Collection(kind(k)?, None),
        [k, id, sub @ ..] => Target::One(kind(k)?, id.to_string(), sub.to_vec()),
        _ => return None,
    })
}

/// The etcd-style key APISIX answers with: `/apisix/routes/1`,
/// `/apisix/consumers/jack/credentials/c1`.
pub fn key(kind: Kind, id: &str) -> String {
    match kind {
        Kind::Credentials => {
            let (user, cred) = id.split_once('/').unwrap_or((id, ""));
            format!("/apisix/consumers/{user}/credentials/{cred}")
        }
        _ => format!("/apisix/{}/{id}", kind.as_str()),
    }
}

/// The field that holds a resource's own id.
fn id_field(kind: Kind) -> &'static str {
    if kind == Kind::Consumers {
        "username"
    } else {
        "id"
    }
}

/// A resource's own id (a credential's without its username).
fn own_id(kind: Kind, id: &str) -> &str {
    match kind {
        Kind::Credentials => id.split_once('/').map(|(_, c)| c).unwrap_or(id),
        _ => id,
    }
}

fn parse_body(body: &[u8]) -> Result<Value, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Reply::error(400, "invalid request body: empty body"));
    }
    // The error says where the JSON breaks, never what the body holds.
    serde_json::from_slice(body)
        .map_err(|e| Reply::error(400, format!("invalid request body: {e}")))
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub struct Api {
    store: Arc<Store>,
    persist: Arc<dyn Persist>,
    redact: bool,
    /// Read-modify-write changes (PATCH, POST's new ids) are made one at a time.
    writes: Mutex<()>,
    next_id: AtomicU64,
}

impl Api {
    pub fn new(store: Arc<Store>, persist: Arc<dyn Persist>, redact: bool) -> Api {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Api {
            store,
            persist,
            redact,
            writes: Mutex::new(()),
            next_id: AtomicU64::new(micros),
        }
    }

    pub fn handle(&self, method: &str, path: &str, query: Option<&str>, body: &[u8]) -> Reply {
        let Some(t) = target(path) else {
            return Reply::error(404, format!("no admin API at {path}"));
        };
        let not_allowed = || Reply::error(405, format!("method {method} is not allowed here"));
        match (t, method) {
            (Target::PluginList, "GET") => {
                Reply::new(200, json!(registry::names().collect::<Vec<_>>()))
            }
            (Target::Plugin(name), "GET") => match registry::find(name) {
                Some(r) => {
                    let mut v = json!({"name": r.name, "priority": r.priority});
                    if r.credential.is_some() {
                        v["type"] = json!("auth");
                    }
                    Reply::new(200, v)
                }
                None => Reply::error(404, format!("plugin {name} not found")),
            },
            (Target::Collection(kind, user), "GET") => self.list(kind, user, query),
            (Target::Collection(kind, user), "PUT") => {
                let value = match parse_body(body) {
                    Ok(v) => v,
                    Err(r) => return r,
                };
                let field = id_field(kind);
                let id = match value.get(field) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(_) => {
                        return Reply::error(
                            400,
                            format!("invalid configuration: {field}: must be a string"),
                        )
                    }
                    None => {
                        return Reply::error(400, format!("missing {} {field}", kind.singular()))
                    }
                };
                let id = match user {
                    Some(u) => format!("{u}/{id}"),
                    None => id,
                };
                self.put(kind, id, value)
            }
            (Target::Collection(Kind::Consumers, _), "POST") => not_allowed(),
            (Target::Collection(kind, user), "POST") => {
                let value = match parse_body(body) {
                    Ok(v) => v,
                    Err(r) => return r,
                };
                if value.get("id").is_some() {
                    return Reply::error(
                        400,
                        format!("wrong {} id, do not need it", kind.singular()),
                    );
                }
                let _g = self.writes.lock().unwrap_or_else(|e| e.into_inner());
                let id = loop {
                    let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let id = format!("{n:020}");
                    let id = match user {
                        Some(u) => format!("{u}/{id}"),
                        None => id,
                    };
                    if self.store.read(|r| r.get(kind, &id).is_none()) {
                        break id;
                    }
                };
                self.put(kind, id, value)
            }
            (Target::One(kind, id, sub), "GET") if sub.is_empty() => {
                match self
                    .store
                    .read(|r| r.get(kind, &id).map(|r| self.item(kind, &id, r)))
                {
                    Some(item) => Reply::new(200, item),
                    None => Reply::key_not_found(),
                }
            }
            (Target::One(kind, id, sub), "PUT") if sub.is_empty() => match parse_body(body) {
                Ok(v) => self.put(kind, id, v),
                Err(r) => r,
            },
            (Target::One(kind, id, sub), "PATCH") => self.patch(kind, id, &sub, body),
            (Target::One(kind, id, sub), "DELETE") if sub.is_empty() => self.delete(kind, id),
            _ => not_allowed(),
        }
    }

    /// `{"key", "value", "createdIndex", "modifiedIndex"}`; resources of the config file also say
    /// `"origin": "config_file"` (read-only).
    fn item(&self, kind: Kind, id: &str, r: &Resource) -> Value {
        let mut value = (*r.value).clone();
        if let Value::Object(m) = &mut value {
            m.insert(
                id_field(kind).into(),
                Value::String(own_id(kind, id).into()),
            );
        }
        if self.redact {
            patch::redact(&mut value);
        }
        let mut item = json!({
            "key": key(kind, id),
            "value": value,
            "createdIndex": r.created_index,
            "modifiedIndex": r.modified_index,
        });
        if r.origin == Origin::File {
            item["origin"] = json!("config_file");
        }
        item
    }

    fn list(&self, kind: Kind, user: Option<&str>, query: Option<&str>) -> Reply {
        let number = |name: &str| -> Result<Option<usize>, Reply> {
            match query_param(query, name) {
                None => Ok(None),
                Some(v) => match v.parse::<usize>() {
                    Ok(n) if (1..=500).contains(&n) || (name == "page" && n >= 1) => Ok(Some(n)),
                    _ => Err(Reply::error(
                        400,
                        format!("invalid {name} {v:?}: must be a number between 1 and 500"),
                    )),
                },
            }
        };
        let (page, page_size) = match (number("page"), number("page_size")) {
            (Ok(p), Ok(s)) => (p.unwrap_or(1), s),
            (Err(r), _) | (_, Err(r)) => return r,
        };
        let prefix = user.map(|u| format!("{u}/"));
        self.store.read(|resources| {
            let all: Vec<(&String, &Resource)> = resources
                .map(kind)
                .iter()
                .filter(|(id, _)| prefix.as_ref().is_none_or(|p| id.starts_with(p.as_str())))
                .collect();
            let total = all.len();
            let (skip, take) = match page_size {
                Some(s) => ((page - 1).saturating_mul(s), s),
                None => (0, total),
            };
            let list: Vec<Value> = all
                .into_iter()
                .skip(skip)
                .take(take)
                .map(|(id, r)| self.item(kind, id, r))
                .collect();
            Reply::new(200, json!({"total": total, "list": list}))
        })
    }

    fn apply(&self, kind: Kind, id: &str, change: Change) -> Result<Resource, Reply> {
        let persist = &self.persist;
        let is_delete = matches!(change, Change::Delete { .. });
        match self.store.apply(vec![change], |admin| persist.save(admin)) {
            Ok(mut out) => out
                .pop()
                .ok_or_else(|| Reply::error(500, "the change returned nothing")),
            Err(e) => Err(error_reply(kind, id, e, is_delete)),
        }
    }

    fn put(&self, kind: Kind, id: String, value: Value) -> Reply {
        match self.apply(
            kind,
            &id,
            Change::Put {
                kind,
                id: id.clone(),
                value,
            },
        ) {
            Ok(r) => {
                // A new resource's two indexes are the same revision.
                let status = if r.created_index == r.modified_index {
                    201
                } else {
                    200
                };
                Reply::new(status, self.item(kind, &id, &r))
            }
            Err(reply) => reply,
        }
    }

    fn patch(&self, kind: Kind, id: String, sub: &[&str], body: &[u8]) -> Reply {
        let patch = match parse_body(body) {
            Ok(v) => v,
            Err(r) => return r,
        };
        if sub.is_empty() && !patch.is_object() {
            return Reply::error(
                400,
                "invalid request body: a PATCH body must be a JSON object",
            );
        }
        let _g = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut value) = self
            .store
            .read(|r| r.get(kind, &id).map(|r| (*r.value).clone()))
        else {
            return Reply::key_not_found();
        };
        if sub.is_empty() {
            patch::merge_patch(&mut value, &patch);
        } else if let Err(m) = patch::set_at(&mut value, sub, patch) {
            return Reply::error(400, format!("invalid sub path {}: {m}", sub.join("/")));
        }
        match self.apply(
            kind,
            &id,
            Change::Put {
                kind,
                id: id.clone(),
                value,
            },
        ) {
            Ok(r) => Reply::new(200, self.item(kind, &id, &r)),
            Err(reply) => reply,
        }
    }

    fn delete(&self, kind: Kind, id: String) -> Reply {
        match self.apply(
            kind,
            &id,
            Change::Delete {
                kind,
                id: id.clone(),
            },
        ) {
            Ok(_) => Reply::new(200, json!({"deleted": "1", "key": key(kind, &id)})),
            Err(reply) => reply,
        }
    }
}

/// A refused change as APISIX answers it. `Invalid` errors name the field relative to the object
/// (`routes/1.plugins.ai-proxy.auth` → plugin `ai-proxy`, field `auth`).
fn error_reply(kind: Kind, id: &str, e: ApplyError, is_delete: bool) -> Reply {
    match e {
        ApplyError::Change(ChangeError::Invalid(ce)) => {
            let prefix = format!("{}/{id}", kind.as_str());
            let path = match ce.path.strip_prefix(prefix.as_str()) {
                Some("") => "",
                Some(rest) if rest.starts_with('.') => &rest[1..],
                _ => ce.path.as_str(),
            };
            if let Some(rest) = path.strip_prefix("plugins.") {
                let (name, field) = rest.split_once('.').unwrap_or((rest, ""));
                let why = if field.is_empty() {
                    ce.message
                } else {
                    format!("{field}: {}", ce.message)
                };
                return Reply::error(
                    400,
                    format!("failed to check the configuration of plugin {name} err: {why}"),
                );
            }
            let what = if path.is_empty() || path == "." {
                ce.message
            } else {
                format!("{path}: {}", ce.message)
            };
            Reply::error(400, format!("invalid configuration: {what}"))
        }
        ApplyError::Change(ChangeError::NotFound(m)) => {
            if is_delete {
                Reply::key_not_found()
            } else {
                Reply::error(404, m)
            }
        }
        ApplyError::Change(ChangeError::ReadOnly(m)) => {
            let mut r = Reply::error(400, m);
            r.headers.push(("x-aigate-origin", "config_file".into()));
            r
        }
        ApplyError::Change(ChangeError::Reference(m)) => Reply::error(400, m),
        ApplyError::Store(m) => Reply::error(503, format!("failed to store the change: {m}")),
        ApplyError::Conflict(m) => Reply::error(409, m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;
    use crate::sources::NoPersist;

    fn api() -> Api {
        let store = Store::new(Resources::default()).unwrap();
        Api::new(Arc::new(store), Arc::new(NoPersist), false)
    }

    fn call(api: &Api, method: &str, path: &str, body: Value) -> Reply {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        api.handle(method, path, query, body.as_bytes())
    }

    #[test]
    fn targets() {
        assert_eq!(
            target("/apisix/admin/routes"),
            Some(Target::Collection(Kind::Routes, None))
        );
        assert_eq!(
            target("/apisix/admin/routes/1/plugins"),
            Some(Target::One(Kind::Routes, "1".into(), vec!["plugins"]))
        );
        assert_eq!(
            target("/apisix/admin/consumers/jack/credentials/c1"),
            Some(Target::One(Kind::Credentials, "jack/c1".into(), vec![]))
        );
        assert_eq!(
            target("/apisix/admin/consumers/jack/credentials/"),
            Some(Target::Collection(Kind::Credentials, Some("jack")))
        );
        assert_eq!(target("/apisix/admin/credentials"), None);
        assert_eq!(target("/apisix/admin/nope"), None);
        assert_eq!(target("/other"), None);
        assert_eq!(
            key(Kind::Credentials, "jack/c1"),
            "/apisix/consumers/jack/credentials/c1"
        );
    }

    #[test]
    fn upstream_lifecycle() {
        let api = api();
        let u = json!({"nodes": {"127.0.0.1:1980": 1}, "type": "roundrobin"});
        let r = call(&api, "PUT", "/apisix/admin/upstreams/u1", u.clone());
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["key"], "/apisix/upstreams/u1");
        assert_eq!(r.body["value"]["id"], "u1");
        let r = call(&api, "PUT", "/apisix/admin/upstreams/u1", u.clone());
        assert_eq!(r.status, 200);
        let r = call(&api, "POST", "/apisix/admin/upstreams", u.clone());
        assert_eq!(r.status, 201);
        assert_eq!(r.body["value"]["id"].as_str().unwrap().len(), 20);
        let r = call(
            &api,
            "GET",
            "/apisix/admin/upstreams?page=1&page_size=1",
            Value::Null,
        );
        assert_eq!(r.body["total"], 2);
        assert_eq!(r.body["list"].as_array().unwrap().len(), 1);
        let r = call(
            &api,
            "PATCH",
            "/apisix/admin/upstreams/u1",
            json!({"type": "chash", "key": "remote_addr"}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["value"]["type"], "chash");
        let r = call(&api, "DELETE", "/apisix/admin/upstreams/u1", Value::Null);
        assert_eq!(
            r.body,
            json!({"deleted": "1", "key": "/apisix/upstreams/u1"})
        );
        let r = call(&api, "GET", "/apisix/admin/upstreams/u1", Value::Null);
        assert_eq!(
            (r.status, r.body),
            (404, json!({"message": "Key not found"}))
        );
        let r = call(&api, "DELETE", "/apisix/admin/upstreams/u1", Value::Null);
        assert_eq!(r.status, 404);
    }

    #[test]
    fn errors() {
        let api = api();
        let r = api.handle("PUT", "/apisix/admin/routes/1", None, b"{nope");
        assert_eq!(r.status, 400);
        assert!(r.body["error_msg"]
            .as_str()
            .unwrap()
            .starts_with("invalid request body: "));
        let r = call(&api, "PUT", "/apisix/admin/routes/1", json!({"uri": 5}));
        assert_eq!(r.status, 400);
        assert!(
            r.body["error_msg"]
                .as_str()
                .unwrap()
                .starts_with("invalid configuration: uri: "),
            "{}",
            r.body
        );
        let r = call(
            &api,
            "PUT",
            "/apisix/admin/routes/1",
            json!({"uri": "/x", "plugins": {"ai-proxy": {"provider": "nope", "auth": {}}}}),
        );
        assert_eq!(r.status, 400);
        assert!(
            r.body["error_msg"]
                .as_str()
                .unwrap()
                .starts_with("failed to check the configuration of plugin ai-proxy err: "),
            "{}",
            r.body
        );
        let r = call(&api, "DELETE", "/apisix/admin/routes", Value::Null);
        assert_eq!(r.status, 405);
        let r = call(
            &api,
            "POST",
            "/apisix/admin/consumers",
            json!({"username": "a"}),
        );
        assert_eq!(r.status, 405);
        let r = call(&api, "GET", "/apisix/admin/plugins/list", Value::Null);
        assert!(r.body.as_array().unwrap().contains(&json!("ai-proxy")));
        let r = call(&api, "GET", "/apisix/admin/plugins/key-auth", Value::Null);
        assert_eq!(r.body["type"], "auth");
        let r = call(&api, "GET", "/apisix/admin/plugins/nope", Value::Null);
        assert_eq!(r.status, 404);
    }
}
