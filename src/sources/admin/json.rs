//! JSON helpers of the admin API: RFC 7396 merge patch, APISIX's sub-path PATCH, and the
//! redaction of secrets in answers (`gateway.admin.redact_secrets`).

use serde_json::{Map, Value};

/// What a redacted secret is shown as.
pub const MASK: &str = "******";

/// RFC 7396: objects merge key by key, `null` deletes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else {
        unreachable!("made an object above")
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Replace the part of `target` at `path` (`["plugins"]`, `["upstream", "nodes"]`) by `new`, as
/// APISIX's `PATCH /apisix/admin/routes/1/plugins` does; missing objects on the way are created,
/// `null` removes the field.
pub fn set_at(target: &mut Value, path: &[&str], new: Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        *target = new;
        return Ok(());
    };
    let mut cur = target;
    for (i, seg) in parents.iter().enumerate() {
        let Value::Object(m) = cur else {
            return Err(format!("{} is not an object", path[..i].join("/")));
        };
        cur = m
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let Value::Object(m) = cur else {
        return Err(format!("{} is not an object", parents.join("/")));
    };
    if new.is_null() {
        m.remove(*last);
    } else {
        m.insert(last.to_string(), new);
    }
    Ok(())
}

/// Mask every secret of a resource value: the values under `auth.header`, `auth.query` and
/// `auth.gcp` (ai-proxy, ai-proxy-multi instances), `key-auth.key`, and every `redis_password`.
pub fn redact(v: &mut Value) {
    walk(v, None);
}

fn walk(v: &mut Value, parent: Option<&str>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                let k = k.as_str();
                if child.is_null() {
                    continue;
                }
                if k == "redis_password" || (parent == Some("key-auth") && k == "key") {
                    *child = Value::String(MASK.into());
                } else if parent == Some("auth") && matches!(k, "header" | "query" | "gcp") {
                    mask_strings(child);
                } else {
                    walk(child, Some(k));
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| walk(c, parent)),
        _ => {}
    }
}

fn mask_strings(v: &mut Value) {
    match v {
        Value::String(s) => *s = MASK.into(),
        Value::Object(m) => m.values_mut().for_each(mask_strings),
        Value::Array(a) => a.iter_mut().for_each(mask_strings),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut v = json!({"a": "b", "c": {"d": "e", "f": "g"}, "x": [1]});
        merge_patch(
            &mut v,
            &json!({"a": "z", "c": {"f": null}, "x": [2], "n": {"m": 1}}),
        );
        assert_eq!(
            v,
            json!({"a": "z", "c": {"d": "e"}, "x": [2], "n": {"m": 1}})
        );
    }

    #[test]
    fn set_at_replaces_one_part() {
        let mut v = json!({"uri": "/a", "plugins": {"x": {}, "y": {}}});
        set_at(&mut v, &["plugins"], json!({"z": {}})).unwrap();
        assert_eq!(v, json!({"uri": "/a", "plugins": {"z": {}}}));
        set_at(&mut v, &["upstream", "nodes"], json!({"h:1": 1})).unwrap();
        assert_eq!(v["upstream"]["nodes"]["h:1"], 1);
        assert!(set_at(&mut v, &["uri", "x"], json!(1)).is_err());
        set_at(&mut v, &["upstream"], Value::Null).unwrap();
        assert!(v.get("upstream").is_none());
    }

    #[test]
    fn redacts_every_kind_of_secret() {
        let mut v = json!({
            "plugins": {
                "ai-proxy": {"auth": {"header": {"Authorization": "Bearer sk"}, "query": {"key": "q"},
                              "gcp": {"service_account_json": "{}", "max_ttl": 5}},
                             "options": {"model": "m"}},
                "ai-proxy-multi": {"instances": [{"name": "i", "auth": {"header": {"api-key": "k"}}}]},
                "key-auth": {"key": "john-key"},
                "ai-rate-limiting": {"redis_password": "pw", "redis_host": "h"}
            }
        });
        redact(&mut v);
        let p = &v["plugins"];
        assert_eq!(p["ai-proxy"]["auth"]["header"]["Authorization"], MASK);
        assert_eq!(p["ai-proxy"]["auth"]["query"]["key"], MASK);
        assert_eq!(p["ai-proxy"]["auth"]["gcp"]["service_account_json"], MASK);
        assert_eq!(p["ai-proxy"]["auth"]["gcp"]["max_ttl"], 5);
        assert_eq!(p["ai-proxy"]["options"]["model"], "m");
        assert_eq!(
            p["ai-proxy-multi"]["instances"][0]["auth"]["header"]["api-key"],
            MASK
        );
        assert_eq!(p["ai-proxy-multi"]["instances"][0]["name"], "i");
        assert_eq!(p["key-auth"]["key"], MASK);
        assert_eq!(p["ai-rate-limiting"]["redis_password"], MASK);
        assert_eq!(p["ai-rate-limiting"]["redis_host"], "h");
    }
}
