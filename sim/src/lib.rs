//! Deterministic simulation of whole Norn clusters.
//!
//! Real node code (frontend, Raft groups, history engine, matching) runs on 3 or 5 turmoil hosts
//! over the in-memory storage engine ([`norn_storage::MemEngine`]) and turmoil's network; a
//! driver host runs a Rust SDK worker and client ([`norn_client`]) over the same network. One
//! seed decides the network's latencies and losses, Raft's election timeouts, and the fault
//! schedule (partitions, node crashes that lose unsynced writes, restarts). After the faults stop
//! the cluster heals, and every workflow must finish with its expected result; then every
//! replica of every shard must hold byte-identical histories.
//!
//! What is checked today and what is not is listed in `docs/simulation.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use norn_client::workflow::{ActivityOptions, WfContext, WfResult};
use norn_client::{ApplicationError, Client, ClientOptions, RetryPolicy, StartOptions, Worker, WorkerOptions};
use norn_node::config::{Member, NodeConfig};
use norn_node::server::{Conn, Incoming, Platform};
use norn_raft::RaftOptions;
use norn_storage::{Cf, Engine, MemDisk, MemEngine};
use rand::{Rng, SeedableRng};

/// The simulated clock starts here (2026-01-01T00:00:00Z), so histories carry plausible times.
const EPOCH_MS: u64 = 1_767_225_600_000;
const CLIENT_PORT: u16 = 7233;
const RAFT_PORT: u16 = 7300;
const TASK_QUEUE: &str = "sim";

/// Fault classes a run may inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Cut one node off from all others for a while.
    Partition,
    /// Kill a node (unsynced writes lost) and restart it later.
    Crash,
    /// Random message loss and latency on every link.
    Lossy,
    /// Every node loses power at once (unsynced writes lost everywhere) and restarts.
    PowerLoss,
}

impl Fault {
    /// Every fault class.
    pub const ALL: [Fault; 4] = [Fault::Partition, Fault::Crash, Fault::Lossy, Fault::PowerLoss];

    /// Parses a name (`partition`, `crash`, `lossy`, `power-loss`).
    pub fn parse(s: &str) -> Option<Fault> {
        match s {
            "partition" => Some(Fault::Partition),
            "crash" => Some(Fault::Crash),
            "lossy" => Some(Fault::Lossy),
            "power-loss" => Some(Fault::PowerLoss),
            _ => None,
        }
    }
}

/// One simulation run's settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Decides everything.
    pub seed: u64,
    /// Cluster size (3 or 5).
    pub nodes: usize,
    /// Shards.
    pub shards: u32,
    /// Workflows the driver runs.
    pub workflows: usize,
    /// Fault classes to inject.
    pub faults: BTreeSet<Fault>,
    /// How long (simulated) faults are injected before the cluster heals.
    pub fault_window: Duration,
    /// Simulated time allowed in all; workflows still open then are a liveness violation.
    pub time_limit: Duration,
    /// A bug planted in every node, to show the checks catch it (tests only).
    pub planted_bug: Option<norn_raft::PlantedBug>,
}

impl SimConfig {
    /// Defaults for `seed`: 3 nodes, 4 shards, 8 workflows, every fault, 60 s of faults.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: 3,
            shards: 4,
            workflows: 8,
            faults: Fault::ALL.into_iter().collect(),
            fault_window: Duration::from_secs(60),
            time_limit: Duration::from_secs(900),
            planted_bug: None,
        }
    }
}

/// What one run did and found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Simulated time the run covered.
    pub simulated: Duration,
    /// Wall-clock time it took.
    pub real: Duration,
    /// Faults injected, in order, with their simulated time.
    pub faults: Vec<(Duration, String)>,
    /// What the driver did, with simulated times.
    pub trace: Vec<(Duration, String)>,
    /// Workflows that finished with the expected result.
    pub completed: usize,
    /// Broken invariants (empty for a clean run).
    pub violations: Vec<String>,
    /// A hash of the run's observable outcome (fault schedule, results, histories): the same
    /// seed gives the same hash.
    pub trace_hash: u64,
}

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

async fn incoming(port: u16) -> std::io::Result<Incoming> {
    let l = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| Conn(Box::new(s)));
        Some((r, l))
    })
    .boxed())
}

fn host(i: usize) -> String {
    format!("node{i}")
}

