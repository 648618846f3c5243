//! Proposal batching: the proposals that reach one group while its earlier entries are still
//! being committed travel together as one log entry.
//!
//! Each group has one batching task. A proposal is queued with a reply channel; the task takes
//! the first one, waits for one of `proposals_in_flight_max` slots, then takes every proposal
//! queued meanwhile (up to the entry and byte bounds), stamps the batch with the leader's clock
//! and hands it to openraft. The commit of that one entry answers every proposal in it, each with
//! its own state-machine response. Under load, batches grow by themselves (the slots are busy,
//! so the queue fills); a lone proposal never waits for company.
//!
//! Batching changes no guarantee: a proposal is answered only after its entry is committed and
//! applied, and a proposal whose entry's outcome is unknown is answered "unknown".

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;

use crate::node::ProposeError;
use crate::types::{Command, GroupId, Raft};
use crate::Clock;

/// Bounds of one group's batching.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Entries proposed to openraft and not yet answered.
    pub in_flight_max: usize,
    /// Proposals in one entry.
    pub batch_proposals_max: usize,
    /// Payload bytes in one entry (a larger single proposal travels alone).
    pub batch_bytes_max: usize,
    /// Queued proposals; proposers wait when the queue is full.
    pub queue_max: usize,
    /// How long an entry may wait for its commit before its proposals are answered "unknown".
    pub commit_timeout: Duration,
}

type Reply = oneshot::Sender<Result<Vec<u8>, ProposeError>>;

pub(crate) struct Proposal {
    payload: Vec<u8>,
    reply: Reply,
}

/// The sending side of a group's batching task.
#[derive(Clone)]
pub(crate) struct Proposer {
    group: GroupId,
    tx: mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Starts the batching task of `group` on the current runtime.
    pub(crate) fn start(group: GroupId, raft: Raft, clock: Arc<dyn Clock>, limits: Limits) -> Self {
        let (tx, rx) = mpsc::channel(limits.queue_max.max(1));
        let span = tracing::debug_span!("proposer", shard = group);
        tokio::spawn(run(group, raft, clock, limits, rx).instrument(span));
        Self { group, tx }
    }

    /// Proposes `payload` and waits for its response. The caller bounds the wait.
    pub(crate) async fn propose(&self, payload: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Proposal { payload, reply })
            .await
            .map_err(|_| ProposeError::Stopped(self.group, "the shard's proposer stopped (shutting down)".into()))?;
        rx.await.unwrap_or_else(|_| {
            Err(ProposeError::Unknown(self.group, "the proposal's entry was dropped before an answer".into()))
        })
    }
}

async fn run(group: GroupId, raft: Raft, clock: Arc<dyn Clock>, limits: Limits, mut rx: mpsc::Receiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(limits.in_flight_max.max(1)));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut bytes = first.payload.len();
        let mut batch = vec![first];
        while batch.len() < limits.batch_proposals_max && bytes < limits.batch_bytes_max {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.payload.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // A proposer that stopped waiting (its own deadline passed) was already told "unknown";
        // leaving its payload out is one of the outcomes that answer allows.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (payloads, replies): (Vec<Vec<u8>>, Vec<Reply>) = batch.into_iter().map(|p| (p.payload, p.reply)).unzip();
        let cmd = Command { timestamp_ms: clock.now_ms(), payloads };
        match raft.client_write_ff(cmd).await {
            Err(fatal) => {
                for r in replies {
                    let _ = r.send(Err(ProposeError::Stopped(group, fatal.to_string())));
                }
            }
            Ok(pending) => {
                let timeout = limits.commit_timeout;
                tokio::spawn(async move {
                    let outcome = tokio::time::timeout(timeout, pending).await;
                    answer(group, replies, outcome, timeout);
                    drop(slot);
                });
            }
        }
    }
}

type Pending = Result<crate::types::ClientWriteResult, oneshot::error::RecvError>;

fn answer(
    group: GroupId,
    replies: Vec<Reply>,
    outcome: Result<Pending, tokio::time::error::Elapsed>,
    waited: Duration,
) {
    use openraft::error::ClientWriteError;
    let failure = match outcome {
        Err(_) => ProposeError::Timeout(group, waited),
        Ok(Err(_)) => ProposeError::Unknown(group, "openraft dropped the entry's responder".into()),
        Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => {
            ProposeError::NotLeader { group, leader: f.leader_id.zip(f.leader_node) }
        }
        Ok(Ok(Err(e))) => ProposeError::Stopped(group, e.to_string()),
        Ok(Ok(Ok(resp))) => {
            if resp.data.len() != replies.len() {
                // Cannot happen: the state machine answers every payload of an entry.
                let why = format!("{} responses for {} proposals", resp.data.len(), replies.len());
                tracing::error!(shard = group, %why, "state machine answered a batch wrongly");
                for r in replies {
                    let _ = r.send(Err(ProposeError::Unknown(group, why.clone())));
                }
                return;
            }
            for (r, data) in replies.into_iter().zip(resp.data) {
                let _ = r.send(Ok(data));
            }
            return;
        }
    };
    for r in replies {
        let _ = r.send(Err(failure.clone()));
    }
}
