//! The `norn.internal.v1.Internal` service on the peer port: one hop of a routed call (see
//! [`crate::routing`]). Each call runs here or is refused with the leader this node knows; it is
//! never forwarded further. Calls without this cluster's identity are refused.

use norn_proto::internal::internal_server::{Internal, InternalServer};
use norn_proto::internal::*;
use norn_raft::GroupId;
use tonic::{Request, Response, Status};

use crate::matching::{QueueKey, TaskRef};
use crate::routing::{self, caller_identity, miss_of, not_leader, peer_of, Miss, ReadPage, Router};

/// The internal service of one node.
#[derive(Clone)]
pub struct InternalService {
    router: Router,
}

impl InternalService {
    /// The tonic service, with the internal message size limits.
    pub fn server(router: Router) -> InternalServer<Self> {
        InternalServer::new(Self { router })
            .max_decoding_message_size(routing::INTERNAL_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(routing::INTERNAL_MESSAGE_BYTES_MAX)
    }

    /// Admits a call from a peer of this cluster (refusing other clusters and old incarnations).
    fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let id = caller_identity(req.metadata())?;
        self.router
            .raft()
            .transport()
            .admit(id.node, id.cluster, id.incarnation)
            .map_err(|why| Status::failed_precondition(format!("refused: {why}")))
    }

    fn check_shard(&self, shard: GroupId) -> Result<(), Status> {
        let n = self.router.config().shards;
        if shard >= n {
            return Err(Status::invalid_argument(format!("shard {shard} out of range (0..{n})")));
        }
        Ok(())
    }

    fn refusal(&self, shard: GroupId, miss: Miss) -> Status {
        match miss {
            Miss::NotLeader(l) => not_leader(shard, self.router.config().node_id, l),
            Miss::Down(s) | Miss::Fail(s) => s,
        }
    }

    fn peer(&self) -> Option<Peer> {
        peer_of(self.router.identity())
    }
}

#[tonic::async_trait]
impl Internal for InternalService {
    async fn propose(&self, request: Request<ProposeRequest>) -> Result<Response<ProposeResponse>, Status> {
        self.admit(&request)?;
        let req = request.into_inner();
        self.check_shard(req.shard)?;
        let me = self.router.config().node_id;
        if let Some(refused) = self.router.disk().refusal() {
            return Err(refused);
        }
        let started = tokio::time::Instant::now();
        // Detached from this call: if the proposer's connection breaks mid-proposal (dropping
        // this future), the command may still commit, and its effects must still run here.
        let router = self.router.clone();
        let shard = req.shard;
        let proposed = tokio::spawn(async move {
            let r = router.raft().propose(shard, req.payload).await;
            r.map(|result| router.take_effects(shard, result))
        })
        .await
        .map_err(|e| Status::internal(format!("proposal task failed: {e}")))?;
        match proposed {
            Ok(result) => {
                self.router.metrics().observe_propose(started.elapsed());
                Ok(Response::new(ProposeResponse { result, peer: self.peer() }))
            }
            Err(e) => Err(self.refusal(shard, miss_of(e, me))),
        }
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        self.admit(&request)?;
        let req = request.into_inner();
        self.check_shard(req.shard)?;
        let me = self.router.config().node_id;
        if !self.router.hosts(req.shard) {
            return Err(not_leader(req.shard, me, None));
        }
        let stale = self.router.config().raft.planted_bug == Some(norn_raft::PlantedBug::StaleFollowerRead);
        if !req.local && !stale {
            if let Err(e) = self.router.raft().read_index(req.shard).await {
                return Err(match miss_of(e.clone(), me) {
                    // A read changes nothing: whatever went wrong, the caller may try again.
                    Miss::Fail(_) => Status::unavailable(format!(
                        "shard {}: node {me} could not confirm its leadership for a read ({e}); retry",
                        req.shard
                    )),
                    m => self.refusal(req.shard, m),
                });
            }
        }
        let page = ReadPage {
            key: req.key,
            prefix: req.prefix,
            after: (!req.after.is_empty()).then_some(req.after),
            limit: req.limit,
            local: req.local,
        };
        let (pairs, more) = self
            .router
            .read_here(req.shard, &page)
            .map_err(|s| self.refusal(req.shard, self.router.damaged(req.shard, s)))?;
        Ok(Response::new(ReadResponse {
            pairs: pairs.into_iter().map(|(key, value)| KeyValue { key, value }).collect(),
            more,
            peer: self.peer(),
        }))
    }

    async fn add_task(&self, request: Request<AddTaskRequest>) -> Result<Response<AddTaskResponse>, Status> {
        self.admit(&request)?;
        let req = request.into_inner();
        self.check_shard(req.home)?;
        let tasks: Vec<(QueueKey, TaskRef)> =
            postcard::from_bytes(&req.tasks).map_err(|e| Status::invalid_argument(format!("bad tasks: {e}")))?;
        let shards = self.router.config().shards;
        if let Some((q, _)) = tasks.iter().find(|(q, _)| q.home_shard(shards) != req.home) {
            return Err(Status::invalid_argument(format!("task queue {} is not homed on shard {}", q.name, req.home)));
        }
        let me = self.router.config().node_id;
        match self.router.local_leader(req.home) {
            Some((l, term)) if l == me => {
                let mut sticky_refused = false;
                for (q, t) in tasks {
                    if req.sticky {
                        sticky_refused |= !self.router.matching().add_sticky(q, t);
                    } else {
                        self.router.matching().add(q, t);
                    }
                }
                Ok(Response::new(AddTaskResponse { term, sticky_refused, peer: self.peer() }))
            }
            other => Err(not_leader(req.home, me, other.map(|(l, _)| l))),
        }
    }

    async fn locate(&self, request: Request<LocateRequest>) -> Result<Response<LocateResponse>, Status> {
        self.admit(&request)?;
        let shard = request.into_inner().shard;
        self.check_shard(shard)?;
        let (leader, term) = self.router.local_leader(shard).unwrap_or((0, 0));
        Ok(Response::new(LocateResponse { leader, term, peer: self.peer() }))
    }
}
