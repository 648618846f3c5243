//! Routing: every call that must run on a shard's leader (proposals, linearizable reads, task
//! offers to a task queue's home, locating a leader for a forwarded poll) goes through one
//! [`Router::route`] loop. It tries the leader this node believes in, follows `NotLeader` hints,
//! skips replicas that do not answer (a dead first replica must not make a shard unreachable), and
//! waits out elections until the call's deadline. Remote hops use the `norn.internal.v1.Internal`
//! service on the target's peer port; a hop runs there or is refused, never forwarded further, so
//! the calling node alone decides where a call goes.
//!
//! Every internal call carries this node's identity (cluster, node id, incarnation) and every
//! answer the answering node's; a mismatch is refused both ways ([`norn_raft::Transport::admit`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use norn_proto::internal::internal_client::InternalClient;
use norn_proto::internal::{self as ipb, Peer};
use norn_raft::{GroupId, Identity, NodeId, ProposeError, RaftNode, Role, ScanPage};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::config::NodeConfig;
use crate::matching::{Matching, QueueKey, TaskRef};
use crate::metrics::Metrics;
use crate::placement;

/// Metadata naming the leader a node knows (a node id, empty for none) on a refused hop.
pub const LEADER_META: &str = "norn-leader";
/// Metadata carrying the caller's identity on internal calls.
pub const CLUSTER_META: &str = "norn-cluster";
/// The caller's node id.
pub const NODE_META: &str = "norn-node";
/// The caller's incarnation.
pub const INCARNATION_META: &str = "norn-incarnation";
/// Metadata key carrying the leader's client address on `Unavailable` answers to clients.
pub const LEADER_HINT: &str = "norn-leader-addr";

/// Gap between rounds while a shard elects a leader or every replica failed to answer.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// A node that failed to answer is tried last for this long.
const DOWN_FOR: Duration = Duration::from_secs(3);
/// `NotLeader` hints followed in a row before waiting (leaders can point at each other briefly).
const REDIRECTS_MAX: usize = 8;
/// Largest internal message (both directions). State values are bounded by Temporal's blob limits;
/// reads are paged (see [`READ_PAGE_BYTES_MAX`]).
pub const INTERNAL_MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Bytes of values one read page carries at most (the page ends after the pair that crosses it).
pub const READ_PAGE_BYTES_MAX: usize = 4 << 20;
/// Who holds a home shard's matching: its leader, the term, and the leader process's
/// incarnation. A leader killed and restarted before anyone else is elected leads again in the
/// same term, but with an empty matching: without the incarnation its epoch would look unchanged
/// and the tasks its predecessor process held would be offered by nobody (found by norn-jepsen).
pub type Epoch = (NodeId, u64, u64);

/// How long the epoch of a home shard not hosted here is trusted.
const EPOCH_CACHE_FOR: Duration = Duration::from_secs(1);
/// Pairs one read page carries at most.
pub const READ_PAGE_PAIRS_MAX: u32 = 10_000;

/// Where one attempt of a routed call runs.
#[allow(clippy::large_enum_variant)] // short-lived, one per attempt
pub enum Hop {
    /// On this node.
    Local,
    /// On `node`, through its internal service.
    Remote(NodeId, Client),
}

/// Why one attempt did not finish a routed call.
#[derive(Debug)]
pub enum Miss {
    /// The node tried does not lead the shard; it names the leader it knows, if any.
    NotLeader(Option<NodeId>),
    /// The node tried did not answer or was refused before acting on the call: try another.
    Down(Status),
    /// The final answer.
    Fail(Status),
}

impl From<Status> for Miss {
    fn from(s: Status) -> Self {
        Miss::Fail(s)
    }
}

/// Adds this node's identity to every internal call.
#[derive(Clone)]
pub struct Stamp(Identity);

impl tonic::service::Interceptor for Stamp {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let m = req.metadata_mut();
        for (k, v) in [
            (CLUSTER_META, format!("{:016x}", self.0.cluster)),
            (NODE_META, self.0.node.to_string()),
            (INCARNATION_META, self.0.incarnation.to_string()),
        ] {
            if let Ok(v) = v.parse() {
                m.insert(k, v);
            }
        }
        Ok(req)
    }
}

/// A client of another node's internal service.
pub type Client = InternalClient<InterceptedService<Channel, Stamp>>;

/// The identity a caller stamped on an internal call.
pub fn caller_identity(meta: &tonic::metadata::MetadataMap) -> Result<Identity, Status> {
    let get = |k: &str| meta.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let cluster = u64::from_str_radix(&get(CLUSTER_META), 16)
        .map_err(|_| Status::unauthenticated("internal call without a cluster identity: peers only"))?;
    let node = get(NODE_META).parse().map_err(|_| Status::unauthenticated("internal call without a node id"))?;
    let incarnation =
        get(INCARNATION_META).parse().map_err(|_| Status::unauthenticated("internal call without an incarnation"))?;
    Ok(Identity { cluster, node, incarnation })
}

