//! Checkers over the history and the final state. Indeterminate (info) operations may or may not
//! have happened, as in Jepsen.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::{pairs, Kind, Op};

/// What the harness read at the end, once everything was healed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Final {
    /// Per workflow id: the current run id and its status, as node 1 describes it.
    pub runs: BTreeMap<String, (String, String)>,
    /// Per workflow id: the signal values in its history, in history order.
    pub signals: BTreeMap<String, Vec<i64>>,
    /// Per workflow id and node: the history as (event id, CRC of the event) read through it.
    pub reads: BTreeMap<String, BTreeMap<u64, Vec<(i64, u32)>>>,
    /// Per workflow id and node: the history as that node's own replica holds it.
    pub replicas: BTreeMap<String, BTreeMap<u64, Vec<(i64, u32)>>>,
    /// Per workflow id: the event types of its history (kept for the report).
    pub event_types: BTreeMap<String, Vec<String>>,
    /// Per workflow id: each event's time (ms since the epoch), in history order.
    pub event_times: BTreeMap<String, Vec<i64>>,
    /// Per workflow id: the values of the `set` updates its history accepted, in history order.
    #[serde(default)]
    pub updates: BTreeMap<String, Vec<i64>>,
    /// Per workflow id: the scheduled event id of each event that closed an activity, in order.
    #[serde(default)]
    pub activity_closes: BTreeMap<String, Vec<i64>>,
}

/// One violation: the checker, the workflow, what is wrong and the operations that show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Violation {
    /// Which checker.
    pub checker: String,
    /// The workflow it concerns.
    pub wf: String,
    /// What is wrong.
    pub detail: String,
    /// The history records that show it.
    pub ops: Vec<Op>,
}

fn v(checker: &str, wf: &str, detail: String, ops: Vec<Op>) -> Violation {
    Violation { checker: checker.into(), wf: wf.into(), detail, ops }
}

/// One history read: (event id, CRC) per event, and the operation that read it (none for the
/// final reads).
type HistoryRead = (Vec<(i64, u32)>, Option<Op>);
/// One describe: invoked at, completed at, status, history length, the completion.
type Describe = (u64, u64, String, i64, Op);

/// Every checker's name.
pub const CHECKERS: &[&str] = &[
    "acknowledged-starts-kept",
    "one-run-per-id",
    "signals-exactly-once-in-order",
    "histories-gap-free-and-prefix-consistent",
    "describe-monotonic",
    "every-workflow-finishes",
    "replicas-identical",
    "event-times-monotonic",
    "register-linearizable",
    "updates-exactly-once",
    "activities-closed-once",
    "cancels-applied",
    "nodes-never-panic",
];

/// Steps the linearizability search may take per workflow before it gives up (no verdict).
const WGL_BUDGET: u64 = 2_000_000;

