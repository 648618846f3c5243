//! The `norn` command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use norn_node::config::{Member, NodeConfig};
use norn_node::local_cluster::{self, ClusterSpec, Ports};
use norn_node::pb::admin_client::AdminClient;
use norn_node::pb::{GetRequest, PutRequest, ReadConsistency};
use norn_raft::RaftOptions;

/// Prints a line to stdout. A reader that went away (`norn cluster status | head`) ends the
/// command quietly, as Unix tools do, where `println!` would panic on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

#[derive(Parser)]
#[command(name = "norn", version, about = "Norn: a Temporal-compatible durable workflow server in one binary")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node of a cluster.
    Server(ServerArgs),
    /// Run a single-node development server (data in ./norn-data, client port 7233).
    Dev {
        /// Data directory.
        #[arg(long, default_value = "norn-data")]
        data_dir: PathBuf,
        /// Client port.
        #[arg(long, default_value_t = 7233)]
        port: u16,
        /// Shards.
        #[arg(long, default_value_t = 16)]
        shards: u32,
    },
    /// Start, stop and inspect local clusters.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Read and write the replicated test map.
    #[command(subcommand)]
    Kv(KvCmd),
    /// Inspect what one node holds.
    #[command(subcommand)]
    Debug(DebugCmd),
}

#[derive(Subcommand)]
enum DebugCmd {
    /// Print a run's history as this node's replica holds it (with --local) or as the shard
    /// leader holds it: one JSON line per event with its id, type and a digest of its bytes.
    History {
        #[arg(long, default_value = "127.0.0.1:7233")]
        address: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        workflow_id: String,
        #[arg(long)]
        run_id: String,
        /// Read this node's applied state instead of the leader's.
        #[arg(long)]
        local: bool,
    },
    /// Fuzz a decoder, the list filter or the history engine in process: replay the corpus, then
    /// run mutated inputs; inputs that panic are saved and reported (docs/reliability.md).
    Fuzz {
        /// A target, or `all`: list_filter, task_token, state_value, raft_codec, requests, node,
        /// history_engine.
        #[arg(long, default_value = "all")]
        target: String,
        /// Mutated inputs per target.
        #[arg(long, default_value_t = 100_000)]
        execs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Corpus root: one directory per target.
        #[arg(long, default_value = "fuzz/corpus")]
        corpus: PathBuf,
        /// Where panicking inputs are written (one directory per target).
        #[arg(long, default_value = "fuzz/crashes")]
        crashes: PathBuf,
        /// Write each target's built-in seeds into its corpus directory and stop.
        #[arg(long)]
        write_seeds: bool,
    },
}

