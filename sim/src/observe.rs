//! What a run observes while it runs: the entries every replica applies, the votes and leaders
//! each node holds, the nodes that are up, and the scenario's client operations with their simulated
//! times. The checks read it after the run (`checks`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use norn_raft::{ApplyObserver, RaftNode, Role};
use tokio::sync::mpsc;

/// Something the run loop asks a node host to do inside its own runtime.
#[derive(Clone, Copy, Debug)]
pub enum Control {
    /// Build a snapshot of every shard the node hosts (and purge logs behind them).
    SnapshotAll,
}

/// A running node as the run loop sees it.
#[derive(Clone)]
pub struct NodeHandle {
    /// Its Raft groups.
    pub raft: RaftNode,
    /// Requests to the node's host.
    pub control: mpsc::UnboundedSender<Control>,
}

/// One attempt of an activity as a worker ran it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRun {
    /// Workflow id.
    pub workflow_id: String,
    /// Run id.
    pub run_id: String,
    /// Activity id.
    pub activity_id: String,
    /// Attempt number.
    pub attempt: i32,
    /// Worker host that ran it.
    pub worker: usize,
    /// When it started (simulated).
    pub at: Duration,
}

/// A start the scenario made, with what it learned.
#[derive(Clone, Debug)]
pub struct StartOp {
    /// Workflow id.
    pub workflow_id: String,
    /// The request id every attempt of this start carried.
    pub request_id: String,
    /// The run id of each acknowledged attempt.
    pub acked_runs: Vec<String>,
    /// When the first attempt was acknowledged (simulated).
    pub acked_at: Option<Duration>,
}

/// A signal the scenario sent.
#[derive(Clone, Debug)]
pub struct SignalOp {
    /// Workflow id.
    pub workflow_id: String,
    /// Signal name.
    pub name: String,
    /// The signal's argument, which identifies it (JSON).
    pub arg_json: String,
    /// When it was acknowledged (simulated), if it was.
    pub acked_at: Option<Duration>,
}

/// One history read the scenario made.
#[derive(Clone, Debug)]
pub struct ReadOp {
    /// Workflow id.
    pub workflow_id: String,
    /// Run the read asked for (empty: the current run).
    pub run_id: String,
    /// The node it was sent to (1-based).
    pub node: usize,
    /// When it was sent (simulated).
    pub invoked_at: Duration,
    /// When its answer came back (simulated).
    pub completed_at: Duration,
    /// The events it returned (`None`: the server said the workflow does not exist).
    pub events: Option<Vec<EventSummary>>,
}

/// What the read checks compare of an event: id, type, time (ms), and for a signal its name and
/// argument JSON.
pub type EventSummary = (i64, i32, i64, Option<(String, String)>);

/// An activity of a run: (workflow id, run id, activity id).
pub type ActivityKey = (String, String, String);

/// Everything observed in one run.
#[derive(Default)]
pub struct Observed {
    /// (shard, index) -> (term, digest, first node that applied it).
    pub applied: BTreeMap<(u32, u64), (u64, u64, usize)>,
    /// Replicas that applied a different entry at an index (at most a few are kept).
    pub apply_conflicts: Vec<String>,
    /// (shard, term, node) for every leader seen.
    pub leaders: BTreeSet<(u32, u64, usize)>,
    /// (node, shard) -> the highest vote the node was seen to hold on disk.
    pub votes: BTreeMap<(usize, u32), (u64, u64, bool)>,
    /// Stored votes that went back (at most a few are kept).
    pub vote_regressions: Vec<String>,
    /// The running nodes, by 1-based id.
    pub nodes: BTreeMap<usize, NodeHandle>,
    /// Activity attempts as run by workers.
    pub attempts: Vec<AttemptRun>,
    /// Task tokens of attempts: ((workflow id, run id, activity id), attempt) -> token.
    pub tokens: BTreeMap<(ActivityKey, i32), Vec<u8>>,
    /// Completions sent with the token of an earlier attempt that the server accepted.
    pub stale_accepted: Vec<String>,
    /// Completions sent with the token of an earlier attempt (accepted or not).
    pub stale_sent: usize,
    /// Starts, signals and reads made by the scenario.
    pub starts: Vec<StartOp>,
    /// Signals sent by the scenario.
    pub signals: Vec<SignalOp>,
    /// Workflows the scenario saw finish as it expected.
    pub completed: usize,
    /// History reads made by the scenario.
    pub reads: Vec<ReadOp>,
    /// Snapshots installed on nodes that restarted after a long outage.
    pub snapshot_catch_ups: u64,
    /// What the scenario did, with simulated times.
    pub trace: Vec<(Duration, String)>,
}

/// The shared, lock-protected observations of a run.
#[derive(Clone, Default)]
pub struct Observations(Arc<Mutex<Observed>>);

impl Observations {
    /// Locks the observations.
    pub fn lock(&self) -> MutexGuard<'_, Observed> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The apply observer of node `node`.
    pub fn apply_observer(&self, node: usize) -> Arc<dyn ApplyObserver> {
        Arc::new(NodeApplies { node, obs: self.clone() })
    }

    /// Records who leads what on every running node (called by the run loop every few ms).
    pub fn sample_leaders(&self) {
        let mut o = self.lock();
        let nodes: Vec<(usize, RaftNode)> = o.nodes.iter().map(|(i, h)| (*i, h.raft.clone())).collect();
        for (id, raft) in nodes {
            for s in raft.status() {
                if s.role == Role::Leader {
                    o.leaders.insert((s.group, s.term, id));
                }
                // Term 0 is the placeholder of a node whose Raft core has not reported yet.
                if s.vote.0 == 0 || s.role == Role::Failed {
                    continue;
                }
                let now = s.vote;
                match o.votes.get(&(id, s.group)).copied() {
                    Some(before) if now < before => {
                        let what =
                            format!("node{id} shard {}: from {} to {}", s.group, show_vote(before), show_vote(now));
                        if o.vote_regressions.len() < 8 && !o.vote_regressions.contains(&what) {
                            o.vote_regressions.push(what);
                        }
                    }
                    Some(before) if now == before => {}
                    _ => {
                        o.votes.insert((id, s.group), now);
                    }
                }
            }
        }
    }
}

fn show_vote((term, node, committed): (u64, u64, bool)) -> String {
    format!("T{term}-N{node}{}", if committed { " (granted by a quorum)" } else { "" })
}

struct NodeApplies {
    node: usize,
    obs: Observations,
}

impl ApplyObserver for NodeApplies {
    fn applied(&self, group: u32, index: u64, term: u64, digest: u64) {
        let mut o = self.obs.lock();
        match o.applied.get(&(group, index)).copied() {
            None => {
                o.applied.insert((group, index), (term, digest, self.node));
            }
            Some((t, d, first)) if (t, d) != (term, digest) => {
                if o.apply_conflicts.len() < 8 {
                    let what = format!(
                        "shard {group} index {index}: node{first} applied an entry of term {t} (digest {d:016x}), \
                         node{} one of term {term} (digest {digest:016x})",
                        self.node
                    );
                    o.apply_conflicts.push(what);
                }
            }
            Some(_) => {}
        }
    }
}