/// Runs every checker.
pub fn check(ops: &[Op], fin: &Final) -> Vec<Violation> {
    let ps = pairs(ops);
    let mut out = Vec::new();
    // Acknowledged starts are never lost, and at most one run per id was acknowledged.
    let mut ok_runs: BTreeMap<String, Vec<(String, Op)>> = BTreeMap::new();
    for p in &ps {
        if let Some(d) = &p.done {
            if (p.invoke.f == "start" || p.invoke.f == "start-collide") && d.kind == Kind::Ok {
                let run = d.value.as_str().unwrap_or_default().to_string();
                ok_runs.entry(p.invoke.wf.clone()).or_default().push((run, d.clone()));
            }
        }
    }
    for (wf, runs) in &ok_runs {
        match fin.runs.get(wf) {
            None => out.push(v(
                "acknowledged-starts-kept",
                wf,
                "an acknowledged start is gone".into(),
                runs.iter().map(|r| r.1.clone()).collect(),
            )),
            Some((run, _)) if !runs.iter().any(|r| &r.0 == run) => out.push(v(
                "acknowledged-starts-kept",
                wf,
                format!("acknowledged run {} but the workflow's run is {run}", runs[0].0),
                runs.iter().map(|r| r.1.clone()).collect(),
            )),
            _ => {}
        }
        let distinct: std::collections::BTreeSet<&String> = runs.iter().map(|r| &r.0).collect();
        if distinct.len() > 1 {
            out.push(v(
                "one-run-per-id",
                wf,
                format!("{} different runs acknowledged for one id: {distinct:?}", distinct.len()),
                runs.iter().map(|r| r.1.clone()).collect(),
            ));
        }
    }
    // Signals: each acknowledged one applied exactly once, none applied twice, a failed one never,
    // acknowledged ones in send order.
    let mut sent: BTreeMap<String, Vec<(i64, Kind, Op)>> = BTreeMap::new();
    for p in ps.iter().filter(|p| p.invoke.f == "signal") {
        let seq = p.invoke.value.as_i64().unwrap_or(-1);
        let kind = p.done.as_ref().map(|d| d.kind).unwrap_or(Kind::Info);
        sent.entry(p.invoke.wf.clone()).or_default().push((seq, kind, p.invoke.clone()));
    }
    for (wf, list) in &sent {
        let Some(applied) = fin.signals.get(wf) else { continue };
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for s in applied {
            *counts.entry(*s).or_default() += 1;
        }
        for (seq, n) in &counts {
            if *n > 1 {
                let ops = list.iter().filter(|x| x.0 == *seq).map(|x| x.2.clone()).collect();
                out.push(v("signals-exactly-once-in-order", wf, format!("signal {seq} applied {n} times"), ops));
            }
        }
        for (seq, kind, op) in list {
            let n = counts.get(seq).copied().unwrap_or(0);
            match kind {
                Kind::Ok if n == 0 => out.push(v(
                    "signals-exactly-once-in-order",
                    wf,
                    format!("acknowledged signal {seq} is not in the history"),
                    vec![op.clone()],
                )),
                Kind::Fail if n > 0 => out.push(v(
                    "signals-exactly-once-in-order",
                    wf,
                    format!("signal {seq} failed definitely but is in the history"),
                    vec![op.clone()],
                )),
                _ => {}
            }
        }
        let acked: std::collections::BTreeSet<i64> = list.iter().filter(|x| x.1 == Kind::Ok).map(|x| x.0).collect();
        let order: Vec<i64> = applied.iter().copied().filter(|s| acked.contains(s)).collect();
        if order.windows(2).any(|w| w[0] >= w[1]) {
            out.push(v(
                "signals-exactly-once-in-order",
                wf,
                format!("acknowledged signals out of send order: {order:?}"),
                vec![],
            ));
        }
    }
    // Histories: gap-free, and every read agrees with every other on each event.
    let mut reads: BTreeMap<String, Vec<HistoryRead>> = BTreeMap::new();
    for p in ps.iter().filter(|p| p.invoke.f == "read-history") {
        if let Some(d) = p.done.as_ref().filter(|d| d.kind == Kind::Ok) {
            let events: Vec<(i64, u32)> = serde_json::from_value(d.value.clone()).unwrap_or_default();
            reads.entry(p.invoke.wf.clone()).or_default().push((events, Some(d.clone())));
        }
    }
    for (wf, by_node) in fin.reads.iter().chain(fin.replicas.iter()) {
        for events in by_node.values() {
            reads.entry(wf.clone()).or_default().push((events.clone(), None));
        }
    }
    for (wf, list) in &reads {
        let mut seen: BTreeMap<i64, (u32, Option<Op>)> = BTreeMap::new();
        for (events, op) in list {
            let ids: Vec<i64> = events.iter().map(|e| e.0).collect();
            if ids.iter().enumerate().any(|(i, id)| *id != i as i64 + 1) {
                out.push(v(
                    "histories-gap-free-and-prefix-consistent",
                    wf,
                    format!("a history read with a gap or out of order: {ids:?}"),
                    op.iter().cloned().collect(),
                ));
                continue;
            }
            for (id, digest) in events {
                match seen.get(id) {
                    Some((d, first)) if d != digest => out.push(v(
                        "histories-gap-free-and-prefix-consistent",
                        wf,
                        format!("event {id} differs between two reads"),
                        first.iter().chain(op.iter()).cloned().collect(),
                    )),
                    Some(_) => {}
                    None => {
                        seen.insert(*id, (*digest, op.clone()));
                    }
                }
            }
        }
    }
    // Describe: a run seen closed is never seen open by a describe that began later; its
    // history never seen shorter.
    let mut describes: BTreeMap<String, Vec<Describe>> = BTreeMap::new();
    for p in ps.iter().filter(|p| p.invoke.f == "describe") {
        if let Some(d) = p.done.as_ref().filter(|d| d.kind == Kind::Ok) {
            let status = d.value["status"].as_str().unwrap_or_default().to_string();
            let len = d.value["length"].as_i64().unwrap_or(0);
            describes.entry(p.invoke.wf.clone()).or_default().push((
                p.invoke.time_ns,
                d.time_ns,
                status,
                len,
                d.clone(),
            ));
        }
    }
    for (wf, list) in &describes {
        for a in list {
            for b in list {
                if a.1 < b.0 {
                    let a_closed = a.2 != "WORKFLOW_EXECUTION_STATUS_RUNNING";
                    let b_open = b.2 == "WORKFLOW_EXECUTION_STATUS_RUNNING";
                    if (a_closed && b_open) || a.3 > b.3 {
                        out.push(v(
                            "describe-monotonic",
                            wf,
                            format!("read {} with {} events, then later {} with {} events", a.2, a.3, b.2, b.3),
                            vec![a.4.clone(), b.4.clone()],
                        ));
                    }
                }
            }
        }
    }
    // Cancels: an acknowledged cancel ends the run canceled (the workflow never ends by itself
    // before its finish signal, which is sent after every cancel); a run nobody may have
    // canceled is never canceled. Cancels never wait on anything, so an indeterminate one may
    // or may not have happened.
    let mut cancels: BTreeMap<String, Vec<(Kind, Op)>> = BTreeMap::new();
    for p in ps.iter().filter(|p| p.invoke.f == "cancel") {
        let kind = p.done.as_ref().map(|d| d.kind).unwrap_or(Kind::Info);
        let op = p.done.clone().unwrap_or_else(|| p.invoke.clone());
        cancels.entry(p.invoke.wf.clone()).or_default().push((kind, op));
    }
    let canceled = "WORKFLOW_EXECUTION_STATUS_CANCELED";
    for (wf, (_, status)) in &fin.runs {
        let list = cancels.get(wf).map(Vec::as_slice).unwrap_or_default();
        let acked = list.iter().any(|c| c.0 == Kind::Ok);
        let maybe = list.iter().any(|c| c.0 != Kind::Fail);
        let ops: Vec<Op> = list.iter().map(|c| c.1.clone()).collect();
        if acked && status != canceled {
            out.push(v("cancels-applied", wf, format!("an acknowledged cancel, but the run ended {status}"), ops));
        } else if !maybe && status == canceled {
            out.push(v("cancels-applied", wf, "the run ended canceled, but no cancel may have happened".into(), ops));
        }
        let requested =
            fin.event_types.get(wf).map(|t| t.iter().filter(|t| *t == "WORKFLOW_EXECUTION_CANCEL_REQUESTED").count());
        if let Some(n) = requested.filter(|n| *n > 1) {
            out.push(v("cancels-applied", wf, format!("{n} cancel requests recorded in one run"), vec![]));
        }
    }
    // Activities: no activity closed twice (a result applied twice), none closed that was not
    // scheduled.
    for (wf, closes) in &fin.activity_closes {
        let mut seen = std::collections::BTreeSet::new();
        for id in closes {
            if !seen.insert(*id) {
                out.push(v(
                    "activities-closed-once",
                    wf,
                    format!("the activity scheduled by event {id} was closed twice"),
                    vec![],
                ));
            }
            let scheduled = fin
                .event_types
                .get(wf)
                .and_then(|t| t.get((*id as usize).wrapping_sub(1)))
                .is_some_and(|t| t == "ACTIVITY_TASK_SCHEDULED");
            if !scheduled {
                out.push(v(
                    "activities-closed-once",
                    wf,
                    format!("an activity closed for event {id}, which is not an ACTIVITY_TASK_SCHEDULED"),
                    vec![],
                ));
            }
        }
    }
    // Every workflow whose start was acknowledged finished after the heal (canceled, where a
    // cancel may have happened).
    for wf in ok_runs.keys() {
        if let Some((_, status)) = fin.runs.get(wf) {
            let may_cancel = cancels.get(wf).is_some_and(|l| l.iter().any(|c| c.0 != Kind::Fail));
            if status != "WORKFLOW_EXECUTION_STATUS_COMPLETED" && !(may_cancel && status == canceled) {
                let tail: Vec<&String> =
                    fin.event_types.get(wf).map(|t| t.iter().rev().take(12).rev().collect()).unwrap_or_default();
                let ops = ops.iter().filter(|o| &o.wf == wf).cloned().collect();
                out.push(v(
                    "every-workflow-finishes",
                    wf,
                    format!("ended {status} after the final heal; its last events: {tail:?}"),
                    ops,
                ));
            }
        }
    }
    // Event times never go back within a history, whatever a leader's wall clock did (the log
    // entry timestamps a leader assigns are kept monotonic per shard).
    for (wf, times) in &fin.event_times {
        if let Some(i) = times.windows(2).position(|w| w[1] < w[0]) {
            out.push(v(
                "event-times-monotonic",
                wf,
                format!("event {} is dated {} ms before event {}", i + 2, times[i] - times[i + 1], i + 1),
                vec![],
            ));
        }
    }
    register_checks(&ps, fin, &mut out);
    // Replicas byte-identical.
    for (wf, by_node) in &fin.replicas {
        let mut it = by_node.iter();
        if let Some((n0, first)) = it.next() {
            for (n, other) in it {
                if other != first {
                    out.push(v(
                        "replicas-identical",
                        wf,
                        format!(
                            "node {n}'s replica differs from node {n0}'s ({} vs {} events)",
                            other.len(),
                            first.len()
                        ),
                        vec![],
                    ));
                }
            }
        }
    }
    out
}

