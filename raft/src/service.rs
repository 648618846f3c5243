//! The server side of the transport: receives frames and hands them to the right group.

use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::codec;
use crate::node::RaftNode;
use crate::pb::raft_transport_server::{RaftTransport, RaftTransportServer};
use crate::pb::Frame;
use crate::transport::{kind, Identity};

/// Frames of one `Stream` being handled at once; the stream is not read further until one ends.
const STREAM_IN_FLIGHT_MAX: usize = 4096;

/// Serves `norn.raft.v1.RaftTransport` for every group of a [`RaftNode`].
#[derive(Clone)]
pub struct RaftService {
    node: RaftNode,
    /// Per (group, sender): the snapshot being received and how many bytes of it arrived, so a
    /// chunk that would leave a gap (or seek far past the end) is refused before it is written.
    receiving: Arc<std::sync::Mutex<Receiving>>,
}

/// (group, sender) -> (snapshot id, bytes received).
type Receiving = std::collections::BTreeMap<(u32, u64), (String, u64)>;

/// Largest snapshot chunk accepted (openraft sends `raft.snapshot_chunk_bytes`, 1 MiB by default).
const SNAPSHOT_CHUNK_BYTES_MAX: usize = 64 << 20;

impl RaftService {
    /// The tonic service for `node`, ready to add to a server.
    pub fn server(node: RaftNode) -> RaftTransportServer<Self> {
        RaftTransportServer::new(Self { node, receiving: Arc::default() })
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }
}

fn decode_req<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    codec::decode("raft request", payload).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn reply<T: Serialize>(frame: &Frame, me: Identity, value: &T) -> Result<Frame, Status> {
    let payload = codec::encode("raft response", value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Frame {
        group: frame.group,
        kind: frame.kind,
        crc: crc32fast::hash(&payload),
        payload,
        from: me.node,
        to: frame.from,
        error_code: 0,
        error: String::new(),
        id: frame.id,
        cluster: me.cluster,
        incarnation: me.incarnation,
    })
}

/// The answer frame for a frame that failed with `status`.
fn failed(me: Identity, id: u64, status: &Status) -> Frame {
    Frame {
        from: me.node,
        id,
        error_code: status.code() as i32,
        error: status.message().to_string(),
        cluster: me.cluster,
        incarnation: me.incarnation,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn call(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        self.handle(request.into_inner()).await.map(Response::new)
    }

    type StreamStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send + 'static>>;

    async fn stream(&self, request: Request<Streaming<Frame>>) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<Frame, Status>>(STREAM_IN_FLIGHT_MAX);
        let service = self.clone();
        // Every frame is handled in a task of its own, so that one group's slow append (its
        // fsync) holds up no other group's; answers go out as they finish.
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(STREAM_IN_FLIGHT_MAX));
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let frame = match inbound.message().await {
                    Ok(Some(f)) => f,
                    // The caller closed its side, or the connection broke: answers still in
                    // flight are dropped with the response stream.
                    Ok(None) | Err(_) => return,
                };
                let service = service.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let id = frame.id;
                    let answer = match service.handle(frame).await {
                        Ok(f) => f,
                        Err(s) => failed(service.node.transport().identity(), id, &s),
                    };
                    let _ = tx.send(Ok(answer)).await;
                    drop(slot);
                });
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

impl RaftService {
    /// Refuses a snapshot chunk that does not continue what was received (a gap, or a seek far
    /// past the end) or is too large, before it reaches the snapshot file.
    fn check_chunk(
        &self,
        group: u32,
        from: u64,
        req: &openraft::raft::InstallSnapshotRequest<crate::types::TypeConfig>,
    ) -> Result<(), Status> {
        if req.data.len() > SNAPSHOT_CHUNK_BYTES_MAX {
            return Err(Status::invalid_argument(format!("snapshot chunk of {} bytes is too large", req.data.len())));
        }
        let mut receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        let entry = receiving.entry((group, from)).or_insert_with(|| (String::new(), 0));
        if req.offset == 0 {
            *entry = (req.meta.snapshot_id.clone(), 0);
        } else if entry.0 != req.meta.snapshot_id || req.offset > entry.1 {
            return Err(Status::invalid_argument(format!(
                "snapshot {} chunk at offset {} does not continue the {} bytes received",
                req.meta.snapshot_id, req.offset, entry.1
            )));
        }
        entry.1 = entry.1.max(req.offset.saturating_add(req.data.len() as u64));
        Ok(())
    }

    async fn handle(&self, frame: Frame) -> Result<Frame, Status> {
        let identity = self.node.transport().identity();
        let me = identity.node;
        if frame.to != me {
            return Err(Status::failed_precondition(format!(
                "frame for node {} reached node {me}: check the cluster's peer addresses",
                frame.to
            )));
        }
        self.node
            .transport()
            .admit(frame.from, frame.cluster, frame.incarnation)
            .map_err(Status::failed_precondition)?;
        if self.node.transport().is_blocked(frame.from) {
            return Err(Status::unavailable("link cut by fault injection"));
        }
        if crc32fast::hash(&frame.payload) != frame.crc {
            return Err(Status::data_loss(format!("frame from node {} failed its checksum", frame.from)));
        }
        let raft = self
            .node
            .raft(frame.group)
            .ok_or_else(|| Status::not_found(format!("shard {} is not hosted on node {me}", frame.group)))?;
        match frame.kind {
            kind::APPEND => {
                let req = decode_req(&frame.payload)?;
                reply(&frame, identity, &raft.append_entries(req).await)
            }
            kind::VOTE => {
                let req = decode_req(&frame.payload)?;
                reply(&frame, identity, &raft.vote(req).await)
            }
            kind::SNAPSHOT => {
                let req: openraft::raft::InstallSnapshotRequest<crate::types::TypeConfig> = decode_req(&frame.payload)?;
                self.check_chunk(frame.group, frame.from, &req)?;
                reply(&frame, identity, &raft.install_snapshot(req).await)
            }
            other => Err(Status::invalid_argument(format!("unknown frame kind {other}"))),
        }
    }
}
