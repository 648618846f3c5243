//! `norn-sim`: runs simulation seeds and prints a summary table, or replays one seed in detail.

use std::collections::BTreeSet;
use std::time::Duration;

use clap::Parser;
use norn_sim::{run, Fault, SimConfig};

#[derive(Parser, Debug)]
#[command(name = "norn-sim", about = "Deterministic simulation of Norn clusters under seeded faults")]
struct Args {
    /// Run seeds 1..=N.
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<u64>,
    /// Run this one seed and print its fault schedule.
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Fault classes, comma separated (default: all): partition, isolate-leader, split, one-way,
    /// lossy, crash, snapshot-crash, long-outage, power-loss, worker-crash.
    #[arg(long, value_delimiter = ',')]
    faults: Option<Vec<String>>,
    /// Workflows per seed.
    #[arg(long, default_value_t = 10)]
    workflows: usize,
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
}

fn main() {
    let args = Args::parse();
    if ![3, 5].contains(&args.nodes) {
        eprintln!("norn-sim: --nodes must be 3 or 5");
        std::process::exit(2);
    }
    let faults: BTreeSet<Fault> = match &args.faults {
        None => Fault::ALL.into_iter().collect(),
        Some(list) => {
            let mut set = BTreeSet::new();
            for f in list.iter().filter(|f| !f.is_empty()) {
                match Fault::parse(f) {
                    Some(x) => {
                        set.insert(x);
                    }
                    None => {
                        let known: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                        eprintln!("norn-sim: unknown fault {f:?}; known: {}", known.join(", "));
                        std::process::exit(2);
                    }
                }
            }
            set
        }
    };
    if let Some(filter) = &args.log {
        tracing_subscriber::fmt().with_env_filter(filter.as_str()).with_writer(std::io::stderr).init();
    }
    let planted_bug = match args.plant.as_deref() {
        None => None,
        Some(name) => match norn_sim::planted_bug(name) {
            Some(b) => Some(b),
            None => {
                eprintln!(
                    "norn-sim: unknown planted bug {name:?}; known: ack-before-fsync, uncommitted-activity-start, \
                     stale-follower-read"
                );
                std::process::exit(2);
            }
        },
    };
    let config = |seed| SimConfig {
        planted_bug,
        nodes: args.nodes,
        workflows: args.workflows,
        faults: faults.clone(),
        fault_window: Duration::from_secs(args.fault_seconds),
        ..SimConfig::new(seed)
    };
    let seeds: Vec<u64> = match (args.seed, args.seeds) {
        (Some(s), _) => vec![s],
        (None, Some(n)) => (1..=n).collect(),
        (None, None) => (1..=10).collect(),
    };
    println!(
        "{:>8} {:>10} {:>9} {:>7} {:>10} {:>10} {:>18}",
        "seed", "sim_secs", "real_secs", "faults", "completed", "violations", "trace_hash"
    );
    let mut failed = Vec::new();
    let (mut sim_total, mut real_total) = (Duration::ZERO, Duration::ZERO);
    for seed in &seeds {
        let cfg = config(*seed);
        let r = run(&cfg);
        sim_total += r.simulated;
        real_total += r.real;
        println!(
            "{:>8} {:>10.1} {:>9.2} {:>7} {:>10} {:>10} {:>18}",
            r.seed,
            r.simulated.as_secs_f64(),
            r.real.as_secs_f64(),
            r.faults.len(),
            format!("{}/{}", r.completed, cfg.workflows),
            r.violations.len(),
            format!("{:016x}", r.trace_hash)
        );
        if args.seed.is_some() {
            let stats: Vec<String> = r.stats.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            println!("  {}", stats.join(", "));
            let mut lines: Vec<_> = r.faults.iter().map(|(t, f)| (*t, format!("fault: {f}"))).collect();
            lines.extend(r.trace.iter().map(|(t, s)| (*t, format!("driver: {s}"))));
            lines.sort_by_key(|(t, _)| *t);
            for (t, line) in lines {
                println!("  {:>9.3}s  {line}", t.as_secs_f64());
            }
        }
        for v in &r.violations {
            println!("  violation: {v}");
        }
        if !r.violations.is_empty() {
            failed.push(*seed);
        }
    }
    println!(
        "{} seeds, {:.0} simulated seconds in {:.1} real seconds ({:.1} simulated s per real s)",
        seeds.len(),
        sim_total.as_secs_f64(),
        real_total.as_secs_f64(),
        sim_total.as_secs_f64() / real_total.as_secs_f64().max(1e-9)
    );
    if !failed.is_empty() {
        for s in &failed {
            println!(
                "reproduce: cargo run --release -p norn-sim -- --seed {s} --nodes {} --workflows {} --fault-seconds {}{}{}",
                args.nodes,
                args.workflows,
                args.fault_seconds,
                args.faults.as_ref().map(|f| format!(" --faults {}", f.join(","))).unwrap_or_default(),
                args.plant.as_ref().map(|p| format!(" --plant {p}")).unwrap_or_default()
            );
        }
        std::process::exit(1);
    }
}
