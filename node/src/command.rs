//! What a shard's Raft log carries, and the state machine that applies it on every replica.

use norn_raft::{Applied, StateMachine, Txn};
use serde::{Deserialize, Serialize};

use crate::history::store::{self, WorkflowCommand, WorkflowResult};
use crate::kv::{self, KvCommand, KvResult};
use crate::namespace::{self, NamespaceCommand, NamespaceResult};

/// One replicated command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// The replicated test map.
    Kv(KvCommand),
    /// The namespace registry (system shard only).
    Namespace(NamespaceCommand),
    /// A workflow run's history engine.
    Workflow(WorkflowCommand),
}

/// What applying a command returns to the proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardResult {
    /// From a [`ShardCommand::Kv`].
    Kv(KvResult),
    /// From a [`ShardCommand::Namespace`].
    Namespace(NamespaceResult),
    /// From a [`ShardCommand::Workflow`].
    Workflow(WorkflowResult),
    /// The command did not decode; nothing changed, identically on every replica.
    Rejected(String),
}

impl ShardCommand {
    /// The log payload.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding a plain enum of owned data into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }
}

impl ShardResult {
    /// Decodes a response; an undecodable one becomes `Rejected`.
    pub fn decode(bytes: &[u8]) -> Self {
        postcard::from_bytes(bytes).unwrap_or_else(|e| ShardResult::Rejected(format!("undecodable response: {e}")))
    }
}

/// Norn's shard state machine: deterministic, no clock, no I/O beyond the transaction.
#[derive(Default)]
pub struct ShardStateMachine {
    /// Woken after each applied workflow command (a node-local side channel: it changes nothing
    /// in the replicated state).
    pub watch: crate::history::watch::RunWatch,
}

impl StateMachine for ShardStateMachine {
    fn apply(&mut self, txn: &mut Txn<'_>, cmd: Applied<'_>) -> Vec<u8> {
        let result = match postcard::from_bytes::<ShardCommand>(cmd.payload) {
            Err(e) => ShardResult::Rejected(format!("undecodable command: {e}")),
            Ok(ShardCommand::Kv(c)) => ShardResult::Kv(kv::apply(txn, c, &cmd)),
            Ok(ShardCommand::Workflow(c)) => {
                let r = store::apply(txn, c, cmd.timestamp_ms);
                if let store::WorkflowResult::Applied { run, .. } = &r {
                    self.watch.notify(&run.run_id);
                }
                ShardResult::Workflow(r)
            }
            Ok(ShardCommand::Namespace(c)) => {
                if cmd.group != namespace::SYSTEM_SHARD {
                    ShardResult::Namespace(NamespaceResult::Invalid(format!(
                        "namespace commands belong to shard {}, not {}",
                        namespace::SYSTEM_SHARD,
                        cmd.group
                    )))
                } else {
                    ShardResult::Namespace(namespace::apply(txn, c, cmd.timestamp_ms))
                }
            }
        };
        postcard::to_stdvec(&result).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_results_are_rejections() {
        assert!(matches!(ShardResult::decode(&[0xff, 0xff]), ShardResult::Rejected(_)));
        let r = ShardResult::Kv(KvResult::Applied { index: 3, timestamp_ms: 4 });
        assert_eq!(ShardResult::decode(&postcard::to_stdvec(&r).unwrap()), r);
    }
}
