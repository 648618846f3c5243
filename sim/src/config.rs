//! What one simulation run does: its seed, cluster, faults and limits.

use std::collections::BTreeSet;
use std::time::Duration;

/// Fault classes a run may inject. Every one is chosen, placed and timed by the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Cut one node off from every other host (nodes, clients, workers).
    Partition,
    /// Cut the leader of a shard off from the other nodes; clients and workers still reach it.
    IsolateLeader,
    /// Split the nodes into a minority and a majority side (2|3 or 1|2); clients and workers
    /// reach both sides.
    Split,
    /// Drop the packets of one node to another in one direction only.
    OneWay,
    /// Random message loss and latency on every link.
    Lossy,
    /// Kill a node (unsynced writes lost) and restart it later.
    Crash,
    /// Make a node build snapshots of its shards and kill it while it does.
    SnapshotCrash,
    /// Keep a node down while the others snapshot and purge their logs, so that it must catch
    /// up from a snapshot; sometimes kill it again while it installs one.
    LongOutage,
    /// Every node loses power at once (unsynced writes lost everywhere) and restarts.
    PowerLoss,
    /// Kill an SDK worker host (its running activities and workflow tasks die) and restart it.
    WorkerCrash,
    /// Kill a node while part of its unsynced writes had reached the disk anyway (a prefix of
    /// them survives; a torn last record is dropped as recovery drops it) and restart it.
    TornCrash,
    /// A node's next fsync fails: its store is poisoned and its shards stop until it restarts.
    FailingFsync,
    /// Bit rot: one bit of one synced state value on one node flips (once per run). The replica
    /// that finds it takes itself out of that shard; the others carry on.
    BitFlip,
    /// A node's disk falls below its free-space reserve: it refuses new writes, then space
    /// returns.
    DiskFull,
    /// A node of another cluster (fresh data, another cluster id) runs on a member's address for
    /// a while: every node must refuse it.
    StaleNode,
}

impl Fault {
    /// Every fault class.
    pub const ALL: [Fault; 15] = [
        Fault::Partition,
        Fault::IsolateLeader,
        Fault::Split,
        Fault::OneWay,
        Fault::Lossy,
        Fault::Crash,
        Fault::SnapshotCrash,
        Fault::LongOutage,
        Fault::PowerLoss,
        Fault::WorkerCrash,
        Fault::TornCrash,
        Fault::FailingFsync,
        Fault::BitFlip,
        Fault::DiskFull,
        Fault::StaleNode,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Partition => "partition",
            Fault::IsolateLeader => "isolate-leader",
            Fault::Split => "split",
            Fault::OneWay => "one-way",
            Fault::Lossy => "lossy",
            Fault::Crash => "crash",
            Fault::SnapshotCrash => "snapshot-crash",
            Fault::LongOutage => "long-outage",
            Fault::PowerLoss => "power-loss",
            Fault::WorkerCrash => "worker-crash",
            Fault::TornCrash => "torn-crash",
            Fault::FailingFsync => "failing-fsync",
            Fault::BitFlip => "bit-flip",
            Fault::DiskFull => "disk-full",
            Fault::StaleNode => "stale-node",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// One simulation run's settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Decides everything.
    pub seed: u64,
    /// Cluster size (3 or 5).
    pub nodes: usize,
    /// Shards.
    pub shards: u32,
    /// SDK worker hosts.
    pub workers: usize,
    /// Workflows the built-in workload runs.
    pub workflows: usize,
    /// Fault classes to inject.
    pub faults: BTreeSet<Fault>,
    /// How long (simulated) faults are injected before the cluster heals.
    pub fault_window: Duration,
    /// Simulated time allowed in all; a scenario still running then is a liveness violation.
    pub time_limit: Duration,
    /// A bug planted in every node, to show the checks catch it (tests only).
    pub planted_bug: Option<norn_raft::PlantedBug>,
    /// Workflows started on a task queue no worker polls, left open for the whole run.
    pub idle_workflows: usize,
}

impl SimConfig {
    /// Defaults for `seed`: 3 nodes, 4 shards, 2 workers, 10 workflows, every fault, 60 s of
    /// faults, 900 s in all.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: 3,
            shards: 4,
            workers: 2,
            workflows: 10,
            faults: Fault::ALL.into_iter().collect(),
            fault_window: Duration::from_secs(60),
            time_limit: Duration::from_secs(900),
            planted_bug: None,
            idle_workflows: 100,
        }
    }

    /// Only these fault classes.
    pub fn with_faults(mut self, faults: &[Fault]) -> SimConfig {
        self.faults = faults.iter().copied().collect();
        self
    }
}

/// The planted bugs `norn-sim --plant` knows, by name.
pub fn planted_bug(name: &str) -> Option<norn_raft::PlantedBug> {
    use norn_raft::PlantedBug::*;
    match name {
        "ack-before-fsync" => Some(AckBeforeSync),
        "uncommitted-activity-start" => Some(UncommittedActivityStart),
        "stale-follower-read" => Some(StaleFollowerRead),
        _ => None,
    }
}

/// The name of a planted bug on the command line.
pub fn planted_bug_name(bug: norn_raft::PlantedBug) -> &'static str {
    use norn_raft::PlantedBug::*;
    match bug {
        AckBeforeSync => "ack-before-fsync",
        UncommittedActivityStart => "uncommitted-activity-start",
        StaleFollowerRead => "stale-follower-read",
        AcceptAnyCluster => "accept-any-cluster",
    }
}
