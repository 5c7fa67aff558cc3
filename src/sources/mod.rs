//! The sources that feed the live configuration (`crate::runtime::Store`): the config file (read
//! at start and again on SIGHUP), the admin API, and the stores that keep what the admin API
//! wrote (`gateway.data_dir`, or etcd for a cluster). Every one of them changes the
//! configuration through `Store::apply` / `Store::replace_origin`.

pub mod admin;
pub mod data_dir;
pub mod etcd;
pub mod file;

use crate::resources::Resources;

/// Where the admin API's resources are kept, written before a change is published.
pub trait Persist: Send + Sync + 'static {
    /// Save the admin-origin resources of `desired` (the whole desired state after the change;
    /// the file's resources are not the store's). An error refuses the change (nothing is
    /// published).
    fn save(&self, desired: &Resources) -> Result<(), String>;
}

/// Keep nothing (tests, and `-t`).
pub struct NoPersist;

impl Persist for NoPersist {
    fn save(&self, _admin: &Resources) -> Result<(), String> {
        Ok(())
    }
}
