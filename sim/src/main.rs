//! `norn-sim`: runs simulation seeds and prints a summary table, or replays one seed in detail.
//!
//! With `--seeds N` every seed runs in a process of its own (this binary, started again with
//! `--seed S --report-json`), `--jobs` at a time: a seed's run then never depends on what ran
//! before it in the same process, so the command printed for a failed seed replays exactly it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use norn_sim::{run, Fault, SimConfig, SimReport};

#[derive(Parser, Debug, Clone)]
#[command(name = "norn-sim", about = "Deterministic simulation of Norn clusters under seeded faults")]
struct Args {
    /// Run seeds 1..=N (each in its own process).
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<u64>,
    /// Run this one seed and print its fault schedule and trace.
    #[arg(long)]
    seed: Option<u64>,
    /// Seeds run at once with `--seeds` (processes).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Nodes (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Fault classes, comma separated (default: all): partition, isolate-leader, split, one-way,
    /// lossy, crash, snapshot-crash, long-outage, power-loss, worker-crash, torn-crash,
    /// failing-fsync, bit-flip, disk-full, stale-node.
    #[arg(long, value_delimiter = ',')]
    faults: Option<Vec<String>>,
    /// Workflows per seed.
    #[arg(long, default_value_t = 10)]
    workflows: usize,
    /// Idle workflows per seed (started on a task queue no worker polls, open all run).
    #[arg(long, default_value_t = 100)]
    idle_workflows: usize,
    /// Seconds of simulated time with faults before the cluster heals.
    #[arg(long, default_value_t = 60)]
    fault_seconds: u64,
    /// Plant a bug in every node to see the checks catch it: `ack-before-fsync`,
    /// `uncommitted-activity-start`, `stale-follower-read`.
    #[arg(long)]
    plant: Option<String>,
    /// Log filter for the nodes' tracing output (e.g. `info`), printed with `--seed`.
    #[arg(long)]
    log: Option<String>,
    /// Print the one seed's report as one JSON line (what `--seeds` reads from its children).
    #[arg(long, hide = true)]
    report_json: bool,
}

fn fail(msg: String) -> ! {
    eprintln!("norn-sim: {msg}");
    std::process::exit(2);
}

fn config(args: &Args, seed: u64) -> SimConfig {
    let faults: BTreeSet<Fault> = match &args.faults {
        None => Fault::ALL.into_iter().collect(),
        Some(list) => list
            .iter()
            .filter(|f| !f.is_empty())
            .map(|f| {
                Fault::parse(f).unwrap_or_else(|| {
                    let known: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                    fail(format!("unknown fault {f:?}; known: {}", known.join(", ")))
                })
            })
            .collect(),
    };
    let planted_bug = args.plant.as_deref().map(|name| {
        norn_sim::planted_bug(name).unwrap_or_else(|| {
            fail(format!(
                "unknown planted bug {name:?}; known: ack-before-fsync, uncommitted-activity-start, stale-follower-read"
            ))
        })
    });
    SimConfig {
        planted_bug,
        nodes: args.nodes,
        workflows: args.workflows,
        idle_workflows: args.idle_workflows,
        faults,
        fault_window: Duration::from_secs(args.fault_seconds),
        ..SimConfig::new(seed)
    }
}

/// One row of the summary.
struct Row {
    seed: u64,
    simulated: f64,
    real: f64,
    faults: usize,
    completed: usize,
    violations: Vec<String>,
    trace_hash: String,
}

impl Row {
    fn of(r: &SimReport) -> Row {
        Row {
            seed: r.seed,
            simulated: r.simulated.as_secs_f64(),
            real: r.real.as_secs_f64(),
            faults: r.faults.len(),
            completed: r.completed,
            violations: r.violations.clone(),
            trace_hash: format!("{:016x}", r.trace_hash),
        }
    }

    fn json(&self) -> String {
        serde_json::json!({
            "seed": self.seed,
            "simulated_s": self.simulated,
            "real_s": self.real,
            "faults": self.faults,
            "completed": self.completed,
            "violations": self.violations,
            "trace_hash": self.trace_hash,
        })
        .to_string()
    }

    fn from_json(seed: u64, line: &str) -> Option<Row> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(Row {
            seed,
            simulated: v["simulated_s"].as_f64()?,
            real: v["real_s"].as_f64()?,
            faults: v["faults"].as_u64()? as usize,
            completed: v["completed"].as_u64()? as usize,
            violations: v["violations"].as_array()?.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            trace_hash: v["trace_hash"].as_str()?.to_string(),
        })
    }
}

fn print_header() {
    println!(
        "{:>8} {:>10} {:>9} {:>7} {:>10} {:>10} {:>18}",
        "seed", "sim_secs", "real_secs", "faults", "completed", "violations", "trace_hash"
    );
}

fn print_row(r: &Row, workflows: usize) {
    println!(
        "{:>8} {:>10.1} {:>9.2} {:>7} {:>10} {:>10} {:>18}",
        r.seed,
        r.simulated,
        r.real,
        r.faults,
        format!("{}/{workflows}", r.completed),
        r.violations.len(),
        r.trace_hash
    );
    for v in &r.violations {
        println!("  violation: {v}");
    }
}

