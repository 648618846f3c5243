//! `norn bench idle`: what idle workflows cost. Starts a local cluster of `norn` processes (as
//! `norn cluster up` does), starts workflows whose task queue no worker polls (as workflows
//! waiting on timers, signals or people do), batch after batch, and reports the start rate of
//! each batch and, with nothing running, each node's CPU and memory and how many shards have a
//! leader. The process test `node/tests/idle.rs` uses the same pieces.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use norn_proto::protos::temporal::api::common::v1::WorkflowType;
use norn_proto::protos::temporal::api::taskqueue::v1::TaskQueue;
use norn_proto::protos::temporal::api::workflowservice::v1::{DescribeNamespaceRequest, StartWorkflowExecutionRequest};
use norn_proto::WorkflowServiceClient;
use tonic::transport::Channel;

use crate::local_cluster::{self, ClusterSpec, Ports};

/// Linux reports process CPU time in these ticks per second (USER_HZ, fixed at 100).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time used so far and resident memory of a process, from `/proc`.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// User plus system CPU time, in ticks.
    pub cpu_ticks: u64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
}

/// Reads a process's CPU time and RSS; `None` if it is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let cpu_ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample { cpu_ticks, rss_kib })
}

/// Each process's CPU use over `window`, in percent of one core, and its RSS at the end.
pub async fn cpu_over(pids: &[u32], window: Duration) -> Vec<(f64, u64)> {
    let before: Vec<Option<ProcSample>> = pids.iter().map(|p| sample(*p)).collect();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let secs = started.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(p, b)| match (b, sample(*p)) {
            (Some(b), Some(a)) => {
                (a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / TICKS_PER_SEC / secs * 100.0, a.rss_kib)
            }
            _ => (f64::NAN, 0),
        })
        .collect()
}

/// Starts idle workflows, each straight on its shard's leader.
pub struct Starter {
    clients: BTreeMap<u64, WorkflowServiceClient<Channel>>,
    any: Vec<WorkflowServiceClient<Channel>>,
    leaders: BTreeMap<u32, u64>,
    namespace_id: String,
    shards: u32,
}

impl Starter {
    /// Connects to a cluster through `addrs` (every node's client address).
    pub async fn connect(addrs: &[String]) -> anyhow::Result<Self> {
        let mut clients = BTreeMap::new();
        let mut any = Vec::new();
        let status = local_cluster::status(&addrs[0]).await?;
        for n in &status.nodes {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", n.client_addr))?
                .timeout(Duration::from_secs(30))
                .connect_lazy();
            let c = WorkflowServiceClient::new(ch);
            clients.insert(n.node_id, c.clone());
            any.push(c);
        }
        let mut leaders = BTreeMap::new();
        for n in &status.nodes {
            for s in n.status.iter().flat_map(|st| st.shards.iter()).filter(|s| s.role == "leader") {
                leaders.insert(s.shard, n.node_id);
            }
        }
        let namespace_id = any[0]
            .clone()
            .describe_namespace(DescribeNamespaceRequest { namespace: "default".into(), ..Default::default() })
            .await?
            .into_inner()
            .namespace_info
            .context("no namespace info")?
            .id;
        Ok(Self { clients, any, leaders, namespace_id, shards: status.shard_count })
    }

    fn client_for(&self, workflow_id: &str, attempt: usize) -> WorkflowServiceClient<Channel> {
        let shard = crate::placement::shard_of(&[self.namespace_id.as_bytes(), workflow_id.as_bytes()], self.shards);
        match self.leaders.get(&shard).and_then(|l| self.clients.get(l)) {
            Some(c) if attempt == 0 => c.clone(),
            _ => self.any[attempt % self.any.len()].clone(),
        }
    }

