//! The `norn.admin.v1.Admin` service: the replicated test map, status, and fault injection.
//! Requests for a shard this node does not lead are forwarded to the leader (at most two hops);
//! while a shard has no leader the call is retried inside the cluster until its deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use norn_raft::{GroupId, GroupStatus, NodeId, ProposeError, RaftNode, Role, StateView};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::command::{ShardCommand, ShardResult};
use crate::config::NodeConfig;
use crate::kv::{self, KvCommand, KvResult};
use crate::matching::{Matching, QueueKey, TaskRef};
use crate::metrics::Metrics;
use crate::pb::admin_client::AdminClient;
use crate::pb::admin_server::Admin;
use crate::pb::*;
use crate::placement;

/// Forwarding stops after this many hops.
const HOPS_MAX: u32 = 2;
/// Gap between retries while a shard elects a leader.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Metadata key carrying the leader's client address on `Unavailable`.
pub const LEADER_HINT: &str = "norn-leader-addr";

/// The admin service of one node.
#[derive(Clone)]
pub struct AdminService {
    raft: RaftNode,
    config: Arc<NodeConfig>,
    clients: Arc<Mutex<BTreeMap<String, AdminClient<Channel>>>>,
    metrics: Metrics,
    matching: Matching,
    connector: Arc<dyn norn_raft::Connector>,
    clock: Arc<dyn norn_raft::Clock>,
}

/// Where a shard's leader is, from this node.
pub enum Target {
    /// This node leads it.
    Local,
    /// The leader's (or, for shards not hosted here, a replica's) client address.
    Remote(String),
}

/// Where a request for a shard should go next.
enum Next {
    Local,
    Forward(String),
    /// No leader known yet: wait and retry.
    Wait,
}

enum Failure {
    /// Worth retrying after a pause.
    Retry(Status),
    /// Final.
    Fail(Status),
}

impl AdminService {
    /// The service for `raft`.
    pub fn new(
        raft: RaftNode,
        config: Arc<NodeConfig>,
        metrics: Metrics,
        connector: Arc<dyn norn_raft::Connector>,
        clock: Arc<dyn norn_raft::Clock>,
    ) -> Self {
        Self { raft, config, clients: Arc::default(), metrics, matching: Matching::default(), connector, clock }
    }

