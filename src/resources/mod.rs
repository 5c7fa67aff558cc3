//! The desired state: every resource (routes, services, upstreams, consumers, credentials) by
//! kind and id, as it was written, with APISIX's metadata (`create_time`, `update_time`, the
//! store's revision indexes) and where it came from (the config file, or the admin API / etcd).
//!
//! This is what the admin API reads and writes and what the stores persist. It holds no compiled
//! objects: `crate::runtime` compiles it into the snapshot requests use, reusing what did not
//! change. Changes go through `Resources::apply`, which checks their shape and references;
//! whether they compile (plugins, providers, routes) is checked by the runtime before anything is
//! published, so a change that fails there changes nothing.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::schema::{
    ConsumerConf, CredentialConf, FileConfig, RouteConf, ServiceConf, UpstreamConf,
};
use crate::config::ConfigError;

/// The kinds of resource, as the admin API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Routes,
    Services,
    Upstreams,
    Consumers,
    /// Keyed `<username>/<id>`.
    Credentials,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Routes,
        Kind::Services,
        Kind::Upstreams,
        Kind::Consumers,
        Kind::Credentials,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Routes => "routes",
            Kind::Services => "services",
            Kind::Upstreams => "upstreams",
            Kind::Consumers => "consumers",
            Kind::Credentials => "credentials",
        }
    }

    /// The name in messages: "route", "service"...
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Routes => "route",
            Kind::Services => "service",
            Kind::Upstreams => "upstream",
            Kind::Consumers => "consumer",
            Kind::Credentials => "credential",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// Where a resource came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `config.yaml`: read-only through the admin API.
    File,
    /// The admin API (kept in `gateway.data_dir` or etcd).
    Admin,
}

/// A resource's typed config, parsed once when it is put.
#[derive(Debug, Clone)]
pub enum Typed {
    Route(Arc<RouteConf>),
    Service(Arc<ServiceConf>),
    Upstream(Arc<UpstreamConf>),
    Consumer(Arc<ConsumerConf>),
    Credential {
        username: String,
        conf: Arc<CredentialConf>,
    },
}

#[derive(Debug, Clone)]
pub struct Resource {
    /// As written, with `id` (`username` for consumers), `create_time` and `update_time`.
    pub value: Arc<Value>,
    pub typed: Typed,
    pub origin: Origin,
    pub created_index: u64,
    pub modified_index: u64,
    /// Of the typed config: equal fingerprints compile to the same objects.
    pub fingerprint: u64,
    /// How config errors name it: `routes[0]` in the file, `routes/1` otherwise.
    pub path: Arc<str>,
}

/// One change to the desired state.
#[derive(Debug, Clone)]
pub enum Change {
    /// Create or replace. `value` is the object as a client sent it; `id` wins over its `id`.
    Put {
        kind: Kind,
        id: String,
        value: Value,
    },
    Delete {
        kind: Kind,
        id: String,
    },
    /// A store's copy of a resource (etcd's, as another node wrote it): kept verbatim.
    Stored {
        kind: Kind,
        id: String,
        value: Value,
    },
    /// A store no longer has it: removed if present.
    Unstored {
        kind: Kind,
        id: String,
    },
}

/// Why a change was refused.
#[derive(Debug, Clone)]
pub enum ChangeError {
    /// The object is not valid: the field and why (paths relative to the object).
    Invalid(ConfigError),
    /// No such resource.
    NotFound(String),
    /// The resource is defined in the config file.
    ReadOnly(String),
    /// Another resource still uses it, or it names one that does not exist.
    Reference(String),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::Invalid(e) => write!(f, "{e}"),
            ChangeError::NotFound(m) | ChangeError::ReadOnly(m) | ChangeError::Reference(m) => {
                f.write_str(m)
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Resources {
    maps: [BTreeMap<String, Resource>; 5],
    /// The last revision given out (`createdIndex` / `modifiedIndex`).
    pub index: u64,
}

/// Seconds since the Unix epoch (APISIX's `create_time` / `update_time`).
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn fingerprint(typed: &Typed) -> u64 {
    // The typed config decides what gets compiled; its Debug form is a faithful, ordered dump.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{typed:?}").hash(&mut h);
    h.finish()
}

fn parse_as<T: DeserializeOwned>(value: &Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(path, e.into_inner().to_string())
    })
}

