//! Node-to-node transport. One tonic channel per peer node carries the RPCs of every group;
//! each frame names its group. Every call has a deadline; tonic reconnects a broken channel on
//! the next call. Tests can cut links with [`Transport::set_blocked`] (a partition filter, like
//! TiKV's simulated transport), which drops frames in both directions.
//!
//! Append-entries and vote frames to one peer are coalesced: a sender task per peer keeps at
//! most [`BATCHES_IN_FLIGHT`] `Batch` calls open and packs every frame queued meanwhile into the
//! next one, so the groups of a busy node share calls (and their wake-ups and system calls)
//! instead of making one call each. A lone frame goes out at once. Snapshot chunks, which can be
//! large and slow, travel alone.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::{Channel, Endpoint};

use crate::pb::raft_transport_client::RaftTransportClient;
use crate::pb::{Frame, Frames};
use crate::types::{GroupId, NodeId};

/// `Batch` calls one peer may have open at once; frames queued meanwhile go in the next.
pub const BATCHES_IN_FLIGHT: usize = 8;
/// Frames in one `Batch` call at most.
pub const BATCH_FRAMES_MAX: usize = 256;
/// Payload bytes in one `Batch` call at most (a larger frame travels alone).
pub const BATCH_BYTES_MAX: usize = 4 << 20;
/// Frames queued per peer before callers wait.
const OUTBOX_MAX: usize = 4096;

/// A byte stream to a peer.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed connection future.
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<Box<dyn Io>>> + Send>>;

/// Opens connections to `host:port` addresses. Production uses TCP; the simulator gives its own.
pub trait Connector: Send + Sync + 'static {
    /// Connects to `addr`.
    fn connect(&self, addr: &str) -> ConnectFuture;
}

/// Plain TCP with `TCP_NODELAY`.
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect(&self, addr: &str) -> ConnectFuture {
        let addr = addr.to_string();
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as Box<dyn Io>)
        })
    }
}

/// Frame kinds.
pub(crate) mod kind {
    pub const APPEND: u32 = 1;
    pub const VOTE: u32 = 2;
    pub const SNAPSHOT: u32 = 3;
}

/// Why a call failed before reaching the peer's Raft group.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TransportError {
    /// The link is cut by a fault filter, or the peer is unknown.
    #[error("node {0} is unreachable: {1}")]
    Unreachable(NodeId, String),
    /// The call did not finish within its deadline.
    #[error("call to node {0} timed out after {1:?}")]
    Timeout(NodeId, Duration),
    /// The peer answered with a gRPC error.
    #[error("call to node {0} failed: {1}")]
    Status(NodeId, tonic::Status),
    /// The answer failed its checksum or did not decode.
    #[error("bad frame from node {0}: {1}")]
    Corrupt(NodeId, String),
}

/// A frame waiting for the next `Batch` call to its peer.
struct Outgoing {
    frame: Frame,
    deadline: Duration,
    reply: oneshot::Sender<Result<Frame, TransportError>>,
}

/// The node's transport: peer channels, per-peer batch senders, and fault filters.
pub struct Transport {
    me: NodeId,
    connector: Arc<dyn Connector>,
    // Ordered maps everywhere: drop and iteration orders must not depend on the process's
    // hash seed (the simulator replays a seed exactly).
    peers: Mutex<BTreeMap<NodeId, (String, RaftTransportClient<Channel>)>>,
    outboxes: Mutex<BTreeMap<NodeId, (String, mpsc::Sender<Outgoing>)>>,
    blocked: RwLock<BTreeSet<NodeId>>,
    me_weak: Weak<Transport>,
}

impl Transport {
    /// A transport for node `me`.
    pub fn new(me: NodeId, connector: Arc<dyn Connector>) -> Arc<Self> {
        Arc::new_cyclic(|me_weak| Self {
            me,
            connector,
            peers: Mutex::new(BTreeMap::new()),
            outboxes: Mutex::new(BTreeMap::new()),
            blocked: RwLock::new(BTreeSet::new()),
            me_weak: me_weak.clone(),
        })
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Cuts (or, with an empty set, heals) the links to and from the given nodes.
    pub fn set_blocked(&self, nodes: BTreeSet<NodeId>) {
        *self.blocked.write().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    /// The nodes whose links are cut.
    pub fn blocked(&self) -> BTreeSet<NodeId> {
        self.blocked.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn is_blocked(&self, node: NodeId) -> bool {
        self.blocked.read().unwrap_or_else(|p| p.into_inner()).contains(&node)
    }

    fn client(&self, target: NodeId, addr: &str) -> Result<RaftTransportClient<Channel>, TransportError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, c)) = peers.get(&target) {
            if a == addr {
                return Ok(c.clone());
            }
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| TransportError::Unreachable(target, format!("bad address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let connector = self.connector.clone();
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: tonic::transport::Uri| {
            let addr = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let fut = connector.connect(&addr);
            async move { fut.await.map(TokioIo::new) }
        }));
        let client =
            RaftTransportClient::new(channel).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20);
        peers.insert(target, (addr.to_string(), client.clone()));
        Ok(client)
    }

