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
    /// Workflows in all (measured).
    pub workflows: usize,
    /// Sequential activities per workflow.
    pub activities: u32,
    /// Workflows in flight.
    pub concurrency: usize,
    /// Workflows run first and not measured (connections, caches, leaders warm up).
    pub warmup: usize,
}

/// The standard matrix (`--matrix`): (K, N, C), the rows of the issue that set the targets.
pub const MATRIX: [(u32, usize, usize); 4] = [(1, 200, 1), (1, 1000, 50), (1, 2000, 200), (10, 300, 50)];

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
    /// Each local server process's CPU during the run (its port, percent of one core).
    pub servers: Vec<(u16, f64)>,
    /// This load generator's own CPU during the run (percent of one core).
    pub own_cpu: f64,
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

/// Clock ticks per second of `/proc` CPU times (Linux's USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU of a process so far, in clock ticks (`/proc/PID/stat`), 0 if unreadable.
fn process_ticks(pid: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis
    // start with field 3, so utime and stime (14 and 15) are the 12th and 13th of them.
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// The process on this machine listening on TCP `port`, if any (from the socket tables of
/// `/proc/net` and the descriptors of `/proc/*/fd`; processes of other users are not seen).
fn pid_listening_on(port: u16) -> Option<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else { continue };
            let local_port = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

fn port_of(address: &str) -> Option<u16> {
    address.rsplit_once(':').and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
}

/// The local processes serving `address`: every node of a Norn cluster (its members' client
/// ports, from the admin service), else the one process listening on the address's port.
async fn server_processes(address: &str) -> Vec<(u16, String)> {
    let ports: Vec<u16> = match crate::local_cluster::status(address).await {
        Ok(st) => st.nodes.iter().filter_map(|n| port_of(&n.client_addr)).collect(),
        Err(_) => port_of(address).into_iter().collect(),
    };
    ports.into_iter().filter_map(|port| pid_listening_on(port).map(|pid| (port, pid))).collect()
}

/// Runs `n` workflows of `o.activities` activities, `o.concurrency` at a time; the latency of
/// each, or why it failed.
async fn drive(
    client: &Client,
    queue: &str,
    first: usize,
    n: usize,
    o: &WorkflowsOptions,
) -> Vec<Result<Duration, String>> {
    futures::stream::iter(first..first + n)
        .map(|i| {
            let client = client.clone();
            let queue = queue.to_string();
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
        .await
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
    let warm = o.warmup.min(o.workflows.max(1));
    let warm_opts = WorkflowsOptions { concurrency: o.concurrency.min(warm.max(1)), ..o.clone() };
    for r in drive(&client, &queue, 0, warm, &warm_opts).await {
        if let Err(e) = r {
            anyhow::bail!("a warm-up workflow against {address} failed: {e}");
        }
    }
    let servers = server_processes(address).await;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let server_ticks0: Vec<u64> = servers.iter().map(|(_, pid)| process_ticks(pid)).collect();
    let own0 = process_ticks("self");
    let (busy0, total0) = cpu_jiffies();
    let began = Instant::now();
    let results = drive(&client, &queue, warm, o.workflows, o).await;
    let elapsed = began.elapsed().as_secs_f64();
    let (busy1, total1) = cpu_jiffies();
    let own1 = process_ticks("self");
    let server_cpu: Vec<(u16, f64)> = servers
        .iter()
        .zip(server_ticks0)
        .map(|((port, pid), t0)| {
            (*port, process_ticks(pid).saturating_sub(t0) as f64 / TICKS_PER_SECOND / elapsed.max(1e-9) * 100.0)
        })
        .collect();
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
        servers: server_cpu,
        own_cpu: own1.saturating_sub(own0) as f64 / TICKS_PER_SECOND / elapsed.max(1e-9) * 100.0,
    })
}

/// Runs each workload against `address` and, if given, `compare`, one after the other, and
/// prints a table with the ratio of throughputs.
pub async fn run(address: &str, compare: Option<&str>, workloads: &[WorkflowsOptions]) -> anyhow::Result<()> {
    println!("one worker of Norn's Rust SDK with its default settings per run; CPU is percent of one core");
    println!(
        "{:>3} {:>5} {:>4}  {:<20} {:>7} {:>8} {:>8} {:>8} {:>6} {:>8} {:>6}  server CPU per process (port: %)",
        "K", "N", "C", "address", "wf/s", "p50 ms", "p90 ms", "p99 ms", "failed", "machine", "bench"
    );
    for o in workloads {
        let mut rows = Vec::new();
        for a in std::iter::once(address).chain(compare) {
            let r = run_one(a, o).await?;
            let servers: Vec<String> = r.servers.iter().map(|(port, cpu)| format!("{port}: {cpu:.0}")).collect();
            println!(
                "{:>3} {:>5} {:>4}  {:<20} {:>7.1} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>8.0} {:>6.0}  {}",
                o.activities,
                o.workflows,
                o.concurrency,
                r.address,
                r.per_second,
                r.p[0],
                r.p[1],
                r.p[2],
                r.failed,
                r.cpu,
                r.own_cpu,
                if servers.is_empty() { "(not on this machine)".to_string() } else { servers.join(", ") }
            );
            rows.push(r);
        }
        if let [a, b] = rows.as_slice() {
            println!("{:>16}ratio {} / {}: {:.2}x", "", a.address, b.address, a.per_second / b.per_second.max(1e-9));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_traced_to_its_process_and_its_cpu_read() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert_eq!(pid_listening_on(port), Some(std::process::id().to_string()));
        drop(l);
        assert_eq!(pid_listening_on(port), None, "nobody listens there any more");
        let before = process_ticks("self");
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(process_ticks("self") > before, "300 ms of spinning shows as CPU time");
        assert_eq!(port_of("127.0.0.1:7233"), Some(7233));
    }
}
