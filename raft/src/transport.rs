//! Node-to-node transport. One tonic channel per peer node carries the RPCs of every group;
//! each frame names its group. Every call has a deadline; tonic reconnects a broken channel on
//! the next call. Tests can cut links with [`Transport::set_blocked`] (a partition filter, like
//! TiKV's simulated transport), which drops frames in both directions.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint};

use crate::pb::raft_transport_client::RaftTransportClient;
use crate::pb::Frame;
use crate::types::{GroupId, NodeId};

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
#[derive(Debug, thiserror::Error)]
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

/// The node's transport: peer channels and fault filters.
pub struct Transport {
    me: NodeId,
    connector: Arc<dyn Connector>,
    peers: Mutex<HashMap<NodeId, (String, RaftTransportClient<Channel>)>>,
    blocked: RwLock<HashSet<NodeId>>,
}

impl Transport {
    /// A transport for node `me`.
    pub fn new(me: NodeId, connector: Arc<dyn Connector>) -> Self {
        Self { me, connector, peers: Mutex::new(HashMap::new()), blocked: RwLock::new(HashSet::new()) }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Cuts (or, with an empty set, heals) the links to and from the given nodes.
    pub fn set_blocked(&self, nodes: HashSet<NodeId>) {
        *self.blocked.write().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    /// The nodes whose links are cut.
    pub fn blocked(&self) -> HashSet<NodeId> {
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
        let mut client = self.client(target, addr)?;
        let frame = Frame { group, kind, crc: crc32fast::hash(&payload), payload, from: self.me, to: target };
        let mut req = tonic::Request::new(frame);
        req.set_timeout(deadline);
        let reply = match tokio::time::timeout(deadline, client.call(req)).await {
            Err(_) => {
                // The connection may be dead without knowing it (the peer crashed, a link was
                // cut): the next call opens a fresh one instead of timing out on it forever.
                self.forget(target);
                return Err(TransportError::Timeout(target, deadline));
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                self.forget(target);
                return Err(TransportError::Unreachable(target, status.message().to_string()));
            }
            Ok(Err(status)) => return Err(TransportError::Status(target, status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        if crc32fast::hash(&reply.payload) != reply.crc {
            return Err(TransportError::Corrupt(target, "checksum mismatch".into()));
        }
        Ok(reply.payload)
    }
}
