//! Invariants of each run's history (BRIEF §5, 2, 3 and 6), on the final state: event ids are
//! contiguous from 1, the first event starts the run, there is at most one terminal event and it
//! is last (present exactly when the run is closed), a timer fires at most once and never before
//! its deadline, an activity is started at most once per scheduled event; and each workflow id
//! has at most one open run on every replica.

use std::collections::{BTreeMap, BTreeSet};

use norn_client::protos::temporal::api::enums::v1::EventType;
use norn_client::protos::temporal::api::history::v1::history_event::Attributes;
use norn_client::protos::temporal::api::history::v1::HistoryEvent;
use norn_node::history::RunState;

use super::disk::ShardState;
use crate::net::node_host;

/// A run as the checks see it: its state and its history.
pub struct FinalRun {
    /// The run's state.
    pub state: RunState,
    /// Its events, in order.
    pub events: Vec<HistoryEvent>,
}

/// The cluster's final state: for every shard the replica with the most history (the replicas
/// are compared separately).
pub fn final_runs(per_node: &[BTreeMap<u32, ShardState>]) -> BTreeMap<String, FinalRun> {
    let mut best: BTreeMap<u32, &ShardState> = BTreeMap::new();
    for node in per_node {
        for (shard, s) in node {
            match best.get(shard) {
                Some(b) if b.raw_events.len() >= s.raw_events.len() => {}
                _ => {
                    best.insert(*shard, s);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for s in best.values() {
        for (run_id, state) in &s.runs {
            let events = s.histories.get(run_id).cloned().unwrap_or_default();
            out.insert(run_id.clone(), FinalRun { state: state.clone(), events });
        }
    }
    out
}

/// Whether an event closes its run.
pub fn is_terminal(event_type: i32) -> bool {
    [
        EventType::WorkflowExecutionCompleted,
        EventType::WorkflowExecutionFailed,
        EventType::WorkflowExecutionTimedOut,
        EventType::WorkflowExecutionCanceled,
        EventType::WorkflowExecutionTerminated,
        EventType::WorkflowExecutionContinuedAsNew,
    ]
    .iter()
    .any(|t| *t as i32 == event_type)
}

fn millis(e: &HistoryEvent) -> i64 {
    e.event_time.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap_or(0)
}

/// Checks one run's history.
pub fn check_run(r: &FinalRun) -> Vec<String> {
    let who = format!("{} run {}", r.state.workflow_id, r.state.run_id);
    let mut out = Vec::new();
    for (i, e) in r.events.iter().enumerate() {
        if e.event_id != i as i64 + 1 {
            out.push(format!("{who}: event {} at position {} (history not contiguous)", e.event_id, i + 1));
            break;
        }
    }
    match r.events.first() {
        None => out.push(format!("{who}: no history")),
        Some(e) if e.event_type != EventType::WorkflowExecutionStarted as i32 => {
            out.push(format!("{who}: first event is of type {}, not WorkflowExecutionStarted", e.event_type))
        }
        Some(_) => {}
    }
    let terminals: Vec<usize> =
        r.events.iter().enumerate().filter(|(_, e)| is_terminal(e.event_type)).map(|(i, _)| i).collect();
    if terminals.len() > 1 {
        out.push(format!("{who}: {} terminal events", terminals.len()));
    }
    if let Some(&t) = terminals.first() {
        if t + 1 != r.events.len() {
            out.push(format!("{who}: terminal event {} is followed by {} more", t + 1, r.events.len() - t - 1));
        }
    }
    if r.state.is_open() != terminals.is_empty() {
        out.push(format!(
            "{who}: run state says {} but history has {} terminal events",
            if r.state.is_open() { "open" } else { "closed" },
            terminals.len()
        ));
    }
    let by_id: BTreeMap<i64, &HistoryEvent> = r.events.iter().map(|e| (e.event_id, e)).collect();
    let mut fired = BTreeSet::new();
    let mut started_activities = BTreeSet::new();
    for e in &r.events {
        match &e.attributes {
            Some(Attributes::TimerFiredEventAttributes(a)) => {
                if !fired.insert(a.started_event_id) {
                    out.push(format!(
                        "{who}: timer {} (started at event {}) fired twice",
                        a.timer_id, a.started_event_id
                    ));
                }
                let started = by_id.get(&a.started_event_id).and_then(|s| match &s.attributes {
                    Some(Attributes::TimerStartedEventAttributes(t)) => Some((millis(s), t)),
                    _ => None,
                });
                match started {
                    None => out.push(format!("{who}: timer fired at event {} was never started", e.event_id)),
                    Some((at, t)) => {
                        let d =
                            t.start_to_fire_timeout.as_ref().map(|d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000);
                        let deadline = at + d.unwrap_or(0);
                        if millis(e) < deadline {
                            out.push(format!(
                                "{who}: timer {} fired at {} ms, {} ms before its deadline",
                                a.timer_id,
                                millis(e),
                                deadline - millis(e)
                            ));
                        }
                    }
                }
            }
            Some(Attributes::ActivityTaskStartedEventAttributes(a))
                if !started_activities.insert(a.scheduled_event_id) =>
            {
                out.push(format!("{who}: activity scheduled at event {} started twice", a.scheduled_event_id));
            }
            _ => {}
        }
    }
    out
}

/// Every run's history, and at most one open run per workflow id on every replica.
pub fn check(per_node: &[BTreeMap<u32, ShardState>], runs: &BTreeMap<String, FinalRun>) -> Vec<String> {
    let mut out: Vec<String> = runs.values().flat_map(check_run).collect();
    for (i, node) in per_node.iter().enumerate() {
        let mut open: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        for s in node.values() {
            for (ns, wf, run) in &s.open {
                open.entry((ns.as_str(), wf.as_str())).or_default().push(run.as_str());
            }
        }
        for ((_, wf), runs) in open {
            if runs.len() > 1 {
                out.push(format!("{}: workflow {wf} has {} open runs: {runs:?}", node_host(i + 1), runs.len()));
            }
        }
    }
    out
}
