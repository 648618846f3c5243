//! Invariant (BRIEF §5, 7): every closed history replays through the workflow code without a
//! non-determinism error.

use std::collections::{BTreeMap, BTreeSet};

use norn_client::Replayer;

use super::histories::FinalRun;

/// Replays every closed run whose workflow type the simulation registered.
pub fn check(replayer: &Replayer, types: &BTreeSet<String>, runs: &BTreeMap<String, FinalRun>) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut replayed = 0;
    for r in runs.values() {
        if r.state.is_open() || !types.contains(&r.state.workflow_type) {
            continue;
        }
        replayed += 1;
        if let Err(e) = replayer.replay(&r.events) {
            out.push(format!(
                "replay of {} ({}, run {}) failed: {e}",
                r.state.workflow_id, r.state.workflow_type, r.state.run_id
            ));
        }
    }
    (out, replayed)
}
