//! The `norn.admin.v1.Admin` service on the client port: the replicated test map, node and
//! cluster status, snapshots, fault injection (tests only) and read-only history reads. It is a
//! thin gRPC layer over [`Router`]; nothing here writes workflow or namespace state.

use std::collections::BTreeSet;
use std::time::Duration;

use norn_raft::{GroupStatus, NodeId, Role};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::command::{ShardCommand, ShardResult};
use crate::kv::{self, KvCommand, KvResult};
use crate::pb::admin_client::AdminClient;
use crate::pb::admin_server::Admin;
use crate::pb::*;
use crate::placement;
use crate::routing::{ReadPage, Router};

pub use crate::routing::LEADER_HINT;

/// Events per `ReadHistory` page at most.
const HISTORY_PAGE_MAX: u32 = 1000;

/// The admin service of one node.
#[derive(Clone)]
pub struct AdminService {
    router: Router,
}

impl AdminService {
    /// The service over `router`.
    pub fn new(router: Router) -> Self {
        Self { router }
    }

    /// This node's status message.
    pub fn node_status(&self) -> NodeStatusResponse {
        node_status(&self.router)
    }

    fn client(&self, addr: &str) -> Result<AdminClient<Channel>, Status> {
        Ok(AdminClient::new(self.router.channel(addr)?))
    }

    /// Asks member `id` at `addr` for its status, and refuses an answer from a process of another
    /// cluster or another node on that address.
    async fn member_status(&self, id: NodeId, addr: &str) -> Result<NodeStatusResponse, Status> {
        let mut c = self.client(addr)?;
        let mut r = Request::new(NodeStatusRequest {});
        r.set_timeout(Duration::from_secs(2));
        let s = match tokio::time::timeout(Duration::from_secs(2), c.node_status(r)).await {
            Ok(r) => r?.into_inner(),
            Err(_) => return Err(Status::deadline_exceeded("no answer within 2s")),
        };
        if s.cluster_id != self.router.cluster_id() {
            return Err(Status::failed_precondition(format!(
                "the process on {addr} belongs to cluster {}, not {}: a node of another cluster holds this \
                 member's address; stop it",
                s.cluster_id,
                self.router.cluster_id()
            )));
        }
        if s.node_id != id {
            return Err(Status::failed_precondition(format!(
                "node {} answers on node {id}'s address {addr}",
                s.node_id
            )));
        }
        Ok(s)
    }
}