    /// Drops the cached connection to `target`.
    fn forget(&self, target: NodeId) {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).remove(&target);
    }

    /// The queue of frames for `target`'s next `Batch` call; starts its sender task if needed.
    fn outbox(&self, target: NodeId, addr: &str) -> mpsc::Sender<Outgoing> {
        let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, tx)) = outboxes.get(&target) {
            if a == addr && !tx.is_closed() {
                return tx.clone();
            }
        }
        let (tx, rx) = mpsc::channel(OUTBOX_MAX);
        tokio::spawn(send_batches(self.me_weak.clone(), target, addr.to_string(), rx));
        outboxes.insert(target, (addr.to_string(), tx.clone()));
        tx
    }

    /// Sends one frame to `target` at `addr` and returns the answer's checked payload.
    pub(crate) async fn call(
        &self,
        target: NodeId,
        addr: &str,
        group: GroupId,
        kind: u32,
        payload: Vec<u8>,
        deadline: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        if self.is_blocked(target) {
            return Err(TransportError::Unreachable(target, "link cut by fault injection".into()));
        }
        let frame = Frame {
            group,
            kind,
            crc: crc32fast::hash(&payload),
            payload,
            from: self.me,
            to: target,
            error_code: 0,
            error: String::new(),
        };
        let reply = if kind == kind::SNAPSHOT {
            self.call_alone(target, addr, frame, deadline).await?
        } else {
            let (tx, rx) = oneshot::channel();
            let queued = Outgoing { frame, deadline, reply: tx };
            let outbox = self.outbox(target, addr);
            let answer = tokio::time::timeout(deadline, async move {
                outbox
                    .send(queued)
                    .await
                    .map_err(|_| TransportError::Unreachable(target, "the batch sender stopped".into()))?;
                rx.await.map_err(|_| TransportError::Unreachable(target, "the batch was dropped".into()))?
            })
            .await;
            match answer {
                Err(_) => return Err(TransportError::Timeout(target, deadline)),
                Ok(r) => r?,
            }
        };
        if crc32fast::hash(&reply.payload) != reply.crc {
            return Err(TransportError::Corrupt(target, "checksum mismatch".into()));
        }
        Ok(reply.payload)
    }

    /// One frame in a call of its own.
    async fn call_alone(
        &self,
        target: NodeId,
        addr: &str,
        frame: Frame,
        deadline: Duration,
    ) -> Result<Frame, TransportError> {
        let mut client = self.client(target, addr)?;
        let mut req = tonic::Request::new(frame);
        req.set_timeout(deadline);
        match tokio::time::timeout(deadline, client.call(req)).await {
            Err(_) => {
                // The connection may be dead without knowing it (the peer crashed, a link was
                // cut): the next call opens a fresh one instead of timing out on it forever.
                self.forget(target);
                Err(TransportError::Timeout(target, deadline))
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                self.forget(target);
                Err(TransportError::Unreachable(target, status.message().to_string()))
            }
            Ok(Err(status)) => Err(TransportError::Status(target, status)),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }
}

/// One peer's batch sender: takes the first queued frame, waits for a free call slot, packs
/// every frame queued meanwhile, and sends them as one `Batch` call. Ends when the transport is
/// dropped (its queue closes).
async fn send_batches(transport: Weak<Transport>, target: NodeId, addr: String, mut rx: mpsc::Receiver<Outgoing>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut bytes = first.frame.payload.len();
        let mut batch = vec![first];
        while batch.len() < BATCH_FRAMES_MAX && bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(o) => {
                    bytes += o.frame.payload.len();
                    batch.push(o);
                }
                Err(_) => break,
            }
        }
        // Callers that gave up (their deadline passed) need no answer.
        batch.retain(|o| !o.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let Some(transport) = transport.upgrade() else { return };
        let client = match transport.client(target, &addr) {
            Ok(c) => c,
            Err(e) => {
                for o in batch {
                    let _ = o.reply.send(Err(e.clone()));
                }
                continue;
            }
        };
        tokio::spawn(async move {
            send_batch(&transport, target, client, batch).await;
            drop(slot);
        });
    }
}

async fn send_batch(
    transport: &Transport,
    target: NodeId,
    mut client: RaftTransportClient<Channel>,
    batch: Vec<Outgoing>,
) {
    let deadline = batch.iter().map(|o| o.deadline).max().unwrap_or(Duration::from_secs(1));
    let (frames, replies): (Vec<Frame>, Vec<_>) = batch.into_iter().map(|o| (o.frame, o.reply)).unzip();
    let mut req = tonic::Request::new(Frames { frames });
    req.set_timeout(deadline);
    let failure = match tokio::time::timeout(deadline, client.batch(req)).await {
        Err(_) => {
            // As for single calls: a dead connection is replaced, not waited on again.
            transport.forget(target);
            TransportError::Timeout(target, deadline)
        }
        Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
            transport.forget(target);
            TransportError::Unreachable(target, status.message().to_string())
        }
        Ok(Err(status)) => TransportError::Status(target, status),
        Ok(Ok(r)) => {
            let answers = r.into_inner().frames;
            if answers.len() == replies.len() {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(frame_result(target, answer));
                }
                return;
            }
            TransportError::Corrupt(target, format!("{} answers to {} frames", answers.len(), replies.len()))
        }
    };
    for reply in replies {
        let _ = reply.send(Err(failure.clone()));
    }
}

/// One answer of a `Batch` call: the peer's frame, or the error it reported for that frame.
fn frame_result(target: NodeId, answer: Frame) -> Result<Frame, TransportError> {
    if answer.error_code == 0 {
        return Ok(answer);
    }
    let status = tonic::Status::new(tonic::Code::from(answer.error_code), answer.error);
    if status.code() == tonic::Code::Unavailable {
        return Err(TransportError::Unreachable(target, status.message().to_string()));
    }
    Err(TransportError::Status(target, status))
}
