//! [`RaftNode`]: every Raft group (shard) hosted by one node, over one store, one group-commit
//! task and one transport.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use norn_storage::Engine;
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::Instrument;

use crate::group_commit::GroupCommit;
use crate::log_store::LogStore;
use crate::network::GroupNetworkFactory;
use crate::proposer::{Limits, Proposer};
use crate::state_machine::{ApplyProgress, SmStore, StateMachine};
use crate::transport::Transport;
use crate::types::{GroupId, NodeId, NodeInfo, Raft};
use crate::Clock;

/// Proposals queued per group before proposers wait.
const PROPOSAL_QUEUE_MAX: usize = 8192;

/// Raft timings and limits, shared by every group of a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct RaftOptions {
    /// Lower bound of the randomized election timeout.
    pub election_timeout_ms_min: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_ms_max: u64,
    /// Leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot (for followers that lag a little).
    pub logs_kept_after_snapshot: u64,
    /// Snapshot chunk size on the wire.
    pub snapshot_chunk_bytes: u64,
    /// How long a proposal waits for commit before it is answered "outcome unknown".
    pub propose_timeout_ms: u64,
    /// Log entries a group's leader may have proposed and not yet seen committed; proposals
    /// that arrive meanwhile are batched into the next entry (see `proposer`).
    pub proposals_in_flight_max: usize,
    /// Proposals batched into one log entry at most.
    pub proposal_batch_max: usize,
    /// Payload bytes batched into one log entry at most (a larger proposal travels alone).
    pub proposal_batch_bytes_max: usize,
    /// A bug planted on purpose, for the simulator's tests that prove it catches that class of
    /// bug. Never read from configuration files; `None` everywhere but those tests.
    #[serde(skip)]
    pub planted_bug: Option<PlantedBug>,
    /// Told of every entry this node applies (the simulator's Raft checks). Never read from
    /// configuration files; empty in production.
    #[serde(skip)]
    pub apply_observer: ObserverSlot,
}

/// Sees every log entry a node applies, in apply order. The simulator uses it to check that all
/// replicas apply the same entry at each index and that a committed entry never changes.
pub trait ApplyObserver: Send + Sync + 'static {
    /// `digest` covers the entry's kind and payload; `index` and `term` are its log id.
    fn applied(&self, group: GroupId, index: u64, term: u64, digest: u64);
}

/// An optional [`ApplyObserver`] (a newtype so that [`RaftOptions`] stays `Debug` and `Clone`).
#[derive(Clone, Default)]
pub struct ObserverSlot(pub Option<std::sync::Arc<dyn ApplyObserver>>);

impl std::fmt::Debug for ObserverSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "ObserverSlot(set)" } else { "ObserverSlot(none)" })
    }
}

/// Bugs the simulator must catch (see `norn-sim`'s tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Group commit acknowledges appends and votes without syncing the WAL.
    AckBeforeSync,
    /// The frontend hands out an activity task without committing `ActivityTaskStarted`.
    UncommittedActivityStart,
    /// A follower answers reads that must be current from its own (possibly stale) state
    /// instead of forwarding them to the leader's read-index.
    StaleFollowerRead,
    /// The transport admits frames and calls from any process: another cluster's, or an old
    /// copy of a member's data directory (the identity checks are skipped).
    AcceptAnyCluster,
}

impl PlantedBug {
    /// Parses a planted bug's name as the harnesses spell it (`ack-before-fsync`,
    /// `uncommitted-activity-start`, `stale-follower-read`, `accept-any-cluster`).
    pub fn parse(name: &str) -> Option<PlantedBug> {
        Some(match name {
            "ack-before-fsync" => PlantedBug::AckBeforeSync,
            "uncommitted-activity-start" => PlantedBug::UncommittedActivityStart,
            "stale-follower-read" => PlantedBug::StaleFollowerRead,
            "accept-any-cluster" => PlantedBug::AcceptAnyCluster,
            _ => return None,
        })
    }
}

impl Default for RaftOptions {
    fn default() -> Self {
        Self {
            election_timeout_ms_min: 1000,
            election_timeout_ms_max: 2000,
            heartbeat_interval_ms: 250,
            snapshot_logs_since_last: 10_000,
            logs_kept_after_snapshot: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            propose_timeout_ms: 10_000,
            proposals_in_flight_max: 1,
            proposal_batch_max: 512,
            proposal_batch_bytes_max: 1 << 20,
            planted_bug: None,
            apply_observer: ObserverSlot::default(),
        }
    }
}

