//! A local cluster of real `norn` processes whose every link goes through the harness's proxies.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use norn_node::config::{Member, NodeConfig};
use norn_node::local_cluster::{self, NodeEntry};
use norn_node::pb::admin_client::AdminClient;
use norn_node::pb::{NodeStatusRequest, NodeStatusResponse};

use crate::proxy::{Net, Port, Proxy};

/// One node: its real addresses, its config, its process.
pub struct Node {
    /// Id (1-based).
    pub id: u64,
    /// What `local_cluster::spawn` needs (config and log paths, real addresses).
    pub entry: NodeEntry,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The running process, if any.
    pub child: Option<Child>,
    /// Stopped with SIGSTOP.
    pub paused: bool,
    /// Times started.
    pub starts: u32,
}

/// The cluster.
pub struct Cluster {
    /// Nodes, index `id - 1`.
    pub nodes: Vec<Node>,
    /// The proxies.
    pub net: Net,
    /// The `norn` binary.
    pub binary: PathBuf,
    /// The cluster id.
    pub cluster_id: String,
    /// Shards.
    pub shards: u32,
    /// Where everything lives.
    pub dir: PathBuf,
    /// A bug planted in every member (`NORN_PLANTED_BUG`), to show the checkers catch it.
    pub planted_bug: Option<String>,
    /// libfaketime, when installed: every member runs under it so one node's wall clock can be
    /// moved (the clock-skew nemesis).
    pub faketime: Option<PathBuf>,
}

/// Where Debian's `faketime` package puts the library (its thread-safe build: a node is
/// multi-threaded).
const FAKETIME_LIBS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
];

/// libfaketime, if installed.
pub fn faketime_lib() -> Option<PathBuf> {
    FAKETIME_LIBS.iter().map(PathBuf::from).find(|p| p.exists())
}

/// A free port for a node to listen on, below the kernel's ephemeral range (32768 and up on
/// Linux): a port taken from that range and released until the node binds it can be taken in
/// between by any outgoing connection (the proxies make many), and the node then fails to start
/// ("bind metrics address"), as a CI run once showed.
fn free_addr() -> anyhow::Result<String> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 1000) as u16 * 12;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (start - 20_000 + n) % 12_000;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return Ok(l.local_addr()?.to_string());
        }
    }
    anyhow::bail!("no free port between 20000 and 32000")
}

