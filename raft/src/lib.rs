//! Norn's replication layer: one openraft group per shard, all groups of a node sharing one
//! store, one group-commit task and one transport.
//!
//! Layout:
//! - [`types`]: the openraft type configuration and the ids and addresses others see.
//! - `codec`, `keys`: checked on-disk/on-wire encoding and the key layout.
//! - `log_store`, `state_machine`: openraft's storage traits over `norn-storage`.
//! - [`group_commit`]: one WAL sync for many appends.
//! - [`transport`], `network`, [`service`]: node-to-node RPC over tonic.
//! - [`snapshot`]: snapshot files, streamed in bounded pieces.
//! - `proposer`: batches the proposals that meet in a group's queue into one log entry.
//! - [`node`]: [`RaftNode`], the groups of one node, with propose / read-index / status.
//! - [`runtime`]: openraft's runtime with a seedable random source.
//!
//! Architecture invariant: no openraft type appears in this crate's public API except through
//! the [`types`] aliases; callers speak [`Command`], [`GroupStatus`] and [`ProposeError`].

// openraft's trait signatures return its large `StorageError`; our helpers return it too.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod group_commit;
mod keys;
mod log_store;
mod network;
pub mod node;
mod proposer;
pub mod runtime;
pub mod service;
pub mod snapshot;
pub mod state_machine;
pub mod transport;
pub mod types;

/// Generated transport protocol.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("norn.raft.v1");
}

pub use node::{
    ApplyObserver, GroupSpec, GroupStatus, ObserverSlot, PlantedBug, ProposeError, RaftNode, RaftOptions, Role,
};
pub use service::RaftService;
pub use state_machine::{Applied, ApplyError, GroupView, ScanPage, StateMachine, StateView, Txn};
pub use transport::{ConnectFuture, Connector, Identity, IncarnationSink, Io, TcpConnector, Transport};
pub use types::{Command, GroupId, NodeId, NodeInfo};

/// Errors from starting or running the replication layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Raft options are inconsistent.
    #[error("invalid raft options: {0}")]
    Config(String),
    /// The store failed or holds corrupt data.
    #[error("storage: {0}")]
    Storage(String),
}

/// Where the leader reads the time it stamps into each command. Production reads the system
/// clock; the simulator supplies simulated time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // production-only clock
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}
