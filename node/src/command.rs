//! What a shard's Raft log carries, and the state machine that applies it on every replica.

use norn_raft::{Applied, ApplyError, StateMachine, Txn};
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

impl crate::routing::Router {
    /// Proposes `cmd` on `shard`'s leader (routing and retrying inside the cluster) and returns
    /// the state machine's result.
    pub async fn propose_command(&self, shard: u32, cmd: &ShardCommand) -> Result<ShardResult, tonic::Status> {
        let (r, _) = self.propose(shard, cmd.encode()).await?;
        Ok(ShardResult::decode(&r))
    }
}

/// Norn's shard state machine: deterministic, no clock, no I/O beyond the transaction.
pub struct ShardStateMachine {
    /// The cluster's shard count (fixed at creation; the same on every replica).
    pub shards: u32,
    /// Woken after each applied workflow command (a node-local side channel: it changes nothing
    /// in the replicated state).
    pub watch: crate::history::watch::RunWatch,
    /// Told of new due times (node-local, for the leader's duties).
    pub due: crate::history::watch::DueWatch,
}

impl StateMachine for ShardStateMachine {
    fn apply(&mut self, txn: &mut Txn<'_>, cmd: Applied<'_>) -> Result<Vec<u8>, ApplyError> {
        let encode = |r: &ShardResult| postcard::to_stdvec(r).unwrap_or_default();
        let mut ctx = store::ApplyCtx::new(cmd.group, self.shards);
        let result = match postcard::from_bytes::<ShardCommand>(cmd.payload) {
            Err(e) => {
                return Err(ApplyError::Rejected(encode(&ShardResult::Rejected(format!("undecodable command: {e}")))))
            }
            Ok(ShardCommand::Kv(c)) => ShardResult::Kv(kv::apply(txn, c, &cmd)),
            Ok(ShardCommand::Workflow(c)) => match store::apply(txn, &mut ctx, c, cmd.timestamp_ms) {
                WorkflowResult::StorageFailed(why) => return Err(ApplyError::Fatal(why)),
                r @ WorkflowResult::Rejected(_) => return Err(ApplyError::Rejected(encode(&ShardResult::Workflow(r)))),
                r => {
                    if let WorkflowResult::Applied { run, .. } = &r {
                        self.watch.notify(&run.run_id);
                    }
                    if let Some(due) = ctx.earliest_due_ms {
                        self.due.note(cmd.group, due);
                    }
                    ShardResult::Workflow(r)
                }
            },
            Ok(ShardCommand::Namespace(c)) => {
                let r = if cmd.group != namespace::SYSTEM_SHARD {
                    NamespaceResult::Invalid(format!(
                        "namespace commands belong to shard {}, not {}",
                        namespace::SYSTEM_SHARD,
                        cmd.group
                    ))
                } else {
                    namespace::apply(txn, c, cmd.timestamp_ms)
                };
                match r {
                    NamespaceResult::StorageFailed(why) => return Err(ApplyError::Fatal(why)),
                    r @ (NamespaceResult::Invalid(_)
                    | NamespaceResult::AlreadyExists(_)
                    | NamespaceResult::NotFound(_)) => {
                        return Err(ApplyError::Rejected(encode(&ShardResult::Namespace(r))))
                    }
                    r => ShardResult::Namespace(r),
                }
            }
        };
        Ok(encode(&result))
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