fn node_config(cfg: &SimConfig, id: u64) -> NodeConfig {
    let members = (1..=cfg.nodes as u64)
        .map(|n| Member {
            id: n,
            raft_addr: format!("{}:{RAFT_PORT}", host(n as usize)),
            client_addr: format!("{}:{CLIENT_PORT}", host(n as usize)),
        })
        .collect();
    NodeConfig {
        node_id: id,
        data_dir: std::path::PathBuf::from(format!("/sim/{}", host(id as usize))),
        client_addr: format!("{}:{CLIENT_PORT}", host(id as usize)),
        raft_addr: format!("{}:{RAFT_PORT}", host(id as usize)),
        metrics_addr: None,
        shards: cfg.shards,
        replicas: 3,
        members,
        enable_fault_injection: false,
        raft: RaftOptions {
            election_timeout_ms_min: 500,
            election_timeout_ms_max: 1000,
            heartbeat_interval_ms: 150,
            propose_timeout_ms: 5_000,
            planted_bug: cfg.planted_bug,
            ..Default::default()
        },
    }
}

/// The workload: an activity that fails its first attempt for odd inputs (retried by the
/// server), a durable timer, and a signal it waits for.
async fn sim_order(ctx: WfContext, n: u64) -> WfResult<u64> {
    let opts = ActivityOptions::start_to_close(Duration::from_secs(10)).retry(RetryPolicy {
        initial_interval: Duration::from_millis(500),
        maximum_interval: Some(Duration::from_secs(5)),
        ..Default::default()
    });
    let charged: u64 = ctx.activity("charge", &n, opts).await?;
    ctx.sleep(Duration::from_secs(1 + n % 3)).await?;
    let bonus: u64 = ctx.signal_channel::<u64>("bonus").recv().await?;
    Ok(charged + bonus)
}

fn expected(n: u64) -> u64 {
    n * 10 + n
}

/// Outcome of the driver host.
#[derive(Default)]
struct Driven {
    trace: Vec<(Duration, String)>,
    results: BTreeMap<u64, Result<u64, String>>,
    histories: BTreeMap<u64, Vec<i32>>,
}

fn note(out: &Arc<Mutex<Driven>>, what: String) {
    let t = turmoil::sim_elapsed().unwrap_or_default();
    out.lock().unwrap_or_else(|p| p.into_inner()).trace.push((t, what));
}

