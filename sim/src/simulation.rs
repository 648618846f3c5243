//! [`Simulation`]: a whole Norn cluster, SDK workers running the given workflows and
//! activities, and a scenario driving them, all inside one seeded turmoil simulation, followed
//! by every check in [`crate::checks`].

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use norn_client::protos::temporal::api::workflowservice::v1::RespondActivityTaskCompletedRequest;
use norn_client::workflow::{WfContext, WfResult};
use norn_client::{
    ActivityContext, ApplicationError, AttemptHook, Client, ClientOptions, Registry, Replayer, Worker, WorkerOptions,
};
use norn_node::server::Platform;
use norn_raft::ObserverSlot;
use norn_storage::{MemDisk, MemEngine};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checks;
use crate::config::SimConfig;
use crate::faults::Faults;
use crate::net::{
    endpoints, incoming, node_config, node_host, now, worker_host, SimClock, SimConnector, CLIENT_PORT, DRIVER,
    RAFT_PORT,
};
use crate::observe::{AttemptRun, Control, NodeHandle, Observations};
use crate::scenario::Scenario;

/// The task queue the simulation's workers poll (pass it in the scenario's start options).
pub const TASK_QUEUE: &str = "sim";

/// How often the run loop samples who leads what (simulated).
const LEADER_SAMPLE_EVERY: Duration = Duration::from_millis(10);

type ScenarioFn = Arc<dyn Fn(Scenario) -> LocalBoxFuture<'static, Result<(), String>> + Send + Sync>;

/// What one run did and found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Simulated time the run covered.
    pub simulated: Duration,
    /// Wall-clock time it took.
    pub real: Duration,
    /// Faults injected and healed, in order, with their simulated time.
    pub faults: Vec<(Duration, String)>,
    /// What the scenario did, with simulated times.
    pub trace: Vec<(Duration, String)>,
    /// Workflows the scenario saw finish as expected.
    pub completed: usize,
    /// Broken invariants (empty for a clean run).
    pub violations: Vec<String>,
    /// Counts of what the run exercised (applied entries, leader terms, attempts, reads, ...).
    pub stats: Vec<(&'static str, u64)>,
    /// A hash of the run's observable outcome (fault schedule, trace, final histories): the
    /// same seed gives the same hash.
    pub trace_hash: u64,
}

/// A simulation: configuration, the workflows and activities the workers run, and the scenario
/// the driver runs. See `docs/simulation.md` for an example.
pub struct Simulation {
    config: SimConfig,
    registry: Registry,
    workflow_types: BTreeSet<String>,
    scenario: Option<ScenarioFn>,
}

impl Simulation {
    /// A simulation with no workflows and no scenario yet.
    pub fn new(config: SimConfig) -> Simulation {
        Simulation { config, registry: Registry::default(), workflow_types: BTreeSet::new(), scenario: None }
    }

    /// Its configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Registers a workflow the workers run (and the replay check replays).
    pub fn workflow<A, R, F, Fut>(mut self, workflow_type: &str, f: F) -> Simulation
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(WfContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = WfResult<R>> + 'static,
    {
        self.registry.register_workflow(workflow_type, f);
        self.workflow_types.insert(workflow_type.into());
        self
    }

    /// Registers an activity the workers run.
    pub fn activity<A, R, F, Fut>(mut self, activity_type: &str, f: F) -> Simulation
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(ActivityContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ApplicationError>> + Send + 'static,
    {
        self.registry.register_activity(activity_type, f);
        self
    }

    /// The scenario: client code that starts workflows and checks their results through the
    /// [`Scenario`]'s calls; an `Err` is reported as a violation. It runs while faults are
    /// injected; it must finish (every workflow it waits for must close) before the time limit.
    pub fn scenario<F, Fut>(mut self, f: F) -> Simulation
    where
        F: Fn(Scenario) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + 'static,
    {
        self.scenario = Some(Arc::new(move |s| f(s).boxed_local()));
        self
    }

    /// Runs the simulation and every check, on a thread of its own: thread-local state (tokio's
    /// and the standard library's) left by an earlier run in the same thread would otherwise
    /// change the run, and the same seed must always run the same way.
    pub fn run(&self) -> SimReport {
        let outcome = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name(format!("norn-sim-seed-{}", self.config.seed))
                .stack_size(64 << 20)
                .spawn_scoped(scope, || run(self))
                .map(|t| t.join())
        });
        match outcome {
            Ok(Ok(report)) => report,
            Ok(Err(panic)) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                SimReport {
                    seed: self.config.seed,
                    violations: vec![format!("the simulation panicked: {why}")],
                    ..Default::default()
                }
            }
            Err(e) => SimReport {
                seed: self.config.seed,
                violations: vec![format!("could not start the simulation's thread: {e}")],
                ..Default::default()
            },
        }
    }
}

