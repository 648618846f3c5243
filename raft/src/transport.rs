//! Node-to-node transport. One tonic channel per peer node carries the RPCs of every group;
//! each frame names its group. Every call has a deadline; a call that times out or meets a broken
//! connection drops it, and the next call opens a fresh one. Tests can cut links with
//! [`Transport::set_blocked`] (a partition filter, like TiKV's simulated transport), which drops
//! frames in both directions.
//!
//! Append-entries and vote frames to one peer travel on one long-lived bidirectional `Stream`
//! call: each frame carries a call id, and the peer's answers come back on the response stream
//! with that id, in the order they finish. A frame costs one HTTP/2 DATA frame each way, with no
//! per-call HEADERS, trailers or tasks, and frames queued while the connection is busy leave in
//! one write. Snapshot chunks and frames over [`STREAM_FRAME_BYTES_MAX`], which would hold up the
//! other groups' frames behind them on the one stream, travel alone as `Call`s.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

use crate::pb::raft_transport_client::RaftTransportClient;
use crate::pb::Frame;
use crate::types::{GroupId, NodeId};

/// Payload bytes of the largest frame that travels on the shared stream; larger ones are `Call`s.
pub const STREAM_FRAME_BYTES_MAX: usize = 256 << 10;
/// Frames queued per peer stream before callers wait.
const OUTBOX_MAX: usize = 4096;

/// Who this node is on the wire: the cluster it belongs to, its id, and this process's
/// incarnation. Every frame carries the sender's; see [`Transport::admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Hash of the cluster id created once at bootstrap and stored in every node's data dir.
    pub cluster: u64,
    /// The node's id.
    pub node: NodeId,
    /// Bumped (and synced) at every start of the node.
    pub incarnation: u64,
}

/// Called with `(node, incarnation)` when a peer shows a newer incarnation, so it can be
/// remembered across restarts.
pub type IncarnationSink = Box<dyn Fn(NodeId, u64) + Send + Sync>;

/// Most refusals remembered for rate-limiting their log lines.
const REFUSALS_LOGGED_MAX: usize = 1024;

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
    /// The process that answered is not the member we meant (another cluster's node, an older
    /// incarnation of the member, or another node id).
    #[error("refused the answer of node {0}: {1}")]
    Refused(NodeId, String),
}

type Pending = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Result<Frame, TransportError>>>>>;

/// One open `Stream` call to a peer: the sending side of its request stream and the calls
/// waiting for answers; a reader task delivers the answers. Once the last handle is dropped the
/// request stream ends, the peer answers what it has and ends its side, and the reader stops
/// (on a dead connection, when HTTP/2 keep-alive gives up on it).
struct Session {
    addr: String,
    tx: mpsc::Sender<Frame>,
    pending: Pending,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
}

impl Session {
    fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.tx.is_closed()
    }
}

/// The node's transport: peer channels, per-peer streams, and fault filters.
pub struct Transport {
    me: NodeId,
    identity: Identity,
    connector: Arc<dyn Connector>,
    /// Highest incarnation seen per peer, and who to tell when it rises.
    seen: Mutex<BTreeMap<NodeId, u64>>,
    seen_sink: Mutex<Option<IncarnationSink>>,
    /// Refusals already logged (one line per sender, cluster and incarnation).
    refused: Mutex<BTreeSet<(NodeId, u64, u64)>>,
    // Ordered maps everywhere: drop and iteration orders must not depend on the process's
    // hash seed (the simulator replays a seed exactly).
    peers: Mutex<BTreeMap<NodeId, (String, RaftTransportClient<Channel>)>>,
    sessions: Mutex<BTreeMap<NodeId, Arc<Session>>>,
    /// Planted bug (`PlantedBug::AcceptAnyCluster`): skip the cluster check.
    accept_any_cluster: std::sync::atomic::AtomicBool,
    blocked: RwLock<BTreeSet<NodeId>>,
}

impl Transport {
    /// A transport for the node `identity` names.
    pub fn new(identity: Identity, connector: Arc<dyn Connector>) -> Arc<Self> {
        Arc::new(Self {
            me: identity.node,
            identity,
            connector,
            seen: Mutex::new(BTreeMap::new()),
            seen_sink: Mutex::new(None),
            refused: Mutex::new(BTreeSet::new()),
            peers: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(BTreeMap::new()),
            accept_any_cluster: std::sync::atomic::AtomicBool::new(false),
            blocked: RwLock::new(BTreeSet::new()),
        })
    }

