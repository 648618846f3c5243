//! Nemeses: faults applied to the cluster over time, one after another, each recorded with its
//! start and end.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::cluster::Shared;
use crate::history::Recorder;

/// Every nemesis `--nemesis all` runs.
pub const ALL: &[&str] = &[
    "kill",
    "pause",
    "partition-one",
    "partition-halves",
    "partition-leader",
    "partition-ring",
    "one-way",
    "delay",
    "stale-copy",
    "other-cluster",
    "clock-skew",
    "disk-fail",
    "disk-full",
];

/// The nemeses that need something this machine may lack, and why it is missing (`None`: all
/// there).
pub fn unavailable(name: &str) -> Option<&'static str> {
    match name {
        "clock-skew" if crate::cluster::faketime_lib().is_none() => {
            Some("libfaketime is not installed (apt-get install faketime)")
        }
        _ => None,
    }
}

/// One fault window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Window {
    /// The nemesis.
    pub name: String,
    /// What it did (nodes, links).
    pub detail: String,
    /// When it began, nanoseconds since the run began.
    pub start_ns: u64,
    /// When it was undone.
    pub end_ns: u64,
}

/// Runs nemeses from `names` until `until` (run time), then heals everything.
pub async fn run(
    cluster: Shared,
    names: Vec<String>,
    rec: Recorder,
    until: Duration,
    seed: u64,
) -> anyhow::Result<Vec<Window>> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6e656d);
    let mut windows = Vec::new();
    let mut stale_copies: std::collections::BTreeMap<u64, std::path::PathBuf> = Default::default();
    let mut impostors = 0u32;
    // A quiet start, so the workload has something to lose.
    tokio::time::sleep(Duration::from_secs(5)).await;
    while !names.is_empty() && Duration::from_nanos(rec.now_ns()) + Duration::from_secs(12) < until {
        let name = names[rng.gen_range(0..names.len())].clone();
        let hold = Duration::from_millis(rng.gen_range(3_000..8_000));
        let start_ns = rec.now_ns();
        let n = cluster.lock().await.nodes.len() as u64;
        let pick = rng.gen_range(1..=n);
        let all: Vec<u64> = (1..=n).collect();
        let detail;
        match name.as_str() {
            "kill" => {
                let mut c = cluster.lock().await;
                c.kill(pick);
                // The first time a node is down, keep a copy of its data: the stale-copy nemesis
                // later starts it on the node's address.
                if let std::collections::btree_map::Entry::Vacant(e) = stale_copies.entry(pick) {
                    let to = c.dir.join(format!("stale-copy-{pick}"));
                    if c.copy_data(pick, &to).is_ok() {
                        e.insert(to);
                    }
                }
                drop(c);
                detail = format!("SIGKILL node {pick}, restart after {hold:?}");
                tokio::time::sleep(hold).await;
                cluster.lock().await.restart(pick)?;
            }
            "pause" => {
                cluster.lock().await.pause(pick, true);
                detail = format!("SIGSTOP node {pick} for {hold:?}");
                tokio::time::sleep(hold).await;
                cluster.lock().await.pause(pick, false);
            }
            "partition-one" | "partition-leader" => {
                let target = if name == "partition-leader" {
                    let shard = rng.gen_range(0..cluster.lock().await.shards);
                    cluster.lock().await.leader(shard).await.unwrap_or(pick)
                } else {
                    pick
                };
                let rest: Vec<u64> = all.iter().copied().filter(|x| *x != target).collect();
                cluster.lock().await.net.between(&[target], &rest, false, |s| s.cut = true);
                detail = format!("node {target} cut off from {rest:?}");
                tokio::time::sleep(hold).await;
                cluster.lock().await.net.heal();
            }
            "partition-halves" => {
                let mut shuffled = all.clone();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, rng.gen_range(0..=i));
                }
                let (a, b) = shuffled.split_at(shuffled.len() / 2);
                cluster.lock().await.net.between(a, b, false, |s| s.cut = true);
                detail = format!("minority {a:?} | majority {b:?}");
                tokio::time::sleep(hold).await;
                cluster.lock().await.net.heal();
            }
            "partition-ring" => {
                // Each node reaches only its two neighbours on a ring.
                let c = cluster.lock().await;
                for i in 1..=n {
                    for j in 1..=n {
                        let d = (i + n - j) % n;
                        if i != j && d != 1 && d != n - 1 {
                            c.net.between(&[i], &[j], true, |s| s.cut = true);
                        }
                    }
                }
                drop(c);
                detail = "ring: each node reaches only its neighbours".into();
                tokio::time::sleep(hold).await;
                cluster.lock().await.net.heal();
            }
            "one-way" => {
                let rest: Vec<u64> = all.iter().copied().filter(|x| *x != pick).collect();
                cluster.lock().await.net.between(&[pick], &rest, true, |s| s.cut = true);
                detail = format!("node {pick} cannot open connections to {rest:?} (they can to it)");
                tokio::time::sleep(hold).await;
                cluster.lock().await.net.heal();
            }
            "delay" => {
                let ms = rng.gen_range(20..200);
                let rest: Vec<u64> = all.iter().copied().filter(|x| *x != pick).collect();
                cluster.lock().await.net.between(&[pick], &rest, false, |s| s.delay_ms = ms);
                detail = format!("{ms} ms on every link of node {pick}");
                tokio::time::sleep(hold).await;
                cluster.lock().await.net.heal();
            }
            "stale-copy" | "other-cluster" => {
                let copy = stale_copies.get(&pick).cloned();
                if name == "stale-copy" && copy.is_none() {
                    // No copy of this node's data yet (it was never killed): nothing to replay.
                    continue;
                }
                impostors += 1;
                let mut c = cluster.lock().await;
                c.kill(pick);
                let data = c.dir.join(format!("impostor-{impostors}-data"));
                let imp = if let Some(copy) = copy.filter(|_| name == "stale-copy") {
                    crate::cluster::copy_dir_pub(&copy, &data)?;
                    c.spawn_impostor(pick, &format!("impostor-{impostors}"), |cfg| cfg.data_dir = data.clone())?
                } else {
                    let id = norn_node::local_cluster::new_cluster_id();
                    c.spawn_impostor(pick, &format!("impostor-{impostors}"), |cfg| {
                        cfg.data_dir = data.clone();
                        cfg.cluster_id = id;
                    })?
                };
                drop(c);
                detail = if name == "stale-copy" {
                    format!("node {pick} replaced by a process on an older copy of its data dir")
                } else {
                    format!("node {pick} replaced by a node of another cluster on its addresses")
                };
                tokio::time::sleep(hold).await;
                let mut imp = imp;
                let _ = imp.kill();
                let _ = imp.wait();
                cluster.lock().await.restart(pick)?;
            }
            "clock-skew" => {
                // A jump of 5 s to 2 min either way, held, then back to true time.
                let secs = rng.gen_range(5..=120i64) * if rng.gen_bool(0.5) { 1 } else { -1 };
                cluster.lock().await.skew_clock(pick, secs)?;
                detail = format!("node {pick}'s wall clock {secs:+} s for {hold:?}");
                tokio::time::sleep(hold).await;
                cluster.lock().await.skew_clock(pick, 0)?;
            }
            "disk-fail" => {
                // The node's next fsync fails: its store is poisoned, its shards fail there, and
                // it recovers from what is on disk only when restarted.
                if cluster.lock().await.disk_fault(pick, true, false).await.is_err() {
                    continue;
                }
                detail = format!("node {pick}'s next fsync fails; restarted after {hold:?}");
                tokio::time::sleep(hold).await;
                let mut c = cluster.lock().await;
                c.kill(pick);
                c.restart(pick)?;
            }
            "disk-full" => {
                if cluster.lock().await.disk_fault(pick, false, true).await.is_err() {
                    continue;
                }
                detail = format!("node {pick}'s disk full for {hold:?}");
                tokio::time::sleep(hold).await;
                // A node restarted meanwhile forgot the fault already.
                let _ = cluster.lock().await.disk_fault(pick, false, false).await;
            }
            other => anyhow::bail!("unknown nemesis {other}; the nemeses are {}", ALL.join(", ")),
        }
        windows.push(Window { name, detail, start_ns, end_ns: rec.now_ns() });
        tokio::time::sleep(Duration::from_millis(rng.gen_range(2_000..5_000))).await;
    }
    heal(&cluster).await?;
    Ok(windows)
}

/// Everything back: links healed, paused nodes continued, killed nodes restarted.
pub async fn heal(cluster: &Shared) -> anyhow::Result<()> {
    let mut c = cluster.lock().await;
    c.net.heal();
    for id in 1..=c.nodes.len() as u64 {
        c.pause(id, false);
        c.restart(id)?;
        c.skew_clock(id, 0)?;
    }
    for id in 1..=c.nodes.len() as u64 {
        // The node may still be starting; a restarted node has no injected fault anyway.
        let _ = c.disk_fault(id, false, false).await;
    }
    Ok(())
}
