//! The embedded store: what the admin API wrote, kept in `gateway.data_dir/resources.json` and
//! loaded at start.
//!
//! Every change rewrites the whole file atomically: written to a temporary file in the same
//! directory, fsynced, renamed over the old one, and the directory fsynced, so a crash at any
//! moment leaves the old state or the new one, never a torn file. The write happens before the
//! change is published (`Store::apply`): a change the disk refused is not served either.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::Persist;
use crate::resources::{Kind, Origin, Resources};

const FILE: &str = "resources.json";
const VERSION: u64 = 1;

pub struct DataDir {
    dir: PathBuf,
}

impl DataDir {
    /// `dir` relative to the working directory at start (a daemon changes it later).
    pub fn new(dir: &str) -> DataDir {
        let p = Path::new(dir);
        let dir = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|c| c.join(p))
                .unwrap_or_else(|_| p.to_path_buf())
        };
        DataDir { dir }
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The stored resources (none when the file does not exist yet). An unreadable file is an
    /// error; a resource that no longer parses is logged and skipped.
    pub fn load(&self) -> Result<Resources, String> {
        let path = self.file();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Resources::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let doc: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
        if doc.get("version").and_then(Value::as_u64) != Some(VERSION) {
            return Err(format!(
                "{}: unknown format version {}",
                path.display(),
                doc.get("version").unwrap_or(&Value::Null)
            ));
        }
        let mut out = Resources::default();
        for item in doc
            .get("resources")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
        {
            let kind = item
                .get("kind")
                .and_then(Value::as_str)
                .and_then(Kind::parse);
            let id = item.get("id").and_then(Value::as_str);
            let (Some(kind), Some(id), Some(value)) = (kind, id, item.get("value")) else {
                log::error!("{}: skipping a malformed entry", path.display());
                continue;
            };
            let index = |k: &str| item.get(k).and_then(Value::as_u64).unwrap_or(0);
            if let Err(e) = out.insert_stored(
                kind,
                id.to_string(),
                value.clone(),
                index("created_index"),
                index("modified_index"),
            ) {
                log::error!("{}: skipping {e}", path.display());
            }
        }
        out.index = out
            .index
            .max(doc.get("index").and_then(Value::as_u64).unwrap_or(0));
        Ok(out)
    }

    fn write(&self, admin: &Resources) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let items: Vec<Value> = admin
            .iter_origin(Origin::Admin)
            .map(|(kind, id, r)| {
                json!({
                    "kind": kind.as_str(),
                    "id": id,
                    "value": &*r.value,
                    "created_index": r.created_index,
                    "modified_index": r.modified_index,
                })
            })
            .collect();
        let doc = json!({"version": VERSION, "index": admin.index, "resources": items});
        let bytes = serde_json::to_vec(&doc).map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.file())?;
        // The rename itself is durable only once the directory is.
        File::open(&self.dir)?.sync_all()
    }
}

impl Persist for DataDir {
    fn save(&self, admin: &Resources) -> Result<(), String> {
        self.write(admin).map_err(|e| {
            log::error!("cannot write {}: {e}", self.file().display());
            format!("the change could not be saved to gateway.data_dir: {e}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Change;

    #[test]
    fn what_is_saved_loads_back_and_a_bad_entry_is_skipped() {
        let dir = std::env::temp_dir().join(format!("aigate-datadir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = DataDir::new(dir.to_str().unwrap());
        assert!(store.load().unwrap().is_empty(), "no file yet");
        let mut r = Resources::default();
        for (kind, id, v) in [
            (Kind::Upstreams, "u1", json!({"nodes": {"127.0.0.1:80": 1}})),
            (
                Kind::Routes,
                "r1",
                json!({"uri": "/x", "upstream_id": "u1"}),
            ),
            (Kind::Consumers, "jack", json!({})),
            (
                Kind::Credentials,
                "jack/c1",
                json!({"plugins": {"key-auth": {"key": "k"}}}),
            ),
        ] {
            r.apply(Change::Put {
                kind,
                id: id.into(),
                value: v,
            })
            .unwrap();
        }
        store.save(&r).unwrap();
        let back = store.load().unwrap();
        for kind in Kind::ALL {
            let a: Vec<_> = r
                .map(kind)
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone(), v.modified_index))
                .collect();
            let b: Vec<_> = back
                .map(kind)
                .iter()
                .map(|(k, v)| (k.clone(), v.value.clone(), v.modified_index))
                .collect();
            assert_eq!(a, b, "{kind:?}");
        }
        assert_eq!(back.index, r.index);
        assert!(!dir.join(".resources.json.tmp").exists());

        // A hand-edited bad route is skipped, the rest loads.
        let text = fs::read_to_string(store.file())
            .unwrap()
            .replace("\"uri\":\"/x\"", "\"uri\":5");
        fs::write(store.file(), text).unwrap();
        let back = store.load().unwrap();
        assert!(back.get(Kind::Routes, "r1").is_none());
        assert!(back.get(Kind::Upstreams, "u1").is_some());
        fs::write(store.file(), "{torn").unwrap();
        assert!(store.load().unwrap_err().contains("not valid JSON"));
        let _ = fs::remove_dir_all(&dir);
    }
}