/// The status message of the node `router` runs on.
pub fn node_status(router: &Router) -> NodeStatusResponse {
    let raft = router.raft();
    let (wal_syncs, durable_writes) = raft.sync_counts();
    let mut partitioned_from: Vec<u64> = raft.transport().blocked().into_iter().collect();
    partitioned_from.sort_unstable();
    let config = router.config();
    NodeStatusResponse {
        node_id: raft.id(),
        client_addr: config.client_addr.clone(),
        raft_addr: config.raft_addr.clone(),
        shards: raft.status().into_iter().map(shard_status).collect(),
        wal_syncs,
        durable_writes,
        shard_count: config.shards,
        partitioned_from,
        cluster_id: router.cluster_id().to_string(),
        incarnation: router.identity().incarnation,
        pid: std::process::id(),
    }
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

#[tonic::async_trait]
impl Admin for AdminService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        if !self.router.config().enable_test_map {
            return Err(Status::permission_denied(
                "the test map is read-only on this node; start it with --enable-test-map (norn dev and norn cluster up do)",
            ));
        }
        let req = request.into_inner();
        if req.key.is_empty() {
            return Err(Status::invalid_argument("key must not be empty"));
        }
        if req.key.len() > 1024 || req.value.len() > 64 << 10 {
            return Err(Status::invalid_argument("test map keys are at most 1 KiB and values at most 64 KiB"));
        }
        let shard = placement::shard_of(&[&req.key], self.router.config().shards);
        let cmd = ShardCommand::Kv(KvCommand::Put { key: req.key, value: req.value });
        let (r, leader) =
            self.router.propose(shard, cmd.encode()).instrument(tracing::debug_span!("put", shard)).await?;
        match ShardResult::decode(&r) {
            ShardResult::Kv(KvResult::Applied { index, timestamp_ms }) => {
                Ok(Response::new(PutResponse { shard, index, leader, timestamp_ms }))
            }
            other => Err(Status::internal(format!("shard {shard}: unexpected result {other:?}"))),
        }
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let req = request.into_inner();
        if req.key.is_empty() {
            return Err(Status::invalid_argument("key must not be empty"));
        }
        let consistency = ReadConsistency::try_from(req.consistency)
            .map_err(|_| Status::invalid_argument(format!("unknown consistency {}", req.consistency)))?;
        let shard = placement::shard_of(&[&req.key], self.router.config().shards);
        let local = consistency == ReadConsistency::Local;
        let page = ReadPage { key: kv::state_key(&req.key), prefix: false, after: None, limit: 1, local };
        let (pairs, _) = self.router.read_page(shard, page).await?;
        let value = pairs.into_iter().next().map(|(_, v)| v);
        Ok(Response::new(GetResponse {
            shard,
            found: value.is_some(),
            value: value.unwrap_or_default(),
            served_by: self.router.raft().id(),
        }))
    }

    async fn node_status(&self, _: Request<NodeStatusRequest>) -> Result<Response<NodeStatusResponse>, Status> {
        Ok(Response::new(AdminService::node_status(self)))
    }

    async fn cluster_status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        let me = self.router.raft().id();
        let asks = self.router.config().members.iter().map(|m| async move {
            if m.id == me {
                return NodeHealth {
                    node_id: m.id,
                    client_addr: m.client_addr.clone(),
                    reachable: true,
                    error: String::new(),
                    status: Some(AdminService::node_status(self)),
                };
            }
            match self.member_status(m.id, &m.client_addr).await {
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
            }
        });
        let nodes = futures::future::join_all(asks).await;
        Ok(Response::new(ClusterStatusResponse { nodes, shard_count: self.router.config().shards }))
    }

    async fn set_partition(
        &self,
        request: Request<SetPartitionRequest>,
    ) -> Result<Response<SetPartitionResponse>, Status> {
        if !self.router.config().enable_fault_injection {
            return Err(Status::failed_precondition(
                "fault injection is disabled on this node; start it with --enable-fault-injection (tests only)",
            ));
        }
        let blocked: BTreeSet<NodeId> = request.into_inner().blocked_nodes.into_iter().collect();
        tracing::warn!(?blocked, "fault injection: cutting raft links");
        self.router.raft().transport().set_blocked(blocked);
        Ok(Response::new(SetPartitionResponse {}))
    }

    async fn inject_disk_fault(
        &self,
        request: Request<InjectDiskFaultRequest>,
    ) -> Result<Response<InjectDiskFaultResponse>, Status> {
        let Some(seam) = self.router.fault_seam() else {
            return Err(Status::failed_precondition(
                "fault injection is disabled on this node; start it with --enable-fault-injection (tests only)",
            ));
        };
        let req = request.into_inner();
        if req.fail_next_sync {
            seam.fail_next_sync();
        }
        tracing::warn!(
            full = req.full,
            "fault injection: the disk reads as {}",
            if req.full { "full" } else { "it is" }
        );
        self.router.disk().force_full(req.full);
        Ok(Response::new(InjectDiskFaultResponse {}))
    }

    async fn trigger_snapshot(
        &self,
        request: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<TriggerSnapshotResponse>, Status> {
        let shard = request.into_inner().shard;
        self.router.raft().trigger_snapshot(shard).await.map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(TriggerSnapshotResponse {}))
    }

    async fn read_history(
        &self,
        request: Request<ReadHistoryRequest>,
    ) -> Result<Response<ReadHistoryResponse>, Status> {
        let req = request.into_inner();
        if req.workflow_id.is_empty() || req.run_id.is_empty() {
            return Err(Status::invalid_argument("workflow_id and run_id are required"));
        }
        let ns = crate::frontend::lookup(&self.router, &req.namespace).await?;
        let shard = placement::shard_of(&[ns.id.as_bytes(), req.workflow_id.as_bytes()], self.router.config().shards);
        if req.local && !self.router.hosts(shard) {
            return Err(Status::failed_precondition(format!(
                "node {} holds no replica of shard {shard}; ask one of nodes {:?}",
                self.router.raft().id(),
                self.router.replicas(shard)
            )));
        }
        let limit = match req.page_size {
            0 => HISTORY_PAGE_MAX,
            n => n.min(HISTORY_PAGE_MAX),
        };
        let prefix = crate::history::store::events_prefix(&req.run_id);
        let after =
            (req.after_event_id > 0).then(|| crate::history::store::history_event_key(&req.run_id, req.after_event_id));
        let page = ReadPage { key: prefix, prefix: true, after, limit, local: req.local };
        let (pairs, more) = self.router.read_page(shard, page).await?;
        // Each event is checked before it is shown (a damaged one is reported, never passed on).
        for (k, v) in &pairs {
            norn_proto::protos::temporal::api::history::v1::HistoryEvent::decode(v.as_slice()).map_err(|e| {
                Status::data_loss(format!(
                    "shard {shard}: undecodable event at key {}: {e}",
                    String::from_utf8_lossy(k)
                ))
            })?;
        }
        Ok(Response::new(ReadHistoryResponse {
            events: pairs.into_iter().map(|(_, v)| v).collect(),
            more,
            served_by: self.router.raft().id(),
        }))
    }
}