#[derive(Args)]
struct ServerArgs {
    /// TOML configuration file (see docs/configuration.md). Flags override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The cluster's id (the same on every member; see docs/configuration.md).
    #[arg(long)]
    cluster_id: Option<String>,
    /// This node's id.
    #[arg(long)]
    node_id: Option<u64>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Client gRPC address.
    #[arg(long)]
    client_addr: Option<String>,
    /// Peer (Raft) address.
    #[arg(long)]
    raft_addr: Option<String>,
    /// Prometheus metrics address.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Shard count (fixed at cluster creation).
    #[arg(long)]
    shards: Option<u32>,
    /// Initial members as `ID=RAFT_ADDR/CLIENT_ADDR`, repeated or comma-separated.
    #[arg(long, value_delimiter = ',')]
    member: Vec<String>,
    /// Minimum election timeout (ms).
    #[arg(long)]
    election_timeout_ms_min: Option<u64>,
    /// Maximum election timeout (ms).
    #[arg(long)]
    election_timeout_ms_max: Option<u64>,
    /// Heartbeat interval (ms).
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// Entries between snapshots.
    #[arg(long)]
    snapshot_logs_since_last: Option<u64>,
    /// Accept fault-injection calls (tests only).
    #[arg(long)]
    enable_fault_injection: bool,
    /// Accept writes of the replicated test map (`norn kv put`) on the client port.
    #[arg(long)]
    enable_test_map: bool,
    /// Tokio worker threads (0: one per core; 1: the current-thread scheduler).
    #[arg(long)]
    worker_threads: Option<usize>,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Start a local cluster of separate processes and wait until every shard has a leader.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value = "norn-cluster")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 7233)]
        base_port: u16,
        #[arg(long, default_value_t = 16)]
        shards: u32,
        /// Accept fault-injection calls (tests only).
        #[arg(long)]
        enable_fault_injection: bool,
    },
    /// Stop a local cluster started with `cluster up`.
    Down {
        #[arg(long, default_value = "norn-cluster")]
        data_dir: PathBuf,
    },
    /// Every shard's leader, term, commit and applied index per node, and each node's health.
    Status {
        #[arg(long, default_value = "127.0.0.1:7233")]
        address: String,
        /// `table` or `json`.
        #[arg(long, default_value = "table")]
        output: String,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Workflow throughput under an SDK worker: N workflows of K sequential activities, C in
    /// flight, against any Temporal-API address (and `--compare` another), with one worker of
    /// Norn's Rust SDK at its default settings; prints wf/s and latency percentiles.
    Workflows {
        /// The server to measure.
        #[arg(long, default_value = "127.0.0.1:7233")]
        address: String,
        /// A second server to run the same load against afterwards (say `temporal server
        /// start-dev` on another port); the ratio is printed.
        #[arg(long)]
        compare: Option<String>,
        /// Workflows in all.
        #[arg(long, default_value_t = 500)]
        workflows: usize,
        /// Sequential activities per workflow.
        #[arg(long, default_value_t = 1)]
        activities: u32,
        /// Workflows in flight.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Workflows run first and not measured.
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        /// Run the standard matrix instead (K=1 at C=1, 50 and 200; K=10 at C=50), the rows
        /// docs/performance.md reports.
        #[arg(long)]
        matrix: bool,
    },
    /// What idle workflows cost: start workflows no worker polls, batch by batch, on a local
    /// cluster of processes, and print each batch's start rate and the nodes' idle CPU and RSS.
    Idle {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 16)]
        shards: u32,
        /// Workflows started in all.
        #[arg(long, default_value_t = 100_000)]
        workflows: u64,
        /// Workflows per batch (one row each).
        #[arg(long, default_value_t = 10_000)]
        batch: u64,
        /// Starts in flight.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Measure idle CPU after every this many batches.
        #[arg(long, default_value_t = 1)]
        idle_every: u64,
        /// Seconds of each idle measurement.
        #[arg(long, default_value_t = 10)]
        idle_seconds: u64,
    },
    /// What a follower's catch-up by streamed snapshot costs: fill one shard with `--mib` MiB
    /// while a node is down, snapshot and purge the logs, restart the node, and print the
    /// catch-up time and each node's peak memory.
    Snapshot {
        /// MiB of state written into the shard.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Bytes per value (the test map takes at most 64 KiB).
        #[arg(long, default_value_t = 64 * 1024)]
        value_bytes: usize,
        /// Puts in flight.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Raft commit throughput and latency on a local 3-node cluster with fsync on.
    Raft {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 16)]
        shards: u32,
        /// Proposer counts, one table row each.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        proposers: Vec<usize>,
        /// Seconds measured per row.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Value size in bytes.
        #[arg(long, default_value_t = 128)]
        value_bytes: usize,
        /// Log entries each shard leader keeps in flight before it batches proposals
        /// (`raft.proposals_in_flight_max`; a large value all but disables batching).
        #[arg(long)]
        in_flight: Option<usize>,
        /// Tokio worker threads of each node (1 selects the current-thread scheduler). Default:
        /// the machine's cores divided among the nodes, at least 1, as `norn cluster up` does.
        #[arg(long)]
        threads_per_node: Option<usize>,
    },
}