    /// Plants `PlantedBug::AcceptAnyCluster` (harnesses only): frames from another cluster are
    /// admitted.
    pub fn plant_accept_any_cluster(&self) {
        self.accept_any_cluster.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// This node's identity on the wire.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// Starts from the peer incarnations remembered by an earlier process, and tells `sink` of
    /// every newer one seen from now on.
    pub fn remember_incarnations(&self, known: BTreeMap<NodeId, u64>, sink: IncarnationSink) {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = known;
        *self.seen_sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }

    /// The incarnation of `node` as far as this node knows: its own, or the highest seen from
    /// that peer (0 when none was seen yet).
    pub fn incarnation_of(&self, node: NodeId) -> u64 {
        if node == self.me {
            return self.identity.incarnation;
        }
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).get(&node).copied().unwrap_or(0)
    }

    /// The highest incarnation seen from each peer.
    pub fn incarnations(&self) -> BTreeMap<NodeId, u64> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Admits a frame or call from `from`, which says it belongs to `cluster` in `incarnation`:
    /// refused when the cluster is not ours (a node of another cluster answering on a member's
    /// address) or the incarnation is older than one already seen from that node (an old copy of
    /// its data directory). Every refusal is logged once per sender, cluster and incarnation.
    pub fn admit(&self, from: NodeId, cluster: u64, incarnation: u64) -> Result<(), String> {
        if self.accept_any_cluster.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let why = if cluster != self.identity.cluster {
            Some(format!(
                "node {from} belongs to cluster {cluster:016x}, not to this node's cluster {:016x}: a process of \
                 another cluster is answering on a member's address; stop it, or fix the member list",
                self.identity.cluster
            ))
        } else if from == self.me && incarnation != self.identity.incarnation {
            Some(format!("a second process claims to be node {from} (incarnation {incarnation}); stop it"))
        } else {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let known = seen.get(&from).copied().unwrap_or(0);
            if incarnation < known {
                Some(format!(
                    "node {from} answers in incarnation {incarnation}, older than incarnation {known} already seen: \
                     an old copy of node {from}'s data directory is running; stop it"
                ))
            } else {
                if incarnation > known && from != self.me {
                    seen.insert(from, incarnation);
                    drop(seen);
                    if let Some(sink) = &*self.seen_sink.lock().unwrap_or_else(|p| p.into_inner()) {
                        sink(from, incarnation);
                    }
                }
                None
            }
        };
        match why {
            None => Ok(()),
            Some(why) => {
                let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
                if refused.len() < REFUSALS_LOGGED_MAX && refused.insert((from, cluster, incarnation)) {
                    tracing::error!(node = self.me, peer = from, peer_cluster = %format!("{cluster:016x}"), peer_incarnation = incarnation, "refused a peer: {why}");
                }
                Err(why)
            }
        }
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

    /// The open stream to `target` at `addr`; opens one if there is none (or it broke).
    fn session(&self, target: NodeId, addr: &str) -> Result<Arc<Session>, TransportError> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sessions.get(&target) {
            if s.addr == addr && s.is_open() {
                return Ok(s.clone());
            }
        }
        let mut client = self.client(target, addr)?;
        let (tx, rx) = mpsc::channel(OUTBOX_MAX);
        let pending: Pending = Arc::new(Mutex::new(BTreeMap::new()));
        let closed = Arc::new(AtomicBool::new(false));
        {
            let pending = pending.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                let failure = match client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
                    Err(status) => TransportError::Unreachable(target, status.message().to_string()),
                    Ok(answers) => {
                        let mut answers = answers.into_inner();
                        loop {
                            match answers.message().await {
                                Ok(Some(answer)) => {
                                    let waiter = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&answer.id);
                                    if let Some(w) = waiter {
                                        let _ = w.send(frame_result(target, answer));
                                    }
                                }
                                Ok(None) => {
                                    break TransportError::Unreachable(target, "the peer ended the stream".into())
                                }
                                Err(status) => break TransportError::Unreachable(target, status.message().to_string()),
                            }
                        }
                    }
                };
                closed.store(true, Ordering::Release);
                let waiters = std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()));
                for (_, w) in waiters {
                    let _ = w.send(Err(failure.clone()));
                }
            });
        }
        let session = Arc::new(Session { addr: addr.to_string(), tx, pending, next_id: AtomicU64::new(1), closed });
        sessions.insert(target, session.clone());
        Ok(session)
    }

    /// Stops opening calls on `session` (if it is still `target`'s) and drops the cached
    /// connection, so that the next call opens a fresh one. Calls already waiting on the old
    /// stream keep waiting for their own answers or deadlines.
    fn forget_session(&self, target: NodeId, session: &Arc<Session>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.get(&target).is_some_and(|s| Arc::ptr_eq(s, session)) {
            sessions.remove(&target);
            drop(sessions);
            self.forget(target);
        }
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
            id: 0,
            cluster: self.identity.cluster,
            incarnation: self.identity.incarnation,
        };
        let reply = if kind == kind::SNAPSHOT || frame.payload.len() > STREAM_FRAME_BYTES_MAX {
            self.call_alone(target, addr, frame, deadline).await?
        } else {
            self.call_on_stream(target, addr, frame, deadline).await?
        };
        // The process that answered must be the member we meant: same cluster, not an older
        // incarnation of it.
        self.admit(target, reply.cluster, reply.incarnation).map_err(|why| TransportError::Refused(target, why))?;
        if reply.from != target {
            return Err(TransportError::Refused(target, format!("node {} answered for node {target}", reply.from)));
        }
        if crc32fast::hash(&reply.payload) != reply.crc {
            return Err(TransportError::Corrupt(target, "checksum mismatch".into()));
        }
        Ok(reply.payload)
    }

    /// One frame on the peer's stream; its answer is the one that comes back with its id.
    async fn call_on_stream(
        &self,
        target: NodeId,
        addr: &str,
        mut frame: Frame,
        deadline: Duration,
    ) -> Result<Frame, TransportError> {
        let session = self.session(target, addr)?;
        let id = session.next_id.fetch_add(1, Ordering::Relaxed);
        frame.id = id;
        let (tx, rx) = oneshot::channel();
        session.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        if !session.is_open() {
            // The reader may have failed the waiting calls just before this one was added.
            session.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            self.forget_session(target, &session);
            return Err(TransportError::Unreachable(target, "the stream to the peer closed".into()));
        }
        let answer = tokio::time::timeout(deadline, async {
            session
                .tx
                .send(frame)
                .await
                .map_err(|_| TransportError::Unreachable(target, "the stream to the peer closed".into()))?;
            rx.await.map_err(|_| TransportError::Unreachable(target, "the stream to the peer closed".into()))?
        })
        .await;
        session.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        match answer {
            Err(_) => {
                // The connection may be dead without knowing it (the peer crashed, a link was
                // cut): the next call opens a fresh one instead of waiting on it again.
                self.forget_session(target, &session);
                Err(TransportError::Timeout(target, deadline))
            }
            Ok(Err(e)) => {
                if !session.is_open() {
                    self.forget_session(target, &session);
                }
                Err(e)
            }
            Ok(Ok(f)) => Ok(f),
        }
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

/// One answer on a stream: the peer's frame, or the error it reported for it.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_only_this_cluster_and_never_an_older_incarnation() {
        let me = Identity { cluster: 0xabc, node: 1, incarnation: 4 };
        let t = Transport::new(me, Arc::new(TcpConnector));
        let remembered = Arc::new(Mutex::new(Vec::new()));
        let sink = remembered.clone();
        t.remember_incarnations(BTreeMap::from([(2, 5)]), Box::new(move |n, i| sink.lock().unwrap().push((n, i))));
        assert!(t.admit(2, 0xdef, 9).unwrap_err().contains("another cluster"));
        assert!(t.admit(2, 0xabc, 4).unwrap_err().contains("older"), "an old copy of node 2 is refused");
        t.admit(2, 0xabc, 5).unwrap();
        t.admit(2, 0xabc, 6).unwrap();
        assert!(t.admit(2, 0xabc, 5).is_err(), "once 6 was seen, 5 is stale");
        assert_eq!(*remembered.lock().unwrap(), vec![(2, 6)], "a newer incarnation is remembered");
        assert!(t.admit(1, 0xabc, 3).is_err(), "a second process claiming to be this node");
        assert_eq!(t.incarnations().get(&2), Some(&6));
    }
}