fn client_options(identity: String, seed: u64, routing: bool) -> ClientOptions {
    ClientOptions {
        seed: Some(seed),
        identity,
        shard_routing: routing,
        retry: norn_client::RetryOptions { max_attempts: if routing { 200 } else { 3 }, ..Default::default() },
        ..Default::default()
    }
}

/// Connects until the cluster answers (the `default` namespace exists).
async fn connect(endpoints: &[String], options: ClientOptions) -> Client {
    loop {
        match Client::connect_with(endpoints, options.clone(), Arc::new(SimConnector)).await {
            Ok(c) => match c.count("").await {
                Ok(_) => return c,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            },
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn mix(a: u64, b: u64) -> u64 {
    let mut h = a ^ 0x9e37_79b9_7f4a_7c15;
    h = (h ^ b).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 31)
}

/// Records each activity attempt, and for every attempt after the first sends a completion
/// with the previous attempt's token, which the server must refuse.
fn attempt_hook(obs: Observations, worker: usize) -> AttemptHook {
    AttemptHook(Some(Arc::new(move |ctx: &ActivityContext| {
        let i = ctx.info();
        let mut o = obs.lock();
        o.attempts.push(AttemptRun {
            workflow_id: i.workflow_id.clone(),
            run_id: i.run_id.clone(),
            activity_id: i.activity_id.clone(),
            attempt: i.attempt,
            worker,
            at: now(),
        });
        let key = (i.workflow_id.clone(), i.run_id.clone(), i.activity_id.clone());
        let earlier = o.tokens.get(&(key.clone(), i.attempt - 1)).cloned();
        o.tokens.insert((key, i.attempt), ctx.task_token().to_vec());
        let Some(old_token) = earlier else { return };
        o.stale_sent += 1;
        drop(o);
        let Ok(mut raw) = ctx.client().raw() else { return };
        let (obs, who) = (obs.clone(), format!("{} {} attempt {}", i.workflow_id, i.activity_id, i.attempt - 1));
        let req = RespondActivityTaskCompletedRequest {
            task_token: old_token,
            identity: format!("worker{worker}-stale-probe"),
            namespace: ctx.client().namespace().into(),
            ..Default::default()
        };
        tokio::spawn(async move {
            if raw.respond_activity_task_completed(req).await.is_ok() {
                obs.lock().stale_accepted.push(who);
            }
        });
    })))
}

/// tokio numbers tasks from one counter per process and files each task in one of a few lists by
/// its number; when a host crashes, its runtime drops its tasks list by list, and the order in
/// which their sockets close reaches the network. Spawning throwaway tasks until the counter
/// sits at a multiple of 64 starts every run at the same place, so a second run in one process
/// (a loop over seeds, a test binary) behaves exactly like a first run in a fresh one.
fn align_task_ids() {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else { return };
    rt.block_on(async {
        for _ in 0..64 {
            let Ok(id) = tokio::spawn(async { tokio::task::id() }).await else { return };
            if id.to_string().parse::<u64>().map_or(true, |n| n % 64 == 0) {
                return;
            }
        }
    });
}

/// What the fault schedule controls on one node host besides its network and disk.
#[derive(Clone)]
pub struct NodeCtl {
    /// Free bytes the node's disk reports (plenty unless a disk-full fault is on).
    pub free_bytes: Arc<AtomicU64>,
    /// The host runs another cluster's node (on `stale_disk`) instead of the member.
    pub stale: Arc<std::sync::atomic::AtomicBool>,
    /// The other cluster's node's disk.
    pub stale_disk: MemDisk,
}

impl Default for NodeCtl {
    fn default() -> Self {
        Self { free_bytes: Arc::new(AtomicU64::new(u64::MAX)), stale: Arc::default(), stale_disk: MemDisk::new() }
    }
}

fn run(s: &Simulation) -> SimReport {
    let cfg = &s.config;
    // The wall clock measures the run from outside the simulation (for the report only).
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    norn_raft::runtime::seed_thread_rng(cfg.seed);
    norn_raft::runtime::record_task_panics();
    align_task_ids();
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5eed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(cfg.seed)
        .simulation_duration(cfg.time_limit)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .repair_rate(0.02)
        .build();
    let obs = Observations::default();
    let disks: Vec<MemDisk> = (0..cfg.nodes).map(|_| MemDisk::new()).collect();
    let ctls: Vec<NodeCtl> = (0..cfg.nodes).map(|_| NodeCtl::default()).collect();
    for i in 1..=cfg.nodes {
        let (disk, ctl) = (disks[i - 1].clone(), ctls[i - 1].clone());
        let mut config = node_config(cfg, i as u64);
        config.raft.apply_observer = ObserverSlot(Some(obs.apply_observer(i)));
        // The same member as another cluster's node would start it: its own data, its own id.
        let mut stale_config = config.clone();
        stale_config.cluster_id = "another-cluster".into();
        stale_config.raft.apply_observer = ObserverSlot(None);
        let obs = obs.clone();
        sim.host(node_host(i), move || {
            let (disk, ctl, obs) = (disk.clone(), ctl.clone(), obs.clone());
            let stale = ctl.stale.load(Ordering::Relaxed);
            let config = if stale { stale_config.clone() } else { config.clone() };
            async move {
                let disk = if stale { ctl.stale_disk.clone() } else { disk };
                let free = ctl.free_bytes.clone();
                let platform = Platform {
                    engine: Arc::new(MemEngine::open(&disk)),
                    connector: Arc::new(SimConnector),
                    clock: Arc::new(SimClock),
                    raft_incoming: incoming(RAFT_PORT).await?,
                    client_incoming: incoming(CLIENT_PORT).await?,
                    free_bytes: Box::new(move || Some(free.load(Ordering::Relaxed))),
                };
                if stale {
                    // Another cluster's node: it must get nowhere; it is not observed.
                    let _node = norn_node::server::start_on(config, platform, None).await.map_err(|e| e.to_string())?;
                    futures::future::pending::<()>().await;
                    return Ok(());
                }
                let node = norn_node::server::start_on(config, platform, None).await.map_err(|e| e.to_string())?;
                let (control, mut requests) = tokio::sync::mpsc::unbounded_channel();
                obs.lock().nodes.insert(i, NodeHandle { raft: node.raft.clone(), control });
                while let Some(c) = requests.recv().await {
                    match c {
                        Control::SnapshotAll => {
                            for g in node.raft.group_ids() {
                                let _ = node.raft.trigger_snapshot(g).await;
                            }
                        }
                    }
                }
                futures::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let incarnations = Arc::new(AtomicU64::new(0));
    for w in 1..=cfg.workers {
        let (registry, obs, endpoints, seed) = (s.registry.clone(), obs.clone(), endpoints(cfg), cfg.seed);
        let incarnations = incarnations.clone();
        sim.host(worker_host(w), move || {
            let (registry, obs, endpoints) = (registry.clone(), obs.clone(), endpoints.clone());
            // A restarted worker draws fresh request ids: it is a new process.
            let incarnation = incarnations.fetch_add(1, Ordering::Relaxed);
            async move {
                let client = connect(&endpoints, client_options(worker_host(w), mix(seed, incarnation), true)).await;
                let mut options = WorkerOptions::new(TASK_QUEUE);
                options.on_activity_attempt = attempt_hook(obs, w);
                let mut worker = Worker::new(client, options);
                *worker.registry_mut() = registry;
                let _ = worker.run(futures::future::pending::<()>()).await;
                Ok(())
            }
        });
    }
    let finished = Arc::new(Mutex::new(None::<Result<(), String>>));
    {
        let (scenario, obs, finished) = (s.scenario.clone(), obs.clone(), finished.clone());
        let (endpoints, seed, quiet_until) = (endpoints(cfg), cfg.seed, cfg.fault_window + Duration::from_secs(15));
        let scenario_rng = Arc::new(Mutex::new(StdRng::seed_from_u64(rng.gen())));
        sim.client(DRIVER, async move {
            let client = connect(&endpoints, client_options(DRIVER.into(), mix(seed, 1 << 40), true)).await;
            let mut readers = Vec::new();
            for (i, e) in endpoints.iter().enumerate() {
                let o = client_options(format!("{DRIVER}-reader{}", i + 1), mix(seed, (1 << 41) + i as u64), false);
                readers.push(connect(std::slice::from_ref(e), o).await);
            }
            let scn = Scenario { client, readers, obs, rng: scenario_rng };
            let outcome = match scenario {
                Some(f) => f(scn).await,
                None => Ok(()),
            };
            *finished.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
            // Let followers catch up after the heal before the replicas are compared.
            tokio::time::sleep(quiet_until.saturating_sub(now()).max(Duration::from_secs(10))).await;
            Ok(())
        });
    }

    let mut report = SimReport { seed: cfg.seed, ..Default::default() };
    let mut faults = Faults::new(cfg, StdRng::seed_from_u64(rng.gen()), ctls);
    let mut next_sample = Duration::ZERO;
    loop {
        faults.step(&mut sim, &disks, &obs);
        if sim.elapsed() >= next_sample {
            obs.sample_leaders();
            next_sample = sim.elapsed() + LEADER_SAMPLE_EVERY;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                let msg = e.to_string();
                if !msg.contains("Ran for duration") {
                    report.violations.push(format!("simulation stopped: {msg}"));
                }
                break;
            }
        }
    }
    report.simulated = sim.elapsed();
    report.faults = faults.log.clone();
    for p in norn_raft::runtime::take_task_panics() {
        report.violations.push(format!("a node panicked in a Raft task: {p}"));
    }
    check(s, &disks, &obs, &faults, finished, &mut report);
    report.real = started.elapsed();
    report
}

fn check(
    s: &Simulation,
    disks: &[MemDisk],
    obs: &Observations,
    faults: &Faults,
    finished: Arc<Mutex<Option<Result<(), String>>>>,
    report: &mut SimReport,
) {
    let cfg = &s.config;
    // A replica whose data a flipped bit damaged is out of its shard: it is not compared.
    let per_node: Vec<_> = disks
        .iter()
        .map(checks::disk::read)
        .enumerate()
        .map(|(i, mut m)| {
            m.retain(|shard, _| !faults.damaged.contains(&(i + 1, *shard)));
            m
        })
        .collect();
    let runs = checks::histories::final_runs(&per_node);
    match finished.lock().unwrap_or_else(|p| p.into_inner()).take() {
        None => {
            let open: Vec<String> =
                runs.values().filter(|r| r.state.is_open()).map(|r| r.state.workflow_id.clone()).collect();
            report.violations.push(format!(
                "liveness: the scenario did not finish within {:?}; open workflows: {open:?}",
                cfg.time_limit
            ));
        }
        Some(Err(e)) => report.violations.push(format!("scenario: {e}")),
        Some(Ok(())) => {}
    }
    let o = obs.lock();
    report.violations.extend(checks::raft::check(&o));
    report.violations.extend(checks::replicas::check(&per_node, cfg.shards));
    report.violations.extend(checks::histories::check(&per_node, &runs));
    report.violations.extend(checks::ops::check(&o, &runs));
    let replayer = Replayer::from_registry(s.registry.clone());
    let (replay_violations, replayed) = checks::replay::check(&replayer, &s.workflow_types, &runs);
    report.violations.extend(replay_violations);
    report.completed = o.completed;
    report.trace = o.trace.clone();
    let snapshot_installs: u64 = o.nodes.values().flat_map(|h| h.raft.status()).map(|st| st.snapshots_installed).sum();
    let outage_installs: u64 = o
        .nodes
        .iter()
        .filter(|(id, _)| faults.outage_nodes.contains(id))
        .flat_map(|(_, h)| h.raft.status())
        .map(|st| st.snapshots_installed)
        .sum();
    report.stats = vec![
        ("entries applied", o.applied.len() as u64),
        ("leaders elected", o.leaders.len() as u64),
        ("activity attempts", o.attempts.len() as u64),
        ("stale completions sent", o.stale_sent as u64),
        ("history reads", o.reads.len() as u64),
        ("runs", runs.len() as u64),
        ("histories replayed", replayed as u64),
        ("snapshots installed", snapshot_installs),
        ("snapshots installed after long outages", outage_installs),
    ];
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for (t, f) in report.faults.iter().chain(report.trace.iter()) {
        parts.push(t.as_millis().to_be_bytes().to_vec());
        parts.push(f.as_bytes().to_vec());
    }
    for (id, r) in &runs {
        parts.push(id.as_bytes().to_vec());
        parts.extend(r.events.iter().map(|e| e.event_type.to_be_bytes().to_vec()));
    }
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    report.trace_hash = norn_node::placement::stable_hash(&parts);
}
