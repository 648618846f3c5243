//! `norn bench raft`: commit throughput and latency of a local 3-node cluster with fsync on.
//!
//! The nodes run in this process (so the numbers measure Raft, group commit and the disk rather
//! than a client's gRPC stack) but talk to each other over real TCP and write to real RocksDB
//! directories with every acknowledged append fsynced on a quorum. Each node has a runtime and
//! thread of its own with the worker threads `norn cluster up` would give it on this machine,
//! and each proposer runs on its shard leader's runtime, where the node's frontend proposes.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use norn_raft::Role;

use crate::command::ShardCommand;
use crate::kv::KvCommand;
use crate::local_cluster::{lay_out, ClusterSpec, Ports};
use crate::server::{start, RunningNode};

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Shards.
    pub shards: u32,
    /// Concurrent proposer counts to measure, one row each.
    pub proposers: Vec<usize>,
    /// Measured time per row.
    pub duration: Duration,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// Overrides `raft.proposals_in_flight_max` (entries in flight per shard before batching).
    pub in_flight: Option<usize>,
    /// Tokio worker threads of each node's runtime (1: the current-thread scheduler).
    pub threads_per_node: usize,
}

/// One row of the result table.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// Concurrent proposers.
    pub proposers: usize,
    /// Commits in the measured window.
    pub commits: u64,
    /// Commits per second.
    pub commits_per_sec: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// WAL syncs on the whole cluster per commit.
    pub syncs_per_commit: f64,
    /// Share of the run each node's group-commit writer spent in WAL syncs (mean of nodes).
    pub sync_busy: f64,
}

/// Median time of one 4 KiB write + fsync in `dir`.
pub fn measure_fsync(dir: &Path, samples: usize) -> anyhow::Result<Duration> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let block = vec![0xabu8; 4096];
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        #[allow(clippy::disallowed_methods)] // benchmark: wall time is what we measure
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        times.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

/// Each shard's leader, as an index into `nodes`.
fn leaders(nodes: &[RunningNode]) -> Vec<(u32, usize)> {
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for s in n.raft.status() {
            if s.role == Role::Leader {
                out.push((s.group, i));
            }
        }
    }
    out.sort_by_key(|(g, _)| *g);
    out
}

/// A tokio runtime on a thread of its own, standing in for one node's process.
struct NodeRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeRuntime {
    /// The runtime a node with `worker_threads` gets (`NodeConfig::worker_threads`).
    fn start(name: String, worker_threads: usize) -> anyhow::Result<Self> {
        let rt = crate::config::build_runtime(worker_threads)?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            });
            rt.shutdown_background();
        })?;
        Ok(Self { handle, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the benchmark and returns the fsync median and one row per proposer count.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<(Duration, Vec<BenchRow>)> {
    let dir = tempfile::Builder::new().prefix("norn-bench-").tempdir_in(std::env::current_dir()?)?;
    let fsync = measure_fsync(dir.path(), 200)?;
    let spec = ClusterSpec {
        nodes: opts.nodes,
        data_dir: dir.path().to_path_buf(),
        ports: Ports::Free,
        shards: opts.shards,
        raft: {
            let d = norn_raft::RaftOptions::default();
            norn_raft::RaftOptions {
                snapshot_logs_since_last: 100_000,
                proposals_in_flight_max: opts.in_flight.unwrap_or(d.proposals_in_flight_max),
                ..d
            }
        },
        fault_injection: false,
        cluster_id: String::new(),
    };
    let layout = lay_out(&spec)?;
    let mut nodes = Vec::new();
    let mut runtimes = Vec::new();
    for n in &layout.nodes {
        let mut cfg = crate::config::NodeConfig::load(&n.config)?;
        cfg.metrics_addr = None;
        cfg.worker_threads = opts.threads_per_node;
        let rt = NodeRuntime::start(format!("norn-node-{}", n.id), cfg.worker_threads)?;
        nodes.push(rt.handle.spawn(start(cfg)).await??);
        runtimes.push(rt);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut by_shard = leaders(&nodes);
    while by_shard.len() < opts.shards as usize {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "shards without leader after 60s");
        tokio::time::sleep(Duration::from_millis(100)).await;
        by_shard = leaders(&nodes);
    }
    let value = vec![7u8; opts.value_bytes];
    let mut rows = Vec::new();
    for &p in &opts.proposers {
        let syncs_before: u64 = nodes.iter().map(|n| n.raft.sync_counts().0).sum();
        let busy_before: Duration = nodes.iter().map(|n| n.raft.sync_busy()).sum();
        #[allow(clippy::disallowed_methods)] // benchmark: wall time is what we measure
        let started = Instant::now();
        let stop_at = started + opts.duration;
        let mut tasks = Vec::new();
        for i in 0..p {
            let (shard, leader) = by_shard[i % by_shard.len()];
            let node = nodes[leader].raft.clone();
            let value = value.clone();
            // The proposer runs on its leader's runtime, as the node's own frontend would.
            tasks.push(runtimes[leader].handle.spawn(async move {
                let mut hist = Histogram::<u64>::new(3).map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut n = 0u64;
                #[allow(clippy::disallowed_methods)]
                while Instant::now() < stop_at {
                    let payload = ShardCommand::Kv(KvCommand::Put {
                        key: format!("bench-{i}-{n}").into_bytes(),
                        value: value.clone(),
                    })
                    .encode();
                    #[allow(clippy::disallowed_methods)]
                    let t = Instant::now();
                    node.propose(shard, payload).await?;
                    hist.record(t.elapsed().as_micros() as u64)?;
                    n += 1;
                }
                anyhow::Ok((n, hist))
            }));
        }
        let mut total = 0;
        let mut hist = Histogram::<u64>::new(3).map_err(|e| anyhow::anyhow!("{e}"))?;
        for t in tasks {
            let (n, h) = t.await??;
            total += n;
            hist.add(&h).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let elapsed = started.elapsed();
        let syncs_after: u64 = nodes.iter().map(|n| n.raft.sync_counts().0).sum();
        let busy: Duration = nodes.iter().map(|n| n.raft.sync_busy()).sum::<Duration>() - busy_before;
        rows.push(BenchRow {
            proposers: p,
            commits: total,
            commits_per_sec: total as f64 / elapsed.as_secs_f64(),
            p50: Duration::from_micros(hist.value_at_quantile(0.5)),
            p99: Duration::from_micros(hist.value_at_quantile(0.99)),
            syncs_per_commit: (syncs_after - syncs_before) as f64 / total.max(1) as f64,
            sync_busy: busy.as_secs_f64() / (elapsed.as_secs_f64() * nodes.len().max(1) as f64),
        });
    }
    for (n, rt) in nodes.into_iter().zip(&runtimes) {
        rt.handle.spawn(n.stop()).await?;
    }
    drop(runtimes);
    Ok((fsync, rows))
}

/// Renders the result as a Markdown table.
pub fn table(fsync: Duration, rows: &[BenchRow]) -> String {
    let mut s = format!("fsync (4 KiB write + fdatasync, median of 200): {:.3} ms\n\n", fsync.as_secs_f64() * 1e3);
    s.push_str(
        "| proposers | commits | commits/s | p50 ms | p99 ms | WAL syncs per commit (cluster) | WAL sync busy |\n",
    );
    s.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.0} % |\n",
            r.proposers,
            r.commits,
            r.commits_per_sec,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.syncs_per_commit,
            r.sync_busy * 100.0
        ));
    }
    s
}