/// Parse `value` as a `kind` object. Errors name fields relative to the object.
pub fn parse(kind: Kind, id: &str, value: &Value) -> Result<Typed, ConfigError> {
    if !value.is_object() {
        return Err(ConfigError::new("", "must be a JSON object"));
    }
    Ok(match kind {
        Kind::Routes => Typed::Route(Arc::new(parse_as(value)?)),
        Kind::Services => Typed::Service(Arc::new(parse_as(value)?)),
        Kind::Upstreams => Typed::Upstream(Arc::new(parse_as(value)?)),
        Kind::Consumers => Typed::Consumer(Arc::new(parse_as(value)?)),
        Kind::Credentials => {
            let (username, _) = id.split_once('/').unwrap_or((id, ""));
            Typed::Credential {
                username: username.to_string(),
                conf: Arc::new(parse_as(value)?),
            }
        }
    })
}

/// An id as APISIX accepts it: 1 to 64 of `[a-zA-Z0-9-_.]`.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "invalid id {id:?}: 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

impl Resources {
    pub fn map(&self, kind: Kind) -> &BTreeMap<String, Resource> {
        &self.maps[kind.slot()]
    }

    pub fn get(&self, kind: Kind, id: &str) -> Option<&Resource> {
        self.maps[kind.slot()].get(id)
    }

