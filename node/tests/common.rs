//! A local cluster of real `norn` processes for tests: free ports, temp dirs, SIGKILL, restart.

#![allow(dead_code)]

use std::process::Child;
use std::time::Duration;

use norn_node::local_cluster::{self, ClusterFile, ClusterSpec, Ports};
use norn_node::pb::admin_client::AdminClient;
use norn_node::pb::*;
use norn_raft::RaftOptions;
use tonic::transport::Channel;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub file: ClusterFile,
    pub children: Vec<Option<Child>>,
    pub shards: u32,
}

pub fn fast_raft() -> RaftOptions {
    RaftOptions {
        election_timeout_ms_min: 400,
        election_timeout_ms_max: 800,
        heartbeat_interval_ms: 100,
        propose_timeout_ms: 5_000,
        ..Default::default()
    }
}

impl Cluster {
    pub async fn start(nodes: usize, shards: u32, raft: RaftOptions) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = ClusterSpec {
            nodes,
            data_dir: dir.path().to_path_buf(),
            ports: Ports::Free,
            shards,
            raft,
            fault_injection: true,
            cluster_id: String::new(),
        };
        Self::start_spec(dir, spec).await
    }

    /// Lays out `spec` (in `dir`) and starts it with `local_cluster::up`, as `norn cluster up` does.
    pub async fn start_spec(dir: tempfile::TempDir, spec: ClusterSpec) -> Cluster {
        Self::start_edited(dir, spec, |_| {}).await
    }

    /// [`Cluster::start_spec`], with `edit` applied to every node's config file text first.
    pub async fn start_edited(dir: tempfile::TempDir, spec: ClusterSpec, edit: impl Fn(&mut String)) -> Cluster {
        let shards = spec.shards;
        let mut file = local_cluster::lay_out(&spec).expect("lay out");
        for n in &file.nodes {
            let mut text = std::fs::read_to_string(&n.config).expect("read config");
            edit(&mut text);
            std::fs::write(&n.config, text).expect("write config");
        }
        match local_cluster::up(env!("CARGO_BIN_EXE_norn").as_ref(), &mut file, Duration::from_secs(60)).await {
            Ok((children, _)) => Cluster { dir, file, children: children.into_iter().map(Some).collect(), shards },
            Err(e) => {
                let c = Cluster { dir, file, children: Vec::new(), shards };
                panic!("{e:#}\n{}", c.logs())
            }
        }
    }

    pub fn addrs(&self) -> Vec<String> {
        self.file.nodes.iter().map(|n| n.client_addr.clone()).collect()
    }

    pub fn addr(&self, id: u64) -> String {
        self.file.nodes[(id - 1) as usize].client_addr.clone()
    }

    /// Process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(|c| c.id()).collect()
    }

    /// Open workflows of the `default` namespace, counted through node 1.
    pub async fn count_open(&self) -> i64 {
        use norn_proto::protos::temporal::api::workflowservice::v1::CountWorkflowExecutionsRequest;
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr(1)))
            .unwrap()
            .timeout(Duration::from_secs(120))
            .connect_lazy();
        norn_proto::WorkflowServiceClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .count_workflow_executions(CountWorkflowExecutionsRequest {
                namespace: "default".into(),
                query: "ExecutionStatus = 'Running'".into(),
            })
            .await
            .expect("count")
            .into_inner()
            .count
    }

    pub fn running_ids(&self) -> Vec<u64> {
        (0..self.children.len()).filter(|i| self.children[*i].is_some()).map(|i| i as u64 + 1).collect()
    }

    pub async fn wait_ready(&self) -> ClusterStatusResponse {
        match local_cluster::wait_ready(&self.addrs(), Duration::from_secs(60)).await {
            Ok(s) => s,
            Err(e) => panic!("{e}\n{}", self.logs()),
        }
    }

    /// Waits until the running nodes alone give every shard a leader.
    pub async fn wait_leaders(&self) -> ClusterStatusResponse {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut nodes = Vec::new();
            for id in self.running_ids() {
                if let Ok(s) = self.client(id).await.node_status(NodeStatusRequest {}).await {
                    nodes.push(NodeHealth {
                        node_id: id,
                        client_addr: self.addr(id),
                        reachable: true,
                        error: String::new(),
                        status: Some(s.into_inner()),
                    });
                }
            }
            let s = ClusterStatusResponse { nodes, shard_count: self.shards };
            match local_cluster::unready(&s) {
                None => return s,
                Some(why) if tokio::time::Instant::now() > deadline => {
                    panic!("no leaders: {why}\n{}", self.logs())
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.file.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            s.push_str(&format!("--- node {} log (last 40 lines) ---\n", n.id));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    pub async fn client(&self, id: u64) -> AdminClient<Channel> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr(id)))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        AdminClient::new(ch)
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.children[(id - 1) as usize].take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, id: u64) {
        assert!(self.children[(id - 1) as usize].is_none(), "node {id} is running");
        let child = local_cluster::spawn(env!("CARGO_BIN_EXE_norn").as_ref(), &self.file.nodes[(id - 1) as usize])
            .expect("spawn");
        self.children[(id - 1) as usize] = Some(child);
    }

    pub async fn put(&self, via: u64, key: &str, value: &str) -> Result<PutResponse, tonic::Status> {
        self.client(via)
            .await
            .put(PutRequest { key: key.into(), value: value.into(), hops: 0 })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn get(&self, via: u64, key: &str, local: bool) -> Option<String> {
        let consistency = if local { ReadConsistency::Local } else { ReadConsistency::Linearizable } as i32;
        let r = self
            .client(via)
            .await
            .get(GetRequest { key: key.into(), consistency, hops: 0 })
            .await
            .unwrap_or_else(|e| panic!("get {key} via node {via}: {e}"))
            .into_inner();
        r.found.then(|| String::from_utf8(r.value).unwrap())
    }

    pub async fn status(&self, id: u64) -> NodeStatusResponse {
        self.client(id).await.node_status(NodeStatusRequest {}).await.expect("status").into_inner()
    }

    /// The node leading `shard` per the running nodes.
    pub async fn leader_of(&self, shard: u32) -> u64 {
        let s = self.wait_leaders().await;
        for n in &s.nodes {
            if let Some(st) = &n.status {
                if st.shards.iter().any(|x| x.shard == shard && x.role == "leader") {
                    return n.node_id;
                }
            }
        }
        unreachable!("wait_leaders returned a shard without leader")
    }

    pub async fn partition(&self, id: u64, blocked: Vec<u64>) {
        self.client(id)
            .await
            .set_partition(SetPartitionRequest { blocked_nodes: blocked })
            .await
            .expect("set partition");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn shard_of(key: &str, shards: u32) -> u32 {
    norn_node::placement::shard_of(&[key.as_bytes()], shards)
}
