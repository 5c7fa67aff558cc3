//! Consumers compiled from config: their plugins (run over a route's for their requests) and
//! their credentials (indexed for the authentication plugins).

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::schema::ConsumerConf;
use crate::config::ConfigError;
use crate::plugins::consumer::{Consumer, Consumers, Credential};
use crate::plugins::{registry, Owner, Plugin};
use crate::resources::{Kind, Resource, Resources, Typed};

pub fn compile(resources: &Resources) -> Result<Consumers, ConfigError> {
    let mut out = Consumers::default();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut list: Vec<(&Resource, &ConsumerConf)> = resources
        .map(Kind::Consumers)
        .values()
        .filter_map(|r| match &r.typed {
            Typed::Consumer(c) => Some((r, &**c)),
            _ => None,
        })
        .collect();
    list.sort_by_key(|(r, _)| r.created_index);
    for (i, (r, c)) in list.into_iter().enumerate() {
        let path = r.path.to_string();
        // APISIX's username pattern: it becomes `$consumer_name`, log fields and counter keys.
        if c.username.is_empty()
            || !c
                .username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError::new(
                format!("{path}.username"),
                "must be letters, digits, '_' or '-'",
            ));
        }
        if seen.insert(&c.username, i).is_some() {
            return Err(ConfigError::new(
                format!("{path}.username"),
                format!("duplicate consumer {:?}", c.username),
            ));
        }
        let owner = Owner::Consumer(c.username.clone());
        let mut plugins: Vec<Arc<dyn Plugin>> = Vec::new();
        let mut credentials: Vec<(String, Credential)> = Vec::new();
        for (name, value) in c.plugins.iter().flatten() {
            let ppath = format!("{path}.plugins.{name}");
            let reg = registry::find(name)
                .ok_or_else(|| ConfigError::new(&ppath, format!("unknown plugin {name:?}")))?;
            match reg.credential {
                Some(parse) => credentials.push((ppath.clone(), parse(value, &ppath)?)),
                None => plugins.push(registry::build(name, value, &ppath, &owner)?),
            }
        }
        let prefix = format!("{}/", c.username);
        let creds = resources
            .map(Kind::Credentials)
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix));
        for (_, cr) in creds {
            let Typed::Credential { conf: cred, .. } = &cr.typed else {
                continue;
            };
            let cpath = cr.path.to_string();
            if cred.plugins.is_empty() {
                return Err(ConfigError::new(
                    format!("{cpath}.plugins"),
                    "a credential needs an authentication plugin (key-auth)",
                ));
            }
            for (name, value) in &cred.plugins {
                let ppath = format!("{cpath}.plugins.{name}");
                let parse = registry::find(name).and_then(|r| r.credential).ok_or_else(|| {
                    ConfigError::new(
                        &ppath,
                        format!("{name:?} is not an authentication plugin; credentials hold key-auth only"),
                    )
                })?;
                credentials.push((ppath.clone(), parse(value, &ppath)?));
            }
        }
        let consumer = Arc::new(Consumer {
            username: c.username.clone(),
            desc: c.desc.clone(),
            labels: c.labels.clone().unwrap_or_default(),
            plugins,
        });
        for (ppath, cred) in credentials {
            match cred {
                Credential::Key(key) => out
                    .add_key(&key, &consumer)
                    .map_err(|m| ConfigError::new(format!("{ppath}.key"), m))?,
            }
        }
        out.by_name.insert(c.username.clone(), consumer);
    }
    Ok(out)
}
