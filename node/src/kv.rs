//! The replicated test map: the smallest state machine that proves the Raft path end to end
//! (put / delete on a per-shard map). The workflow history engine replaces it as the product's
//! state machine; this one stays for `norn bench raft` and the cluster tests.

use norn_raft::{Applied, Txn};
use serde::{Deserialize, Serialize};

/// A command of the test map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Sets a key.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Removes a key.
    Delete { key: Vec<u8> },
}

/// What applying a command returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    /// Applied at this index and (monotonic) time.
    Applied { index: u64, timestamp_ms: u64 },
}

/// Key prefix of the map inside the shard's state.
const PREFIX: &[u8] = b"kv/";

/// The map's key in shard state.
pub fn state_key(key: &[u8]) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(key);
    k
}

/// Applies a test-map command.
pub fn apply(txn: &mut Txn<'_>, cmd: KvCommand, at: &Applied<'_>) -> KvResult {
    match cmd {
        KvCommand::Put { key, value } => {
            txn.put(state_key(&key), value);
            KvResult::Applied { index: at.index, timestamp_ms: at.timestamp_ms }
        }
        KvCommand::Delete { key } => {
            txn.delete(state_key(&key));
            KvResult::Applied { index: at.index, timestamp_ms: at.timestamp_ms }
        }
    }
}
