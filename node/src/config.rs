//! Node configuration: a TOML file (`norn server --config FILE`), every key also settable by a
//! flag. Documented in `docs/configuration.md`.

use std::path::{Path, PathBuf};

use norn_raft::{NodeId, NodeInfo, RaftOptions};
use serde::{Deserialize, Serialize};

/// Upper bound on the shard count (BRIEF §1).
pub const SHARDS_MAX: u32 = 512;

/// One member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id (1-based).
    pub id: NodeId,
    /// Peer (Raft) address.
    pub raft_addr: String,
    /// Client (gRPC API) address.
    pub client_addr: String,
}

impl Member {
    /// The address record replicated in Raft membership.
    pub fn info(&self) -> NodeInfo {
        NodeInfo { raft_addr: self.raft_addr.clone(), client_addr: self.client_addr.clone() }
    }
}

/// Everything a node needs to start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The cluster's id, the same on every member and unique to this cluster (`norn cluster up`
    /// generates one). A node stores it in its data directory on first start and refuses to
    /// start with another; peers refuse frames and calls from nodes of another cluster. Empty:
    /// derived from the shard count and the member list (set it for real deployments: two
    /// clusters laid out on the same addresses then share an id).
    #[serde(default)]
    pub cluster_id: String,
    /// This node's id; must appear in `members`.
    pub node_id: NodeId,
    /// Where the node keeps its RocksDB.
    pub data_dir: PathBuf,
    /// Client gRPC address to listen on.
    #[serde(default = "default_client_addr")]
    pub client_addr: String,
    /// Peer (Raft) address to listen on.
    #[serde(default = "default_raft_addr")]
    pub raft_addr: String,
    /// Prometheus `/metrics` address; none to disable.
    #[serde(default)]
    pub metrics_addr: Option<String>,
    /// Number of shards (fixed at cluster creation).
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// Replicas per shard (3 in clusters of 3 or more nodes).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// The initial members.
    pub members: Vec<Member>,
    /// Accept fault-injection calls (tests and chaos runs only).
    #[serde(default)]
    pub enable_fault_injection: bool,
    /// Chaos tests only (needs `enable_fault_injection`): writes not yet synced stay inside the
    /// process, so a SIGKILL loses them the way a power loss loses the page cache.
    #[serde(default)]
    pub lose_unsynced_on_kill: bool,
    /// Accept writes of the replicated test map (`norn kv put`) on the client port. Off in
    /// `norn server` by default: the client port then writes no state but through the Temporal
    /// API. `norn dev` and `norn cluster up` turn it on.
    #[serde(default)]
    pub enable_test_map: bool,
    /// Tokio worker threads: 0 for one per core, 1 for the current-thread scheduler (every
    /// task of the node on one thread; RocksDB syncs still run on blocking threads).
    #[serde(default)]
    pub worker_threads: usize,
    /// New writes are refused (`ResourceExhausted`) while the data directory's file system has
    /// less free space than this; they resume once space is freed.
    #[serde(default = "default_disk_reserve_bytes")]
    pub disk_reserve_bytes: u64,
    /// Raft timings.
    #[serde(default)]
    pub raft: RaftOptions,
}

fn default_disk_reserve_bytes() -> u64 {
    256 << 20
}

