//! The fault schedule: which fault, where, when and for how long, all drawn from the seed.
//!
//! At most one node-level fault is active at a time (so the cluster keeps a quorum most of the
//! time and workflows make progress between faults); lossy links and worker crashes come and go
//! independently. Every injection and every heal is logged with its simulated time.

use std::time::Duration;

use norn_storage::MemDisk;
use rand::rngs::StdRng;
use rand::Rng;

use crate::config::{Fault, SimConfig};
use crate::net::{node_host, worker_host, DRIVER};
use crate::observe::{Control, Observations};

/// How an active fault ends.
#[derive(Clone, Debug)]
enum Heal {
    /// Repair these links (both directions).
    Repair(Vec<(String, String)>),
    /// Repair one direction of a link.
    RepairOneway(String, String),
    /// Restart a crashed node; `then_crash` kills it again that long after the restart (a
    /// crash in the middle of catching up) and restarts it once more after two seconds.
    Restart { node: usize, then_crash: Option<Duration> },
    /// Restart every node after a power loss.
    PowerBack,
    /// Kill a node whose store is poisoned (a failed fsync) and restart it.
    CrashRestart(usize),
    /// Give a node's disk its space back.
    SpaceBack(usize),
    /// Stop the other cluster's node and start the member again.
    StaleGone(usize),
}

struct Active {
    until: Duration,
    heal: Heal,
}

/// Injects and heals faults on a running simulation.
pub struct Faults {
    cfg: SimConfig,
    rng: StdRng,
    next_at: Duration,
    active: Option<Active>,
    /// Pending snapshot requests: (when, node).
    snapshots: Vec<(Duration, usize)>,
    /// Pending crash: (when, node, restart after, why).
    crash_at: Option<(Duration, usize, Duration, &'static str)>,
    /// Crashed worker hosts and when they restart.
    workers_down: Vec<(usize, Duration)>,
    lossy: bool,
    healed: bool,
    /// Nodes restarted after a long outage, to count their snapshot installs after the heal.
    pub(crate) outage_nodes: Vec<usize>,
    /// Injections and heals with their simulated times.
    pub log: Vec<(Duration, String)>,
    /// Per-node controls (free space, stale node).
    ctls: Vec<crate::simulation::NodeCtl>,
    /// (node, shard) replicas whose data a flipped bit damaged.
    pub damaged: std::collections::BTreeSet<(usize, u32)>,
}

impl Faults {
    /// A schedule for `cfg`, drawn from `rng`.
    pub fn new(cfg: &SimConfig, rng: StdRng, ctls: Vec<crate::simulation::NodeCtl>) -> Faults {
        Faults {
            cfg: cfg.clone(),
            rng,
            next_at: Duration::from_secs(5),
            active: None,
            snapshots: Vec::new(),
            crash_at: None,
            workers_down: Vec::new(),
            lossy: false,
            healed: false,
            outage_nodes: Vec::new(),
            log: Vec::new(),
            ctls,
            damaged: Default::default(),
        }
    }

    fn note(&mut self, now: Duration, what: String) {
        self.log.push((now, what));
    }

    /// Advances the schedule to `now`: heals what is due, injects what is due.
    pub fn step(&mut self, sim: &mut turmoil::Sim<'_>, disks: &[MemDisk], obs: &Observations) {
        let now = sim.elapsed();
        self.run_pending(sim, disks, obs, now);
        if now >= self.cfg.fault_window {
            if !self.healed {
                self.heal_everything(sim, disks, obs, now);
            }
            return;
        }
        if let Some(a) = &self.active {
            if now >= a.until {
                let heal = a.heal.clone();
                self.active = None;
                self.apply_heal(sim, disks, obs, heal, now);
            }
        }
        if now >= self.next_at {
            self.inject(sim, disks, obs, now);
            self.next_at = now + Duration::from_millis(self.rng.gen_range(3_000..12_000));
        }
    }