impl RaftOptions {
    fn openraft_config(&self) -> Result<openraft::Config, crate::Error> {
        let c = openraft::Config {
            cluster_name: "norn".into(),
            election_timeout_min: self.election_timeout_ms_min,
            election_timeout_max: self.election_timeout_ms_max,
            heartbeat_interval: self.heartbeat_interval_ms,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            max_payload_entries: 512,
            ..Default::default()
        };
        c.validate().map_err(|e| crate::Error::Config(e.to_string()))
    }
}

/// One group this node hosts.
#[derive(Clone, Debug)]
pub struct GroupSpec {
    /// Shard id.
    pub id: GroupId,
    /// The group's voters. Must contain this node.
    pub members: BTreeMap<NodeId, NodeInfo>,
    /// This node initializes the group on first start (exactly one member should).
    pub bootstrap: bool,
}

/// A group's role on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Leads the group.
    Leader,
    /// Follows a leader.
    Follower,
    /// Campaigning.
    Candidate,
    /// Not a voter.
    Learner,
    /// Stopped after a fatal error (see `fatal`).
    Failed,
}

/// One group's state on this node, for `norn cluster status` and metrics.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Shard id.
    pub group: GroupId,
    /// This node's role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// The vote this node has on disk: its term, the node it is for, and whether a quorum
    /// granted it. openraft orders votes by (term, node, committed) and names a leader by
    /// (term, node), so one term can see several leaders of distinct nodes; what makes that
    /// safe is that a node's stored vote never goes back.
    #[serde(default)]
    pub vote: (u64, NodeId, bool),
    /// Last log index.
    pub last_log_index: u64,
    /// Highest index known committed.
    pub committed_index: u64,
    /// Highest index applied.
    pub applied_index: u64,
    /// Index covered by the latest snapshot.
    pub snapshot_index: u64,
    /// Highest purged index.
    pub purged_index: u64,
    /// Voters.
    pub members: Vec<NodeId>,
    /// Snapshots installed from a leader since this process started.
    pub snapshots_installed: u64,
    /// Why the group stopped, if it did.
    pub fatal: Option<String>,
}

/// Why a proposal or a linearizable read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// This node does not host the group.
    #[error("shard {0} is not hosted on this node")]
    NoSuchGroup(GroupId),
    /// Another node leads the group (or no leader is known yet).
    #[error("not the leader of shard {group}; leader is {leader:?}")]
    NotLeader {
        /// Shard id.
        group: GroupId,
        /// The leader, if known.
        leader: Option<(NodeId, NodeInfo)>,
    },
    /// The proposal may or may not commit: no quorum answered in time.
    #[error("shard {0}: no quorum within {1:?}; the outcome is unknown")]
    Timeout(GroupId, Duration),
    /// This node leads the group but cannot reach a quorum.
    #[error("shard {0}: leader cannot reach a quorum: {1}")]
    NoQuorum(GroupId, String),
    /// The group stopped (storage failure or shutdown).
    #[error("shard {0} is stopped: {1}")]
    Stopped(GroupId, String),
    /// The proposal's entry may or may not commit (its leader lost track of it).
    #[error("shard {0}: {1}; the outcome is unknown")]
    Unknown(GroupId, String),
}

struct Group {
    raft: Raft,
    proposer: Proposer,
    progress: Arc<ApplyProgress>,
    applied_rx: watch::Receiver<u64>,
    /// The generation of the group's keys readers use (changes when a snapshot is installed).
    gen: Arc<std::sync::atomic::AtomicU32>,
    /// Why the group was halted on this node (its data found damaged), if it was.
    halted: std::sync::Mutex<Option<String>>,
}

/// All groups of one node.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    engine: Arc<dyn Engine>,
    commit: GroupCommit,
    transport: Arc<Transport>,
    options: RaftOptions,
    groups: RwLock<BTreeMap<GroupId, Arc<Group>>>,
}