#[derive(Subcommand)]
enum KvCmd {
    /// Write a key (acknowledged once a quorum has it on disk).
    Put {
        key: String,
        value: String,
        #[arg(long, default_value = "127.0.0.1:7233")]
        address: String,
    },
    /// Read a key (linearizable unless --local).
    Get {
        key: String,
        #[arg(long, default_value = "127.0.0.1:7233")]
        address: String,
        #[arg(long)]
        local: bool,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NORN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

fn parse_member(s: &str) -> anyhow::Result<Member> {
    let (id, addrs) = s.split_once('=').context("member must be ID=RAFT_ADDR/CLIENT_ADDR")?;
    let (raft_addr, client_addr) = addrs.split_once('/').context("member must be ID=RAFT_ADDR/CLIENT_ADDR")?;
    Ok(Member {
        id: id.trim().parse().context("member id")?,
        raft_addr: raft_addr.into(),
        client_addr: client_addr.into(),
    })
}

fn server_config(a: ServerArgs) -> anyhow::Result<NodeConfig> {
    let mut cfg = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
            toml::from_str::<NodeConfig>(&text).with_context(|| format!("parse {}", p.display()))?
        }
        None => NodeConfig {
            cluster_id: String::new(),
            node_id: a.node_id.context("--node-id or --config is required")?,
            data_dir: a.data_dir.clone().context("--data-dir or --config is required")?,
            client_addr: "127.0.0.1:7233".into(),
            raft_addr: "127.0.0.1:7234".into(),
            metrics_addr: None,
            shards: 16,
            replicas: 3,
            members: Vec::new(),
            enable_fault_injection: false,
            enable_test_map: false,
            worker_threads: 0,
            disk_reserve_bytes: 256 << 20,
            lose_unsynced_on_kill: false,
            raft: RaftOptions::default(),
        },
    };
    if let Some(v) = a.node_id {
        cfg.node_id = v;
    }
    if let Some(v) = a.cluster_id {
        cfg.cluster_id = v;
    }
    if let Some(v) = a.data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = a.client_addr {
        cfg.client_addr = v;
    }
    if let Some(v) = a.raft_addr {
        cfg.raft_addr = v;
    }
    if let Some(v) = a.metrics_addr {
        cfg.metrics_addr = Some(v);
    }
    if let Some(v) = a.shards {
        cfg.shards = v;
    }
    if !a.member.is_empty() {
        cfg.members = a.member.iter().map(|m| parse_member(m)).collect::<anyhow::Result<_>>()?;
    }
    if cfg.members.is_empty() {
        cfg.members =
            vec![Member { id: cfg.node_id, raft_addr: cfg.raft_addr.clone(), client_addr: cfg.client_addr.clone() }];
    }
    if let Some(v) = a.election_timeout_ms_min {
        cfg.raft.election_timeout_ms_min = v;
    }
    if let Some(v) = a.election_timeout_ms_max {
        cfg.raft.election_timeout_ms_max = v;
    }
    if let Some(v) = a.heartbeat_interval_ms {
        cfg.raft.heartbeat_interval_ms = v;
    }
    if let Some(v) = a.snapshot_logs_since_last {
        cfg.raft.snapshot_logs_since_last = v;
    }
    cfg.enable_fault_injection |= a.enable_fault_injection;
    cfg.enable_test_map |= a.enable_test_map;
    if let Some(v) = a.worker_threads {
        cfg.worker_threads = v;
    }
    // Chaos harnesses plant known bugs to show their checkers catch them. Only through the
    // environment, and only on a node that accepts fault injection: never from a config file.
    if let Ok(name) = std::env::var("NORN_PLANTED_BUG") {
        anyhow::ensure!(
            cfg.enable_fault_injection,
            "NORN_PLANTED_BUG is set but fault injection is off; it is for chaos harnesses only"
        );
        let bug = norn_raft::PlantedBug::parse(&name).with_context(|| format!("unknown planted bug {name:?}"))?;
        eprintln!("norn: THIS NODE RUNS WITH THE PLANTED BUG {name} (chaos harness); never use it for real data");
        cfg.raft.planted_bug = Some(bug);
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn print_status(s: &norn_node::pb::ClusterStatusResponse) {
    out!("{:<6} {:<22} {:<10} DETAIL", "NODE", "ADDRESS", "HEALTH");
    for n in &s.nodes {
        let detail = match &n.status {
            Some(st) => format!(
                "{} shards, {} leading, {} WAL syncs",
                st.shards.len(),
                st.shards.iter().filter(|x| x.role == "leader").count(),
                st.wal_syncs
            ),
            None => n.error.clone(),
        };
        out!("{:<6} {:<22} {:<10} {}", n.node_id, n.client_addr, if n.reachable { "up" } else { "DOWN" }, detail);
    }
    out!();
    out!("{:<6} {:<7} {:<6} PER NODE (role commit/applied)", "SHARD", "LEADER", "TERM");
    for shard in 0..s.shard_count {
        let mut leader = "-".to_string();
        let mut term = 0;
        let mut per = Vec::new();
        for n in &s.nodes {
            let Some(st) = &n.status else { continue };
            if let Some(x) = st.shards.iter().find(|x| x.shard == shard) {
                if x.role == "leader" {
                    leader = n.node_id.to_string();
                }
                term = term.max(x.term);
                per.push(format!(
                    "n{}:{} {}/{}",
                    n.node_id,
                    x.role.get(..1).unwrap_or("?"),
                    x.committed_index,
                    x.applied_index
                ));
            }
        }
        out!("{:<6} {:<7} {:<6} {}", shard, leader, term, per.join("  "));
    }
}

async fn channel(address: &str) -> anyhow::Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("connect to {address}: is a norn node running there?"))
}

