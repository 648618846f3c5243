//! Invariants that hold the cluster to what it told its clients (BRIEF §5, 1, 3, 4 and 5):
//! - an acknowledged start is never lost, and a retried request id names the same run;
//! - an acknowledged signal appears exactly once in its workflow's history (an unacknowledged
//!   one at most once);
//! - every history a client read is a prefix of what the cluster holds now (no rollback), and a
//!   read sent after a signal or start was acknowledged sees it (no stale read);
//! - an activity attempt runs at most once, and a completion sent with an earlier attempt's
//!   token is refused.

use std::collections::BTreeMap;

use norn_client::protos::temporal::api::enums::v1::EventType;

use super::histories::FinalRun;
use crate::observe::{EventSummary, Observed};
use crate::scenario::summarize;

fn runs_of<'a>(runs: &'a BTreeMap<String, FinalRun>, workflow_id: &str) -> Vec<&'a FinalRun> {
    runs.values().filter(|r| r.state.workflow_id == workflow_id).collect()
}

fn signal_positions(run: &FinalRun, name: &str, arg: &str) -> Vec<usize> {
    run.events
        .iter()
        .enumerate()
        .filter(|(_, e)| crate::scenario::signal_of(e).is_some_and(|(n, a)| n == name && a == arg))
        .map(|(i, _)| i)
        .collect()
}

fn is_prefix(read: &[EventSummary], run: &FinalRun) -> bool {
    read.len() <= run.events.len() && read.iter().zip(&run.events).all(|(r, e)| *r == summarize(e))
}

/// Checks the scenario's operations against the final state.
pub fn check(o: &Observed, runs: &BTreeMap<String, FinalRun>) -> Vec<String> {
    let mut out = Vec::new();
    for s in &o.starts {
        let mut acked = s.acked_runs.clone();
        acked.dedup();
        if acked.len() > 1 {
            out.push(format!(
                "start of {} (request {}) was acknowledged with different runs: {acked:?}",
                s.workflow_id, s.request_id
            ));
        }
        for run in &acked {
            match runs.get(run) {
                Some(r) if r.state.workflow_id == s.workflow_id => {}
                _ => out.push(format!("acknowledged start of {} (run {run}) is lost", s.workflow_id)),
            }
        }
    }
    for sig in &o.signals {
        let count: usize =
            runs_of(runs, &sig.workflow_id).iter().map(|r| signal_positions(r, &sig.name, &sig.arg_json).len()).sum();
        match (sig.acked_at, count) {
            (Some(_), 1) | (None, 0) | (None, 1) => {}
            (Some(at), n) => out.push(format!(
                "signal {} {} acknowledged at {:.3}s appears {n} times",
                sig.name,
                sig.arg_json,
                at.as_secs_f64()
            )),
            (None, n) => out.push(format!("unacknowledged signal {} {} appears {n} times", sig.name, sig.arg_json)),
        }
    }
    for read in &o.reads {
        let candidates = runs_of(runs, &read.workflow_id);
        let at = read.invoked_at.as_secs_f64();
        let Some(events) = &read.events else {
            let acked = o
                .starts
                .iter()
                .find(|s| s.workflow_id == read.workflow_id && s.acked_at.is_some_and(|t| t < read.invoked_at));
            if acked.is_some() {
                out.push(format!(
                    "stale read: node{} said {} does not exist at {at:.3}s, after its start was acknowledged",
                    read.node, read.workflow_id
                ));
            }
            continue;
        };
        let matching: Vec<&&FinalRun> = candidates.iter().filter(|r| is_prefix(events, r)).collect();
        if matching.is_empty() {
            out.push(format!(
                "read of {} on node{} at {at:.3}s returned {} events that are not a prefix of any run's history now",
                read.workflow_id,
                read.node,
                events.len()
            ));
            continue;
        }
        // Every signal acknowledged before the read was sent must be in it, unless a workflow
        // task was in flight at the end of the read: signals that arrive then are buffered and
        // written when the task closes (as Temporal does).
        let task_in_flight = events.last().is_some_and(|e| e.1 == EventType::WorkflowTaskStarted as i32);
        let missing = o.signals.iter().filter(|s| s.workflow_id == read.workflow_id && !task_in_flight).find(|s| {
            s.acked_at.is_some_and(|t| t < read.invoked_at)
                && matching
                    .iter()
                    .all(|r| signal_positions(r, &s.name, &s.arg_json).first().is_some_and(|pos| *pos >= events.len()))
        });
        // A read sent after another read of the same run came back sees at least as much.
        let earlier = o.reads.iter().filter(|r| r.workflow_id == read.workflow_id && r.completed_at < read.invoked_at);
        for prev in earlier {
            let Some(prev_events) = &prev.events else { continue };
            let same_run = matching.iter().any(|r| is_prefix(prev_events, r));
            if same_run && prev_events.len() > events.len() {
                out.push(format!(
                    "stale read: node{} returned {} events of {} at {at:.3}s, but node{} had returned {} by {:.3}s",
                    read.node,
                    events.len(),
                    read.workflow_id,
                    prev.node,
                    prev_events.len(),
                    prev.completed_at.as_secs_f64()
                ));
                break;
            }
        }
        if let Some(s) = missing {
            out.push(format!(
                "stale read: node{} returned {} events of {} at {at:.3}s without signal {} {} acknowledged at {:.3}s",
                read.node,
                events.len(),
                read.workflow_id,
                s.name,
                s.arg_json,
                s.acked_at.unwrap_or_default().as_secs_f64()
            ));
        }
    }
    // (workflow, run, activity, attempt) -> (worker, time) of each run of it.
    type AttemptKey<'a> = (&'a str, &'a str, &'a str, i32);
    let mut attempts: BTreeMap<AttemptKey<'_>, Vec<(usize, f64)>> = BTreeMap::new();
    for a in &o.attempts {
        attempts
            .entry((a.workflow_id.as_str(), a.run_id.as_str(), a.activity_id.as_str(), a.attempt))
            .or_default()
            .push((a.worker, a.at.as_secs_f64()));
    }
    for ((wf, run, act, attempt), ran) in attempts {
        if ran.len() > 1 {
            let first: Vec<String> = ran.iter().take(3).map(|(w, t)| format!("worker{w} at {t:.3}s")).collect();
            out.push(format!(
                "activity {act} of {wf} (run {run}) attempt {attempt} was started {} times ({}{})",
                ran.len(),
                first.join(", "),
                if ran.len() > 3 { ", ..." } else { "" }
            ));
        }
    }
    out.extend(o.stale_accepted.iter().map(|s| format!("a stale attempt's completion was accepted: {s}")));
    out
}