    /// The node's clock (the same one that stamps log entries), in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A lazy channel to another node's client port, through the node's connector (TCP, or the
    /// simulator's network).
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let connector = self.connector.clone();
        Ok(Endpoint::from_shared(format!("http://{addr}"))
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
            })))
    }

    /// This node's matching index.
    pub fn matching(&self) -> &Matching {
        &self.matching
    }

    /// The node's Raft groups.
    pub fn raft(&self) -> &RaftNode {
        &self.raft
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Where `shard`'s leader is, waiting (until the proposal deadline) while it has none.
    pub async fn leader_target(&self, shard: GroupId) -> Result<Target, Status> {
        let deadline = self.deadline();
        loop {
            if self.raft.group_ids().binary_search(&shard).is_err() {
                return match self.next_for(shard, 0) {
                    Next::Forward(addr) => Ok(Target::Remote(addr)),
                    _ => Err(Status::unavailable(format!("no replica of shard {shard} is known"))),
                };
            }
            if let Some(s) = self.raft.status().into_iter().find(|s| s.group == shard) {
                if s.role == Role::Leader {
                    return Ok(Target::Local);
                }
                if let Some(addr) = s.leader.and_then(|l| self.member_addr(l)) {
                    return Ok(Target::Remote(addr));
                }
            }
            if tokio::time::Instant::now() + RETRY_BACKOFF >= deadline {
                return Err(Status::unavailable(format!("shard {shard} has no leader; retry shortly")));
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }

    /// Offers a ready task to the matching of its queue's home, wherever that is.
    pub async fn add_task(&self, queue: &QueueKey, task: &TaskRef, hops: u32) -> Result<(), Status> {
        let home = queue.home_shard(self.config.shards);
        match self.leader_target(home).await? {
            Target::Local => {
                self.matching.add(queue.clone(), task.clone());
                Ok(())
            }
            Target::Remote(addr) => {
                if hops >= HOPS_MAX {
                    return Err(Status::unavailable(format!("task queue home shard {home}: forwarded too many times")));
                }
                let req = AddTaskRequest {
                    queue: postcard::to_stdvec(queue).map_err(|e| Status::internal(e.to_string()))?,
                    task: postcard::to_stdvec(task).map_err(|e| Status::internal(e.to_string()))?,
                    hops: hops + 1,
                };
                self.client(&addr)?.add_task(req).await.map(|_| ())
            }
        }
    }

    fn client(&self, addr: &str) -> Result<AdminClient<Channel>, Status> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let c = AdminClient::new(self.channel(addr)?);
        clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn shard_of(&self, key: &[u8]) -> GroupId {
        placement::shard_of(&[key], self.config.shards)
    }

    /// The client address of member `id`.
    pub fn member_addr(&self, id: NodeId) -> Option<String> {
        self.config.members.iter().find(|m| m.id == id).map(|m| m.client_addr.clone())
    }

    fn next_for(&self, shard: GroupId, attempt: usize) -> Next {
        if self.raft.group_ids().binary_search(&shard).is_ok() {
            return Next::Local;
        }
        let ids: Vec<NodeId> = self.config.members.iter().map(|m| m.id).collect();
        let reps = placement::replicas(shard, &ids, self.config.replicas);
        match reps.get(attempt % reps.len().max(1)).and_then(|id| self.member_addr(*id)) {
            Some(addr) => Next::Forward(addr),
            None => Next::Wait,
        }
    }

    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(self.config.raft.propose_timeout_ms)
    }

    fn not_leader(&self, err: &ProposeError, hops: u32) -> Result<Next, Failure> {
        match err {
            ProposeError::NotLeader { leader: Some((_, info)), .. } if hops < HOPS_MAX => {
                Ok(Next::Forward(info.client_addr.clone()))
            }
            ProposeError::NotLeader { leader: Some((id, info)), group } => {
                let mut s = Status::unavailable(format!(
                    "node {} is not the leader of shard {group}; node {id} at {} is",
                    self.raft.id(),
                    info.client_addr
                ));
                if let Ok(v) = info.client_addr.parse() {
                    s.metadata_mut().insert(LEADER_HINT, v);
                }
                Err(Failure::Fail(s))
            }
            ProposeError::NotLeader { group, leader: None } | ProposeError::NoQuorum(group, _) => {
                Err(Failure::Retry(Status::unavailable(format!(
                    "shard {group} has no leader reachable from node {}; retry shortly",
                    self.raft.id()
                ))))
            }
            ProposeError::Timeout(g, t) => Err(Failure::Fail(Status::unavailable(format!(
                "shard {g}: no quorum answered within {t:?}; the write may or may not have been applied"
            )))),
            ProposeError::Unknown(g, why) => Err(Failure::Fail(Status::unavailable(format!(
                "shard {g}: {why}; the write may or may not have been applied"
            )))),
            ProposeError::NoSuchGroup(g) => {
                Err(Failure::Fail(Status::internal(format!("shard {g} vanished from node {}", self.raft.id()))))
            }
            ProposeError::Stopped(g, why) => Err(Failure::Fail(Status::unavailable(format!(
                "shard {g} is stopped on node {}: {why}; check the node's log and disk",
                self.raft.id()
            )))),
        }
    }

    async fn try_propose(&self, req: &ProposeRequest, attempt: usize) -> Result<ProposeResponse, Failure> {
        let shard = req.shard;
        let addr = match self.next_for(shard, attempt) {
            Next::Wait => return Err(Failure::Retry(Status::unavailable("no replica address known"))),
            Next::Forward(addr) => addr,
            Next::Local => {
                let started = tokio::time::Instant::now();
                match self.raft.propose(shard, req.payload.clone()).await {
                    Ok(result) => {
                        self.metrics.observe_propose(started.elapsed());
                        return Ok(ProposeResponse { result, leader: self.raft.id() });
                    }
                    Err(e) => match self.not_leader(&e, req.hops)? {
                        Next::Forward(addr) => addr,
                        _ => return Err(Failure::Retry(Status::unavailable("no leader"))),
                    },
                }
            }
        };
        if req.hops >= HOPS_MAX {
            return Err(Failure::Fail(Status::unavailable(format!("shard {shard}: forwarded too many times"))));
        }
        let mut fwd = req.clone();
        fwd.hops += 1;
        match self.client(&addr).map_err(Failure::Fail)?.propose(fwd).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) if retryable_forward(&s) && !s.message().contains("may or may not") => Err(Failure::Retry(s)),
            // The leader's connection broke after the request left: the outcome is unknown.
            Err(s) if s.code() == tonic::Code::Cancelled => Err(Failure::Fail(Status::unavailable(format!(
                "shard {shard}: the connection to the leader at {addr} broke mid-call; the write may or may \
                 not have been applied; retry it if it is idempotent"
            )))),
            Err(s) => Err(Failure::Fail(s)),
        }
    }

    async fn try_read(&self, req: &ReadStateRequest, attempt: usize) -> Result<ReadStateResponse, Failure> {
        let shard = req.shard;
        let local = ReadConsistency::try_from(req.consistency).unwrap_or(ReadConsistency::Linearizable)
            == ReadConsistency::Local
            // The planted bug (simulator tests only): every replica answers from its own state.
            || self.config.raft.planted_bug == Some(norn_raft::PlantedBug::StaleFollowerRead);
        let addr = match self.next_for(shard, attempt) {
            Next::Wait => return Err(Failure::Retry(Status::unavailable("no replica address known"))),
            Next::Forward(addr) => addr,
            Next::Local => {
                let ready = if local { Ok(()) } else { self.raft.read_index(shard).await };
                match ready {
                    Ok(()) => {
                        let view = self.raft.view(shard);
                        let pairs = if req.prefix {
                            let limit = if req.limit == 0 { usize::MAX } else { req.limit as usize };
                            view.scan_prefix(&req.key, limit)
                        } else {
                            view.get(&req.key).map(|v| v.map(|v| (req.key.clone(), v)).into_iter().collect())
                        }
                        .map_err(|e| Failure::Fail(Status::internal(e.to_string())))?;
                        let pairs = pairs.into_iter().map(|(key, value)| KeyValue { key, value }).collect();
                        return Ok(ReadStateResponse { pairs, served_by: self.raft.id() });
                    }
                    Err(e) => match self.not_leader(&e, req.hops)? {
                        Next::Forward(addr) => addr,
                        _ => return Err(Failure::Retry(Status::unavailable("no leader"))),
                    },
                }
            }
        };
        if req.hops >= HOPS_MAX {
            return Err(Failure::Fail(Status::unavailable(format!("shard {shard}: forwarded too many times"))));
        }
        let mut fwd = req.clone();
        fwd.hops += 1;
        match self.client(&addr).map_err(Failure::Fail)?.read_state(fwd).await {
            Ok(r) => Ok(r.into_inner()),
            // A read changes nothing: a connection that broke mid-call is simply retried.
            Err(s) if retryable_forward(&s) || s.code() == tonic::Code::Cancelled => Err(Failure::Retry(s)),
            Err(s) => Err(Failure::Fail(s)),
        }
    }

    /// Proposes `cmd` on `shard`'s leader, forwarding and retrying inside the cluster, and
    /// returns the state machine's result.
    pub async fn propose_command(&self, shard: GroupId, cmd: &ShardCommand) -> Result<ShardResult, Status> {
        let req = ProposeRequest { shard, payload: cmd.encode(), hops: 0 };
        let r = with_retries(self.deadline(), |n| self.try_propose(&req, n)).await?;
        Ok(ShardResult::decode(&r.result))
    }

    /// Reads one key (`prefix` false) or a key range of `shard`'s state, linearizably.
    pub async fn read_keys(&self, shard: GroupId, key: &[u8], prefix: bool) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Status> {
        let req = ReadStateRequest {
            shard,
            key: key.to_vec(),
            prefix,
            limit: 0,
            consistency: ReadConsistency::Linearizable as i32,
            hops: 0,
        };
        let r = with_retries(self.deadline(), |n| self.try_read(&req, n)).await?;
        Ok(r.pairs.into_iter().map(|kv| (kv.key, kv.value)).collect())
    }

    /// This node's status message.
    pub fn node_status(&self) -> NodeStatusResponse {
        let (wal_syncs, durable_writes) = self.raft.sync_counts();
        let mut partitioned_from: Vec<u64> = self.raft.transport().blocked().into_iter().collect();
        partitioned_from.sort_unstable();
        NodeStatusResponse {
            node_id: self.raft.id(),
            client_addr: self.config.client_addr.clone(),
            raft_addr: self.config.raft_addr.clone(),
            shards: self.raft.status().into_iter().map(shard_status).collect(),
            wal_syncs,
            durable_writes,
            shard_count: self.config.shards,
            partitioned_from,
        }
    }
}