    fn run_pending(&mut self, sim: &mut turmoil::Sim<'_>, disks: &[MemDisk], obs: &Observations, now: Duration) {
        let due: Vec<usize> = self.snapshots.iter().filter(|(t, _)| *t <= now).map(|(_, n)| *n).collect();
        self.snapshots.retain(|(t, _)| *t > now);
        for node in due {
            if let Some(h) = obs.lock().nodes.get(&node) {
                let _ = h.control.send(Control::SnapshotAll);
            }
        }
        if let Some((at, node, restart_after, why)) = self.crash_at {
            if now >= at {
                self.crash_at = None;
                self.crash_node(sim, disks, obs, node, now, why);
                self.active =
                    Some(Active { until: now + restart_after, heal: Heal::Restart { node, then_crash: None } });
            }
        }
        let (due, rest): (Vec<_>, Vec<_>) = self.workers_down.iter().partition(|(_, t)| *t <= now);
        self.workers_down = rest;
        for (w, _) in due {
            sim.bounce(worker_host(w));
            self.note(now, format!("restart {}", worker_host(w)));
        }
    }

    fn crash_node(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        disks: &[MemDisk],
        obs: &Observations,
        node: usize,
        now: Duration,
        why: &str,
    ) {
        sim.crash(node_host(node));
        disks[node - 1].crash();
        obs.lock().nodes.remove(&node);
        self.note(now, format!("crash {} ({why}; unsynced writes lost)", node_host(node)));
    }

    fn others(&self, node: usize) -> Vec<usize> {
        (1..=self.cfg.nodes).filter(|o| *o != node).collect()
    }

    /// Every host name that is not a node: the driver and the workers.
    fn clients(&self) -> Vec<String> {
        let mut c: Vec<String> = (1..=self.cfg.workers).map(worker_host).collect();
        c.push(DRIVER.into());
        c
    }