fn default_client_addr() -> String {
    "127.0.0.1:7233".into()
}
fn default_raft_addr() -> String {
    "127.0.0.1:7234".into()
}
fn default_shards() -> u32 {
    16
}
fn default_replicas() -> usize {
    3
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Most tokio worker threads a node may ask for.
const WORKER_THREADS_MAX: usize = 1024;

impl NodeConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let cfg: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError(e.to_string()))
    }

    /// Checks the configuration for mistakes an operator can fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return Err(ConfigError(format!("shards must be 1..={SHARDS_MAX}, got {}", self.shards)));
        }
        if self.members.is_empty() {
            return Err(ConfigError("members is empty: list every initial node".into()));
        }
        let mut ids: Vec<_> = self.members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.members.len() {
            return Err(ConfigError("members lists a node id twice".into()));
        }
        if ids.contains(&0) {
            return Err(ConfigError("node ids start at 1".into()));
        }
        let me = self
            .members
            .iter()
            .find(|m| m.id == self.node_id)
            .ok_or_else(|| ConfigError(format!("node_id {} is not in members", self.node_id)))?;
        if me.raft_addr != self.raft_addr {
            return Err(ConfigError(format!(
                "raft_addr {} differs from this node's entry in members ({})",
                self.raft_addr, me.raft_addr
            )));
        }
        if self.cluster_id.len() > 128 || self.cluster_id.chars().any(|c| c.is_control()) {
            return Err(ConfigError("cluster_id must be at most 128 printable characters".into()));
        }
        if self.replicas == 0 {
            return Err(ConfigError("replicas must be at least 1".into()));
        }
        if self.lose_unsynced_on_kill && !self.enable_fault_injection {
            return Err(ConfigError(
                "lose_unsynced_on_kill is for chaos tests: it needs enable_fault_injection".into(),
            ));
        }
        if self.worker_threads > WORKER_THREADS_MAX {
            return Err(ConfigError(format!(
                "worker_threads must be 0 (one per core) to {WORKER_THREADS_MAX}, got {}",
                self.worker_threads
            )));
        }
        Ok(())
    }

    /// The cluster id in force: `cluster_id`, or one derived from the shard count and members.
    pub fn effective_cluster_id(&self) -> String {
        if !self.cluster_id.is_empty() {
            return self.cluster_id.clone();
        }
        let mut members: Vec<String> = self.members.iter().map(|m| format!("{}={}", m.id, m.raft_addr)).collect();
        members.sort();
        let text = format!("{}|{}", self.shards, members.join(","));
        format!("derived-{:016x}", crate::placement::stable_hash(&[text.as_bytes()]))
    }

    /// The wire form of the cluster id (what every peer frame carries).
    pub fn cluster_tag(&self) -> u64 {
        crate::placement::stable_hash(&[self.effective_cluster_id().as_bytes()])
    }

    /// This node's address record.
    pub fn me(&self) -> NodeInfo {
        NodeInfo { raft_addr: self.raft_addr.clone(), client_addr: self.client_addr.clone() }
    }
}

/// A tokio runtime with `worker_threads` workers: 0 for one per core, 1 for the current-thread
/// scheduler (on a machine shared by several nodes, fewer threads mean fewer wake-ups).
pub fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NodeConfig {
        NodeConfig {
            cluster_id: String::new(),
            node_id: 1,
            data_dir: "d".into(),
            client_addr: "127.0.0.1:1".into(),
            raft_addr: "127.0.0.1:2".into(),
            metrics_addr: None,
            shards: 16,
            replicas: 3,
            worker_threads: 0,
            members: vec![Member { id: 1, raft_addr: "127.0.0.1:2".into(), client_addr: "127.0.0.1:1".into() }],
            enable_fault_injection: false,
            enable_test_map: false,
            disk_reserve_bytes: 256 << 20,
            lose_unsynced_on_kill: false,
            raft: RaftOptions::default(),
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let c = cfg();
        let back: NodeConfig = toml::from_str(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back.members, c.members);
        back.validate().unwrap();
    }

    #[test]
    fn rejects_what_cannot_run() {
        let mut c = cfg();
        c.shards = 0;
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.node_id = 9;
        assert!(c.validate().is_err());
        let mut c = cfg();
        c.members.push(c.members[0].clone());
        assert!(c.validate().is_err());
        assert!(toml::from_str::<NodeConfig>("node_id = 1\nbogus = 2").is_err());
        let mut c = cfg();
        c.worker_threads = WORKER_THREADS_MAX + 1;
        assert!(c.validate().is_err());
        // Losing unsynced writes on a kill is for chaos runs only.
        let mut c = cfg();
        c.lose_unsynced_on_kill = true;
        assert!(c.validate().unwrap_err().to_string().contains("enable_fault_injection"));
        c.enable_fault_injection = true;
        c.validate().unwrap();
    }

    #[test]
    fn worker_threads_pick_the_scheduler() {
        use tokio::runtime::RuntimeFlavor;
        let mut c = cfg();
        c.worker_threads = 1;
        let back: NodeConfig = toml::from_str(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back.worker_threads, 1);
        assert_eq!(build_runtime(1).unwrap().handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!(build_runtime(2).unwrap().handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(build_runtime(0).unwrap().handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        // A file written before the key existed still loads, with one thread per core.
        let old = "node_id = 1\ndata_dir = \"d\"\n[[members]]\nid = 1\nraft_addr = \"127.0.0.1:7234\"\nclient_addr = \"127.0.0.1:7233\"\n";
        assert_eq!(toml::from_str::<NodeConfig>(old).unwrap().worker_threads, 0);
    }
}
