//! Local clusters of real `norn` processes on one machine: used by `norn cluster up/down` and by
//! the process tests. Node `i` (1-based) gets client port `base + i - 1`, peer port
//! `base + 100 + i - 1` and metrics port `base + 200 + i - 1`, and keeps its data, config and
//! log under `DIR/node-i/`. `DIR/cluster.json` records what `norn cluster down` must stop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use norn_raft::RaftOptions;
use serde::{Deserialize, Serialize};

use crate::config::{Member, NodeConfig};
use crate::pb::admin_client::AdminClient;
use crate::pb::{ClusterStatusRequest, ClusterStatusResponse};

/// How ports are chosen.
#[derive(Clone, Debug)]
pub enum Ports {
    /// Consecutive ranges from a base port (see the module docs).
    Base(u16),
    /// Free ports picked by the OS (tests).
    Free,
    /// These `(client, peer, metrics)` addresses, one per node (tests that reuse another
    /// cluster's addresses).
    Explicit(Vec<(String, String, String)>),
}

/// What cluster to lay out.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Number of nodes (1, 3 or 5 are typical).
    pub nodes: usize,
    /// Root directory.
    pub data_dir: PathBuf,
    /// Port choice.
    pub ports: Ports,
    /// Shard count.
    pub shards: u32,
    /// Raft timings.
    pub raft: RaftOptions,
    /// Allow fault injection calls.
    pub fault_injection: bool,
    /// The cluster id; empty: a new random one (restarting a cluster keeps the id its
    /// `cluster.json` recorded).
    pub cluster_id: String,
}

/// One node as recorded in `cluster.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Node id.
    pub id: u64,
    /// Process id while running.
    pub pid: Option<u32>,
    /// Client address.
    pub client_addr: String,
    /// Peer address.
    pub raft_addr: String,
    /// Metrics address.
    pub metrics_addr: String,
    /// Config file.
    pub config: PathBuf,
    /// Log file.
    pub log: PathBuf,
}

/// The contents of `cluster.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The cluster's id (in every node's configuration and data directory).
    #[serde(default)]
    pub cluster_id: String,
    /// Every node.
    pub nodes: Vec<NodeEntry>,
}

/// A new random cluster id (a UUID v4 from the OS's entropy).
pub fn new_cluster_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    crate::history::engine::uuid_v4_string(b)
}

/// A port that is free now, taken from 20000..32000: below Linux's ephemeral range, so an outgoing
/// connection of another process cannot grab it between this check and the node's bind. Each
/// call in a process moves on to a new port, so one test run never hands out a port twice.
fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (start + n) % SPAN).context("port range")?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {LOW}..{}", LOW + SPAN)
}

/// Writes every node's config file and returns the layout (nothing started yet).
pub fn lay_out(spec: &ClusterSpec) -> anyhow::Result<ClusterFile> {
    if spec.nodes == 0 {
        bail!("a cluster needs at least one node");
    }
    let mut addrs = Vec::new();
    for i in 0..spec.nodes {
        let (c, r, m) = match spec.ports {
            Ports::Base(p) => {
                let at = |off: usize| -> anyhow::Result<u16> {
                    u16::try_from(usize::from(p) + off + i).context("port out of range: lower --base-port")
                };
                (at(0)?, at(100)?, at(200)?)
            }
            Ports::Free => (free_port()?, free_port()?, free_port()?),
            Ports::Explicit(ref list) => {
                let (c, r, m) = list.get(i).context("fewer explicit addresses than nodes")?.clone();
                addrs.push((c, r, m));
                continue;
            }
        };
        addrs.push((format!("127.0.0.1:{c}"), format!("127.0.0.1:{r}"), format!("127.0.0.1:{m}")));
    }
    let cluster_id = if spec.cluster_id.is_empty() { new_cluster_id() } else { spec.cluster_id.clone() };
    let members: Vec<Member> = addrs
        .iter()
        .enumerate()
        .map(|(i, (c, r, _))| Member { id: i as u64 + 1, raft_addr: r.clone(), client_addr: c.clone() })
        .collect();
    let mut nodes = Vec::new();
    for (i, (c, r, m)) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let dir = spec.data_dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let cfg = NodeConfig {
            cluster_id: cluster_id.clone(),
            node_id: id,
            data_dir: dir.join("data"),
            client_addr: c.clone(),
            raft_addr: r.clone(),
            metrics_addr: Some(m.clone()),
            shards: spec.shards,
            replicas: 3,
            members: members.clone(),
            enable_fault_injection: spec.fault_injection,
            enable_test_map: true,
            worker_threads: threads_per_node(spec.nodes),
            disk_reserve_bytes: 256 << 20,
            lose_unsynced_on_kill: false,
            raft: spec.raft.clone(),
        };
        let config = dir.join("norn.toml");
        std::fs::write(&config, cfg.to_toml()?).with_context(|| format!("write {}", config.display()))?;
        nodes.push(NodeEntry {
            id,
            pid: None,
            client_addr: c.clone(),
            raft_addr: r.clone(),
            metrics_addr: m.clone(),
            config,
            log: dir.join("norn.log"),
        });
    }
    Ok(ClusterFile { cluster_id, nodes })
}