/// Nodes never panic: any panic in a node's log (a request, bytes from a peer or the disk, an
/// assertion of the Raft library) is a violation, with its message.
pub fn panics(logs: &[(u64, std::path::PathBuf)]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (id, path) in logs {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        let mut lines = text.lines();
        let mut n = 0usize;
        let mut first = None;
        while let Some(l) = lines.next() {
            if l.contains("panicked at ") {
                n += 1;
                if first.is_none() {
                    first = Some(format!("{} {}", l.trim(), lines.next().unwrap_or_default().trim()));
                }
            }
        }
        if let Some(first) = first {
            out.push(v("nodes-never-panic", "", format!("node {id} panicked {n} times; the first: {first}"), vec![]));
        }
    }
    out
}

/// Each workflow's register (written by `set` updates, read by `get` queries) is linearizable,
/// and every acknowledged write was applied exactly once (a failed one never).
fn register_checks(ps: &[crate::history::Pair], fin: &Final, out: &mut Vec<Violation>) {
    use crate::linearizable::{check as wgl, Action, RegOp, Verdict};
    let mut by_wf: BTreeMap<&str, Vec<&crate::history::Pair>> = BTreeMap::new();
    for p in ps.iter().filter(|p| p.invoke.f == "write" || p.invoke.f == "read") {
        by_wf.entry(p.invoke.wf.as_str()).or_default().push(p);
    }
    for (wf, list) in by_wf {
        let mut ops: Vec<RegOp> = Vec::new();
        let mut source: Vec<Op> = Vec::new();
        for p in &list {
            let kind = p.done.as_ref().map(|d| d.kind).unwrap_or(Kind::Info);
            let ret = p.done.as_ref().filter(|d| d.kind == Kind::Ok).map(|d| d.time_ns);
            let action = match (p.invoke.f.as_str(), kind) {
                (_, Kind::Fail) | ("read", Kind::Info | Kind::Invoke) => continue,
                ("write", _) => Action::Write(p.invoke.value.as_i64().unwrap_or(-1) as u32),
                _ => Action::Read(p.done.as_ref().and_then(|d| d.value.as_i64()).map(|v| v as u32)),
            };
            ops.push(RegOp { call: p.invoke.time_ns, ret, action });
            source.push(p.done.clone().unwrap_or_else(|| p.invoke.clone()));
        }
        match wgl(&ops, None, WGL_BUDGET) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { linearized, stuck_at } => out.push(v(
                "register-linearizable",
                wf,
                format!(
                    "no linearization of {} register operations: after {linearized} of them, none of the \
                     operations shown fits (a read of a value overwritten or never written)",
                    ops.len()
                ),
                stuck_at.iter().map(|i| source[*i].clone()).collect(),
            )),
            Verdict::Unknown(steps) => {
                eprintln!("norn-jepsen: the linearizability search for {wf} gave up after {steps} steps ({} operations): no verdict", ops.len())
            }
        }
        let Some(applied) = fin.updates.get(wf) else { continue };
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for u in applied {
            *counts.entry(*u).or_default() += 1;
        }
        for p in list.iter().filter(|p| p.invoke.f == "write") {
            let value = p.invoke.value.as_i64().unwrap_or(-1);
            let n = counts.get(&value).copied().unwrap_or(0);
            let kind = p.done.as_ref().map(|d| d.kind).unwrap_or(Kind::Info);
            let bad = match kind {
                Kind::Ok if n != 1 => Some(format!("acknowledged update set({value}) applied {n} times")),
                Kind::Fail if n > 0 => Some(format!("update set({value}) failed definitely but was applied")),
                _ if n > 1 => Some(format!("update set({value}) applied {n} times")),
                _ => None,
            };
            if let Some(detail) = bad {
                out.push(v("updates-exactly-once", wf, detail, p.done.iter().cloned().collect()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_stale_register_read_and_a_twice_applied_update_are_violations() {
        let ops = vec![
            op(1, Kind::Invoke, "write", "w", 1, json!(1)),
            op(1, Kind::Ok, "write", "w", 2, json!(1)),
            op(1, Kind::Invoke, "write", "w", 3, json!(2)),
            op(1, Kind::Ok, "write", "w", 4, json!(2)),
            op(2, Kind::Invoke, "read", "w", 5, json!(null)),
            op(2, Kind::Ok, "read", "w", 6, json!(1)),
        ];
        let mut fin = Final::default();
        fin.updates.insert("w".into(), vec![1, 2, 2]);
        let found = check(&ops, &fin);
        assert!(found.iter().any(|x| x.checker == "register-linearizable"), "{found:?}");
        assert!(found.iter().any(|x| x.checker == "updates-exactly-once"), "{found:?}");
        // The same with a fresh read and each update once: clean.
        let mut ops = ops;
        ops[5].value = json!(2);
        fin.updates.insert("w".into(), vec![1, 2]);
        let found = check(&ops, &fin);
        assert!(
            !found.iter().any(|x| x.checker.starts_with("register") || x.checker.starts_with("updates")),
            "{found:?}"
        );
    }

    fn op(process: u64, kind: Kind, f: &str, wf: &str, t: u64, value: serde_json::Value) -> Op {
        Op { process, kind, f: f.into(), wf: wf.into(), node: 1, time_ns: t, value }
    }

    #[test]
    fn a_lost_acknowledged_signal_and_a_duplicate_are_violations() {
        let ops = vec![
            op(1, Kind::Invoke, "start", "w", 1, json!(null)),
            op(1, Kind::Ok, "start", "w", 2, json!("r1")),
            op(1, Kind::Invoke, "signal", "w", 3, json!(1)),
            op(1, Kind::Ok, "signal", "w", 4, json!(1)),
            op(1, Kind::Invoke, "signal", "w", 5, json!(2)),
            op(1, Kind::Ok, "signal", "w", 6, json!(2)),
        ];
        let mut fin = Final::default();
        fin.runs.insert("w".into(), ("r1".into(), "WORKFLOW_EXECUTION_STATUS_COMPLETED".into()));
        fin.signals.insert("w".into(), vec![1, 2]);
        assert!(check(&ops, &fin).is_empty(), "{:?}", check(&ops, &fin));
        fin.signals.insert("w".into(), vec![1, 1]);
        let found = check(&ops, &fin);
        assert!(found.iter().any(|x| x.detail.contains("applied 2 times")), "{found:?}");
        assert!(found.iter().any(|x| x.detail.contains("signal 2 is not in the history")), "{found:?}");
    }

    #[test]
    fn a_lost_start_two_runs_and_a_describe_going_back_are_violations() {
        let ops = vec![
            op(1, Kind::Invoke, "start-collide", "c", 1, json!(null)),
            op(1, Kind::Ok, "start-collide", "c", 2, json!("r1")),
            op(2, Kind::Invoke, "start-collide", "c", 1, json!(null)),
            op(2, Kind::Ok, "start-collide", "c", 3, json!("r2")),
            op(3, Kind::Invoke, "start", "gone", 1, json!(null)),
            op(3, Kind::Ok, "start", "gone", 2, json!("r3")),
            op(4, Kind::Invoke, "describe", "c", 10, json!(null)),
            op(4, Kind::Ok, "describe", "c", 11, json!({"status": "WORKFLOW_EXECUTION_STATUS_COMPLETED", "length": 9})),
            op(4, Kind::Invoke, "describe", "c", 12, json!(null)),
            op(4, Kind::Ok, "describe", "c", 13, json!({"status": "WORKFLOW_EXECUTION_STATUS_RUNNING", "length": 5})),
        ];
        let mut fin = Final::default();
        fin.runs.insert("c".into(), ("r1".into(), "WORKFLOW_EXECUTION_STATUS_COMPLETED".into()));
        let found: Vec<String> = check(&ops, &fin).into_iter().map(|x| x.checker).collect();
        for c in ["one-run-per-id", "acknowledged-starts-kept", "describe-monotonic"] {
            assert!(found.iter().any(|x| x == c), "{c} not in {found:?}");
        }
    }

    #[test]
    fn diverging_replicas_and_reads_are_violations() {
        let mut fin = Final::default();
        fin.replicas.insert("w".into(), [(1, vec![(1, 7), (2, 8)]), (2, vec![(1, 7), (2, 9)])].into());
        let found: Vec<String> = check(&[], &fin).into_iter().map(|x| x.checker).collect();
        assert!(found.contains(&"replicas-identical".to_string()), "{found:?}");
        assert!(found.contains(&"histories-gap-free-and-prefix-consistent".to_string()), "{found:?}");
    }

    #[test]
    fn an_event_dated_before_the_one_it_follows_is_a_violation() {
        let mut fin = Final::default();
        fin.event_times.insert("fine".into(), vec![10, 10, 12]);
        fin.event_times.insert("back".into(), vec![10, 30, 12]);
        let found = check(&[], &fin);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].checker, "event-times-monotonic");
        assert_eq!(found[0].wf, "back");
    }

    #[test]
    fn a_lost_cancel_an_unasked_cancel_and_a_twice_closed_activity_are_violations() {
        let canceled = "WORKFLOW_EXECUTION_STATUS_CANCELED";
        let ops = vec![
            op(1, Kind::Invoke, "start", "x", 1, json!(null)),
            op(1, Kind::Ok, "start", "x", 2, json!("r1")),
            op(1, Kind::Invoke, "cancel", "x", 3, json!(null)),
            op(1, Kind::Ok, "cancel", "x", 4, json!(null)),
            op(1, Kind::Invoke, "start", "y", 5, json!(null)),
            op(1, Kind::Ok, "start", "y", 6, json!("r2")),
        ];
        let mut fin = Final::default();
        fin.runs.insert("x".into(), ("r1".into(), canceled.into()));
        fin.runs.insert("y".into(), ("r2".into(), "WORKFLOW_EXECUTION_STATUS_COMPLETED".into()));
        let types = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        fin.event_types.insert("y".into(), types(&["WORKFLOW_EXECUTION_STARTED", "ACTIVITY_TASK_SCHEDULED"]));
        fin.activity_closes.insert("y".into(), vec![2]);
        assert!(check(&ops, &fin).is_empty(), "{:?}", check(&ops, &fin));
        // The acknowledged cancel lost, the other run canceled by nobody, an activity closed twice.
        fin.runs.insert("x".into(), ("r1".into(), "WORKFLOW_EXECUTION_STATUS_COMPLETED".into()));
        fin.runs.insert("y".into(), ("r2".into(), canceled.into()));
        fin.activity_closes.insert("y".into(), vec![2, 2]);
        let found = check(&ops, &fin);
        assert!(found.iter().any(|x| x.checker == "cancels-applied" && x.wf == "x"), "{found:?}");
        assert!(found.iter().any(|x| x.checker == "cancels-applied" && x.wf == "y"), "{found:?}");
        assert!(found.iter().any(|x| x.checker == "activities-closed-once" && x.wf == "y"), "{found:?}");
    }

    #[test]
    fn a_panic_in_a_node_log_is_a_violation() {
        let dir = std::env::temp_dir().join(format!("norn-jepsen-panic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (calm, bad) = (dir.join("1.log"), dir.join("2.log"));
        std::fs::write(&calm, "INFO started\n").unwrap();
        std::fs::write(&bad, "INFO started\nthread 'main' panicked at src/x.rs:1:2:\nboom\n").unwrap();
        let found = panics(&[(1, calm), (2, bad)]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].detail.starts_with("node 2 panicked 1 times") && found[0].detail.contains("boom"),
            "{found:?}"
        );
    }
}
