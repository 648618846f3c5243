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
        let bytes =
            self.transport.call(self.target, &self.node.raft_addr, self.group, kind, payload, deadline).await.map_err(
                |e| match e {
                    TransportError::Unreachable(..) | TransportError::Refused(..) => {
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    TransportError::Timeout(..) => RPCError::Timeout(Timeout {
                        action: openraft::network::RPCTypes::AppendEntries,
                        id: self.transport.me(),
                        target: self.target,
                        timeout: deadline,
                    }),
                    other => RPCError::Network(NetworkError::new(&other)),
                },
            )?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode("raft response", &bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.send(kind::APPEND, &rpc, &option).await
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