/// Starts one node process, detached in its own process group, logging to its log file.
pub fn spawn(binary: &Path, node: &NodeEntry) -> anyhow::Result<Child> {
    spawn_with_env(binary, node, &[])
}

/// [`spawn`] with extra environment variables (chaos harnesses plant bugs this way).
pub fn spawn_with_env(binary: &Path, node: &NodeEntry, env: &[(&str, &str)]) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    let log = File::options()
        .create(true)
        .append(true)
        .open(&node.log)
        .with_context(|| format!("open {}", node.log.display()))?;
    let err = log.try_clone()?;
    Command::new(binary)
        .arg("server")
        .arg("--config")
        .arg(&node.config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .envs(env.iter().copied())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))
}

/// Starts every node of `file` from `binary` and waits until the cluster is ready; fails, naming
/// the node, when a node process exits (its address taken, say) or when the process answering on
/// a node's address is not the one started here (a stale node of another cluster). The children
/// are returned running.
pub async fn up(
    binary: &Path,
    file: &mut ClusterFile,
    timeout: Duration,
) -> anyhow::Result<(Vec<Child>, ClusterStatusResponse)> {
    let mut children = Vec::new();
    for n in &mut file.nodes {
        let child = spawn(binary, n)?;
        n.pid = Some(child.id());
        children.push(child);
    }
    match wait_started(file, &mut children, timeout).await {
        Ok(status) => Ok((children, status)),
        Err(e) => {
            for c in &mut children {
                let _ = c.kill();
                let _ = c.wait();
            }
            for n in &mut file.nodes {
                n.pid = None;
            }
            Err(e)
        }
    }
}

