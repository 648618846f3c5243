//! Raft safety, from what the nodes did while the run went on: no node's stored vote ever goes
//! back (so no node grants two leaders that could both commit), and every replica applied the
//! same entry at each index (so a committed entry never changed, even across crashes that lost
//! unsynced writes).
//!
//! openraft names a leader by (term, node), not by term alone: a node that voted for T15-N1 may
//! later vote for T15-N2, which orders above it, and both can win an election in term 15. That is
//! safe because votes are totally ordered and a node's vote only grows: T15-N1 can no longer
//! replicate to a node that holds T15-N2. So the check "one leader per term" of the Raft paper is
//! here "stored votes never go back", sampled on every node every 10 ms, across restarts.

use crate::observe::Observed;

/// The violations seen by the apply observers and the leader sampler.
pub fn check(o: &Observed) -> Vec<String> {
    let mut out: Vec<String> = o.vote_regressions.iter().map(|c| format!("a stored vote went back: {c}")).collect();
    out.extend(o.apply_conflicts.iter().map(|c| format!("replicas applied different entries: {c}")));
    out
}