    pub fn len(&self) -> usize {
        self.maps.iter().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The resources of `file` (`raw` is the same document as JSON, for what GET shows).
    pub fn from_file(file: &FileConfig, raw: &Value) -> Result<Resources, ConfigError> {
        let mut out = Resources::default();
        let raw_of = |section: &str, i: usize| -> Value {
            raw.get(section)
                .and_then(|s| s.get(i))
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default()))
        };
        for (i, r) in file.routes.iter().enumerate() {
            let typed = Typed::Route(Arc::new(r.clone()));
            out.insert_file(
                Kind::Routes,
                r.id.to_string(),
                typed,
                raw_of("routes", i),
                i,
            )?;
        }
        for (i, s) in file.services.iter().enumerate() {
            let typed = Typed::Service(Arc::new(s.clone()));
            out.insert_file(
                Kind::Services,
                s.id.to_string(),
                typed,
                raw_of("services", i),
                i,
            )?;
        }
        for (i, u) in file.upstreams.iter().enumerate() {
            let Some(id) = &u.id else {
                return Err(ConfigError::new(
                    format!("upstreams[{i}].id"),
                    "an upstream object needs an id",
                ));
            };
            let typed = Typed::Upstream(Arc::new(u.clone()));
            out.insert_file(
                Kind::Upstreams,
                id.to_string(),
                typed,
                raw_of("upstreams", i),
                i,
            )?;
        }
        for (i, c) in file.consumers.iter().enumerate() {
            // Inline credentials become credential resources, as the admin API keeps them.
            let mut consumer = c.clone();
            let creds = consumer.credentials.take().unwrap_or_default();
            let mut value = raw_of("consumers", i);
            if let Some(m) = value.as_object_mut() {
                m.remove("credentials");
            }
            let typed = Typed::Consumer(Arc::new(consumer));
            out.insert_file(Kind::Consumers, c.username.clone(), typed, value, i)?;
            for (j, cred) in creds.into_iter().enumerate() {
                let id = format!("{}/{}", c.username, cred.id);
                let value = raw
                    .get("consumers")
                    .and_then(|s| s.get(i))
                    .and_then(|c| c.get("credentials"))
                    .and_then(|s| s.get(j))
                    .cloned()
                    .unwrap_or_else(|| Value::Object(Default::default()));
                let path = format!("consumers[{i}].credentials[{j}]");
                if out.get(Kind::Credentials, &id).is_some() {
                    return Err(ConfigError::new(
                        format!("{path}.id"),
                        format!("duplicate credential id {:?}", cred.id.to_string()),
                    ));
                }
                let typed = Typed::Credential {
                    username: c.username.clone(),
                    conf: Arc::new(cred),
                };
                out.insert(
                    Kind::Credentials,
                    id,
                    typed,
                    value,
                    Origin::File,
                    path.into(),
                    0,
                );
            }
        }
        Ok(out)
    }

    fn insert_file(
        &mut self,
        kind: Kind,
        id: String,
        typed: Typed,
        value: Value,
        i: usize,
    ) -> Result<(), ConfigError> {
        let path = format!("{}[{i}]", kind.as_str());
        if self.get(kind, &id).is_some() {
            let (field, what) = match kind {
                Kind::Consumers => ("username", "consumer".to_string()),
                _ => ("id", format!("{} id", kind.singular())),
            };
            return Err(ConfigError::new(
                format!("{path}.{field}"),
                format!("duplicate {what} {id:?}"),
            ));
        }
        self.insert(kind, id, typed, value, Origin::File, path.into(), 0);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        kind: Kind,
        id: String,
        typed: Typed,
        value: Value,
        origin: Origin,
        path: Arc<str>,
        created_index: u64,
    ) -> &Resource {
        self.index += 1;
        let r = Resource {
            fingerprint: fingerprint(&typed),
            value: Arc::new(value),
            typed,
            origin,
            created_index: if created_index == 0 {
                self.index
            } else {
                created_index
            },
            modified_index: self.index,
            path,
        };
        let map = &mut self.maps[kind.slot()];
        map.insert(id.clone(), r);
        &map[&id]
    }

    /// Add a resource a store kept (the data_dir, etcd), with its revision indexes. A value that
    /// no longer parses is an error naming the resource; the caller logs it and skips it.
    pub fn insert_stored(
        &mut self,
        kind: Kind,
        id: String,
        value: Value,
        created_index: u64,
        modified_index: u64,
    ) -> Result<(), ConfigError> {
        let path: Arc<str> = format!("{}/{id}", kind.as_str()).into();
        // An object written to a store by hand may leave its id to the key, as APISIX allows.
        let mut value = value;
        if let Value::Object(obj) = &mut value {
            let (field, own) = match kind {
                Kind::Consumers => ("username", id.as_str()),
                Kind::Credentials => ("id", id.split_once('/').map_or("", |(_, c)| c)),
                _ => ("id", id.as_str()),
            };
            obj.entry(field)
                .or_insert_with(|| Value::String(own.into()));
        }
        let typed = parse(kind, &id, &value).map_err(|e| match e.path.as_str() {
            "" => ConfigError::new(path.to_string(), e.message),
            p => ConfigError::new(format!("{path}.{p}"), e.message),
        })?;
        self.index = self.index.max(modified_index);
        self.maps[kind.slot()].insert(
            id,
            Resource {
                fingerprint: fingerprint(&typed),
                value: Arc::new(value),
                typed,
                origin: Origin::Admin,
                created_index,
                modified_index,
                path,
            },
        );
        Ok(())
    }

    /// Add the resources of another origin (the data_dir or etcd) to these (the file's). One id
    /// in both is refused, naming it.
    pub fn merge_stored(&mut self, stored: Resources) -> Result<(), String> {
        for kind in Kind::ALL {
            for (id, mut r) in stored.maps[kind.slot()].clone() {
                if self.get(kind, &id).is_some() {
                    return Err(format!(
                        "{} {id:?} is both in the config file and in the store; remove one",
                        kind.singular()
                    ));
                }
                self.index += 1;
                r.modified_index = self.index;
                r.created_index = r.created_index.min(self.index);
                self.maps[kind.slot()].insert(id, r);
            }
        }
        Ok(())
    }

    /// The resources of `origin`, by kind (what a store keeps: the admin origin's).
    pub fn iter_origin(&self, origin: Origin) -> impl Iterator<Item = (Kind, &String, &Resource)> {
        Kind::ALL.into_iter().flat_map(move |kind| {
            self.map(kind)
                .iter()
                .filter(move |(_, r)| r.origin == origin)
                .map(move |(id, r)| (kind, id, r))
        })
    }

    /// Only the resources of `origin`.
    pub fn of_origin(&self, origin: Origin) -> Resources {
        let mut out = Resources {
            index: self.index,
            ..Default::default()
        };
        for kind in Kind::ALL {
            out.maps[kind.slot()] = self.maps[kind.slot()]
                .iter()
                .filter(|(_, r)| r.origin == origin)
                .map(|(k, r)| (k.clone(), r.clone()))
                .collect();
        }
        out
    }

    /// Apply one change: shape and references checked, metadata set. Whether the result
    /// compiles is the runtime's check.
    pub fn apply(&mut self, change: Change) -> Result<Option<Resource>, ChangeError> {
        match change {
            Change::Put { kind, id, value } => self.put(kind, id, value).map(Some),
            Change::Delete { kind, id } => self.delete(kind, &id).map(Some),
            Change::Stored { kind, id, value } => {
                if self
                    .get(kind, &id)
                    .is_some_and(|r| r.origin == Origin::File)
                {
                    return Err(ChangeError::ReadOnly(format!(
                        "{} {id:?} is defined in the config file; the store's copy is ignored",
                        kind.singular()
                    )));
                }
                let index = self.index + 1;
                let created = self.get(kind, &id).map_or(index, |r| r.created_index);
                self.insert_stored(kind, id.clone(), value, created, index)
                    .map_err(ChangeError::Invalid)?;
                Ok(self.get(kind, &id).cloned())
            }
            Change::Unstored { kind, id } => {
                if self
                    .get(kind, &id)
                    .is_some_and(|r| r.origin == Origin::Admin)
                {
                    self.index += 1;
                    Ok(self.maps[kind.slot()].remove(&id))
                } else {
                    Ok(None)
                }
            }
        }
    }

    fn put(&mut self, kind: Kind, id: String, value: Value) -> Result<Resource, ChangeError> {
        let invalid = |m: String| ChangeError::Invalid(ConfigError::new("", m));
        let own_id = match kind {
            Kind::Credentials => id.split_once('/').map(|(_, c)| c).unwrap_or(""),
            _ => id.as_str(),
        };
        check_id(own_id).map_err(invalid)?;
        let Value::Object(mut obj) = value else {
            return Err(invalid("the body must be a JSON object".into()));
        };
        let existing = self.get(kind, &id).cloned();
        if let Some(e) = &existing {
            if e.origin == Origin::File {
                return Err(ChangeError::ReadOnly(format!(
                    "{} {own_id:?} is defined in the config file and cannot be changed through the admin API",
                    kind.singular()
                )));
            }
        }
        let id_field = if kind == Kind::Consumers {
            "username"
        } else {
            "id"
        };
        match obj.get(id_field) {
            Some(v)
                if v.as_str() != Some(own_id)
                    && v.as_u64().map(|n| n.to_string()).as_deref() != Some(own_id) =>
            {
                return Err(invalid(format!(
                    "wrong {id_field} {v}: it must be the one in the URI ({own_id:?})"
                )));
            }
            _ => {}
        }
        obj.insert(id_field.into(), Value::String(own_id.into()));
        let now = now_secs();
        let created = existing
            .as_ref()
            .and_then(|e| e.value.get("create_time").cloned())
            .unwrap_or(Value::from(now));
        obj.insert("create_time".into(), created);
        obj.insert("update_time".into(), Value::from(now));
        let value = Value::Object(obj);
        let typed = parse(kind, &id, &value).map_err(ChangeError::Invalid)?;
        self.check_references(&typed)?;
        let path: Arc<str> = format!("{}/{id}", kind.as_str()).into();
        let created_index = existing.map(|e| e.created_index).unwrap_or(0);
        Ok(self
            .insert(kind, id, typed, value, Origin::Admin, path, created_index)
            .clone())
    }

    fn check_references(&self, typed: &Typed) -> Result<(), ChangeError> {
        let missing = |kind: Kind, id: &str| {
            ChangeError::Reference(format!(
                "failed to fetch {} info by {} id [{id}]",
                kind.singular(),
                kind.singular()
            ))
        };
        let (service, upstream) = match typed {
            Typed::Route(r) => (r.service_id.as_ref(), r.upstream_id.as_ref()),
            Typed::Service(s) => (None, s.upstream_id.as_ref()),
            Typed::Credential { username, .. } => {
                if self.get(Kind::Consumers, username).is_none() {
                    return Err(ChangeError::NotFound(format!(
                        "consumer {username:?} not found"
                    )));
                }
                (None, None)
            }
            _ => (None, None),
        };
        if let Some(s) = service {
            let s = s.to_string();
            if self.get(Kind::Services, &s).is_none() {
                return Err(missing(Kind::Services, &s));
            }
        }
        if let Some(u) = upstream {
            let u = u.to_string();
            if self.get(Kind::Upstreams, &u).is_none() {
                return Err(missing(Kind::Upstreams, &u));
            }
        }
        Ok(())
    }

    fn delete(&mut self, kind: Kind, id: &str) -> Result<Resource, ChangeError> {
        let Some(existing) = self.get(kind, id).cloned() else {
            return Err(ChangeError::NotFound(format!(
                "{} {id:?} not found",
                kind.singular()
            )));
        };
        if existing.origin == Origin::File {
            return Err(ChangeError::ReadOnly(format!(
                "{} {id:?} is defined in the config file and cannot be deleted through the admin API",
                kind.singular()
            )));
        }
        // A service or upstream still in use cannot go (APISIX answers 400 too).
        let used_by = |pred: &dyn Fn(&Typed) -> bool| {
            [Kind::Routes, Kind::Services].into_iter().find_map(|k| {
                self.map(k)
                    .iter()
                    .find(|(_, r)| pred(&r.typed))
                    .map(|(rid, _)| format!("{} {rid:?}", k.singular()))
            })
        };
        let user = match kind {
            Kind::Services => used_by(
                &|t| matches!(t, Typed::Route(r) if r.service_id.as_ref().is_some_and(|s| s.to_string() == id)),
            ),
            Kind::Upstreams => used_by(&|t| match t {
                Typed::Route(r) => r.upstream_id.as_ref().is_some_and(|u| u.to_string() == id),
                Typed::Service(s) => s.upstream_id.as_ref().is_some_and(|u| u.to_string() == id),
                _ => false,
            }),
            _ => None,
        };
        if let Some(user) = user {
            return Err(ChangeError::Reference(format!(
                "can not delete this {}, {user} is still using it now",
                kind.singular()
            )));
        }
        self.index += 1;
        self.maps[kind.slot()].remove(id);
        if kind == Kind::Consumers {
            // Its credentials go with it, as in APISIX.
            let prefix = format!("{id}/");
            self.maps[Kind::Credentials.slot()].retain(|k, _| !k.starts_with(&prefix));
        }
        Ok(existing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn put(r: &mut Resources, kind: Kind, id: &str, v: Value) -> Result<Resource, ChangeError> {
        r.apply(Change::Put {
            kind,
            id: id.into(),
            value: v,
        })
        .map(Option::unwrap)
    }

    #[test]
    fn put_sets_id_and_times_and_keeps_create_time() {
        let mut r = Resources::default();
        let a = put(
            &mut r,
            Kind::Upstreams,
            "u1",
            json!({"nodes": {"127.0.0.1:80": 1}}),
        )
        .unwrap();
        assert_eq!(a.value["id"], "u1");
        assert!(a.value["create_time"].as_i64().unwrap() > 1_700_000_000);
        let b = put(
            &mut r,
            Kind::Upstreams,
            "u1",
            json!({"nodes": {"127.0.0.1:81": 1}, "create_time": 5}),
        )
        .unwrap();
        assert_eq!(b.value["create_time"], a.value["create_time"]);
        assert_eq!(b.created_index, a.created_index);
        assert!(b.modified_index > a.modified_index);
        assert_ne!(a.fingerprint, b.fingerprint);
    }

    #[test]
    fn references_and_deletes() {
        let mut r = Resources::default();
        let e = put(
            &mut r,
            Kind::Routes,
            "1",
            json!({"uri": "/x", "service_id": "s"}),
        )
        .unwrap_err();
        assert!(matches!(e, ChangeError::Reference(_)), "{e}");
        put(&mut r, Kind::Services, "s", json!({})).unwrap();
        put(
            &mut r,
            Kind::Routes,
            "1",
            json!({"uri": "/x", "service_id": "s"}),
        )
        .unwrap();
        let e = r
            .apply(Change::Delete {
                kind: Kind::Services,
                id: "s".into(),
            })
            .unwrap_err();
        assert!(
            e.to_string().contains("route \"1\" is still using it"),
            "{e}"
        );
        r.apply(Change::Delete {
            kind: Kind::Routes,
            id: "1".into(),
        })
        .unwrap();
        r.apply(Change::Delete {
            kind: Kind::Services,
            id: "s".into(),
        })
        .unwrap();
        let e = r
            .apply(Change::Delete {
                kind: Kind::Services,
                id: "s".into(),
            })
            .unwrap_err();
        assert!(matches!(e, ChangeError::NotFound(_)));
    }

    #[test]
    fn bad_objects_name_their_field() {
        let mut r = Resources::default();
        let e = put(&mut r, Kind::Routes, "1", json!({"uri": 5})).unwrap_err();
        let ChangeError::Invalid(e) = e else { panic!() };
        assert_eq!(e.path, "uri");
        let e = put(&mut r, Kind::Routes, "a b", json!({"uri": "/"})).unwrap_err();
        assert!(e.to_string().contains("invalid id"), "{e}");
        let e = put(&mut r, Kind::Routes, "1", json!({"id": "2", "uri": "/"})).unwrap_err();
        assert!(e.to_string().contains("wrong id"), "{e}");
        let e = put(
            &mut r,
            Kind::Credentials,
            "nobody/c1",
            json!({"plugins": {}}),
        )
        .unwrap_err();
        assert!(matches!(e, ChangeError::NotFound(_)), "{e}");
    }

    #[test]
    fn a_consumers_credentials_go_with_it() {
        let mut r = Resources::default();
        put(&mut r, Kind::Consumers, "jack", json!({})).unwrap();
        put(
            &mut r,
            Kind::Credentials,
            "jack/c1",
            json!({"plugins": {"key-auth": {"key": "k"}}}),
        )
        .unwrap();
        assert_eq!(r.map(Kind::Credentials).len(), 1);
        r.apply(Change::Delete {
            kind: Kind::Consumers,
            id: "jack".into(),
        })
        .unwrap();
        assert!(r.map(Kind::Credentials).is_empty());
    }
}