/// A forward that failed before the peer could act on it (the peer is down, restarting, or has
/// no leader yet): worth retrying, possibly on another replica.
fn retryable_forward(s: &Status) -> bool {
    // tonic reports a refused or reset connection as `Unknown: transport error`.
    s.code() == tonic::Code::Unavailable
        || (s.code() == tonic::Code::Unknown && s.message().contains("transport error"))
}

/// The wire form of a group's status.
pub fn shard_status(s: GroupStatus) -> ShardStatus {
    ShardStatus {
        shard: s.group,
        role: match s.role {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Failed => "failed",
        }
        .into(),
        term: s.term,
        leader: s.leader.unwrap_or(0),
        last_log_index: s.last_log_index,
        committed_index: s.committed_index,
        applied_index: s.applied_index,
        snapshot_index: s.snapshot_index,
        purged_index: s.purged_index,
        members: s.members,
        snapshots_installed: s.snapshots_installed,
        fatal: s.fatal.unwrap_or_default(),
    }
}

async fn with_retries<T, F, Fut>(deadline: tokio::time::Instant, mut attempt: F) -> Result<T, Status>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut n = 0;
    loop {
        match attempt(n).await {
            Ok(v) => return Ok(v),
            Err(Failure::Fail(s)) => return Err(s),
            Err(Failure::Retry(s)) => {
                if tokio::time::Instant::now() + RETRY_BACKOFF >= deadline {
                    return Err(s);
                }
                tokio::time::sleep(RETRY_BACKOFF).await;
                n += 1;
            }
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        if req.key.is_empty() {
            return Err(Status::invalid_argument("key must not be empty"));
        }
        let shard = self.shard_of(&req.key);
        let payload = ShardCommand::Kv(KvCommand::Put { key: req.key, value: req.value }).encode();
        let preq = ProposeRequest { shard, payload, hops: req.hops };
        let r = with_retries(self.deadline(), |n| self.try_propose(&preq, n))
            .instrument(tracing::debug_span!("put", shard, hops = req.hops))
            .await?;
        match ShardResult::decode(&r.result) {
            ShardResult::Kv(KvResult::Applied { index, timestamp_ms }) => {
                Ok(Response::new(PutResponse { shard, index, leader: r.leader, timestamp_ms }))
            }
            other => Err(Status::internal(format!("shard {shard}: unexpected result {other:?}"))),
        }
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let req = request.into_inner();
        if req.key.is_empty() {
            return Err(Status::invalid_argument("key must not be empty"));
        }
        if ReadConsistency::try_from(req.consistency).is_err() {
            return Err(Status::invalid_argument(format!("unknown consistency {}", req.consistency)));
        }
        let shard = self.shard_of(&req.key);
        let rreq = ReadStateRequest {
            shard,
            key: kv::state_key(&req.key),
            prefix: false,
            limit: 1,
            consistency: req.consistency,
            hops: req.hops,
        };
        let r = with_retries(self.deadline(), |n| self.try_read(&rreq, n)).await?;
        let value = r.pairs.into_iter().next().map(|kv| kv.value);
        Ok(Response::new(GetResponse {
            shard,
            found: value.is_some(),
            value: value.unwrap_or_default(),
            served_by: r.served_by,
        }))
    }

    async fn propose(&self, request: Request<ProposeRequest>) -> Result<Response<ProposeResponse>, Status> {
        let req = request.into_inner();
        if req.shard >= self.config.shards {
            return Err(Status::invalid_argument(format!(
                "shard {} out of range (0..{})",
                req.shard, self.config.shards
            )));
        }
        with_retries(self.deadline(), |n| self.try_propose(&req, n)).await.map(Response::new)
    }

    async fn read_state(&self, request: Request<ReadStateRequest>) -> Result<Response<ReadStateResponse>, Status> {
        let req = request.into_inner();
        if req.shard >= self.config.shards {
            return Err(Status::invalid_argument(format!(
                "shard {} out of range (0..{})",
                req.shard, self.config.shards
            )));
        }
        if ReadConsistency::try_from(req.consistency).is_err() {
            return Err(Status::invalid_argument(format!("unknown consistency {}", req.consistency)));
        }
        with_retries(self.deadline(), |n| self.try_read(&req, n)).await.map(Response::new)
    }

    async fn node_status(&self, _: Request<NodeStatusRequest>) -> Result<Response<NodeStatusResponse>, Status> {
        Ok(Response::new(AdminService::node_status(self)))
    }

    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let mut nodes = Vec::new();
        for m in &self.config.members {
            if m.id == self.raft.id() {
                nodes.push(NodeHealth {
                    node_id: m.id,
                    client_addr: m.client_addr.clone(),
                    reachable: true,
                    error: String::new(),
                    status: Some(AdminService::node_status(self)),
                });
                continue;
            }
            let result = match self.client(&m.client_addr) {
                Err(s) => Err(s),
                Ok(mut c) => {
                    let mut r = Request::new(NodeStatusRequest {});
                    r.set_timeout(Duration::from_secs(2));
                    match tokio::time::timeout(Duration::from_secs(2), c.node_status(r)).await {
                        Ok(r) => r.map(Response::into_inner),
                        Err(_) => Err(Status::deadline_exceeded("no answer within 2s")),
                    }
                }
            };
            nodes.push(match result {
                Ok(s) => NodeHealth {
                    node_id: m.id,
                    client_addr: m.client_addr.clone(),
                    reachable: true,
                    error: String::new(),
                    status: Some(s),
                },
                Err(e) => NodeHealth {
                    node_id: m.id,
                    client_addr: m.client_addr.clone(),
                    reachable: false,
                    error: e.message().to_string(),
                    status: None,
                },
            });
        }
        Ok(Response::new(ClusterStatusResponse { nodes, shard_count: self.config.shards }))
    }

    async fn set_partition(
        &self,
        request: Request<SetPartitionRequest>,
    ) -> Result<Response<SetPartitionResponse>, Status> {
        if !self.config.enable_fault_injection {
            return Err(Status::failed_precondition(
                "fault injection is disabled on this node; start it with --enable-fault-injection (tests only)",
            ));
        }
        let blocked: BTreeSet<NodeId> = request.into_inner().blocked_nodes.into_iter().collect();
        tracing::warn!(?blocked, "fault injection: cutting raft links");
        self.raft.transport().set_blocked(blocked);
        Ok(Response::new(SetPartitionResponse {}))
    }

    async fn add_task(&self, request: Request<AddTaskRequest>) -> Result<Response<AddTaskResponse>, Status> {
        let req = request.into_inner();
        let queue: QueueKey =
            postcard::from_bytes(&req.queue).map_err(|e| Status::invalid_argument(format!("bad queue: {e}")))?;
        let task: TaskRef =
            postcard::from_bytes(&req.task).map_err(|e| Status::invalid_argument(format!("bad task: {e}")))?;
        AdminService::add_task(self, &queue, &task, req.hops).await?;
        Ok(Response::new(AddTaskResponse {}))
    }

    async fn trigger_snapshot(
        &self,
        request: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        let shard = request.into_inner().shard;
        self.raft.trigger_snapshot(shard).await.map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(TriggerSnapshotResponse {}))
    }
}
