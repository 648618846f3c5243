//! Namespaces: a replicated registry kept in shard 0 (the system shard).
//!
//! Keys in shard 0's state: `ns/name/<name>` holds the record, `ns/id/<id>` maps an id back to
//! its name. Ids are chosen by the proposer (a fresh UUID, or a name-derived one for `default`),
//! so applying stays deterministic.

use std::collections::BTreeMap;

use norn_raft::{StateView, Txn};
use serde::{Deserialize, Serialize};

/// The shard that holds the namespace registry.
pub const SYSTEM_SHARD: u32 = 0;
/// The namespace that exists from the first start.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Retention of the default namespace and of namespaces registered without one: 3 days.
pub const DEFAULT_RETENTION_MS: u64 = 3 * 24 * 3600 * 1000;
/// Longest namespace name accepted.
pub const NAME_BYTES_MAX: usize = 255;

/// A namespace as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    /// Stable id (UUID text).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Owner's email.
    pub owner_email: String,
    /// How long closed runs are kept.
    pub retention_ms: u64,
    /// Free-form key/values.
    pub data: BTreeMap<String, String>,
    /// When registered (leader time).
    pub created_ms: u64,
    /// Bumped by every update.
    pub version: u64,
}

/// Changes to the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceCommand {
    /// Registers a new namespace; fails if the name is taken.
    Register {
        /// Id to give it.
        id: String,
        /// Name.
        name: String,
        /// Description.
        description: String,
        /// Owner email.
        owner_email: String,
        /// Retention; 0 means the default.
        retention_ms: u64,
        /// Key/values.
        data: BTreeMap<String, String>,
    },
    /// Registers the namespace if it does not exist; succeeds either way.
    Ensure {
        /// Id to give it if new.
        id: String,
        /// Name.
        name: String,
    },
    /// Updates fields of an existing namespace; `None` leaves a field unchanged.
    Update {
        /// Name.
        name: String,
        /// New description.
        description: Option<String>,
        /// New owner email.
        owner_email: Option<String>,
        /// New retention.
        retention_ms: Option<u64>,
        /// Keys to upsert.
        data: BTreeMap<String, String>,
    },
}

/// The outcome of a registry command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceResult {
    /// The namespace after the command.
    Ok(NamespaceRecord),
    /// The name is taken.
    AlreadyExists(String),
    /// No such namespace.
    NotFound(String),
    /// The command is invalid; nothing changed.
    Invalid(String),
    /// The store failed.
    StorageFailed(String),
}

fn name_key(name: &str) -> Vec<u8> {
    format!("ns/name/{name}").into_bytes()
}

fn id_key(id: &str) -> Vec<u8> {
    format!("ns/id/{id}").into_bytes()
}

/// Checks a namespace name as Temporal does: non-empty, bounded, no whitespace or slashes.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("namespace name is empty".into());
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(format!("namespace name is longer than {NAME_BYTES_MAX} bytes"));
    }
    if name.chars().any(|c| c.is_whitespace() || c == '/' || c.is_control()) {
        return Err(format!("namespace name {name:?} contains whitespace, '/' or control characters"));
    }
    Ok(())
}

/// A UUID-shaped id derived from a name, the same on every node (used for `default`).
pub fn derived_id(name: &str) -> String {
    let a = crate::placement::stable_hash(&[b"norn-namespace-a", name.as_bytes()]);
    let b = crate::placement::stable_hash(&[b"norn-namespace-b", name.as_bytes()]);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

/// Reads a namespace by name from the system shard's state.
pub fn read(txn: &dyn StateView, name: &str) -> Result<Option<NamespaceRecord>, String> {
    match txn.get(&name_key(name)).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(b) => postcard::from_bytes(&b).map(Some).map_err(|e| format!("corrupt namespace record {name}: {e}")),
    }
}

fn write(txn: &mut Txn<'_>, rec: &NamespaceRecord) -> NamespaceResult {
    match postcard::to_stdvec(rec) {
        Ok(bytes) => {
            txn.put(name_key(&rec.name), bytes);
            txn.put(id_key(&rec.id), rec.name.clone().into_bytes());
            NamespaceResult::Ok(rec.clone())
        }
        Err(e) => NamespaceResult::StorageFailed(e.to_string()),
    }
}

/// Applies a registry command.
pub fn apply(txn: &mut Txn<'_>, cmd: NamespaceCommand, now_ms: u64) -> NamespaceResult {
    match cmd {
        NamespaceCommand::Register { id, name, description, owner_email, retention_ms, data } => {
            if let Err(e) = validate_name(&name) {
                return NamespaceResult::Invalid(e);
            }
            match read(&*txn, &name) {
                Err(e) => NamespaceResult::StorageFailed(e),
                Ok(Some(_)) => NamespaceResult::AlreadyExists(name),
                Ok(None) => {
                    let retention_ms = if retention_ms == 0 { DEFAULT_RETENTION_MS } else { retention_ms };
                    let rec = NamespaceRecord {
                        id,
                        name,
                        description,
                        owner_email,
                        retention_ms,
                        data,
                        created_ms: now_ms,
                        version: 1,
                    };
                    write(txn, &rec)
                }
            }
        }
        NamespaceCommand::Ensure { id, name } => match read(&*txn, &name) {
            Err(e) => NamespaceResult::StorageFailed(e),
            Ok(Some(rec)) => NamespaceResult::Ok(rec),
            Ok(None) => {
                let rec = NamespaceRecord {
                    id,
                    name,
                    description: "Default namespace".into(),
                    owner_email: String::new(),
                    retention_ms: DEFAULT_RETENTION_MS,
                    data: BTreeMap::new(),
                    created_ms: now_ms,
                    version: 1,
                };
                write(txn, &rec)
            }
        },
        NamespaceCommand::Update { name, description, owner_email, retention_ms, data } => match read(&*txn, &name) {
            Err(e) => NamespaceResult::StorageFailed(e),
            Ok(None) => NamespaceResult::NotFound(name),
            Ok(Some(mut rec)) => {
                if let Some(d) = description {
                    rec.description = d;
                }
                if let Some(o) = owner_email {
                    rec.owner_email = o;
                }
                if let Some(r) = retention_ms {
                    rec.retention_ms = r;
                }
                rec.data.extend(data);
                rec.version += 1;
                write(txn, &rec)
            }
        },
    }
}

/// Every namespace, by name.
pub fn list(txn: &dyn StateView) -> Result<Vec<NamespaceRecord>, String> {
    let kvs = txn.scan_prefix(b"ns/name/", usize::MAX).map_err(|e| e.to_string())?;
    kvs.into_iter()
        .map(|(k, v)| postcard::from_bytes(&v).map_err(|e| format!("corrupt namespace record {k:?}: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_and_ids_are_stable() {
        assert!(validate_name("default").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"x".repeat(256)).is_err());
        assert_eq!(derived_id("default"), derived_id("default"));
        assert_ne!(derived_id("default"), derived_id("other"));
        assert_eq!(derived_id("default").len(), 36);
    }
}