impl RaftNode {
    /// Opens every group in `specs` on `engine` and starts it. `make_sm` builds each group's
    /// state machine.
    pub async fn start(
        id: NodeId,
        engine: Arc<dyn Engine>,
        transport: Arc<Transport>,
        clock: Arc<dyn Clock>,
        options: RaftOptions,
        specs: Vec<GroupSpec>,
        make_sm: impl Fn(GroupId) -> Box<dyn StateMachine>,
    ) -> Result<Self, crate::Error> {
        let config = Arc::new(options.openraft_config()?);
        let commit = GroupCommit::start(engine.clone(), options.planted_bug == Some(PlantedBug::AckBeforeSync));
        let mut groups = BTreeMap::new();
        for spec in specs {
            let span = tracing::info_span!("shard", shard = spec.id, node = id);
            let progress = Arc::new(ApplyProgress::default());
            let log = LogStore::new(spec.id, engine.clone(), commit.clone(), progress.clone());
            let (applied_tx, applied_rx) = watch::channel(0);
            let gen = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let sm = SmStore::open(
                spec.id,
                engine.clone(),
                commit.clone(),
                make_sm(spec.id),
                gen.clone(),
                progress.clone(),
                applied_tx,
                options.apply_observer.0.clone(),
            )
            .map_err(|e| crate::Error::Storage(format!("shard {}: {e}", spec.id)))?;
            let net = GroupNetworkFactory { group: spec.id, transport: transport.clone() };
            let raft = Raft::new(id, config.clone(), net, log, sm)
                .instrument(span.clone())
                .await
                .map_err(|e| crate::Error::Storage(format!("shard {}: {e}", spec.id)))?;
            if spec.bootstrap && !raft.is_initialized().await.map_err(|e| crate::Error::Storage(e.to_string()))? {
                match raft.initialize(spec.members.clone()).await {
                    Ok(()) => {
                        tracing::info!(parent: &span, members = ?spec.members.keys().collect::<Vec<_>>(), "initialized shard")
                    }
                    Err(RaftError::APIError(e)) => {
                        tracing::debug!(parent: &span, error = %e, "shard already initialized")
                    }
                    Err(e) => return Err(crate::Error::Storage(format!("shard {}: {e}", spec.id))),
                }
            }
            let limits = Limits {
                in_flight_max: options.proposals_in_flight_max,
                batch_proposals_max: options.proposal_batch_max.max(1),
                batch_bytes_max: options.proposal_batch_bytes_max,
                queue_max: PROPOSAL_QUEUE_MAX,
                commit_timeout: Duration::from_millis(options.propose_timeout_ms),
            };
            let proposer = Proposer::start(spec.id, raft.clone(), clock.clone(), limits);
            let halted = std::sync::Mutex::new(None);
            groups.insert(spec.id, Arc::new(Group { raft, proposer, progress, applied_rx, gen, halted }));
        }
        Ok(Self { inner: Arc::new(Inner { id, engine, commit, transport, options, groups: RwLock::new(groups) }) })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The node's transport (for fault filters).
    pub fn transport(&self) -> &Arc<Transport> {
        &self.inner.transport
    }

    /// The node's store.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.inner.engine
    }

    /// WAL syncs and durable writes so far.
    pub fn sync_counts(&self) -> (u64, u64) {
        let s = self.inner.commit.stats();
        (s.syncs.load(Ordering::Relaxed), s.writes.load(Ordering::Relaxed))
    }

    /// Time spent in WAL syncs so far.
    pub fn sync_busy(&self) -> Duration {
        Duration::from_micros(self.inner.commit.stats().sync_busy_us.load(Ordering::Relaxed))
    }

