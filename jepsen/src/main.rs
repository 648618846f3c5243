//! `norn-jepsen`: runs a Norn cluster of real processes under faults and checks what it did.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Chaos-test a local Norn cluster of real processes and write a report.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Nodes: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Shards.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Seconds of workload under faults (healing and final checks come after).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// `all`, `none`, or a comma-separated list of: kill, pause, partition-one, partition-halves,
    /// partition-leader, partition-ring, one-way, delay, loss, stale-copy, other-cluster,
    /// clock-skew (needs libfaketime), disk-fail, disk-full.
    #[arg(long, default_value = "all")]
    nemesis: String,
    /// Faults at once: each round begins 1 to this many different nemeses (never two network
    /// layouts, nor two faults on one node's process or disk).
    #[arg(long, default_value_t = 1)]
    mix: usize,
    /// The `norn` binary (default: the one beside this program).
    #[arg(long)]
    norn: Option<PathBuf>,
    /// Report folder (default: jepsen-runs/<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Logical clients (default: 2 per node).
    #[arg(long)]
    processes: Option<u64>,
    /// Plant a known bug in every node to show the checkers catch it: stale-follower-read,
    /// accept-any-cluster, ack-before-fsync, uncommitted-activity-start.
    #[arg(long)]
    planted_bug: Option<String>,
    /// Also drive the workload through Temporal's Python SDK (needs python3 with temporalio).
    #[arg(long)]
    python: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let nemesis: Vec<String> = match a.nemesis.as_str() {
        "all" => norn_jepsen::nemesis::ALL
            .iter()
            .filter(|n| match norn_jepsen::nemesis::unavailable(n) {
                Some(why) => {
                    eprintln!("norn-jepsen: leaving out the {n} nemesis: {why}");
                    false
                }
                None => true,
            })
            .map(|s| s.to_string())
            .collect(),
        "none" | "" => Vec::new(),
        list => list.split(',').map(|s| s.trim().to_string()).collect(),
    };
    for n in &nemesis {
        anyhow::ensure!(
            norn_jepsen::nemesis::ALL.contains(&n.as_str()),
            "unknown nemesis {n}; the nemeses are {}",
            norn_jepsen::nemesis::ALL.join(", ")
        );
        if let Some(why) = norn_jepsen::nemesis::unavailable(n) {
            anyhow::bail!("the {n} nemesis cannot run here: {why}");
        }
    }
    let binary = match a.norn {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("norn"),
    };
    anyhow::ensure!(
        binary.exists(),
        "no norn binary at {}; build it (cargo build --release -p norn-node) or pass --norn",
        binary.display()
    );
    #[allow(clippy::disallowed_methods)] // a folder name, not a measurement
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let out = a.out.unwrap_or_else(|| PathBuf::from(format!("jepsen-runs/{stamp}")));
    let opts = norn_jepsen::Options {
        nodes: a.nodes,
        shards: a.shards,
        time_limit: Duration::from_secs(a.time_limit),
        nemesis,
        binary,
        out: out.clone(),
        seed: a.seed,
        processes: a.processes.unwrap_or(2 * a.nodes as u64),
        planted_bug: a.planted_bug,
        python: a.python,
        mix: a.mix,
    };
    let summary = norn_jepsen::run(&opts).await?;
    print!("{}", std::fs::read_to_string(out.join("summary.txt")).unwrap_or_default());
    println!("report: {}", out.join("index.html").display());
    if !summary.valid {
        std::process::exit(1);
    }
    Ok(())
}
