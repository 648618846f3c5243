//! Norn's Rust client SDK (not yet built; see issue "Rust client SDK").
//!
//! This crate will hold the cluster-aware Temporal `WorkflowService` client, the worker, the
//! deterministic workflow executor with replay, and Temporal's default data converter.
//! Architecture invariant: it depends on no server crate (`norn-node`, `norn-raft`,
//! `norn-storage`), so users can depend on it alone.
