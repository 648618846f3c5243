//! Deterministic simulation of whole Norn clusters.
//!
//! Real node code (frontend, Raft groups, history engine, matching) runs on 3 or 5 turmoil hosts
//! over the in-memory storage engine ([`norn_storage::MemEngine`]) and turmoil's network; SDK
//! workers ([`norn_client::Worker`]) run on hosts of their own, and a driver host runs a
//! [`Scenario`]. One seed decides the network's latencies and losses, Raft's election timeouts,
//! the node's UUIDs and the fault schedule ([`faults`]). After the fault window the cluster
//! heals; the scenario must then finish (liveness), and every invariant in [`checks`] must hold.
//!
//! Layout:
//! - [`config`]: [`SimConfig`] and the [`Fault`] classes.
//! - [`net`]: turmoil's TCP and clock under the node code; hosts and node configuration.
//! - [`observe`]: what the run records while it runs (applied entries, leaders, operations).
//! - [`faults`]: the seeded fault schedule.
//! - [`scenario`]: the driver's API ([`Scenario`]): calls that retry and record.
//! - [`simulation`]: [`Simulation`], the public entry point for users' own workflows.
//! - [`workload`]: the built-in workload `norn-sim` runs.
//! - [`checks`]: one file per invariant.

pub mod checks;
pub mod config;
pub mod faults;
pub mod net;
pub mod observe;
pub mod scenario;
pub mod simulation;
pub mod workload;

pub use config::{planted_bug, planted_bug_name, Fault, SimConfig};
pub use net::{SimClock, SimConnector};
pub use scenario::Scenario;
pub use simulation::{SimReport, Simulation, TASK_QUEUE};

/// Runs the built-in workload for `cfg` (what `norn-sim` runs).
pub fn run(cfg: &SimConfig) -> SimReport {
    workload::builtin(cfg.clone()).run()
}
