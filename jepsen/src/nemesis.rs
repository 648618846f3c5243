//! Nemeses: faults applied to the cluster over time, each recorded with its start and end. A
//! round begins one fault, or with `--mix N` up to N different ones at once (a kill during a
//! partition, loss on a paused node's neighbours), holds them, then ends them in reverse order.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::cluster::Shared;
use crate::history::Recorder;

/// Every nemesis `--nemesis all` runs.
pub const ALL: &[&str] = &[
    "kill",
    "power-outage",
    "pause",
    "partition-one",
    "partition-halves",
    "partition-leader",
    "partition-ring",
    "one-way",
    "delay",
    "loss",
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

/// How a fault that began is undone.
enum Undo {
    /// Restart a killed node.
    Restart(u64),
    /// Restart killed nodes.
    RestartAll(Vec<u64>),
    /// SIGCONT a paused node.
    Continue(u64),
    /// Every link back to normal (ends every network fault of the round).
    Heal,
    /// Stop the impostor on a member's addresses and restart the member.
    Impostor(std::process::Child, u64),
    /// The node's wall clock back to true time.
    Unskew(u64),
    /// SIGKILL and restart a node whose store a failed fsync poisoned.
    Recover(u64),
    /// Tell the node its disk has room again.
    Unfill(u64),
}

/// What the nemesis remembers between rounds.
struct State {
    rng: SmallRng,
    /// A copy of each killed node's data dir, taken the first time it was down (for stale-copy).
    stale_copies: BTreeMap<u64, PathBuf>,
    impostors: u32,
}

/// Whether two faults can hold at once: not two on the same node's process or disk, not two
/// network layouts (each network fault is undone by healing every link).
fn compatible(a: &str, b: &str) -> bool {
    const NET: &[&str] =
        &["partition-one", "partition-halves", "partition-leader", "partition-ring", "one-way", "delay", "loss"];
    const PROCESS: &[&str] = &["kill", "power-outage", "pause", "stale-copy", "other-cluster", "disk-fail"];
    let both = |set: &[&str]| set.contains(&a) && set.contains(&b);
    a != b && !both(NET) && !both(PROCESS)
}

/// Runs nemeses from `names` until `until` (run time), `mix` at most at once, then heals
/// everything.
pub async fn run(
    cluster: Shared,
    names: Vec<String>,
    rec: Recorder,
    until: Duration,
    seed: u64,
    mix: usize,
) -> anyhow::Result<Vec<Window>> {
    let mut st = State { rng: SmallRng::seed_from_u64(seed ^ 0x6e656d), stale_copies: BTreeMap::new(), impostors: 0 };
    let mut windows = Vec::new();
    // A quiet start, so the workload has something to lose.
    tokio::time::sleep(Duration::from_secs(5)).await;
    while !names.is_empty() && Duration::from_nanos(rec.now_ns()) + Duration::from_secs(12) < until {
        let want = st.rng.gen_range(1..=mix.max(1));
        let mut chosen: Vec<String> = Vec::new();
        for _ in 0..want * 4 {
            let name = &names[st.rng.gen_range(0..names.len())];
            if chosen.len() < want && chosen.iter().all(|c| compatible(c, name)) {
                chosen.push(name.clone());
            }
        }
        let hold = Duration::from_millis(st.rng.gen_range(3_000..8_000));
        // (window index, how to undo), in the order begun.
        let mut begun: Vec<(usize, Undo)> = Vec::new();
        let mut busy: Vec<u64> = Vec::new();
        for (i, name) in chosen.iter().enumerate() {
            if i > 0 {
                // Staggered, so the faults overlap without starting in lockstep.
                tokio::time::sleep(Duration::from_millis(st.rng.gen_range(0..1_500))).await;
            }
            let start_ns = rec.now_ns();
            if let Some((detail, undo, node)) = begin(&cluster, name, &mut st, &busy).await? {
                busy.extend(node);
                windows.push(Window { name: name.clone(), detail, start_ns, end_ns: 0 });
                begun.push((windows.len() - 1, undo));
            }
        }
        tokio::time::sleep(hold).await;
        while let Some((w, undo)) = begun.pop() {
            end(&cluster, undo).await?;
            windows[w].end_ns = rec.now_ns();
        }
        tokio::time::sleep(Duration::from_millis(st.rng.gen_range(2_000..5_000))).await;
    }
    heal(&cluster).await?;
    Ok(windows)
}

/// Begins fault `name`, avoiding the nodes in `busy` (another fault of the round holds them).
/// Returns what it did, how to undo it, and the node it took; `None` when it cannot run now.
async fn begin(
    cluster: &Shared,
    name: &str,
    st: &mut State,
    busy: &[u64],
) -> anyhow::Result<Option<(String, Undo, Option<u64>)>> {
    let n = cluster.lock().await.nodes.len() as u64;
    let all: Vec<u64> = (1..=n).collect();
    let free: Vec<u64> = all.iter().copied().filter(|x| !busy.contains(x)).collect();
    if free.is_empty() {
        return Ok(None);
    }
    let pick = free[st.rng.gen_range(0..free.len())];
    let others = |x: u64| all.iter().copied().filter(|y| *y != x).collect::<Vec<u64>>();
    Ok(Some(match name {
        "kill" => {
            let mut c = cluster.lock().await;
            c.kill(pick);
            // The first time a node is down, keep a copy of its data: the stale-copy nemesis
            // later starts it on the node's address.
            if let std::collections::btree_map::Entry::Vacant(e) = st.stale_copies.entry(pick) {
                let to = c.dir.join(format!("stale-copy-{pick}"));
                if c.copy_data(pick, &to).is_ok() {
                    e.insert(to);
                }
            }
            (format!("SIGKILL node {pick}, then restart"), Undo::Restart(pick), Some(pick))
        }
        "power-outage" => {
            // A majority loses power at once: every node runs with `lose_unsynced_on_kill`, so
            // what each had not synced is gone. Nothing acknowledged may be lost with it.
            let mut down = free.clone();
            for i in (1..down.len()).rev() {
                down.swap(i, st.rng.gen_range(0..=i));
            }
            down.truncate(n as usize / 2 + 1);
            if down.len() < n as usize / 2 + 1 {
                return Ok(None);
            }
            down.sort_unstable();
            let mut c = cluster.lock().await;
            for id in &down {
                c.kill(*id);
            }
            (
                format!("power lost on nodes {down:?} at once (unsynced writes gone), then restart"),
                Undo::RestartAll(down),
                None,
            )
        }
        "pause" => {
            cluster.lock().await.pause(pick, true);
            (format!("SIGSTOP node {pick}, then SIGCONT"), Undo::Continue(pick), Some(pick))
        }
        "partition-one" | "partition-leader" => {
            let target = if name == "partition-leader" {
                let shard = st.rng.gen_range(0..cluster.lock().await.shards);
                cluster.lock().await.leader(shard).await.unwrap_or(pick)
            } else {
                pick
            };
            let rest = others(target);
            cluster.lock().await.net.between(&[target], &rest, false, |s| s.cut = true);
            (format!("node {target} cut off from {rest:?}"), Undo::Heal, None)
        }
        "partition-halves" => {
            let mut shuffled = all.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, st.rng.gen_range(0..=i));
            }
            let (a, b) = shuffled.split_at(shuffled.len() / 2);
            cluster.lock().await.net.between(a, b, false, |s| s.cut = true);
            (format!("minority {a:?} | majority {b:?}"), Undo::Heal, None)
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
            ("ring: each node reaches only its neighbours".into(), Undo::Heal, None)
        }
        "one-way" => {
            let rest = others(pick);
            cluster.lock().await.net.between(&[pick], &rest, true, |s| s.cut = true);
            (format!("node {pick} cannot open connections to {rest:?} (they can to it)"), Undo::Heal, None)
        }
        "delay" => {
            let ms = st.rng.gen_range(20..200);
            cluster.lock().await.net.between(&[pick], &others(pick), false, |s| s.delay_ms = ms);
            (format!("{ms} ms on every link of node {pick}"), Undo::Heal, None)
        }
        "loss" => {
            // Either one node's links or every link of the cluster.
            let pct = st.rng.gen_range(5..=40u8);
            let c = cluster.lock().await;
            if st.rng.gen_bool(0.5) {
                c.net.between(&[pick], &others(pick), false, |s| s.loss_pct = pct);
                (format!("{pct}% of segments lost on every link of node {pick}"), Undo::Heal, None)
            } else {
                c.net.between(&all, &all, false, |s| s.loss_pct = pct);
                (format!("{pct}% of segments lost on every link"), Undo::Heal, None)
            }
        }
        "stale-copy" | "other-cluster" => {
            let copy = st.stale_copies.get(&pick).cloned();
            if name == "stale-copy" && copy.is_none() {
                // No copy of this node's data yet (it was never killed): nothing to replay.
                return Ok(None);
            }
            st.impostors += 1;
            let k = st.impostors;
            let mut c = cluster.lock().await;
            c.kill(pick);
            let data = c.dir.join(format!("impostor-{k}-data"));
            let imp = if let Some(copy) = copy.filter(|_| name == "stale-copy") {
                crate::cluster::copy_dir_pub(&copy, &data)?;
                c.spawn_impostor(pick, &format!("impostor-{k}"), |cfg| cfg.data_dir = data.clone())?
            } else {
                let id = norn_node::local_cluster::new_cluster_id();
                c.spawn_impostor(pick, &format!("impostor-{k}"), |cfg| {
                    cfg.data_dir = data.clone();
                    cfg.cluster_id = id;
                })?
            };
            let detail = if name == "stale-copy" {
                format!("node {pick} replaced by a process on an older copy of its data dir")
            } else {
                format!("node {pick} replaced by a node of another cluster on its addresses")
            };
            (detail, Undo::Impostor(imp, pick), Some(pick))
        }
        "clock-skew" => {
            // A jump of 5 s to 2 min either way, held, then back to true time.
            let secs = st.rng.gen_range(5..=120i64) * if st.rng.gen_bool(0.5) { 1 } else { -1 };
            cluster.lock().await.skew_clock(pick, secs)?;
            (format!("node {pick}'s wall clock {secs:+} s"), Undo::Unskew(pick), Some(pick))
        }
        "disk-fail" => {
            // The node's next fsync fails: its store is poisoned, its shards fail there, and
            // it recovers from what is on disk only when restarted.
            if cluster.lock().await.disk_fault(pick, true, false).await.is_err() {
                return Ok(None);
            }
            (format!("node {pick}'s next fsync fails; then restarted"), Undo::Recover(pick), Some(pick))
        }
        "disk-full" => {
            if cluster.lock().await.disk_fault(pick, false, true).await.is_err() {
                return Ok(None);
            }
            (format!("node {pick}'s disk full"), Undo::Unfill(pick), Some(pick))
        }
        other => anyhow::bail!("unknown nemesis {other}; the nemeses are {}", ALL.join(", ")),
    }))
}

/// Undoes one fault.
async fn end(cluster: &Shared, undo: Undo) -> anyhow::Result<()> {
    let mut c = cluster.lock().await;
    match undo {
        Undo::Restart(id) => c.restart(id)?,
        Undo::RestartAll(ids) => {
            for id in ids {
                c.restart(id)?;
            }
        }
        Undo::Continue(id) => c.pause(id, false),
        Undo::Heal => c.net.heal(),
        Undo::Impostor(mut imp, id) => {
            let _ = imp.kill();
            let _ = imp.wait();
            c.restart(id)?;
        }
        Undo::Unskew(id) => c.skew_clock(id, 0)?,
        Undo::Recover(id) => {
            c.kill(id);
            c.restart(id)?;
        }
        // A node restarted meanwhile forgot the fault already.
        Undo::Unfill(id) => {
            let _ = c.disk_fault(id, false, false).await;
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_faults_never_pair_two_network_layouts_or_two_process_faults() {
        assert!(compatible("kill", "partition-halves"));
        assert!(compatible("loss", "pause"));
        assert!(compatible("clock-skew", "kill"));
        assert!(!compatible("kill", "kill"));
        assert!(!compatible("partition-ring", "loss"));
        assert!(!compatible("kill", "pause"));
    }
}