impl Cluster {
    /// Lays out `n` nodes under `dir` with proxies on every link, and starts them.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        n: usize,
        shards: u32,
        planted_bug: Option<String>,
    ) -> anyhow::Result<Cluster> {
        let cluster_id = local_cluster::new_cluster_id();
        let mut real = Vec::new();
        for _ in 0..n {
            real.push((free_addr()?, free_addr()?, free_addr()?));
        }
        let mut net = Net::default();
        for i in 0..=n as u64 {
            for j in 1..=n as u64 {
                if i == j {
                    continue;
                }
                let (c, r, _) = &real[(j - 1) as usize];
                net.links.insert((i, j, Port::Client), Proxy::start(c.clone()).await?);
                if i > 0 {
                    net.links.insert((i, j, Port::Peer), Proxy::start(r.clone()).await?);
                }
            }
        }
        let mut nodes = Vec::new();
        for i in 1..=n as u64 {
            let (c, r, m) = &real[(i - 1) as usize];
            let node_dir = dir.join(format!("node-{i}"));
            std::fs::create_dir_all(&node_dir)?;
            // Each node sees its peers at the proxies of its own links to them.
            let members = (1..=n as u64)
                .map(|j| {
                    if j == i {
                        Member { id: j, raft_addr: r.clone(), client_addr: c.clone() }
                    } else {
                        Member {
                            id: j,
                            raft_addr: net.links[&(i, j, Port::Peer)].listen.clone(),
                            client_addr: net.links[&(i, j, Port::Client)].listen.clone(),
                        }
                    }
                })
                .collect();
            let cfg = NodeConfig {
                cluster_id: cluster_id.clone(),
                node_id: i,
                data_dir: node_dir.join("data"),
                client_addr: c.clone(),
                raft_addr: r.clone(),
                metrics_addr: Some(m.clone()),
                shards,
                replicas: 3,
                members,
                // The disk nemeses inject through the node's admin service.
                enable_fault_injection: true,
                enable_test_map: true,
                worker_threads: local_cluster::threads_per_node(n),
                disk_reserve_bytes: 64 << 20,
                // Every kill is a power loss: what a node did not sync is gone.
                lose_unsynced_on_kill: true,
                raft: norn_raft::RaftOptions::default(),
            };
            let config = node_dir.join("norn.toml");
            std::fs::write(&config, cfg.to_toml()?)?;
            std::fs::write(node_dir.join("faketime"), "+0\n")?;
            let entry = NodeEntry {
                id: i,
                pid: None,
                client_addr: c.clone(),
                raft_addr: r.clone(),
                metrics_addr: m.clone(),
                config,
                log: node_dir.join("norn.log"),
            };
            nodes.push(Node { id: i, entry, data_dir: node_dir.join("data"), child: None, paused: false, starts: 0 });
        }
        let mut c = Cluster {
            nodes,
            net,
            binary: binary.to_path_buf(),
            cluster_id,
            shards,
            dir: dir.to_path_buf(),
            planted_bug,
            faketime: faketime_lib(),
        };
        for i in 1..=n as u64 {
            c.restart(i)?;
        }
        c.wait_ready(Duration::from_secs(120)).await?;
        Ok(c)
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// The address clients use to reach node `id` (through its client proxy).
    pub fn client_addr(&self, id: u64) -> String {
        self.net.links[&(0, id, Port::Client)].listen.clone()
    }

    /// Starts node `id` if it is not running.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let binary = self.binary.clone();
        let bug = self.planted_bug.clone();
        if self.node(id).child.is_some() {
            return Ok(());
        }
        let mut env: Vec<(&str, &str)> = bug.as_deref().map(|b| vec![("NORN_PLANTED_BUG", b)]).unwrap_or_default();
        // Only the wall clock moves (log entry timestamps, timers, timeouts); the monotonic clock
        // that Raft's elections and every timeout of the runtime use stays true.
        let clock_file = self.node(id).entry.config.with_file_name("faketime").to_string_lossy().into_owned();
        let lib = self.faketime.as_ref().map(|l| l.to_string_lossy().into_owned());
        if let Some(lib) = &lib {
            env.extend([
                ("LD_PRELOAD", lib.as_str()),
                ("FAKETIME_TIMESTAMP_FILE", clock_file.as_str()),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                ("FAKETIME_CACHE_DURATION", "1"),
            ]);
        }
        let n = self.node(id);
        n.child = Some(local_cluster::spawn_with_env(&binary, &n.entry, &env)?);
        n.paused = false;
        n.starts += 1;
        Ok(())
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u64) {
        let n = self.node(id);
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        n.paused = false;
    }

    /// SIGSTOP or SIGCONT.
    pub fn pause(&mut self, id: u64, stop: bool) {
        let n = self.node(id);
        if let Some(c) = &n.child {
            let sig = if stop { Signal::SIGSTOP } else { Signal::SIGCONT };
            local_cluster::signal(c.id(), sig);
            n.paused = stop;
        }
    }

    /// Is node `id`'s process running (not killed)?
    pub fn running(&self, id: u64) -> bool {
        self.nodes[(id - 1) as usize].child.is_some()
    }

    /// Node `id`'s status, asked directly (not through a proxy).
    pub async fn status(&self, id: u64) -> anyhow::Result<NodeStatusResponse> {
        let addr = &self.nodes[(id - 1) as usize].entry.client_addr;
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        Ok(AdminClient::new(ch).node_status(NodeStatusRequest {}).await?.into_inner())
    }

    /// Moves node `id`'s wall clock `offset_s` seconds from true time (0: back to true time);
    /// libfaketime reads the file again within a second.
    pub fn skew_clock(&self, id: u64, offset_s: i64) -> anyhow::Result<()> {
        let file = self.nodes[(id - 1) as usize].entry.config.with_file_name("faketime");
        std::fs::write(file, format!("{offset_s:+}\n"))?;
        Ok(())
    }

    /// Injects a disk fault on node `id` through its admin service: its next fsync fails, and
    /// its disk reads as full (or not).
    pub async fn disk_fault(&self, id: u64, fail_next_sync: bool, full: bool) -> anyhow::Result<()> {
        let addr = &self.nodes[(id - 1) as usize].entry.client_addr;
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        AdminClient::new(ch).inject_disk_fault(norn_node::pb::InjectDiskFaultRequest { fail_next_sync, full }).await?;
        Ok(())
    }

    /// The leader of `shard` as the running nodes report it.
    pub async fn leader(&self, shard: u32) -> Option<u64> {
        for n in &self.nodes {
            if n.child.is_none() || n.paused {
                continue;
            }
            if let Ok(s) = self.status(n.id).await {
                if s.shards.iter().any(|x| x.shard == shard && x.role == "leader") {
                    return Some(n.id);
                }
            }
        }
        None
    }

    /// Waits until every node answers and every shard has a leader.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut ok = true;
            let mut led = std::collections::BTreeSet::new();
            for n in &self.nodes {
                if n.child.is_none() {
                    continue;
                }
                match self.status(n.id).await {
                    Ok(s) => led.extend(s.shards.iter().filter(|x| x.role == "leader").map(|x| x.shard)),
                    Err(_) => ok = false,
                }
            }
            if ok && led.len() == self.shards as usize {
                return Ok(());
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the cluster did not become ready");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Kills every process.
    pub fn stop_all(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.pause(id, false);
            self.kill(id);
        }
    }

    /// Copies node `id`'s data directory (the node must be stopped) to `to`.
    pub fn copy_data(&self, id: u64, to: &Path) -> anyhow::Result<()> {
        copy_dir(&self.nodes[(id - 1) as usize].data_dir, to).context("copy data directory")
    }

    /// Starts a process on node `id`'s addresses with `config` changed by `f` (a stale copy of its
    /// data, or another cluster's identity); returns it. The member's own process must be down.
    pub fn spawn_impostor(&self, id: u64, name: &str, f: impl FnOnce(&mut NodeConfig)) -> anyhow::Result<Child> {
        let n = &self.nodes[(id - 1) as usize];
        let text = std::fs::read_to_string(&n.entry.config)?;
        let mut cfg: NodeConfig = toml::from_str(&text)?;
        f(&mut cfg);
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("norn.toml");
        std::fs::write(&config, cfg.to_toml()?)?;
        let entry = NodeEntry { config, log: dir.join("norn.log"), ..n.entry.clone() };
        local_cluster::spawn(&self.binary, &entry)
    }
}

impl Drop for Cluster {
    /// No node outlives the harness, whatever way it ends (an error, a panic).
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

/// Used by the report: each node's log file.
pub fn logs(c: &Cluster) -> Vec<(u64, PathBuf)> {
    c.nodes.iter().map(|n| (n.id, n.entry.log.clone())).collect()
}

/// Shared handle.
pub type Shared = Arc<tokio::sync::Mutex<Cluster>>;

/// Copies a directory tree.
pub fn copy_dir_pub(from: &Path, to: &Path) -> std::io::Result<()> {
    copy_dir(from, to)
}
