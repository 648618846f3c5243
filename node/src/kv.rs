//! The replicated test map: the smallest state machine that proves the Raft path end to end
//! (put / delete on a per-shard map). The workflow history engine replaces it as the product's
//! state machine; this one stays for `norn bench raft` and the cluster tests.

use norn_raft::{Applied, StateMachine, Txn};
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
    /// The command did not decode; nothing changed (identically on every replica).
    Rejected { reason: String },
    /// The store failed while applying.
    StorageFailed { reason: String },
}

/// Key prefix of the map inside the shard's state.
const PREFIX: &[u8] = b"kv/";

/// The map's key in shard state.
pub fn state_key(key: &[u8]) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(key);
    k
}

/// The test map's state machine.
#[derive(Default)]
pub struct KvStateMachine;

impl StateMachine for KvStateMachine {
    fn apply(&mut self, txn: &mut Txn<'_>, cmd: Applied<'_>) -> Vec<u8> {
        let result = match postcard::from_bytes::<KvCommand>(cmd.payload) {
            Err(e) => KvResult::Rejected { reason: format!("undecodable command: {e}") },
            Ok(KvCommand::Put { key, value }) => {
                txn.put(state_key(&key), value);
                KvResult::Applied { index: cmd.index, timestamp_ms: cmd.timestamp_ms }
            }
            Ok(KvCommand::Delete { key }) => match txn.get(&state_key(&key)) {
                Ok(_) => {
                    txn.delete(state_key(&key));
                    KvResult::Applied { index: cmd.index, timestamp_ms: cmd.timestamp_ms }
                }
                Err(e) => KvResult::StorageFailed { reason: e.to_string() },
            },
        };
        postcard::to_stdvec(&result).unwrap_or_default()
    }
}