/// The wire form of this node's identity in answers.
pub fn peer_of(id: Identity) -> Option<Peer> {
    Some(Peer { cluster: id.cluster, node: id.node, incarnation: id.incarnation })
}

/// A refusal of a hop that names the leader this node knows (`None`: it knows none).
pub fn not_leader(shard: GroupId, me: NodeId, leader: Option<NodeId>) -> Status {
    let mut s = Status::unavailable(match leader {
        Some(l) => format!("node {me} does not lead shard {shard}; node {l} does"),
        None => format!("node {me} knows no leader of shard {shard} yet"),
    });
    if let Ok(v) = leader.map(|l| l.to_string()).unwrap_or_default().parse() {
        s.metadata_mut().insert(LEADER_META, v);
    }
    s
}

/// What a local proposal or read-index error means for routing.
pub fn miss_of(err: ProposeError, me: NodeId) -> Miss {
    match err {
        ProposeError::NotLeader { leader, .. } => Miss::NotLeader(leader.map(|(id, _)| id).filter(|id| *id != me)),
        ProposeError::NoQuorum(..) | ProposeError::NoSuchGroup(_) => Miss::NotLeader(None),
        ProposeError::Timeout(g, t) => Miss::Fail(Status::unavailable(format!(
            "shard {g}: no quorum answered within {t:?}; the write may or may not have been applied"
        ))),
        ProposeError::Unknown(g, why) => {
            Miss::Fail(Status::unavailable(format!("shard {g}: {why}; the write may or may not have been applied")))
        }
        ProposeError::Stopped(g, why) => Miss::Fail(Status::unavailable(format!(
            "shard {g} is stopped on node {me}: {why}; the write may or may not have been applied; check the \
             node's log and disk"
        ))),
    }
}

/// What a failed remote hop means for routing. `write`: the call may have changed state, so a
/// connection that broke after the request left is an unknown outcome, not a retry.
pub fn miss_of_status(s: Status, target: NodeId, write: bool) -> Miss {
    if let Some(v) = s.metadata().get(LEADER_META) {
        let leader = v.to_str().ok().and_then(|t| t.parse::<NodeId>().ok()).filter(|l| *l != 0 && *l != target);
        return Miss::NotLeader(leader);
    }
    let transport = s.code() == tonic::Code::Unknown && s.message().contains("transport error");
    match s.code() {
        _ if s.message().contains("may or may not") => Miss::Fail(s),
        tonic::Code::Unavailable | tonic::Code::Unauthenticated => Miss::Down(s),
        tonic::Code::FailedPrecondition if s.message().contains("refused") => Miss::Down(s),
        tonic::Code::Cancelled | tonic::Code::Unknown | tonic::Code::DeadlineExceeded if write => {
            Miss::Fail(Status::unavailable(format!(
                "the connection to node {target} broke mid-call ({}); the write may or may not have been applied; \
                 retry it if it is idempotent",
                s.message()
            )))
        }
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => Miss::Down(s),
        _ if transport => Miss::Down(s),
        _ => Miss::Fail(s),
    }
}

/// One node's router and the node-wide context the frontend and the internal service share.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    raft: RaftNode,
    config: Arc<NodeConfig>,
    cluster_id: String,
    matching: Matching,
    metrics: Metrics,
    connector: Arc<dyn norn_raft::Connector>,
    clock: Arc<dyn norn_raft::Clock>,
    disk: Arc<crate::disk::DiskGuard>,
    internal: Mutex<BTreeMap<NodeId, Client>>,
    channels: Mutex<BTreeMap<String, Channel>>,
    /// The leader last seen answering for each shard this node does not host.
    hints: Mutex<BTreeMap<GroupId, NodeId>>,
    /// Nodes that recently failed to answer, until when they are tried last.
    down: Mutex<BTreeMap<NodeId, tokio::time::Instant>>,
    /// Home epochs of shards this node does not host, and when they were asked.
    epochs: Mutex<BTreeMap<GroupId, (Epoch, tokio::time::Instant)>>,
    /// (run shard, home shard) -> the home epoch known to hold every ready task of that run
    /// shard bound for that home. See [`Router::offered_epoch`].
    offered: Mutex<BTreeMap<(GroupId, GroupId), Epoch>>,
    /// Where the effects of commands proposed here by other nodes are run (see
    /// [`Router::take_effects`]).
    effects: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<LeaderEffects>>,
    /// The engine's fault seam, with fault injection on.
    fault_seam: std::sync::OnceLock<Arc<crate::fault::FaultSeam>>,
}

