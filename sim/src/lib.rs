//! Deterministic simulation of whole Norn clusters (not yet built; see issue "Deterministic
//! cluster simulation").
//!
//! This crate will run real node code on turmoil hosts over the in-memory storage engine
//! ([`norn_storage::MemEngine`]), with faults chosen by one seed, and check the invariants of
//! BRIEF §5 after every step. The seams it needs already exist: `norn_raft::Connector` for the
//! network, `norn_raft::Clock` for time, `norn_raft::runtime::seed_thread_rng` for randomness.

pub use norn_storage::MemDisk;