    /// Ids of the groups hosted here, sorted.
    pub fn group_ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<_> = self.groups().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn groups(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<GroupId, Arc<Group>>> {
        self.inner.groups.read().unwrap_or_else(|p| p.into_inner())
    }

    fn group(&self, id: GroupId) -> Result<Arc<Group>, ProposeError> {
        self.groups().get(&id).cloned().ok_or(ProposeError::NoSuchGroup(id))
    }

    pub(crate) fn raft(&self, id: GroupId) -> Option<Raft> {
        self.groups().get(&id).map(|g| g.raft.clone())
    }

    fn leader_of(&self, g: &Group, group: GroupId) -> ProposeError {
        let m = g.raft.metrics().borrow().clone();
        let leader = m
            .current_leader
            .and_then(|l| m.membership_config.nodes().find(|(id, _)| **id == l).map(|(id, n)| (*id, n.clone())));
        ProposeError::NotLeader { group, leader }
    }

    /// Proposes `payload` to `group` and returns the state machine's response once a quorum
    /// has it on disk and this node applied it. Proposals that meet in the group's queue share
    /// one log entry, stamped with the leader's clock (see `proposer`).
    pub async fn propose(&self, group: GroupId, payload: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        let g = self.group(group)?;
        let timeout = Duration::from_millis(self.inner.options.propose_timeout_ms);
        match tokio::time::timeout(timeout, g.proposer.propose(payload)).await {
            Err(_) => Err(ProposeError::Timeout(group, timeout)),
            Ok(r) => r,
        }
    }

    /// Waits until this node, as leader, has applied everything committed before the call
    /// (read-index). After it returns, reads of the local state are linearizable.
    pub async fn read_index(&self, group: GroupId) -> Result<(), ProposeError> {
        let g = self.group(group)?;
        let timeout = Duration::from_millis(self.inner.options.propose_timeout_ms);
        match tokio::time::timeout(timeout, g.raft.ensure_linearizable()).await {
            Err(_) => Err(ProposeError::Timeout(group, timeout)),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => Err(self.leader_of(&g, group)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(ProposeError::NoQuorum(group, e.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(ProposeError::Stopped(group, f.to_string())),
        }
    }

    /// Reads a key of `group`'s state as applied on this node (possibly stale unless preceded
    /// by [`RaftNode::read_index`]).
    pub fn read_local(&self, group: GroupId, key: &[u8]) -> Result<Option<Vec<u8>>, crate::Error> {
        crate::StateView::get(&self.view(group), key).map_err(|e| crate::Error::Storage(e.to_string()))
    }

    /// Read access to `group`'s state as applied on this node.
    pub fn view(&self, group: GroupId) -> crate::state_machine::GroupView {
        let gen = self.groups().get(&group).map(|g| g.gen.clone()).unwrap_or_default();
        crate::state_machine::GroupView { group, gen, engine: self.inner.engine.clone() }
    }

    /// Waits until `group` has applied at least `index` on this node.
    pub async fn wait_applied(&self, group: GroupId, index: u64) -> Result<(), ProposeError> {
        let mut rx = self.group(group)?.applied_rx.clone();
        rx.wait_for(|i| *i >= index).await.map(|_| ()).map_err(|_| ProposeError::Stopped(group, "shut down".into()))
    }

    /// Status of every group, sorted by id.
    pub fn status(&self) -> Vec<GroupStatus> {
        let groups: Vec<(GroupId, Arc<Group>)> = self.groups().iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut out: Vec<GroupStatus> = groups.into_iter().map(|(id, g)| self.group_status(id, &g)).collect();
        out.sort_by_key(|s| s.group);
        out
    }

    fn group_status(&self, id: GroupId, g: &Group) -> GroupStatus {
        let m = g.raft.metrics().borrow().clone();
        let committed = g.progress.committed_index.load(Ordering::Acquire);
        let role = match (&m.running_state, m.state) {
            (Err(_), _) => Role::Failed,
            (_, ServerState::Leader) => Role::Leader,
            (_, ServerState::Follower) => Role::Follower,
            (_, ServerState::Candidate) => Role::Candidate,
            (_, _) => Role::Learner,
        };
        let applied = g.progress.applied_index.load(Ordering::Acquire);
        let halted = g.halted.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let role = if halted.is_some() { Role::Failed } else { role };
        GroupStatus {
            group: id,
            role,
            term: m.current_term,
            leader: m.current_leader,
            vote: (m.vote.leader_id.term, m.vote.leader_id.node_id, m.vote.committed),
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: committed.max(applied),
            applied_index: applied,
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: m.purged.map(|l| l.index).unwrap_or(0),
            members: m.membership_config.voter_ids().collect(),
            snapshots_installed: g.progress.snapshots_installed.load(Ordering::Relaxed),
            fatal: halted.or_else(|| m.running_state.err().map(|e| e.to_string())),
        }
    }

    /// Takes `group` out of service on this node because its data here is damaged (`why` names
    /// what): the group stops, its role shows `failed` with `why`, and the other replicas carry
    /// on. It stays stopped until the node restarts (after its data is repaired or replaced).
    pub async fn halt(&self, group: GroupId, why: String) {
        let Ok(g) = self.group(group) else { return };
        {
            let mut h = g.halted.lock().unwrap_or_else(|p| p.into_inner());
            if h.is_some() {
                return;
            }
            tracing::error!(shard = group, node = self.id(), error = %why, "halting this shard on this node: its data here is damaged; the other replicas go on; repair or replace this node's data directory");
            *h = Some(why);
        }
        let _ = g.raft.shutdown().await;
    }

    /// Asks `group` to build a snapshot now (and purge its log behind it).
    pub async fn trigger_snapshot(&self, group: GroupId) -> Result<(), ProposeError> {
        let g = self.group(group)?;
        g.raft.trigger().snapshot().await.map_err(|e| ProposeError::Stopped(group, e.to_string()))
    }

    /// Stops every group.
    pub async fn shutdown(&self) {
        let groups: Vec<Arc<Group>> = self.groups().values().cloned().collect();
        for g in groups {
            let _ = g.raft.shutdown().await;
        }
    }
}
