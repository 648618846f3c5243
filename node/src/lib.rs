//! The `norn` node: configuration, shard placement, the services on the client port, and the
//! operator commands (`server`, `dev`, `cluster up/down/status`, `bench raft`).
//!
//! Layout:
//! - [`config`]: the TOML configuration, validated before anything starts.
//! - [`placement`]: which nodes hold which shard, and the stable key hash.
//! - [`command`]: what shard logs carry, and the shard state machine that applies it.
//! - [`kv`]: the replicated test map.
//! - [`namespace`]: the namespace registry in the system shard.
//! - [`routing`]: one route-to-leader loop for every call that must run on a shard's leader.
//! - [`internal`]: the node-to-node service on the peer port (one hop of a routed call).
//! - [`admin`]: the `norn.admin.v1.Admin` service (status, test map, faults, history reads).
//! - [`frontend`]: Temporal's `WorkflowService`.
//! - [`history`]: the pure history engine (run state, events, effects).
//! - [`matching`]: ready tasks and waiting pollers per task queue.
//! - [`disk`]: the free-space reserve (no new writes on a nearly full disk).
//! - [`server`]: starts a node and serves its ports ([`serve`]: gRPC on accepted connections).
//! - [`local_cluster`]: starts and stops local clusters of `norn` processes.
//! - [`bench`]: `norn bench raft`; [`bench_idle`]: `norn bench idle`.
//! - [`metrics`]: Prometheus metrics.

pub mod admin;
pub mod bench;
pub mod bench_idle;
pub mod bench_snapshot;
pub mod bench_workflows;
pub mod command;
pub mod config;
pub mod disk;
pub mod fault;
pub mod frontend;
pub mod fuzz;
pub mod fuzz_node;
pub mod history;
pub mod internal;
pub mod kv;
pub mod limits;
pub mod list_filter;
pub mod local_cluster;
pub mod matching;
pub mod metrics;
pub mod namespace;
pub mod placement;
pub mod routing;
pub mod serve;
pub mod server;

/// Generated admin protocol (it lives in `norn-proto`, which the client SDK shares).
pub use norn_proto::admin as pb;