/// The last lines of a node's log, for error messages.
pub fn log_tail(node: &NodeEntry, lines: usize) -> String {
    let text = std::fs::read_to_string(&node.log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

async fn wait_started(
    file: &ClusterFile,
    children: &mut [Child],
    timeout: Duration,
) -> anyhow::Result<ClusterStatusResponse> {
    let deadline = tokio::time::Instant::now() + timeout;
    let addrs: Vec<String> = file.nodes.iter().map(|n| n.client_addr.clone()).collect();
    loop {
        for (n, c) in file.nodes.iter().zip(children.iter_mut()) {
            if let Some(code) = c.try_wait()? {
                bail!(
                    "node {} exited at start ({code}); its log {} ends with:\n{}",
                    n.id,
                    n.log.display(),
                    log_tail(n, 5)
                );
            }
        }
        let last = match ready_once(&addrs).await {
            Ok(s) => {
                check_processes(file, &s)?;
                return Ok(s);
            }
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            bail!("cluster not ready after {timeout:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks that every node answering is the process started for it, of the right cluster.
pub fn check_processes(file: &ClusterFile, s: &ClusterStatusResponse) -> anyhow::Result<()> {
    for n in &file.nodes {
        let Some(st) = s.nodes.iter().find(|h| h.node_id == n.id).and_then(|h| h.status.as_ref()) else {
            bail!("node {} at {} did not answer", n.id, n.client_addr);
        };
        if st.cluster_id != file.cluster_id {
            bail!(
                "the process on node {}'s address {} belongs to cluster {}, not to the new cluster {}: a node of \
                 another cluster is still running there; stop it (pid {}) and retry",
                n.id,
                n.client_addr,
                st.cluster_id,
                file.cluster_id,
                st.pid
            );
        }
        if n.pid.is_some_and(|p| p != st.pid) {
            bail!(
                "the process answering on node {}'s address {} is pid {}, not pid {} started for it",
                n.id,
                n.client_addr,
                st.pid,
                n.pid.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// One readiness check through any of `client_addrs`.
async fn ready_once(client_addrs: &[String]) -> Result<ClusterStatusResponse, String> {
    let mut last = String::from("no answer yet");
    for addr in client_addrs {
        match status(addr).await {
            Ok(s) => match unready(&s) {
                None => match default_namespace(addr).await {
                    Ok(()) => return Ok(s),
                    Err(e) => last = format!("{addr}: namespace default not ready: {e}"),
                },
                Some(why) => last = why,
            },
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// Polls `client_addr` until every shard has a leader that every reachable node agrees on, all
/// nodes are reachable and the `default` namespace answers, or `timeout` passes.
pub async fn wait_ready(client_addrs: &[String], timeout: Duration) -> anyhow::Result<ClusterStatusResponse> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match ready_once(client_addrs).await {
            Ok(s) => return Ok(s),
            Err(last) if tokio::time::Instant::now() >= deadline => {
                bail!("cluster not ready after {timeout:?}: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Why the cluster is not ready, or `None` if every node answers and every shard has a leader.
pub fn unready(s: &ClusterStatusResponse) -> Option<String> {
    for n in &s.nodes {
        if !n.reachable {
            return Some(format!("node {} unreachable: {}", n.node_id, n.error));
        }
    }
    for shard in 0..s.shard_count {
        let leaders: Vec<u64> = s
            .nodes
            .iter()
            .filter_map(|n| n.status.as_ref())
            .flat_map(|st| st.shards.iter().filter(|x| x.shard == shard && x.role == "leader").map(move |_| st.node_id))
            .collect();
        if leaders.len() != 1 {
            return Some(format!("shard {shard} has leaders {leaders:?}"));
        }
    }
    None
}

/// Asks one node for the cluster status.
pub async fn status(addr: &str) -> anyhow::Result<ClusterStatusResponse> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connect to {addr}"))?;
    Ok(AdminClient::new(ch).cluster_status(ClusterStatusRequest {}).await?.into_inner())
}

/// Asks `addr` to describe the `default` namespace.
async fn default_namespace(addr: &str) -> anyhow::Result<()> {
    use norn_proto::protos::temporal::api::workflowservice::v1::DescribeNamespaceRequest;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connect to {addr}"))?;
    norn_proto::WorkflowServiceClient::new(ch)
        .describe_namespace(DescribeNamespaceRequest { namespace: "default".into(), ..Default::default() })
        .await?;
    Ok(())
}

/// Sends `signal` to a process id; false if it does not exist.
pub fn signal(pid: u32, signal: Signal) -> bool {
    i32::try_from(pid).map(|p| kill(Pid::from_raw(p), signal).is_ok()).unwrap_or(false)
}

/// True while the process exists.
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid).map(|p| kill(Pid::from_raw(p), None).is_ok()).unwrap_or(false)
}

/// Reads `DIR/cluster.json`.
pub fn read_file(dir: &Path) -> anyhow::Result<ClusterFile> {
    let path = dir.join("cluster.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "read {} (was the cluster started with `norn cluster up --data-dir {}`?)",
            path.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// Writes `DIR/cluster.json`.
pub fn write_file(dir: &Path, file: &ClusterFile) -> anyhow::Result<()> {
    let path = dir.join("cluster.json");
    std::fs::write(&path, serde_json::to_vec_pretty(file)?).with_context(|| format!("write {}", path.display()))
}

/// Stops every node of the cluster: the processes `cluster up` recorded, and any process of this
/// cluster answering on a node's address (a node restarted by hand); SIGTERM, then SIGKILL after
/// `grace`. Another cluster's process on an address is left alone.
pub async fn down(dir: &Path, grace: Duration) -> anyhow::Result<usize> {
    let mut file = read_file(dir)?;
    let mut pids: Vec<u32> = file.nodes.iter().filter_map(|n| n.pid).filter(|p| alive(*p)).collect();
    for n in &file.nodes {
        let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(3), status(&n.client_addr)).await else { continue };
        let own = s.nodes.iter().filter_map(|h| h.status.as_ref()).find(|st| st.node_id == n.id);
        if let Some(st) = own.filter(|st| st.cluster_id == file.cluster_id) {
            if !pids.contains(&st.pid) && alive(st.pid) {
                pids.push(st.pid);
            }
        }
    }
    for p in &pids {
        signal(*p, Signal::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while pids.iter().any(|p| alive(*p)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in &pids {
        if alive(*p) {
            signal(*p, Signal::SIGKILL);
        }
    }
    for n in &mut file.nodes {
        n.pid = None;
    }
    write_file(dir, &file)?;
    Ok(pids.len())
}

/// Tokio worker threads for each of `nodes` nodes sharing this machine: its cores divided among
/// them, at least one. Oversubscribed worker threads only add wake-ups and context switches.
pub fn threads_per_node(nodes: usize) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / nodes.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_nodes_share_the_cores_and_get_at_least_one_thread() {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        assert_eq!(super::threads_per_node(1), cores);
        assert_eq!(super::threads_per_node(cores * 2), 1);
        assert_eq!(super::threads_per_node(0), cores);
        assert!(super::threads_per_node(3) >= 1);
    }
}