    fn inject(&mut self, sim: &mut turmoil::Sim<'_>, disks: &[MemDisk], obs: &Observations, now: Duration) {
        let choices: Vec<Fault> = self.cfg.faults.iter().copied().collect();
        if choices.is_empty() {
            return;
        }
        let fault = choices[self.rng.gen_range(0..choices.len())];
        let length = Duration::from_millis(self.rng.gen_range(2_000..12_000));
        let node = self.rng.gen_range(1..=self.cfg.nodes);
        // Independent faults first; they do not wait for a node-level fault to end.
        match fault {
            Fault::Lossy => {
                self.lossy = !self.lossy;
                sim.set_max_message_latency(Duration::from_millis(if self.lossy { 50 } else { 5 }));
                sim.set_fail_rate(if self.lossy { 0.01 } else { 0.0 });
                self.note(now, format!("lossy links {}", if self.lossy { "on" } else { "off" }));
                return;
            }
            Fault::WorkerCrash => {
                let w = self.rng.gen_range(1..=self.cfg.workers.max(1));
                if self.cfg.workers > 0 && !self.workers_down.iter().any(|(x, _)| *x == w) {
                    sim.crash(worker_host(w));
                    self.workers_down.push((w, now + length));
                    self.note(now, format!("crash {} (its tasks die with it)", worker_host(w)));
                }
                return;
            }
            _ => {}
        }
        if self.active.is_some() || self.crash_at.is_some() {
            return;
        }
        let heal = match fault {
            Fault::Partition => {
                let mut links = Vec::new();
                for other in self.others(node).into_iter().map(node_host).chain(self.clients()) {
                    sim.partition(node_host(node), other.as_str());
                    links.push((node_host(node), other));
                }
                self.note(now, format!("partition {} from every host", node_host(node)));
                Heal::Repair(links)
            }
            Fault::IsolateLeader => {
                let shard = self.rng.gen_range(0..self.cfg.shards);
                let leader = obs.lock().nodes.iter().find_map(|(id, h)| {
                    h.raft.status().iter().any(|s| s.group == shard && s.role == norn_raft::Role::Leader).then_some(*id)
                });
                let target = leader.unwrap_or(node);
                let mut links = Vec::new();
                for other in self.others(target) {
                    sim.partition(node_host(target), node_host(other));
                    links.push((node_host(target), node_host(other)));
                }
                self.note(
                    now,
                    format!(
                        "isolate {} (leader of shard {shard}: {}) from the other nodes; clients still reach it",
                        node_host(target),
                        leader.is_some()
                    ),
                );
                Heal::Repair(links)
            }
            Fault::Split => {
                let minority = (self.cfg.nodes - 1) / 2;
                let mut ids: Vec<usize> = (1..=self.cfg.nodes).collect();
                for i in (1..ids.len()).rev() {
                    let j = self.rng.gen_range(0..=i);
                    ids.swap(i, j);
                }
                let (small, big) = ids.split_at(minority);
                let mut links = Vec::new();
                for a in small {
                    for b in big {
                        sim.partition(node_host(*a), node_host(*b));
                        links.push((node_host(*a), node_host(*b)));
                    }
                }
                let names = |v: &[usize]| v.iter().map(|n| node_host(*n)).collect::<Vec<_>>().join(",");
                self.note(now, format!("split nodes {} | {}; clients reach both sides", names(small), names(big)));
                Heal::Repair(links)
            }
            Fault::OneWay => {
                let others = self.others(node);
                let to = others[self.rng.gen_range(0..others.len())];
                sim.partition_oneway(node_host(node), node_host(to));
                self.note(now, format!("drop packets {} -> {} (one way)", node_host(node), node_host(to)));
                Heal::RepairOneway(node_host(node), node_host(to))
            }
            Fault::Crash => {
                self.crash_node(sim, disks, obs, node, now, "crash");
                Heal::Restart { node, then_crash: None }
            }
            Fault::SnapshotCrash => {
                self.snapshots.push((now, node));
                let after = Duration::from_millis(self.rng.gen_range(0..40));
                self.crash_at = Some((now + after, node, length, "while it snapshots"));
                self.note(now, format!("snapshot every shard on {}, crash it {after:?} later", node_host(node)));
                return;
            }
            Fault::LongOutage => {
                self.crash_node(sim, disks, obs, node, now, "long outage");
                let length = Duration::from_millis(self.rng.gen_range(20_000..35_000));
                // While it is down, the others snapshot and purge their logs twice.
                for other in self.others(node) {
                    self.snapshots.push((now + length / 3, other));
                    self.snapshots.push((now + length * 2 / 3, other));
                }
                let then_crash = self.rng.gen_bool(0.5).then(|| Duration::from_millis(self.rng.gen_range(20..400)));
                self.outage_nodes.push(node);
                self.note(
                    now,
                    format!("{} stays down for {length:?} while the others purge their logs", node_host(node)),
                );
                self.active = Some(Active { until: now + length, heal: Heal::Restart { node, then_crash } });
                return;
            }
            Fault::PowerLoss => {
                for n in 1..=self.cfg.nodes {
                    sim.crash(node_host(n));
                    disks[n - 1].crash();
                }
                obs.lock().nodes.clear();
                self.note(now, "power loss: every node (unsynced writes lost everywhere)".into());
                let length = Duration::from_millis(self.rng.gen_range(1_000..5_000));
                self.active = Some(Active { until: now + length, heal: Heal::PowerBack });
                return;
            }
            Fault::TornCrash => {
                let pending = disks[node - 1].unsynced_batches();
                let keep = if pending == 0 { 0 } else { self.rng.gen_range(0..=pending) };
                sim.crash(node_host(node));
                disks[node - 1].crash_keeping(keep);
                obs.lock().nodes.remove(&node);
                self.note(
                    now,
                    format!("crash {} keeping {keep} of {pending} unsynced write batches (torn)", node_host(node)),
                );
                Heal::Restart { node, then_crash: None }
            }
            Fault::FailingFsync => {
                disks[node - 1].fail_next_sync();
                self.note(now, format!("{}: its next fsync fails", node_host(node)));
                Heal::CrashRestart(node)
            }
            Fault::BitFlip => {
                // Once per run, and never a second replica of a shard.
                if !self.damaged.is_empty() {
                    return;
                }
                let pick = self.rng.gen_range(0..usize::MAX);
                let bit = self.rng.gen_range(0..usize::MAX);
                let Some(key) = disks[node - 1].flip_bit(norn_storage::Cf::State, pick, bit) else { return };
                let shard = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
                self.damaged.insert((node, shard));
                self.note(
                    now,
                    format!(
                        "flip a bit of a synced value on {} (shard {shard}, key {})",
                        node_host(node),
                        String::from_utf8_lossy(&key[8.min(key.len())..])
                    ),
                );
                return;
            }
            Fault::DiskFull => {
                self.ctls[node - 1].free_bytes.store(0, std::sync::atomic::Ordering::Relaxed);
                self.note(now, format!("{}: disk below its free-space reserve", node_host(node)));
                Heal::SpaceBack(node)
            }
            Fault::StaleNode => {
                self.crash_node(sim, disks, obs, node, now, "replaced by another cluster's node");
                self.ctls[node - 1].stale.store(true, std::sync::atomic::Ordering::Relaxed);
                sim.bounce(node_host(node));
                self.note(now, format!("another cluster's node runs on {}'s address", node_host(node)));
                Heal::StaleGone(node)
            }
            Fault::Lossy | Fault::WorkerCrash => return,
        };
        self.active = Some(Active { until: now + length, heal });
    }

