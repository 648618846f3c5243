//! Idle workflows cost nothing: a 3-node cluster of real processes holding 50,000 open
//! workflows that wait for a worker that never comes uses almost no CPU, and keeps every shard
//! led. (Before the due and ready indexes, each leader swept every open run every second: at
//! 30,000 such workflows the nodes used 130% of this machine's two cores and lost leaders.)

mod common;

use std::time::Duration;

use common::Cluster;
use norn_node::bench_idle::{cpu_over, Starter};

/// Workflows started.
const WORKFLOWS: u64 = 50_000;
/// Idle CPU allowed per node, in percent of one core.
const IDLE_CPU_MAX: f64 = 5.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_idle_workflows_leave_the_nodes_idle_and_every_shard_led() {
    // Default Raft timings, as a user's cluster runs.
    let c = Cluster::start(3, 16, norn_raft::RaftOptions::default()).await;
    let starter = Starter::connect(&c.addrs()).await.expect("connect");
    starter.start("idle", 0..WORKFLOWS, "nobody-polls", 256).await.unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // Let the last applies and offers settle, then measure with nothing running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids = c.pids();
    let usage = cpu_over(&pids, Duration::from_secs(10)).await;
    for (i, (cpu, rss)) in usage.iter().enumerate() {
        eprintln!("node {}: idle CPU {cpu:.1}% of a core, RSS {} MiB", i + 1, rss / 1024);
        assert!(*cpu < IDLE_CPU_MAX, "node {} uses {cpu:.1}% of a core with {WORKFLOWS} idle workflows", i + 1);
    }
    // Every shard still has exactly one leader that all nodes agree on.
    let s = c.wait_ready().await;
    assert!(norn_node::local_cluster::unready(&s).is_none());
    // And the open workflows are all there.
    let count = c.count_open().await;
    assert_eq!(count, WORKFLOWS as i64, "open workflows");
}