/// Effects of an applied workflow command, to run on the shard's leader: (shard, run, effects).
pub type LeaderEffects = (GroupId, crate::history::store::RunKey, Vec<crate::history::engine::Effect>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Router {
    /// A router for `raft`'s node.
    pub fn new(
        raft: RaftNode,
        config: Arc<NodeConfig>,
        cluster_id: String,
        metrics: Metrics,
        connector: Arc<dyn norn_raft::Connector>,
        clock: Arc<dyn norn_raft::Clock>,
        disk: Arc<crate::disk::DiskGuard>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                raft,
                config,
                cluster_id,
                matching: Matching::with_metrics(metrics.task_wait_seconds.clone()),
                metrics,
                connector,
                clock,
                disk,
                internal: Mutex::default(),
                channels: Mutex::default(),
                hints: Mutex::default(),
                down: Mutex::default(),
                epochs: Mutex::default(),
                offered: Mutex::default(),
                effects: std::sync::OnceLock::new(),
                fault_seam: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The node's Raft groups.
    pub fn raft(&self) -> &RaftNode {
        &self.inner.raft
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The cluster id this node belongs to.
    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    /// This node's identity on the wire.
    pub fn identity(&self) -> Identity {
        self.inner.raft.transport().identity()
    }

    /// This node's matching index.
    pub fn matching(&self) -> &Matching {
        &self.inner.matching
    }

    /// The node's free-space guard.
    pub fn disk(&self) -> &crate::disk::DiskGuard {
        &self.inner.disk
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The node's clock (the one that stamps log entries), in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    fn me(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// The client address of member `id`.
    pub fn member_addr(&self, id: NodeId) -> Option<String> {
        self.inner.config.members.iter().find(|m| m.id == id).map(|m| m.client_addr.clone())
    }

    fn peer_addr(&self, id: NodeId) -> Option<String> {
        self.inner.config.members.iter().find(|m| m.id == id).map(|m| m.raft_addr.clone())
    }

    /// A lazy channel to `addr` through the node's connector (TCP, or the simulator's network).
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        if let Some(c) = lock(&self.inner.channels).get(addr) {
            return Ok(c.clone());
        }
        let connector = self.inner.connector.clone();
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(format!("bad member address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            // A connection whose peer vanished (a crash, a cut link) is found dead in seconds by
            // its pings and replaced, instead of hanging every call on it until its deadline.
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(tower::service_fn(move |uri: tonic::transport::Uri| {
                let addr = uri.authority().map(|a| a.to_string()).unwrap_or_default();
                let fut = connector.connect(&addr);
                async move { fut.await.map(hyper_util::rt::TokioIo::new) }
            }));
        lock(&self.inner.channels).insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// The internal-service client of member `node` (its peer port).
    pub fn internal(&self, node: NodeId) -> Result<Client, Status> {
        if let Some(c) = lock(&self.inner.internal).get(&node) {
            return Ok(c.clone());
        }
        let addr = self.peer_addr(node).ok_or_else(|| Status::internal(format!("node {node} is not a member")))?;
        let c = InternalClient::with_interceptor(self.channel(&addr)?, Stamp(self.identity()))
            .max_decoding_message_size(INTERNAL_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(INTERNAL_MESSAGE_BYTES_MAX);
        lock(&self.inner.internal).insert(node, c.clone());
        Ok(c)
    }

    /// Checks that an answer came from the member we called, of our cluster, in an incarnation
    /// no older than one seen before.
    pub fn check_answer(&self, target: NodeId, peer: Option<&Peer>) -> Result<(), Miss> {
        let p = peer.ok_or_else(|| Miss::Down(Status::failed_precondition("refused an answer without identity")))?;
        if p.node != target {
            return Err(Miss::Down(Status::failed_precondition(format!(
                "refused: node {} answered on node {target}'s address",
                p.node
            ))));
        }
        self.inner
            .raft
            .transport()
            .admit(p.node, p.cluster, p.incarnation)
            .map_err(|why| Miss::Down(Status::failed_precondition(format!("refused: {why}"))))
    }

    /// The home epoch of `shard` as this node's replica knows it (see [`Epoch`]).
    pub fn local_epoch(&self, shard: GroupId) -> Option<Epoch> {
        self.local_leader(shard).map(|(l, term)| (l, term, self.inner.raft.transport().incarnation_of(l)))
    }

    /// Whether this node hosts a replica of `shard`.
    pub fn hosts(&self, shard: GroupId) -> bool {
        self.inner.raft.group_ids().binary_search(&shard).is_ok()
    }

    /// The leader of `shard` as this node's replica knows it (`None` when not hosted or unknown),
    /// with the replica's term.
    pub fn local_leader(&self, shard: GroupId) -> Option<(NodeId, u64)> {
        let s = self.inner.raft.status().into_iter().find(|s| s.group == shard)?;
        match s.role {
            Role::Leader => Some((self.me(), s.term)),
            Role::Failed => None,
            _ => s.leader.map(|l| (l, s.term)),
        }
    }

    /// Sets the engine's fault seam (fault injection only).
    pub fn set_fault_seam(&self, seam: Arc<crate::fault::FaultSeam>) {
        let _ = self.inner.fault_seam.set(seam);
    }

    /// The engine's fault seam, when fault injection is on.
    pub fn fault_seam(&self) -> Option<&crate::fault::FaultSeam> {
        self.inner.fault_seam.get().map(|s| &**s)
    }

    /// Sets where [`Router::take_effects`] sends effects (once, when the node starts).
    pub fn set_effects_sink(&self, sink: tokio::sync::mpsc::UnboundedSender<LeaderEffects>) {
        let _ = self.inner.effects.set(sink);
    }

    /// For a command another node proposed through this leader: takes the effects out of the
    /// encoded result and runs them here. Effects offer tasks, and only the run shard's leader
    /// can tell when a task was taken by a home epoch other than the one holding the shard's
    /// other ready tasks (see [`Router::offered_epoch`]); the proposer runs none (it only gets
    /// the activities started eagerly, which its answer to the worker carries).
    pub fn take_effects(&self, shard: GroupId, result: Vec<u8>) -> Vec<u8> {
        use crate::command::ShardResult;
        use crate::history::store::WorkflowResult;
        let Some(sink) = self.inner.effects.get() else { return result };
        let mut decoded = ShardResult::decode(&result);
        let ShardResult::Workflow(WorkflowResult::Applied { run, effects, next_run, .. }) = &mut decoded else {
            return result;
        };
        if effects.is_empty() && next_run.as_ref().is_none_or(|(_, e)| e.is_empty()) {
            return result;
        }
        // Activities started eagerly go back to the proposer, whose answer carries them.
        let eager = |e: &crate::history::engine::Effect| {
            matches!(e, crate::history::engine::Effect::ActivityStartedEagerly { .. })
        };
        let here = if effects.iter().any(eager) {
            let (eager, here): (Vec<_>, Vec<_>) = std::mem::take(effects).into_iter().partition(eager);
            *effects = eager;
            here
        } else {
            std::mem::take(effects)
        };
        let mut sent = sink.send((shard, run.clone(), here)).is_ok();
        if let Some((next, next_effects)) = next_run {
            sent &= sink.send((shard, next.clone(), std::mem::take(next_effects))).is_ok();
        }
        if !sent {
            // The node is stopping: let the proposer run them.
            return result;
        }
        postcard::to_stdvec(&decoded).unwrap_or(result)
    }

    /// The home epoch known to hold every ready task of run shard `shard` bound for home shard
    /// `home`. Set by the shard leader's duties before they (re-)offer those tasks; cleared when
    /// any offer of them is taken by another epoch (a deposed home leader that does not know it
    /// yet, or a newer one), so the duties' epoch check offers them all again to whoever leads
    /// the home then. A task held only by a deposed leader's matching is never run otherwise.
    pub fn offered_epoch(&self, shard: GroupId, home: GroupId) -> Option<Epoch> {
        lock(&self.inner.offered).get(&(shard, home)).copied()
    }

    /// Records (or with `None` forgets) the home epoch that `shard`'s ready tasks for `home`
    /// were all offered to.
    pub fn set_offered_epoch(&self, shard: GroupId, home: GroupId, epoch: Option<Epoch>) {
        let mut o = lock(&self.inner.offered);
        match epoch {
            Some(e) => o.insert((shard, home), e),
            None => o.remove(&(shard, home)),
        };
    }

    /// Forgets what `shard`'s ready tasks were offered to (this node stopped or started leading it).
    pub fn forget_offered(&self, shard: GroupId) {
        lock(&self.inner.offered).retain(|(s, _), _| *s != shard);
    }

    /// Notes that `epoch` of home `home` took tasks of the run shards `shards`.
    fn note_taken(&self, home: GroupId, shards: impl Iterator<Item = GroupId>, epoch: Epoch) {
        note_taken(&mut lock(&self.inner.offered), home, shards, epoch);
    }

    fn is_down(&self, node: NodeId) -> bool {
        lock(&self.inner.down).get(&node).is_some_and(|until| *until > tokio::time::Instant::now())
    }

    fn mark_down(&self, node: NodeId) {
        lock(&self.inner.down).insert(node, tokio::time::Instant::now() + DOWN_FOR);
        let mut hints = lock(&self.inner.hints);
        hints.retain(|_, n| *n != node);
    }

    fn learn(&self, shard: GroupId, node: NodeId) {
        lock(&self.inner.down).remove(&node);
        if !self.hosts(shard) {
            lock(&self.inner.hints).insert(shard, node);
        }
    }

    /// The shard's replicas by placement.
    pub fn replicas(&self, shard: GroupId) -> Vec<NodeId> {
        let ids: Vec<NodeId> = self.inner.config.members.iter().map(|m| m.id).collect();
        placement::replicas(shard, &ids, self.inner.config.replicas)
    }

    /// The node to try next for `shard`: a hint just received, the leader this node's replica
    /// knows, the leader last seen answering, then the replicas that have not failed in this
    /// call (live ones first).
    fn pick(&self, shard: GroupId, hint: Option<NodeId>, tried: &BTreeSet<NodeId>) -> Option<NodeId> {
        if let Some(h) = hint.filter(|h| !tried.contains(h)) {
            return Some(h);
        }
        if let Some((l, _)) = self.local_leader(shard).filter(|(l, _)| !tried.contains(l)) {
            return Some(l);
        }
        if let Some(h) = lock(&self.inner.hints).get(&shard).copied().filter(|h| !tried.contains(h)) {
            return Some(h);
        }
        let hosted = self.hosts(shard);
        let candidates: Vec<NodeId> = self
            .replicas(shard)
            .into_iter()
            // This node's replica was asked above: it knows no leader.
            .filter(|n| !(tried.contains(n) || (hosted && *n == self.me())))
            .collect();
        candidates.iter().copied().find(|n| !self.is_down(*n)).or_else(|| candidates.first().copied())
    }

    /// When a routed call gives up.
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(self.inner.config.raft.propose_timeout_ms)
    }

    /// Runs `op` on `shard`'s leader: locally when this node leads it, otherwise on the node
    /// routing finds, following hints, skipping nodes that do not answer, and waiting out
    /// elections until the deadline.
    pub async fn route<T, F, Fut>(&self, shard: GroupId, mut op: F) -> Result<T, Status>
    where
        F: FnMut(Hop) -> Fut,
        Fut: Future<Output = Result<T, Miss>>,
    {
        let deadline = self.deadline();
        let mut tried = BTreeSet::new();
        let mut hint = None;
        let mut redirects = 0;
        let mut last = Status::unavailable(format!("shard {shard} has no leader reachable from node {}", self.me()));
        loop {
            let target = self.pick(shard, hint.take(), &tried);
            let outcome = match target {
                None => Err(Miss::NotLeader(None)),
                Some(n) if n == self.me() => op(Hop::Local).await,
                Some(n) => match self.internal(n) {
                    Ok(c) => op(Hop::Remote(n, c)).await,
                    Err(s) => Err(Miss::Down(s)),
                },
            };
            let wait = match outcome {
                Ok(v) => {
                    if let Some(n) = target {
                        self.learn(shard, n);
                    }
                    return Ok(v);
                }
                Err(Miss::Fail(s)) => return Err(s),
                Err(Miss::NotLeader(Some(l))) if Some(l) != target && redirects < REDIRECTS_MAX => {
                    if let Some(t) = target {
                        tried.insert(t);
                    }
                    redirects += 1;
                    hint = Some(l);
                    false
                }
                Err(Miss::NotLeader(_)) => {
                    if let Some(t) = target {
                        tried.insert(t);
                        if t == self.me() {
                            // This replica knows no leader: others may, or an election runs.
                            last = Status::unavailable(format!(
                                "shard {shard} has no leader yet (election in progress); retry shortly"
                            ));
                        }
                    }
                    target.is_none()
                }
                Err(Miss::Down(s)) => {
                    if let Some(t) = target {
                        tracing::debug!(shard, node = t, error = %s, "routing: node did not answer; trying another");
                        self.mark_down(t);
                        tried.insert(t);
                        last = Status::unavailable(format!(
                            "shard {shard}: node {t} did not answer ({}); retry shortly",
                            s.message()
                        ));
                    }
                    false
                }
            };
            if wait {
                if tokio::time::Instant::now() + RETRY_BACKOFF >= deadline {
                    return Err(last);
                }
                tokio::time::sleep(RETRY_BACKOFF).await;
                tried.clear();
                redirects = 0;
            } else if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
        }
    }

    /// Proposes an encoded shard command on `shard`'s leader and returns the encoded result and
    /// the leader that applied it.
    pub async fn propose(&self, shard: GroupId, payload: Vec<u8>) -> Result<(Vec<u8>, NodeId), Status> {
        let me = self.me();
        self.route(shard, |hop| {
            let payload = payload.clone();
            async move {
                match hop {
                    Hop::Local => {
                        if let Some(refused) = self.inner.disk.refusal() {
                            return Err(Miss::Fail(refused));
                        }
                        let started = tokio::time::Instant::now();
                        let r = self.inner.raft.propose(shard, payload).await.map_err(|e| miss_of(e, me))?;
                        self.inner.metrics.observe_propose(started.elapsed());
                        Ok((r, me))
                    }
                    Hop::Remote(n, mut c) => {
                        let r = c
                            .propose(ipb::ProposeRequest { shard, payload })
                            .await
                            .map_err(|s| miss_of_status(s, n, true))?
                            .into_inner();
                        self.check_answer(n, r.peer.as_ref())?;
                        Ok((r.result, n))
                    }
                }
            }
        })
        .await
    }

    /// Reads one key (`prefix` false) or one page of keys starting with `key` after `after`,
    /// from the leader after read-index (or, with `local`, from this node's replica).
    pub async fn read_page(&self, shard: GroupId, page: ReadPage) -> Result<ScanPage, Status> {
        let me = self.me();
        // The planted bug (simulator tests only): every replica answers from its own state.
        let stale = self.inner.config.raft.planted_bug == Some(norn_raft::PlantedBug::StaleFollowerRead);
        if (page.local || stale) && self.hosts(shard) {
            return self.read_here(shard, &page);
        }
        self.route(shard, |hop| {
            let page = page.clone();
            async move {
                match hop {
                    Hop::Local => {
                        let stale =
                            self.inner.config.raft.planted_bug == Some(norn_raft::PlantedBug::StaleFollowerRead);
                        if !page.local && !stale {
                            self.inner.raft.read_index(shard).await.map_err(|e| match miss_of(e, me) {
                                // A read changes nothing: an unknown outcome is just a retry.
                                Miss::Fail(s) if s.message().contains("may or may not") => Miss::Down(s),
                                m => m,
                            })?;
                        }
                        self.read_here(shard, &page).map_err(|s| self.damaged(shard, s))
                    }
                    Hop::Remote(n, mut c) => {
                        let r = c
                            .read(ipb::ReadRequest {
                                shard,
                                key: page.key,
                                prefix: page.prefix,
                                after: page.after.unwrap_or_default(),
                                limit: page.limit,
                                local: page.local,
                            })
                            .await
                            .map_err(|s| miss_of_status(s, n, false))?
                            .into_inner();
                        self.check_answer(n, r.peer.as_ref())?;
                        Ok((r.pairs.into_iter().map(|kv| (kv.key, kv.value)).collect(), r.more))
                    }
                }
            }
        })
        .await
    }

    /// Serves a read page from this node's applied state (the caller did read-index if needed).
    pub fn read_here(&self, shard: GroupId, page: &ReadPage) -> Result<ScanPage, Status> {
        let view = self.inner.raft.view(shard);
        if !page.prefix {
            let v = norn_raft::StateView::get(&view, &page.key).map_err(|e| storage_status(shard, e))?;
            return Ok((v.map(|v| (page.key.clone(), v)).into_iter().collect(), false));
        }
        let limit = match page.limit {
            0 => READ_PAGE_PAIRS_MAX,
            n => n.min(READ_PAGE_PAIRS_MAX),
        } as usize;
        view.scan_page(&page.key, page.after.as_deref(), limit, READ_PAGE_BYTES_MAX)
            .map_err(|e| storage_status(shard, e))
    }

    /// What a failed local read means: damaged data takes this replica out of the shard (the
    /// call then goes to another replica); anything else is the answer.
    pub fn damaged(&self, shard: GroupId, s: Status) -> Miss {
        if s.code() != tonic::Code::DataLoss {
            return Miss::Fail(s);
        }
        let raft = self.inner.raft.clone();
        let why = s.message().to_string();
        tokio::spawn(async move { raft.halt(shard, why).await });
        Miss::NotLeader(None)
    }

    /// Reads one key of `shard`, linearizably.
    pub async fn read_key(&self, shard: GroupId, key: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        let page = ReadPage { key: key.to_vec(), prefix: false, after: None, limit: 1, local: false };
        Ok(self.read_page(shard, page).await?.0.into_iter().next().map(|(_, v)| v))
    }

    /// Reads every key of `shard` starting with `prefix`, page by page, linearizably per page,
    /// stopping after `max` pairs.
    pub async fn scan(&self, shard: GroupId, prefix: &[u8], max: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Status> {
        self.scan_after(shard, prefix, None, max).await
    }

    /// As [`Router::scan`], starting after key `after` (exclusive) when given.
    pub async fn scan_after(
        &self,
        shard: GroupId,
        prefix: &[u8],
        mut after: Option<Vec<u8>>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Status> {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        loop {
            let left = max.saturating_sub(out.len());
            if left == 0 {
                return Ok(out);
            }
            let limit = u32::try_from(left).unwrap_or(u32::MAX).min(READ_PAGE_PAIRS_MAX);
            let page = ReadPage { key: prefix.to_vec(), prefix: true, after: after.take(), limit, local: false };
            let (pairs, more) = self.read_page(shard, page).await?;
            after = pairs.last().map(|(k, _)| k.clone());
            out.extend(pairs);
            if !more || after.is_none() {
                return Ok(out);
            }
        }
    }

    /// The node that leads `shard`, found from any node while a quorum of the shard is up.
    pub async fn locate(&self, shard: GroupId) -> Result<NodeId, Status> {
        if let Some((l, _)) = self.local_leader(shard) {
            return Ok(l);
        }
        let me = self.me();
        self.route(shard, |hop| async move {
            match hop {
                Hop::Local => match self.local_leader(shard) {
                    Some((l, _)) if l == me => Ok(me),
                    other => Err(Miss::NotLeader(other.map(|(l, _)| l))),
                },
                Hop::Remote(n, mut c) => {
                    let r = c
                        .locate(ipb::LocateRequest { shard })
                        .await
                        .map_err(|s| miss_of_status(s, n, false))?
                        .into_inner();
                    self.check_answer(n, r.peer.as_ref())?;
                    match r.leader {
                        l if l == n => Ok(n),
                        0 => Err(Miss::NotLeader(None)),
                        l => Err(Miss::NotLeader(Some(l))),
                    }
                }
            }
        })
        .await
    }

    /// Offers a ready task to the matching of its queue's home, wherever that is.
    pub async fn add_task(&self, queue: &QueueKey, task: &TaskRef) -> Result<(), Status> {
        let home = queue.home_shard(self.inner.config.shards);
        self.add_tasks(home, vec![(queue.clone(), task.clone())]).await.map(|_| ())
    }

    /// Offers a task for a sticky queue; `Ok(false)` when its worker is gone (no poll lately),
    /// and the task belongs on the normal queue.
    pub async fn add_sticky_task(&self, queue: &QueueKey, task: &TaskRef) -> Result<bool, Status> {
        let home = queue.home_shard(self.inner.config.shards);
        Ok(self.offer(home, vec![(queue.clone(), task.clone())], true).await?.is_some())
    }

    /// Offers ready tasks whose queues all have home shard `home` to that home's matching;
    /// returns the epoch of the matching that took them.
    pub async fn add_tasks(&self, home: GroupId, tasks: Vec<(QueueKey, TaskRef)>) -> Result<Epoch, Status> {
        self.offer(home, tasks, false)
            .await?
            .ok_or_else(|| Status::internal("matching refused tasks that were not for a sticky queue"))
    }

    /// Offers `tasks` to the matching of home `home`, wherever it leads; `sticky`: one task for
    /// a sticky queue, refused (`None`) when that queue's worker is gone. Returns the epoch
    /// that took them, and notes it (see [`Router::offered_epoch`]).
    async fn offer(
        &self,
        home: GroupId,
        tasks: Vec<(QueueKey, TaskRef)>,
        sticky: bool,
    ) -> Result<Option<Epoch>, Status> {
        let me = self.me();
        let bytes = postcard::to_stdvec(&tasks).map_err(|e| Status::internal(e.to_string()))?;
        let taken = self
            .route(home, |hop| {
                let (bytes, tasks) = (bytes.clone(), &tasks);
                async move {
                    match hop {
                        Hop::Local => match self.local_leader(home) {
                            Some((l, term)) if l == me => {
                                let mut taken = true;
                                for (q, t) in tasks.iter().cloned() {
                                    if sticky {
                                        taken &= self.inner.matching.add_sticky(q, t);
                                    } else {
                                        self.inner.matching.add(q, t);
                                    }
                                }
                                Ok(taken.then_some((me, term, self.identity().incarnation)))
                            }
                            other => Err(Miss::NotLeader(other.map(|(l, _)| l))),
                        },
                        Hop::Remote(n, mut c) => {
                            let r = c
                                .add_task(ipb::AddTaskRequest { home, tasks: bytes, sticky })
                                .await
                                // Offering twice is harmless (matching drops duplicates, the shard
                                // refuses a second start), so a broken call is simply retried.
                                .map_err(|s| miss_of_status(s, n, false))?
                                .into_inner();
                            self.check_answer(n, r.peer.as_ref())?;
                            let incarnation = r.peer.as_ref().map_or(0, |p| p.incarnation);
                            Ok((!r.sticky_refused).then_some((n, r.term, incarnation)))
                        }
                    }
                }
            })
            .await?;
        if let Some(epoch) = taken {
            // Query tasks are not in any shard's ready index: nothing to offer again for them.
            self.note_taken(home, tasks.iter().filter(|(_, t)| t.query.is_none()).map(|(_, t)| t.shard), epoch);
        }
        Ok(taken)
    }

    /// The epoch of home shard `home` as seen from here: this node's replica's view when it hosts
    /// one, otherwise asked of the shard's leader (cached for a second).
    pub async fn home_epoch(&self, home: GroupId) -> Option<Epoch> {
        if self.hosts(home) {
            return self.local_epoch(home);
        }
        let now = tokio::time::Instant::now();
        if let Some((e, at)) = lock(&self.inner.epochs).get(&home) {
            if now.duration_since(*at) < EPOCH_CACHE_FOR {
                return Some(*e);
            }
        }
        let e = self
            .route(home, |hop| async move {
                match hop {
                    Hop::Local => Err(Miss::NotLeader(None)),
                    Hop::Remote(n, mut c) => {
                        let r = c
                            .locate(ipb::LocateRequest { shard: home })
                            .await
                            .map_err(|s| miss_of_status(s, n, false))?
                            .into_inner();
                        self.check_answer(n, r.peer.as_ref())?;
                        match r.leader {
                            l if l == n => Ok((n, r.term, r.peer.as_ref().map_or(0, |p| p.incarnation))),
                            0 => Err(Miss::NotLeader(None)),
                            l => Err(Miss::NotLeader(Some(l))),
                        }
                    }
                }
            })
            .await
            .ok()?;
        lock(&self.inner.epochs).insert(home, (e, now));
        Some(e)
    }
}

/// Forgets the offered epoch of each run shard in `shards` whose entry for `home` is not `epoch`:
/// one of its tasks went to another epoch than the others, so the duties' next epoch check
/// offers them all again to whoever leads `home` then.
fn note_taken(
    offered: &mut BTreeMap<(GroupId, GroupId), Epoch>,
    home: GroupId,
    shards: impl Iterator<Item = GroupId>,
    epoch: Epoch,
) {
    for shard in shards {
        if offered.get(&(shard, home)).is_some_and(|e| *e != epoch) {
            tracing::debug!(
                shard,
                home,
                ?epoch,
                "a task went to another home epoch than its shard's others; offering them again"
            );
            offered.remove(&(shard, home));
        }
    }
}

/// Where a shard's leader is, from this node.
pub enum Target {
    /// This node leads it.
    Local,
    /// The leader's client address.
    Remote(String),
}

impl Router {
    /// Where `shard`'s leader serves clients (for calls forwarded through the client port, such
    /// as long polls).
    pub async fn leader_target(&self, shard: GroupId) -> Result<Target, Status> {
        let l = self.locate(shard).await?;
        if l == self.me() {
            return Ok(Target::Local);
        }
        self.member_addr(l)
            .map(Target::Remote)
            .ok_or_else(|| Status::internal(format!("shard {shard}'s leader {l} is not a member")))
    }
}

/// One read of a shard's state.
#[derive(Clone, Debug)]
pub struct ReadPage {
    /// The key, or the prefix when `prefix`.
    pub key: Vec<u8>,
    /// Read keys starting with `key`.
    pub prefix: bool,
    /// Continue after this key (exclusive).
    pub after: Option<Vec<u8>>,
    /// Pairs at most (0: the page maximum).
    pub limit: u32,
    /// This node's replica, possibly stale.
    pub local: bool,
}

/// A storage error while serving a read, for the caller.
pub fn storage_status(shard: GroupId, e: norn_storage::Error) -> Status {
    match e {
        norn_storage::Error::Corrupt { .. } => Status::data_loss(format!("shard {shard}: {e}")),
        other => Status::internal(format!("shard {shard}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_taken_by_another_home_epoch_makes_its_shard_offer_again() {
        let mut offered = BTreeMap::new();
        // Shard 1's ready tasks for home 3 were all offered to node 2 in term 7.
        offered.insert((1, 3), (2, 7, 1));
        offered.insert((2, 3), (2, 7, 1));
        // A task of shard 1 taken by the same epoch changes nothing.
        note_taken(&mut offered, 3, [1].into_iter(), (2, 7, 1));
        assert_eq!(offered.get(&(1, 3)), Some(&(2, 7, 1)));
        // One taken by a deposed leader that did not know it yet (node 4, term 6): shard 1 must
        // offer its tasks for home 3 again; shard 2 is untouched.
        note_taken(&mut offered, 3, [1].into_iter(), (4, 6, 1));
        assert_eq!(offered.get(&(1, 3)), None);
        assert_eq!(offered.get(&(2, 3)), Some(&(2, 7, 1)));
        // And one taken by a newer epoch than the shard's others too.
        note_taken(&mut offered, 3, [2].into_iter(), (5, 8, 1));
        assert_eq!(offered.get(&(2, 3)), None);
        // And one taken by the same leader in the same term but a new process (killed and
        // restarted before anyone else was elected): its matching began empty.
        offered.insert((1, 3), (2, 7, 1));
        note_taken(&mut offered, 3, [1].into_iter(), (2, 7, 2));
        assert_eq!(offered.get(&(1, 3)), None);
    }
}
