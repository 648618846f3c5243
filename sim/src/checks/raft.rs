//! Raft safety, from what the nodes did while the run went on: at most one leader per shard and
//! term, and every replica applied the same entry at each index (so a committed entry never
//! changed, even across crashes that lost unsynced writes).

use crate::observe::Observed;

/// The violations seen by the apply observers and the leader sampler.
pub fn check(o: &Observed) -> Vec<String> {
    let mut out: Vec<String> = o.leader_conflicts.iter().map(|c| format!("two leaders in one term: {c}")).collect();
    out.extend(o.apply_conflicts.iter().map(|c| format!("replicas applied different entries: {c}")));
    out
}