    /// Starts workflows `prefix-i` for `i` in `range` on task queue `queue`, `concurrency` at a
    /// time; a start that fails is retried (with the same request id) on another node.
    pub async fn start(
        &self,
        prefix: &str,
        range: std::ops::Range<u64>,
        queue: &str,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let results = futures::stream::iter(range)
            .map(|i| async move {
                let id = format!("{prefix}-{i}");
                let mut last = None;
                for attempt in 0..10 {
                    let req = StartWorkflowExecutionRequest {
                        namespace: "default".into(),
                        workflow_id: id.clone(),
                        workflow_type: Some(WorkflowType { name: "idle".into() }),
                        task_queue: Some(TaskQueue { name: queue.into(), ..Default::default() }),
                        request_id: format!("start-{id}"),
                        ..Default::default()
                    };
                    match self.client_for(&id, attempt).start_workflow_execution(req).await {
                        Ok(_) => return Ok(()),
                        Err(s) => {
                            last = Some(s);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                Err(anyhow::anyhow!("start {id}: {:?}", last))
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        results.into_iter().collect()
    }
}

/// `norn bench idle` settings.
#[derive(Clone, Debug)]
pub struct IdleOptions {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Shards.
    pub shards: u32,
    /// Workflows started in all.
    pub workflows: u64,
    /// Workflows per batch (one start-rate row each).
    pub batch: u64,
    /// Starts in flight.
    pub concurrency: usize,
    /// Idle CPU is measured after every this many batches, over `idle_window`.
    pub idle_every: u64,
    /// Length of each idle measurement.
    pub idle_window: Duration,
}

/// Runs `norn bench idle` with the `norn` binary `binary`, printing rows as they come.
pub async fn run(binary: &Path, opts: &IdleOptions) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("norn-bench-idle-").tempdir_in(std::env::current_dir()?)?;
    let spec = ClusterSpec {
        nodes: opts.nodes,
        data_dir: dir.path().to_path_buf(),
        ports: Ports::Free,
        shards: opts.shards,
        raft: norn_raft::RaftOptions::default(),
        fault_injection: false,
        cluster_id: String::new(),
    };
    let mut file = local_cluster::lay_out(&spec)?;
    let (mut children, _) = local_cluster::up(binary, &mut file, Duration::from_secs(120)).await?;
    let result = async {
        let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
        let addrs: Vec<String> = file.nodes.iter().map(|n| n.client_addr.clone()).collect();
        let starter = Starter::connect(&addrs).await?;
        println!(
            "{} nodes, {} shards; idle CPU is percent of one core over {:?}",
            opts.nodes, opts.shards, opts.idle_window
        );
        println!(
            "{:>10} {:>10} {:>10}   idle CPU % per node | RSS MiB per node | shards led",
            "open", "batch s", "starts/s"
        );
        let mut open = 0;
        let mut batch_no = 0;
        while open < opts.workflows {
            let n = opts.batch.min(opts.workflows - open);
            let t = Instant::now();
            starter.start("idle", open..open + n, "nobody-polls", opts.concurrency).await?;
            let secs = t.elapsed().as_secs_f64();
            open += n;
            batch_no += 1;
            let mut line = format!("{open:>10} {secs:>10.1} {:>10.0}", n as f64 / secs);
            if batch_no % opts.idle_every.max(1) == 0 || open >= opts.workflows {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let usage = cpu_over(&pids, opts.idle_window).await;
                let cpu: Vec<String> = usage.iter().map(|(c, _)| format!("{c:.1}")).collect();
                let rss: Vec<String> = usage.iter().map(|(_, r)| format!("{}", r / 1024)).collect();
                let status = local_cluster::status(&addrs[0]).await?;
                let led = (0..status.shard_count)
                    .filter(|s| {
                        status.nodes.iter().any(|n| {
                            n.status.iter().flat_map(|st| st.shards.iter()).any(|x| x.shard == *s && x.role == "leader")
                        })
                    })
                    .count();
                line.push_str(&format!("   {} | {} | {led}/{}", cpu.join(" "), rss.join(" "), status.shard_count));
            }
            println!("{line}");
        }
        anyhow::Ok(())
    }
    .await;
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    result
}