    fn apply_heal(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        disks: &[MemDisk],
        obs: &Observations,
        heal: Heal,
        now: Duration,
    ) {
        match heal {
            Heal::Repair(links) => {
                for (a, b) in &links {
                    sim.repair(a.as_str(), b.as_str());
                }
                self.note(now, format!("repair {} links", links.len()));
            }
            Heal::RepairOneway(a, b) => {
                sim.repair_oneway(a.as_str(), b.as_str());
                self.note(now, format!("repair {a} -> {b}"));
            }
            Heal::Restart { node, then_crash } => {
                sim.bounce(node_host(node));
                self.note(now, format!("restart {}", node_host(node)));
                if let Some(after) = then_crash {
                    self.crash_at = Some((now + after, node, Duration::from_secs(2), "while it catches up"));
                }
            }
            Heal::PowerBack => {
                for n in 1..=self.cfg.nodes {
                    sim.bounce(node_host(n));
                }
                self.note(now, "power back: every node restarts".into());
            }
            Heal::CrashRestart(node) => {
                self.crash_node(sim, disks, obs, node, now, "restart after a failed fsync");
                sim.bounce(node_host(node));
                self.note(now, format!("restart {}", node_host(node)));
            }
            Heal::SpaceBack(node) => {
                self.ctls[node - 1].free_bytes.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
                self.note(now, format!("{}: disk space back", node_host(node)));
            }
            Heal::StaleGone(node) => {
                sim.crash(node_host(node));
                self.ctls[node - 1].stale.store(false, std::sync::atomic::Ordering::Relaxed);
                sim.bounce(node_host(node));
                self.note(now, format!("the other cluster's node is gone; {} restarts", node_host(node)));
            }
        }
        let _ = (disks, obs);
    }

    fn heal_everything(&mut self, sim: &mut turmoil::Sim<'_>, disks: &[MemDisk], obs: &Observations, now: Duration) {
        self.healed = true;
        if let Some(a) = self.active.take() {
            self.apply_heal(sim, disks, obs, a.heal, now);
        }
        if let Some((_, node, _, _)) = self.crash_at.take() {
            // A crash that was due is dropped; the node keeps running.
            self.note(now, format!("{}: planned crash dropped at the heal", node_host(node)));
        }
        for n in 1..=self.cfg.nodes {
            if !sim.is_host_running(node_host(n)) {
                sim.bounce(node_host(n));
                self.note(now, format!("restart {}", node_host(n)));
            }
        }
        for (w, _) in std::mem::take(&mut self.workers_down) {
            sim.bounce(worker_host(w));
            self.note(now, format!("restart {}", worker_host(w)));
        }
        self.lossy = false;
        sim.set_max_message_latency(Duration::from_millis(5));
        sim.set_fail_rate(0.0);
        let mut names: Vec<String> = (1..=self.cfg.nodes).map(node_host).collect();
        names.extend(self.clients());
        for a in &names {
            for b in &names {
                if a < b {
                    sim.repair(a.as_str(), b.as_str());
                }
            }
        }
        self.note(now, "heal: every link repaired, every host up, losses stop".into());
    }
}