async fn drive(cfg: SimConfig, out: Arc<Mutex<Driven>>) -> turmoil::Result {
    let endpoints: Vec<String> = (1..=cfg.nodes).map(|i| format!("{}:{CLIENT_PORT}", host(i))).collect();
    let options = ClientOptions {
        seed: Some(cfg.seed),
        identity: "sim-driver".into(),
        retry: norn_client::RetryOptions { max_attempts: 200, ..Default::default() },
        ..Default::default()
    };
    // Wait for the cluster (the default namespace) to come up.
    let client = loop {
        match Client::connect_with(&endpoints, options.clone(), Arc::new(SimConnector)).await {
            Ok(c) => match c.count("").await {
                Ok(_) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            },
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let mut worker = Worker::new(client.clone(), WorkerOptions::new(TASK_QUEUE));
    worker.register_workflow("sim_order", sim_order).register_activity(
        "charge",
        |ctx: norn_client::ActivityContext, n: u64| async move {
            if n % 2 == 1 && ctx.info().attempt == 1 {
                return Err(ApplicationError::new(format!("card {n} declined once"), "Declined"));
            }
            Ok(n * 10)
        },
    );
    tokio::spawn(async move {
        let _ = worker.run(futures::future::pending::<()>()).await;
    });
    let mut handles = Vec::new();
    // Starts are spread over the fault window, so faults hit workflows at every stage.
    let gap = cfg.fault_window / (cfg.workflows.max(1) as u32);
    for n in 0..cfg.workflows as u64 {
        if n > 0 {
            tokio::time::sleep(gap).await;
        }
        let opts = StartOptions::new(format!("sim-{n}"), TASK_QUEUE);
        let h = loop {
            match client.start_workflow("sim_order", &n, opts.clone()).await {
                Ok(h) => break h,
                Err(norn_client::Error::AlreadyStarted { run_id, .. }) => {
                    break client.workflow_handle(format!("sim-{n}"), Some(run_id));
                }
                Err(e) => {
                    note(&out, format!("start sim-{n}: {e}; retrying"));
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
            }
        };
        note(&out, format!("started sim-{n}"));
        loop {
            match h.signal("bonus", &n).await {
                Ok(()) => break,
                Err(e) => {
                    note(&out, format!("signal sim-{n}: {e}; retrying"));
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
            }
        }
        note(&out, format!("signaled sim-{n}"));
        handles.push((n, h));
    }
    for (n, h) in handles {
        let r = loop {
            match h.result::<u64>().await {
                Ok(v) => break Ok(v),
                Err(e) if e.is_retryable() => {
                    note(&out, format!("result sim-{n}: {e}; retrying"));
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        note(&out, format!("result sim-{n}: {r:?}"));
        let types = loop {
            match h.history().await {
                Ok(events) => break events.iter().map(|e| e.event_type).collect(),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
        o.results.insert(n, r);
        o.histories.insert(n, types);
    }
    // Let followers catch up (after the heal) before the replicas are compared.
    let healed = cfg.fault_window + Duration::from_secs(15);
    let now = turmoil::sim_elapsed().unwrap_or_default();
    tokio::time::sleep(healed.saturating_sub(now).max(Duration::from_secs(10))).await;
    Ok(())
}

/// History event entries of one shard on one node: key → encoded event.
type ShardHistories = BTreeMap<Vec<u8>, Vec<u8>>;

/// Every `ev/` (history event) entry of each shard on one node's disk.
fn histories_on(disk: &MemDisk) -> BTreeMap<u32, ShardHistories> {
    let engine = MemEngine::open(disk);
    let mut out: BTreeMap<u32, ShardHistories> = BTreeMap::new();
    let Ok(all) = engine.scan_prefix(Cf::State, &[], usize::MAX) else { return out };
    for (k, v) in all {
        if k.len() < 4 {
            continue;
        }
        let group = u32::from_be_bytes([k[0], k[1], k[2], k[3]]);
        if k[4..].starts_with(b"ev/") {
            out.entry(group).or_default().insert(k[4..].to_vec(), v);
        }
    }
    out
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// Runs one seed.
pub fn run(cfg: &SimConfig) -> SimReport {
    // The wall clock measures the run from outside the simulation (for the report only).
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    norn_raft::runtime::seed_thread_rng(cfg.seed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x5eed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .simulation_duration(cfg.time_limit)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .repair_rate(0.02)
        .build();
    let disks: Vec<MemDisk> = (0..cfg.nodes).map(|_| MemDisk::new()).collect();
    for i in 1..=cfg.nodes {
        let disk = disks[i - 1].clone();
        let config = node_config(cfg, i as u64);
        sim.host(host(i), move || {
            let disk = disk.clone();
            let config = config.clone();
            async move {
                let platform = Platform {
                    engine: Arc::new(MemEngine::open(&disk)),
                    connector: Arc::new(SimConnector),
                    clock: Arc::new(SimClock),
                    raft_incoming: incoming(RAFT_PORT).await?,
                    client_incoming: incoming(CLIENT_PORT).await?,
                };
                let _node = norn_node::server::start_on(config, platform, None).await.map_err(|e| e.to_string())?;
                futures::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let driven = Arc::new(Mutex::new(Driven::default()));
    sim.client("driver", drive(cfg.clone(), driven.clone()));

    let mut report = SimReport { seed: cfg.seed, ..Default::default() };
    let mut down: Option<(usize, Duration, bool)> = None; // (node, until, crashed?)
    let mut next_fault = Duration::from_secs(5);
    let mut lossy = false;
    let mut healed_all = false;
    let mut power_back: Option<Duration> = None;
    loop {
        let now = sim.elapsed();
        if now < cfg.fault_window && now >= next_fault && power_back.is_none() {
            if let Some((node, _, crashed)) = down.take() {
                heal(&mut sim, cfg, &disks, node, crashed, &mut report, now);
            }
            let choices: Vec<Fault> = cfg.faults.iter().copied().collect();
            if !choices.is_empty() {
                let node = rng.gen_range(1..=cfg.nodes);
                let length = Duration::from_millis(rng.gen_range(2_000..12_000));
                match choices[rng.gen_range(0..choices.len())] {
                    Fault::Partition => {
                        for other in (1..=cfg.nodes).filter(|o| *o != node) {
                            sim.partition(host(node), host(other));
                        }
                        sim.partition(host(node), "driver");
                        report.faults.push((now, format!("partition {}", host(node))));
                        down = Some((node, now + length, false));
                    }
                    Fault::Crash => {
                        sim.crash(host(node));
                        disks[node - 1].crash();
                        report.faults.push((now, format!("crash {}", host(node))));
                        down = Some((node, now + length, true));
                    }
                    Fault::PowerLoss => {
                        if let Some((n, _, crashed)) = down.take() {
                            heal(&mut sim, cfg, &disks, n, crashed, &mut report, now);
                        }
                        for n in 1..=cfg.nodes {
                            sim.crash(host(n));
                            disks[n - 1].crash();
                        }
                        report.faults.push((now, "power loss: every node".into()));
                        power_back = Some(now + Duration::from_millis(rng.gen_range(1_000..5_000)));
                    }
                    Fault::Lossy => {
                        lossy = !lossy;
                        sim.set_max_message_latency(Duration::from_millis(if lossy { 50 } else { 5 }));
                        sim.set_fail_rate(if lossy { 0.01 } else { 0.0 });
                        report.faults.push((now, format!("lossy links {}", if lossy { "on" } else { "off" })));
                    }
                }
            }
            next_fault = now + Duration::from_millis(rng.gen_range(3_000..15_000));
        }
        if let Some(at) = power_back {
            if now >= at || now >= cfg.fault_window {
                for n in 1..=cfg.nodes {
                    sim.bounce(host(n));
                }
                report.faults.push((now, "power back: every node restarts".into()));
                power_back = None;
            }
        }
        if let Some((node, until, crashed)) = down {
            if now >= until || now >= cfg.fault_window {
                heal(&mut sim, cfg, &disks, node, crashed, &mut report, now);
                down = None;
            }
        }
        if now >= cfg.fault_window && !healed_all {
            healed_all = true;
            lossy = false;
            sim.set_max_message_latency(Duration::from_millis(5));
            sim.set_fail_rate(0.0);
            let mut names: Vec<String> = (1..=cfg.nodes).map(host).collect();
            names.push("driver".into());
            for a in &names {
                for b in &names {
                    if a < b {
                        sim.repair(a.as_str(), b.as_str());
                    }
                }
            }
            report.faults.push((now, "heal: every link repaired".into()));
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                report.violations.push(format!("simulation stopped: {e}"));
                break;
            }
        }
    }
    report.simulated = sim.elapsed();
    report.trace = driven.lock().unwrap_or_else(|p| p.into_inner()).trace.clone();

    // Results: every workflow finished with its expected value.
    let d = driven.lock().unwrap_or_else(|p| p.into_inner());
    for n in 0..cfg.workflows as u64 {
        match d.results.get(&n) {
            Some(Ok(v)) if *v == expected(n) => report.completed += 1,
            Some(Ok(v)) => report.violations.push(format!("sim-{n}: result {v}, expected {}", expected(n))),
            Some(Err(e)) => report.violations.push(format!("sim-{n}: failed: {e}")),
            None => report.violations.push(format!("sim-{n}: did not finish within {:?}", cfg.time_limit)),
        }
    }
    // Replicas: every shard's histories are identical on every node that holds the shard.
    let per_node: Vec<_> = disks.iter().map(histories_on).collect();
    for shard in 0..cfg.shards {
        let holders: Vec<(usize, &ShardHistories)> =
            per_node.iter().enumerate().filter_map(|(i, m)| m.get(&shard).map(|h| (i + 1, h))).collect();
        for w in holders.windows(2) {
            let ((a, ha), (b, hb)) = (w[0], w[1]);
            if let Some(k) = ha.keys().find(|k| hb.get(*k).is_some_and(|v| v != &ha[*k])) {
                report.violations.push(format!(
                    "shard {shard}: fork: {} and {} hold different bytes for {}",
                    host(a),
                    host(b),
                    String::from_utf8_lossy(k)
                ));
            } else if ha.len() != hb.len() {
                report.violations.push(format!(
                    "shard {shard}: replicas did not converge after the heal: {} has {} events, {} has {}",
                    host(a),
                    ha.len(),
                    host(b),
                    hb.len()
                ));
            }
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (t, f) in &report.faults {
        fnv(&mut h, &t.as_millis().to_be_bytes());
        fnv(&mut h, f.as_bytes());
    }
    for (n, r) in &d.results {
        fnv(&mut h, &n.to_be_bytes());
        fnv(&mut h, format!("{r:?}").as_bytes());
    }
    for (n, types) in &d.histories {
        fnv(&mut h, &n.to_be_bytes());
        for t in types {
            fnv(&mut h, &t.to_be_bytes());
        }
    }
    report.trace_hash = h;
    report.real = started.elapsed();
    report
}

fn heal(
    sim: &mut turmoil::Sim<'_>,
    cfg: &SimConfig,
    disks: &[MemDisk],
    node: usize,
    crashed: bool,
    report: &mut SimReport,
    now: Duration,
) {
    let _ = disks;
    if crashed {
        sim.bounce(host(node));
        report.faults.push((now, format!("restart {}", host(node))));
    } else {
        for other in (1..=cfg.nodes).filter(|o| *o != node) {
            sim.repair(host(node), host(other));
        }
        sim.repair(host(node), "driver");
        report.faults.push((now, format!("repair {}", host(node))));
    }
}