async fn admin(address: &str) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    Ok(AdminClient::new(channel(address).await?))
}

fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    if let Cmd::Server(a) = cli.command {
        // The node's runtime follows its configuration (`worker_threads`).
        let cfg = server_config(a)?;
        let rt = norn_node::config::build_runtime(cfg.worker_threads).context("start the tokio runtime")?;
        return rt.block_on(norn_node::server::run(cfg, shutdown_signal()));
    }
    let rt = norn_node::config::build_runtime(0).context("start the tokio runtime")?;
    rt.block_on(run(cli.command))
}

/// Every command but `server`, which `main` starts on the runtime its configuration asks for.
async fn run(command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::Server(_) => anyhow::bail!("norn server runs on a runtime of its own (see main)"),
        Cmd::Dev { data_dir, port, shards } => {
            let client = format!("127.0.0.1:{port}");
            let raft = format!("127.0.0.1:{}", port.checked_add(1).context("port too high")?);
            let cfg = NodeConfig {
                cluster_id: String::new(),
                node_id: 1,
                data_dir,
                client_addr: client.clone(),
                raft_addr: raft.clone(),
                metrics_addr: None,
                shards,
                replicas: 1,
                members: vec![Member { id: 1, raft_addr: raft, client_addr: client.clone() }],
                enable_fault_injection: false,
                enable_test_map: true,
                worker_threads: 0,
                disk_reserve_bytes: 256 << 20,
                lose_unsynced_on_kill: false,
                raft: RaftOptions {
                    election_timeout_ms_min: 150,
                    election_timeout_ms_max: 300,
                    heartbeat_interval_ms: 50,
                    ..Default::default()
                },
            };
            out!("norn dev: data in {}, client port {client}", cfg.data_dir.display());
            norn_node::server::run(cfg, shutdown_signal()).await
        }
        Cmd::Cluster(ClusterCmd::Up { nodes, data_dir, base_port, shards, enable_fault_injection }) => {
            let mut cluster_id = String::new();
            if let Ok(old) = local_cluster::read_file(&data_dir) {
                anyhow::ensure!(
                    !old.nodes.iter().filter_map(|n| n.pid).any(local_cluster::alive),
                    "a cluster is already running from {}; run `norn cluster down --data-dir {}` first",
                    data_dir.display(),
                    data_dir.display()
                );
                // The same cluster again: its nodes' data directories belong to this id.
                cluster_id = old.cluster_id;
            }
            let spec = ClusterSpec {
                nodes,
                data_dir: data_dir.clone(),
                ports: Ports::Base(base_port),
                shards,
                raft: RaftOptions::default(),
                fault_injection: enable_fault_injection,
                cluster_id,
            };
            let mut file = local_cluster::lay_out(&spec)?;
            let binary = std::env::current_exe()?;
            let started = local_cluster::up(&binary, &mut file, Duration::from_secs(60)).await;
            local_cluster::write_file(&data_dir, &file)?;
            let (_children, status) = started.context("norn cluster up failed; no node is left running")?;
            out!("norn cluster of {nodes} nodes is up ({shards} shards, every shard has a leader)");
            for n in &file.nodes {
                out!(
                    "  node {}: client {}  peer {}  metrics http://{}/metrics  log {}",
                    n.id,
                    n.client_addr,
                    n.raft_addr,
                    n.metrics_addr,
                    n.log.display()
                );
            }
            let leaders = status.nodes.iter().map(|n| {
                let c = n.status.as_ref().map(|s| s.shards.iter().filter(|x| x.role == "leader").count()).unwrap_or(0);
                format!("node {}: {c}", n.node_id)
            });
            out!("  shard leaders per node: {}", leaders.collect::<Vec<_>>().join(", "));
            out!("stop it with: norn cluster down --data-dir {}", data_dir.display());
            Ok(())
        }
        Cmd::Cluster(ClusterCmd::Down { data_dir }) => {
            let n = local_cluster::down(&data_dir, Duration::from_secs(10)).await?;
            out!("stopped {n} node(s)");
            Ok(())
        }
        Cmd::Cluster(ClusterCmd::Status { address, output }) => {
            let s = local_cluster::status(&address).await?;
            match output.as_str() {
                "json" => out!("{}", serde_json::to_string_pretty(&status_json(&s))?),
                "table" => print_status(&s),
                other => anyhow::bail!("unknown --output {other}: use table or json"),
            }
            Ok(())
        }
        Cmd::Bench(BenchCmd::Idle { nodes, shards, workflows, batch, concurrency, idle_every, idle_seconds }) => {
            let opts = norn_node::bench_idle::IdleOptions {
                nodes,
                shards,
                workflows,
                batch,
                concurrency,
                idle_every,
                idle_window: Duration::from_secs(idle_seconds),
            };
            norn_node::bench_idle::run(&std::env::current_exe()?, &opts).await
        }
        Cmd::Bench(BenchCmd::Workflows { address, compare, workflows, activities, concurrency, warmup, matrix }) => {
            use norn_node::bench_workflows::{WorkflowsOptions, MATRIX};
            let workloads: Vec<WorkflowsOptions> = if matrix {
                MATRIX
                    .iter()
                    .map(|&(activities, workflows, concurrency)| WorkflowsOptions {
                        workflows,
                        activities,
                        concurrency,
                        warmup,
                    })
                    .collect()
            } else {
                vec![WorkflowsOptions { workflows, activities, concurrency, warmup }]
            };
            norn_node::bench_workflows::run(&address, compare.as_deref(), &workloads).await
        }
        Cmd::Bench(BenchCmd::Snapshot { mib, value_bytes, concurrency }) => {
            let opts = norn_node::bench_snapshot::SnapshotOptions { size_bytes: mib << 20, value_bytes, concurrency };
            norn_node::bench_snapshot::run(&std::env::current_exe()?, &opts).await
        }
        Cmd::Bench(BenchCmd::Raft { nodes, shards, proposers, seconds, value_bytes, in_flight, threads_per_node }) => {
            let opts = norn_node::bench::BenchOptions {
                nodes,
                shards,
                proposers,
                duration: Duration::from_secs(seconds),
                value_bytes,
                in_flight,
                threads_per_node: threads_per_node.unwrap_or_else(|| norn_node::local_cluster::threads_per_node(nodes)),
            };
            let (fsync, rows) = norn_node::bench::run(&opts).await?;
            print!("{}", norn_node::bench::table(fsync, &rows));
            Ok(())
        }
        Cmd::Debug(DebugCmd::Fuzz { target, execs, seed, corpus, crashes, write_seeds }) => {
            let targets: Vec<&str> =
                if target == "all" { norn_node::fuzz::TARGETS.to_vec() } else { vec![target.as_str()] };
            if write_seeds {
                for t in targets {
                    let n = norn_node::fuzz::write_seeds(t, &corpus.join(t))?;
                    out!("{t}: {n} seeds in {}", corpus.join(t).display());
                }
                return Ok(());
            }
            out!(
                "{:<16} {:>8} {:>12} {:>10} {:>12} {:>8}",
                "target",
                "corpus",
                "execs",
                "seconds",
                "execs/s",
                "crashes"
            );
            let mut found = Vec::new();
            for t in targets {
                let started = tokio::time::Instant::now();
                let r = norn_node::fuzz::run(t, &corpus.join(t), &crashes.join(t), execs, seed)
                    .map_err(anyhow::Error::msg)?;
                let secs = started.elapsed().as_secs_f64();
                out!(
                    "{t:<16} {:>8} {:>12} {secs:>10.1} {:>12.0} {:>8}",
                    r.corpus,
                    r.execs,
                    r.execs as f64 / secs.max(1e-9),
                    r.crashes.len()
                );
                found.extend(r.crashes);
            }
            let steps = norn_node::fuzz::STEPS_APPLIED.load(std::sync::atomic::Ordering::Relaxed);
            if steps > 0 {
                out!("history_engine: {steps} engine steps applied");
            }
            let (calls, ok) = norn_node::fuzz_node::calls();
            if calls > 0 {
                out!("node: {calls} gRPC calls made, {ok} answered OK");
            }
            for (path, why) in &found {
                out!("crash: {}: {why}", path.display());
            }
            anyhow::ensure!(found.is_empty(), "{} inputs panicked", found.len());
            Ok(())
        }
        Cmd::Debug(DebugCmd::History { address, namespace, workflow_id, run_id, local }) => {
            debug_history(&address, &namespace, &workflow_id, &run_id, local).await
        }
        Cmd::Kv(KvCmd::Put { key, value, address }) => {
            let r = admin(&address)
                .await?
                .put(PutRequest { key: key.into_bytes(), value: value.into_bytes(), hops: 0 })
                .await?
                .into_inner();
            out!("ok: shard {} index {} (leader node {})", r.shard, r.index, r.leader);
            Ok(())
        }
        Cmd::Kv(KvCmd::Get { key, address, local }) => {
            let consistency = if local { ReadConsistency::Local } else { ReadConsistency::Linearizable };
            let r = admin(&address)
                .await?
                .get(GetRequest { key: key.into_bytes(), consistency: consistency as i32, hops: 0 })
                .await?
                .into_inner();
            if r.found {
                out!("{}", String::from_utf8_lossy(&r.value));
            } else {
                out!("(not found)");
            }
            Ok(())
        }
    }
}

