//! openraft's network traits over [`Transport`]: a [`RaftNetworkFactory`] per group that shares
//! the node's single transport.

use std::sync::Arc;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::transport::{kind, Transport, TransportError};
use crate::types::{GroupId, NodeId, NodeInfo, TypeConfig};

/// Creates per-target clients for one group.
pub struct GroupNetworkFactory {
    pub(crate) group: GroupId,
    pub(crate) transport: Arc<Transport>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> GroupNetwork {
        GroupNetwork { group: self.group, target, node: node.clone(), transport: self.transport.clone() }
    }
}

/// Bytes of entry payloads one AppendEntries carries at most (unless its first entry alone is
/// larger).
const APPEND_BYTES_MAX: usize = 512 << 10;

/// How many of `entries`, from the first, fit in `budget` bytes of payload (at least one).
fn append_prefix(entries: &[openraft::Entry<TypeConfig>], budget: usize) -> usize {
    let mut bytes = 0usize;
    for (i, e) in entries.iter().enumerate() {
        let n = match &e.payload {
            openraft::EntryPayload::Normal(c) => c.payloads.iter().map(|p| p.len() + 8).sum::<usize>(),
            _ => 64,
        };
        if i > 0 && bytes.saturating_add(n) > budget {
            return i;
        }
        bytes = bytes.saturating_add(n);
    }
    entries.len()
}

/// What openraft is told when a call fails before reaching the target's group.
fn rpc_error<E: std::error::Error>(
    e: TransportError,
    me: NodeId,
    target: NodeId,
    deadline: std::time::Duration,
) -> RPCError<NodeId, NodeInfo, E> {
    match e {
        // A peer that refuses the call (another cluster's node on a member's address, an old
        // incarnation) or answers with a gRPC error never reached the group: `Unreachable` makes
        // openraft back off before trying again, where `NetworkError` retries at once (found by
        // norn-jepsen: 17,000 refused appends a second to an impostor, each logged twice).
        TransportError::Unreachable(..) | TransportError::Refused(..) | TransportError::Status(..) => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        TransportError::Timeout(..) => RPCError::Timeout(Timeout {
            action: openraft::network::RPCTypes::AppendEntries,
            id: me,
            target,
            timeout: deadline,
        }),
        TransportError::Corrupt(..) => RPCError::Network(NetworkError::new(&e)),
    }
}

/// One group's client to one target node.
pub struct GroupNetwork {
    group: GroupId,
    target: NodeId,
    node: NodeInfo,
    transport: Arc<Transport>,
}

impl GroupNetwork {
    async fn send<Req: Serialize, Resp: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        kind: u32,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>> {
        let payload = codec::encode("raft request", req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let deadline = option.hard_ttl();
        let bytes = self
            .transport
            .call(self.target, &self.node.raft_addr, self.group, kind, payload, deadline)
            .await
            .map_err(|e| rpc_error(e, self.transport.me(), self.target, deadline))?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode("raft response", &bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        // Openraft gives an append one heartbeat interval and sends up to 512 entries: with large
        // entries that never fits, and the follower never catches up. Send a prefix of about
        // APPEND_BYTES_MAX (always at least one entry) and report how far it got.
        let keep = append_prefix(&rpc.entries, APPEND_BYTES_MAX);
        if keep == rpc.entries.len() {
            return self.send(kind::APPEND, &rpc, &option).await;
        }
        rpc.entries.truncate(keep);
        let last = rpc.entries.last().map(|e| e.log_id);
        match self.send(kind::APPEND, &rpc, &option).await? {
            AppendEntriesResponse::Success => Ok(AppendEntriesResponse::PartialSuccess(last)),
            other => Ok(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.send(kind::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.send(kind::VOTE, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    type E = RPCError<NodeId, NodeInfo, RaftError<NodeId>>;

    #[test]
    fn refused_and_failed_calls_make_openraft_back_off() {
        let refused = tonic::Status::failed_precondition("node 3 belongs to cluster a, not to this node's cluster b");
        for e in [
            TransportError::Status(2, refused),
            TransportError::Refused(2, "an old copy of node 2's data directory".into()),
            TransportError::Unreachable(2, "link cut".into()),
        ] {
            let out: E = rpc_error(e, 1, 2, Duration::from_millis(100));
            assert!(matches!(out, RPCError::Unreachable(_)), "{out:?}");
        }
        let out: E =
            rpc_error(TransportError::Timeout(2, Duration::from_millis(100)), 1, 2, Duration::from_millis(100));
        assert!(matches!(out, RPCError::Timeout(_)), "{out:?}");
        let out: E = rpc_error(TransportError::Corrupt(2, "bad crc".into()), 1, 2, Duration::from_millis(100));
        assert!(matches!(out, RPCError::Network(_)), "{out:?}");
    }
}
