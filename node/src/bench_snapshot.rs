//! `norn bench snapshot`: what catching up a follower by snapshot costs. Starts a local cluster
//! of `norn` processes with one shard, stops one node, fills the shard with `size` bytes through
//! the test map, has the two live replicas snapshot and purge their logs, restarts the stopped
//! node and times its catch-up, which can only come from a streamed snapshot. Prints the time,
//! the snapshot file size and each node's peak resident memory: the point is that memory stays
//! bounded however large the shard is.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::local_cluster::{self, ClusterSpec, Ports};
use crate::pb::admin_client::AdminClient;
use crate::pb::{NodeStatusRequest, PutRequest, TriggerSnapshotRequest};

/// `norn bench snapshot` settings.
#[derive(Clone, Debug)]
pub struct SnapshotOptions {
    /// Bytes of state written into the shard.
    pub size_bytes: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Puts in flight.
    pub concurrency: usize,
}

/// Peak resident memory of a process so far (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

async fn admin(addr: &str) -> anyhow::Result<AdminClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .timeout(Duration::from_secs(60))
        .connect_lazy();
    Ok(AdminClient::new(ch).max_decoding_message_size(64 << 20))
}

/// Shard 0 as node `addr` sees it: (role, applied index, snapshots installed).
async fn shard0(addr: &str) -> Option<(String, u64, u64)> {
    let st = admin(addr).await.ok()?.node_status(NodeStatusRequest {}).await.ok()?.into_inner();
    st.shards.into_iter().find(|s| s.shard == 0).map(|s| (s.role, s.applied_index, s.snapshots_installed))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Runs `norn bench snapshot` with the `norn` binary `binary`, printing a table.
pub async fn run(binary: &Path, opts: &SnapshotOptions) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("norn-bench-snapshot-").tempdir_in(std::env::current_dir()?)?;
    let spec = ClusterSpec {
        nodes: 3,
        data_dir: dir.path().to_path_buf(),
        ports: Ports::Free,
        shards: 1,
        // Snapshots only when asked, and short logs after them, so the stopped node can only
        // catch up from a snapshot.
        raft: norn_raft::RaftOptions {
            snapshot_logs_since_last: u64::MAX / 2,
            logs_kept_after_snapshot: 100,
            ..norn_raft::RaftOptions::default()
        },
        fault_injection: false,
        cluster_id: String::new(),
    };
    let mut file = local_cluster::lay_out(&spec)?;
    let (mut children, _) = local_cluster::up(binary, &mut file, Duration::from_secs(120)).await?;
    let result = async {
        let addrs: Vec<String> = file.nodes.iter().map(|n| n.client_addr.clone()).collect();
        // Stop node 3; the other two keep a quorum.
        let _ = children[2].kill();
        let _ = children[2].wait();
        let live = admin(&addrs[0]).await?;
        let value = vec![b'x'; opts.value_bytes.max(1)];
        let count = opts.size_bytes.div_ceil(value.len() as u64);
        let t = Instant::now();
        let results = futures::stream::iter(0..count)
            .map(|i| {
                let mut c = live.clone();
                let value = value.clone();
                async move {
                    let mut last = None;
                    for _ in 0..20 {
                        let req =
                            PutRequest { key: format!("snap-{i:09}").into_bytes(), value: value.clone(), hops: 0 };
                        match c.put(req).await {
                            Ok(_) => return Ok(()),
                            // Only a shard between leaders is worth waiting for.
                            Err(e) if e.code() != tonic::Code::Unavailable => {
                                return Err(anyhow::anyhow!("put snap-{i}: {e}"))
                            }
                            Err(e) => {
                                last = Some(e);
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                    Err(anyhow::anyhow!("put snap-{i}: {last:?}"))
                }
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect::<Vec<anyhow::Result<()>>>()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        let write_secs = t.elapsed().as_secs_f64();
        // Both live replicas snapshot and purge their logs.
        let t = Instant::now();
        for addr in &addrs[..2] {
            admin(addr).await?.trigger_snapshot(TriggerSnapshotRequest { shard: 0 }).await?;
        }
        let target = shard0(&addrs[0]).await.map(|s| s.1).unwrap_or(0);
        let built_deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            let mut done = true;
            for addr in &addrs[..2] {
                let st = admin(addr).await?.node_status(NodeStatusRequest {}).await?.into_inner();
                let s = st.shards.iter().find(|s| s.shard == 0);
                done &= s.is_some_and(|s| s.snapshot_index >= target.saturating_sub(5) && s.purged_index > 0);
            }
            if done {
                break;
            }
            anyhow::ensure!(Instant::now() < built_deadline, "the live replicas never snapshotted");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let build_secs = t.elapsed().as_secs_f64();
        let snap_file = dir_bytes(&dir.path().join("node-1/data/snapshots/00000"));
        // Node 3 comes back and can only catch up from the snapshot.
        let t = Instant::now();
        children[2] = local_cluster::spawn(binary, &file.nodes[2])?;
        let caught_deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            if let Some((_, applied, installed)) = shard0(&addrs[2]).await {
                if installed > 0 && applied >= target {
                    break;
                }
            }
            anyhow::ensure!(Instant::now() < caught_deadline, "node 3 never caught up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let catch_secs = t.elapsed().as_secs_f64();
        let peaks: Vec<u64> = children.iter().map(|c| peak_rss_mib(c.id())).collect();
        println!("{:<34} {:>14}", "measure", "value");
        println!("{:<34} {:>14}", "state written (MiB)", (count * value.len() as u64) >> 20);
        println!("{:<34} {:>14}", "values", count);
        println!("{:<34} {:>14.1}", "write time (s)", write_secs);
        println!("{:<34} {:>14.1}", "snapshot build on 2 nodes (s)", build_secs);
        println!("{:<34} {:>14}", "snapshot file (MiB)", snap_file >> 20);
        println!("{:<34} {:>14.1}", "follower catch-up (s)", catch_secs);
        println!("{:<34} {:>14.0}", "catch-up rate (MiB/s)", (snap_file >> 20) as f64 / catch_secs.max(0.001));
        for (i, p) in peaks.iter().enumerate() {
            let what = match i {
                2 => "peak RSS node 3, receiver (MiB)".to_string(),
                _ => format!("peak RSS node {} (MiB)", i + 1),
            };
            println!("{what:<34} {p:>14}");
        }
        anyhow::Ok(())
    }
    .await;
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    result
}
