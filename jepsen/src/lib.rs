//! Chaos harness against real `norn` processes (not yet built).
//!
//! This crate will start local clusters (see `norn cluster up`), drive a workload, inject
//! process kills, pauses and partitions, and check histories for linearizability.
