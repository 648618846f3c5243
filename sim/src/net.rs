//! The simulated platform under the real node code: turmoil's TCP, the simulated clock, host
//! names and each node's configuration.

use std::time::Duration;

use futures::StreamExt;
use norn_node::config::{Member, NodeConfig};
use norn_node::server::{Conn, Incoming};
use norn_raft::RaftOptions;

use crate::config::SimConfig;

/// The simulated clock starts here (2026-01-01T00:00:00Z), so histories carry plausible times.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// Every node's client port.
pub const CLIENT_PORT: u16 = 7233;
/// Every node's peer port.
pub const RAFT_PORT: u16 = 7300;
/// The host that runs the scenario (the client side).
pub const DRIVER: &str = "driver";

/// Opens connections over turmoil's simulated TCP.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimConnector;

impl norn_raft::Connector for SimConnector {
    fn connect(&self, addr: &str) -> norn_raft::ConnectFuture {
        let addr = addr.to_string();
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr.as_str()).await?;
            Ok(Box::new(s) as Box<dyn norn_raft::Io>)
        })
    }
}

impl norn_client::Connector for SimConnector {
    fn connect(&self, addr: &str) -> norn_client::client::ConnectFuture {
        let addr = addr.to_string();
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr.as_str()).await?;
            Ok(Box::new(s) as Box<dyn norn_client::client::Io>)
        })
    }
}

/// The simulated wall clock: a fixed epoch plus simulated time elapsed.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimClock;

impl norn_raft::Clock for SimClock {
    fn now_ms(&self) -> u64 {
        EPOCH_MS + turmoil::sim_elapsed().map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// Simulated time since the run started.
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Accepted connections of one simulated port.
pub async fn incoming(port: u16) -> std::io::Result<Incoming> {
    let l = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| Conn(Box::new(s)));
        Some((r, l))
    })
    .boxed())
}

/// Node `i`'s host name (1-based).
pub fn node_host(i: usize) -> String {
    format!("node{i}")
}

/// Worker `i`'s host name (1-based).
pub fn worker_host(i: usize) -> String {
    format!("worker{i}")
}

/// Every node's client endpoint.
pub fn endpoints(cfg: &SimConfig) -> Vec<String> {
    (1..=cfg.nodes).map(|i| format!("{}:{CLIENT_PORT}", node_host(i))).collect()
}

/// Node `id`'s configuration: small snapshot thresholds so that snapshots, purges and snapshot
/// installs happen within a run; short election timeouts.
pub fn node_config(cfg: &SimConfig, id: u64) -> NodeConfig {
    let members = (1..=cfg.nodes as u64)
        .map(|n| Member {
            id: n,
            raft_addr: format!("{}:{RAFT_PORT}", node_host(n as usize)),
            client_addr: format!("{}:{CLIENT_PORT}", node_host(n as usize)),
        })
        .collect();
    NodeConfig {
        cluster_id: String::new(),
        node_id: id,
        data_dir: std::path::PathBuf::from(format!("/sim/{}", node_host(id as usize))),
        client_addr: format!("{}:{CLIENT_PORT}", node_host(id as usize)),
        raft_addr: format!("{}:{RAFT_PORT}", node_host(id as usize)),
        metrics_addr: None,
        shards: cfg.shards,
        replicas: 3,
        members,
        enable_fault_injection: false,
        enable_test_map: false,
        // Every simulated host is one thread under turmoil; the setting is not used.
        worker_threads: 1,
        disk_reserve_bytes: 256 << 20,
        lose_unsynced_on_kill: false,
        raft: RaftOptions {
            election_timeout_ms_min: 500,
            election_timeout_ms_max: 1000,
            heartbeat_interval_ms: 150,
            propose_timeout_ms: 5_000,
            snapshot_logs_since_last: 300,
            logs_kept_after_snapshot: 0,
            snapshot_chunk_bytes: 16 << 10,
            planted_bug: cfg.planted_bug,
            ..Default::default()
        },
    }
}
