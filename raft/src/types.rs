//! The openraft type configuration and Norn's own types that other crates see.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::runtime::NornRuntime;

/// A node's id in the cluster (1-based, stable for the node's life).
pub type NodeId = u64;
/// A shard's id; every shard is one Raft group.
pub type GroupId = u32;

/// Where a node listens: `raft_addr` for peers, `client_addr` for the gRPC API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Peer (Raft transport) address, `host:port`.
    pub raft_addr: String,
    /// Client (gRPC API) address, `host:port`.
    pub client_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (raft {})", self.client_addr, self.raft_addr)
    }
}

/// What one log entry carries: a batch of opaque commands of the layer above (proposals that
/// arrived together, see `proposer`), stamped by the leader. The state machine applies them in
/// order and answers each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Milliseconds since the Unix epoch on the leader when it proposed the batch.
    pub timestamp_ms: u64,
    /// The commands, each encoded by the layer above.
    pub payloads: Vec<Vec<u8>>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: usize = self.payloads.iter().map(Vec::len).sum();
        write!(f, "Command(ts={}, {} payloads, {bytes} bytes)", self.timestamp_ms, self.payloads.len())
    }
}

openraft::declare_raft_types!(
    /// Norn's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = Vec<Vec<u8>>,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::snapshot::SnapData,
        AsyncRuntime = NornRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub(crate) type Raft = openraft::Raft<TypeConfig>;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type ClientWriteResult = openraft::raft::ClientWriteResult<TypeConfig>;
pub(crate) type LogId = openraft::LogId<NodeId>;
pub(crate) type Vote = openraft::Vote<NodeId>;
pub(crate) type StorageError = openraft::StorageError<NodeId>;
pub(crate) type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
