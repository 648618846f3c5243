//! The server side of the transport: receives frames and hands them to the right group.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::codec;
use crate::node::RaftNode;
use crate::pb::raft_transport_server::{RaftTransport, RaftTransportServer};
use crate::pb::{Frame, Frames};
use crate::transport::kind;

/// Serves `norn.raft.v1.RaftTransport` for every group of a [`RaftNode`].
pub struct RaftService {
    node: RaftNode,
}

impl RaftService {
    /// The tonic service for `node`, ready to add to a server.
    pub fn server(node: RaftNode) -> RaftTransportServer<Self> {
        RaftTransportServer::new(Self { node })
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }
}

fn decode_req<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    codec::decode("raft request", payload).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn reply<T: Serialize>(frame: &Frame, me: u64, value: &T) -> Result<Frame, Status> {
    let payload = codec::encode("raft response", value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Frame {
        group: frame.group,
        kind: frame.kind,
        crc: crc32fast::hash(&payload),
        payload,
        from: me,
        to: frame.from,
        error_code: 0,
        error: String::new(),
    })
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn call(&self, request: Request<Frame>) -> Result<Response<Frame>, Status> {
        self.handle(request.into_inner()).await.map(Response::new)
    }

    async fn batch(&self, request: Request<Frames>) -> Result<Response<Frames>, Status> {
        let frames = request.into_inner().frames;
        if frames.len() > 4 * crate::transport::BATCH_FRAMES_MAX {
            return Err(Status::invalid_argument(format!("a batch of {} frames is too large", frames.len())));
        }
        // Every group's frame is handled at once; the answers keep the frames' order.
        let answers = futures::future::join_all(frames.into_iter().map(|f| self.handle(f))).await;
        let me = self.node.id();
        let frames = answers
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|s| Frame {
                    from: me,
                    error_code: s.code() as i32,
                    error: s.message().to_string(),
                    ..Default::default()
                })
            })
            .collect();
        Ok(Response::new(Frames { frames }))
    }
}

impl RaftService {
    async fn handle(&self, frame: Frame) -> Result<Frame, Status> {
        let me = self.node.id();
        if frame.to != me {
            return Err(Status::failed_precondition(format!(
                "frame for node {} reached node {me}: check the cluster's peer addresses",
                frame.to
            )));
        }
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
                reply(&frame, me, &raft.append_entries(req).await)
            }
            kind::VOTE => {
                let req = decode_req(&frame.payload)?;
                reply(&frame, me, &raft.vote(req).await)
            }
            kind::SNAPSHOT => {
                let req = decode_req(&frame.payload)?;
                reply(&frame, me, &raft.install_snapshot(req).await)
            }
            other => Err(Status::invalid_argument(format!("unknown frame kind {other}"))),
        }
    }
}