async fn debug_history(
    address: &str,
    namespace: &str,
    workflow_id: &str,
    run_id: &str,
    local: bool,
) -> anyhow::Result<()> {
    use norn_proto::protos::temporal::api::history::v1::HistoryEvent;
    use prost::Message;
    let mut admin = AdminClient::new(channel(address).await?);
    let mut after = 0;
    loop {
        let r = admin
            .read_history(norn_node::pb::ReadHistoryRequest {
                namespace: namespace.into(),
                workflow_id: workflow_id.into(),
                run_id: run_id.into(),
                local,
                after_event_id: after,
                page_size: 0,
            })
            .await?
            .into_inner();
        for bytes in &r.events {
            let e = HistoryEvent::decode(bytes.as_slice()).context("undecodable event")?;
            let digest = norn_node::placement::stable_hash(&[bytes.as_slice()]);
            let line = serde_json::json!({"event_id": e.event_id, "event_type": e.event_type().as_str_name(), "digest": format!("{digest:016x}")});
            out!("{line}");
            after = e.event_id;
        }
        if !r.more || r.events.is_empty() {
            return Ok(());
        }
    }
}

fn status_json(s: &norn_node::pb::ClusterStatusResponse) -> serde_json::Value {
    use serde_json::json;
    json!({
        "shard_count": s.shard_count,
        "nodes": s.nodes.iter().map(|n| json!({
            "node_id": n.node_id,
            "client_addr": n.client_addr,
            "reachable": n.reachable,
            "error": n.error,
            "wal_syncs": n.status.as_ref().map(|s| s.wal_syncs),
            "shards": n.status.as_ref().map(|st| st.shards.iter().map(|x| json!({
                "shard": x.shard, "role": x.role, "term": x.term, "leader": x.leader,
                "last_log_index": x.last_log_index, "committed_index": x.committed_index,
                "applied_index": x.applied_index, "snapshot_index": x.snapshot_index,
                "purged_index": x.purged_index, "members": x.members,
                "snapshots_installed": x.snapshots_installed, "fatal": x.fatal,
            })).collect::<Vec<_>>()),
        })).collect::<Vec<_>>(),
    })
}
