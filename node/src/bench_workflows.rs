//! `norn bench workflows`: a load generator on Norn's own Rust SDK. It runs N workflows of K
//! sequential activities, C in flight, against any Temporal-API address with one SDK-default
//! worker, and prints workflows per second and end-to-end latency percentiles; with a second
//! address it runs the same load there and prints the ratio (docs/performance.md).

use std::time::Duration;

use tokio::time::Instant;

use futures::StreamExt;
use norn_client::workflow::{ActivityOptions, WfContext, WfResult};
use norn_client::{Client, ClientOptions, StartOptions, Worker, WorkerOptions};

/// What to run.
#[derive(Clone, Debug)]
pub struct WorkflowsOptions {
    /// Workflows in all.
    pub workflows: usize,
    /// Sequential activities per workflow.
    pub activities: u32,
    /// Workflows in flight.
    pub concurrency: usize,
}

/// One address's result.
#[derive(Clone, Debug)]
pub struct Row {
    /// The address measured.
    pub address: String,
    /// Workflows completed per second.
    pub per_second: f64,
    /// End-to-end latency (start to result) percentiles, ms: p50, p90, p99.
    pub p: [f64; 3],
    /// Workflows that failed.
    pub failed: usize,
    /// The machine's CPU use during the run, percent of one core.
    pub cpu: f64,
}

/// The benchmark's workflow: `n` activities, one after the other.
async fn bench_wf(ctx: WfContext, n: u32) -> WfResult<u32> {
    let mut sum = 0;
    for i in 0..n {
        let r: u32 = ctx.activity("bench_step", &i, ActivityOptions::start_to_close(Duration::from_secs(30))).await?;
        sum += r;
    }
    Ok(sum)
}

/// Busy and total jiffies of the whole machine (`/proc/stat`), or zeros where unreadable.
fn cpu_jiffies() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else { return (0, 0) };
    let Some(line) = text.lines().next() else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Runs the load against `address`.
pub async fn run_one(address: &str, o: &WorkflowsOptions) -> anyhow::Result<Row> {
    let client = Client::connect(&[address], ClientOptions::default()).await?;
    // A queue of this process alone (workflow ids too): runs never see each other's tasks.
    let queue = format!("bench-{}-{}", std::process::id(), rand::random::<u64>());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut worker = Worker::new(client.clone(), WorkerOptions::new(&queue));
    worker.register_workflow("bench", bench_wf).register_activity("bench_step", |_c, i: u32| async move { Ok(i) });
    let worker = tokio::spawn(async move {
        let _ = worker
            .run(async move {
                let _ = stop_rx.await;
            })
            .await;
    });
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let (busy0, total0) = cpu_jiffies();
    let began = Instant::now();
    let results: Vec<Result<Duration, String>> = futures::stream::iter(0..o.workflows)
        .map(|i| {
            let client = client.clone();
            let queue = queue.clone();
            let k = o.activities;
            async move {
                let t = Instant::now();
                let opts = StartOptions::new(format!("{queue}-{i}"), queue.clone());
                let h = client.start_workflow("bench", &k, opts).await.map_err(|e| e.to_string())?;
                h.result::<u32>().await.map_err(|e| e.to_string())?;
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(o.concurrency.max(1))
        .collect()
        .await;
    let elapsed = began.elapsed().as_secs_f64();
    let (busy1, total1) = cpu_jiffies();
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
    let mut ms: Vec<f64> = results.iter().filter_map(|r| r.as_ref().ok()).map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let pct = |q: f64| if ms.is_empty() { 0.0 } else { ms[((ms.len() - 1) as f64 * q).round() as usize] };
    let share = busy1.saturating_sub(busy0) as f64 / total1.saturating_sub(total0).max(1) as f64;
    Ok(Row {
        address: address.to_string(),
        per_second: ms.len() as f64 / elapsed.max(1e-9),
        p: [pct(0.5), pct(0.9), pct(0.99)],
        failed: results.len() - ms.len(),
        cpu: share * cores * 100.0,
    })
}

/// Runs the load against `address` and, if given, `compare`, one after the other, and prints a
/// table (and the ratio of throughputs).
pub async fn run(address: &str, compare: Option<&str>, o: &WorkflowsOptions) -> anyhow::Result<()> {
    println!(
        "{} workflows of {} sequential activities, {} in flight, one worker with the SDK's default settings",
        o.workflows, o.activities, o.concurrency
    );
    println!(
        "{:<24} {:>8} {:>9} {:>9} {:>9} {:>7} {:>10}",
        "address", "wf/s", "p50 ms", "p90 ms", "p99 ms", "failed", "machine CPU %"
    );
    let mut rows = Vec::new();
    for a in std::iter::once(address).chain(compare) {
        let r = run_one(a, o).await?;
        println!(
            "{:<24} {:>8.1} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>10.0}",
            r.address, r.per_second, r.p[0], r.p[1], r.p[2], r.failed, r.cpu
        );
        rows.push(r);
    }
    if let [a, b] = rows.as_slice() {
        println!("ratio {} / {}: {:.2}x", a.address, b.address, a.per_second / b.per_second.max(1e-9));
    }
    Ok(())
}
