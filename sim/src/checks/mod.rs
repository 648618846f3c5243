//! The invariants every run is held to, each in its own file as a pure function from what the
//! run observed (and what the nodes hold on disk at the end) to the violations found:
//!
//! - [`raft`]: one leader per shard and term; every replica applies the same entry at an index.
//! - [`replicas`]: every replica of a shard holds byte-identical histories after the heal.
//! - [`histories`]: contiguous event ids, one terminal event and it is last, timers fire once and
//!   never early, activities start once per scheduled event, one open run per workflow id.
//! - [`ops`]: acknowledged starts and signals are kept (signals exactly once), client reads are
//!   never rolled back or stale, activity attempts run at most once, stale completions refused.
//! - [`replay`]: every closed history replays without non-determinism.
//!
//! Liveness (every scenario finishes after the heal) is checked by the run itself.

pub mod disk;
pub mod histories;
pub mod ops;
pub mod raft;
pub mod replay;
pub mod replicas;