fn reproduce(args: &Args, seed: u64) -> String {
    format!(
        "cargo run --release -p norn-sim -- --seed {seed} --nodes {} --workflows {} --fault-seconds {}{}{}",
        args.nodes,
        args.workflows,
        args.fault_seconds,
        args.faults.as_ref().map(|f| format!(" --faults {}", f.join(","))).unwrap_or_default(),
        args.plant.as_ref().map(|p| format!(" --plant {p}")).unwrap_or_default()
    )
}

/// Log lines carry the simulated time.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{:>10.3}s", turmoil::sim_elapsed().unwrap_or_default().as_secs_f64())
    }
}

fn one_seed(args: &Args, seed: u64) {
    if let Some(filter) = &args.log {
        tracing_subscriber::fmt()
            .with_env_filter(filter.as_str())
            .with_timer(SimTime)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let cfg = config(args, seed);
    let r = run(&cfg);
    let row = Row::of(&r);
    if args.report_json {
        println!("{}", row.json());
        return;
    }
    print_header();
    print_row(&row, cfg.workflows);
    let stats: Vec<String> = r.stats.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!("  {}", stats.join(", "));
    let mut lines: Vec<_> = r.faults.iter().map(|(t, f)| (*t, format!("fault: {f}"))).collect();
    lines.extend(r.trace.iter().map(|(t, s)| (*t, format!("driver: {s}"))));
    lines.sort_by_key(|(t, _)| *t);
    for (t, line) in lines {
        println!("  {:>9.3}s  {line}", t.as_secs_f64());
    }
    if !r.violations.is_empty() {
        println!("reproduce: {}", reproduce(args, seed));
        std::process::exit(1);
    }
}

fn spawn(args: &Args, seed: u64) -> Child {
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(format!("cannot find this program: {e}")));
    let mut cmd = Command::new(exe);
    cmd.args(["--seed", &seed.to_string(), "--report-json"])
        .args(["--nodes", &args.nodes.to_string(), "--workflows", &args.workflows.to_string()])
        .args(["--fault-seconds", &args.fault_seconds.to_string()]);
    if let Some(f) = &args.faults {
        cmd.args(["--faults", &f.join(",")]);
    }
    if let Some(p) = &args.plant {
        cmd.args(["--plant", p]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    cmd.spawn().unwrap_or_else(|e| fail(format!("cannot start a seed's process: {e}")))
}

fn collect(seed: u64, child: Child) -> Row {
    let lost = |why: String| Row {
        seed,
        simulated: 0.0,
        real: 0.0,
        faults: 0,
        completed: 0,
        violations: vec![format!("the seed's process failed: {why}")],
        trace_hash: "-".into(),
    };
    match child.wait_with_output() {
        Err(e) => lost(e.to_string()),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            match text.lines().rev().find_map(|l| Row::from_json(seed, l)) {
                Some(row) => row,
                None => lost(format!("{} (no report; it may have panicked)", out.status)),
            }
        }
    }
}

fn main() {
    let args = Args::parse();
    if ![3, 5].contains(&args.nodes) {
        fail("--nodes must be 3 or 5".into());
    }
    if let Some(seed) = args.seed {
        one_seed(&args, seed);
        return;
    }
    let seeds: Vec<u64> = (1..=args.seeds.unwrap_or(10)).collect();
    // The wall clock measures the whole batch from outside the simulations.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    print_header();
    let mut queue: VecDeque<u64> = seeds.iter().copied().collect();
    let mut running: VecDeque<(u64, Child)> = VecDeque::new();
    let mut done: BTreeMap<u64, Row> = BTreeMap::new();
    let mut next_to_print = seeds.first().copied().unwrap_or(1);
    while !queue.is_empty() || !running.is_empty() {
        while running.len() < args.jobs.max(1) {
            let Some(seed) = queue.pop_front() else { break };
            running.push_back((seed, spawn(&args, seed)));
        }
        if let Some((seed, child)) = running.pop_front() {
            done.insert(seed, collect(seed, child));
        }
        while let Some(row) = done.get(&next_to_print) {
            print_row(row, args.workflows);
            next_to_print += 1;
        }
    }
    let (sim_total, real_total): (f64, f64) =
        done.values().map(|r| (r.simulated, r.real)).fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let wall = started.elapsed().as_secs_f64();
    let faults: usize = done.values().map(|r| r.faults).sum();
    let completed: usize = done.values().map(|r| r.completed).sum();
    let violations: usize = done.values().map(|r| r.violations.len()).sum();
    println!();
    println!(
        "{:>8} {:>10} {:>10} {:>8} {:>12} {:>10}",
        "seeds", "sim_hours", "real_secs", "faults", "completed", "violations"
    );
    println!(
        "{:>8} {:>10.3} {:>10.1} {:>8} {:>12} {:>10}",
        seeds.len(),
        sim_total / 3600.0,
        real_total,
        faults,
        format!("{completed}/{}", seeds.len() * args.workflows),
        violations
    );
    println!(
        "{} seeds, {:.0} simulated seconds in {:.1} real seconds of simulation ({:.1} simulated s per real s), \
         {wall:.1} s wall clock with {} jobs ({:.1} seeds per minute)",
        seeds.len(),
        sim_total,
        real_total,
        sim_total / real_total.max(1e-9),
        args.jobs.max(1),
        seeds.len() as f64 * 60.0 / wall.max(1e-9)
    );
    let failed: Vec<u64> = done.values().filter(|r| !r.violations.is_empty()).map(|r| r.seed).collect();
    if !failed.is_empty() {
        for s in &failed {
            println!("reproduce: {}", reproduce(&args, *s));
        }
        std::process::exit(1);
    }
}
