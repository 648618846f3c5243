//! The indexes a run keeps in its shard's state, as a pure function of its state and the apply
//! time: what the shard leader must do next and when, found without looking at idle runs.
//!
//! - `due/<due ms, 20 digits>/<ns>/<workflow id>/<run id>` -> [`RunKey`]: the earliest time at
//!   which the run needs the leader (a timer, a workflow-task, activity or run timeout, an
//!   activity retry's backoff ending, a signal or child start to deliver again). Like Temporal's
//!   timer queue: the leader reads it from the front, so an idle run without deadlines costs
//!   nothing, and one with a deadline costs one read when it is due.
//! - `ready/<home shard, 8 hex>/<w|a>/<ns>/<queue length, 8 hex><queue>/<run id>/<scheduled id,
//!   20 digits>` -> [`TaskRef`]: tasks ready for a poller, grouped by the shard whose leader holds
//!   their task queue's matching, so that when that home moves the tasks bound for it are re-offered
//!   from this one range (Temporal's transfer queue plays this part).
//! - `closed/<ns>/<close ms, 20 digits>/<workflow id>/<run id>` -> [`RunKey`]: closed runs per
//!   namespace, oldest first, for retention.
//!
//! [`entries`] gives a run's entries; `store::save` deletes the ones its previous state had and
//! writes the new ones, in the same command.

use std::collections::BTreeMap;

use super::state::RunState;
use super::store::RunKey;
use crate::matching::{QueueKey, TaskKind, TaskRef};

/// How long after initiating a signal, cancel request or child start the leader tries again if
/// it has not been recorded as done (a crash or a leader change lost the first attempt).
pub const REDELIVER_AFTER_MS: u64 = 2_000;

/// Prefix of the due index.
pub const DUE: &[u8] = b"due/";
/// Prefix of the ready index.
pub const READY: &[u8] = b"ready/";
/// Prefix of the closed-run index.
pub const CLOSED: &[u8] = b"closed/";

/// The due-index key of `run` at `due_ms`.
pub fn due_key(due_ms: u64, run: &RunKey) -> Vec<u8> {
    format!("due/{due_ms:020}/{}/{}/{}", run.namespace_id, run.workflow_id, run.run_id).into_bytes()
}

/// The due index up to and including `until_ms` ends before this key.
pub fn due_end(until_ms: u64) -> Vec<u8> {
    format!("due/{:020}", until_ms.saturating_add(1)).into_bytes()
}

/// The due time in a due-index key.
pub fn due_ms_of(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.get(DUE.len()..DUE.len() + 20)?).ok()?.parse().ok()
}

/// Prefix of the ready tasks of one home shard.
pub fn ready_home_prefix(home: u32) -> Vec<u8> {
    format!("ready/{home:08x}/").into_bytes()
}

fn kind_tag(kind: TaskKind) -> char {
    match kind {
        TaskKind::Workflow => 'w',
        TaskKind::Activity => 'a',
    }
}

/// Prefix of the ready tasks of one task queue (in its home's range).
pub fn ready_queue_prefix(queue: &QueueKey, shards: u32) -> Vec<u8> {
    format!(
        "ready/{:08x}/{}/{}/{:08x}{}/",
        queue.home_shard(shards),
        kind_tag(queue.kind),
        queue.namespace_id,
        queue.name.len(),
        queue.name
    )
    .into_bytes()
}

fn ready_key(queue: &QueueKey, shards: u32, run_id: &str, scheduled_id: i64) -> Vec<u8> {
    let mut k = ready_queue_prefix(queue, shards);
    k.extend_from_slice(format!("{run_id}/{:020}", scheduled_id.max(0)).as_bytes());
    k
}

/// Prefix of a namespace's closed runs.
pub fn closed_prefix(namespace_id: &str) -> Vec<u8> {
    format!("closed/{namespace_id}/").into_bytes()
}

/// The closed index of a namespace up to and including `until_ms` ends before this key.
pub fn closed_end(namespace_id: &str, until_ms: u64) -> Vec<u8> {
    format!("closed/{namespace_id}/{:020}", until_ms.saturating_add(1)).into_bytes()
}

/// The close time in a closed-index key of `namespace_id`.
pub fn closed_ms_of(namespace_id: &str, key: &[u8]) -> Option<u64> {
    let at = CLOSED.len() + namespace_id.len() + 1;
    std::str::from_utf8(key.get(at..at + 20)?).ok()?.parse().ok()
}

/// The earliest time the run needs its leader, judged at `now_ms` (the apply time).
pub fn next_due(run: &RunState, now_ms: u64) -> Option<u64> {
    if !run.is_open() {
        return None;
    }
    let mut due: Option<u64> = None;
    let mut at = |t: u64| due = Some(due.map_or(t, |d| d.min(t)));
    if let Some(d) = run.run_deadline_ms {
        at(d);
    }
    if let Some(t) = &run.workflow_task {
        if t.started_id.is_some() {
            at(t.started_ms.saturating_add(run.workflow_task_timeout_ms));
        }
    }
    if let Some(d) = crate::history::engine::sticky_deadline(run) {
        at(d);
    }
    for a in run.activities.values() {
        if let Some((d, _)) = a.attempt_deadline() {
            at(d);
        }
        // An attempt waiting out its retry backoff becomes ready later.
        if a.request_id.is_empty() && a.scheduled_ms > now_ms {
            at(a.scheduled_ms);
        }
    }
    for t in run.timers.values() {
        at(t.fire_at_ms);
    }
    for x in run.externals.values().filter(|x| !x.done) {
        at(x.initiated_ms.saturating_add(REDELIVER_AFTER_MS));
    }
    for c in run.children.values().filter(|c| c.run_id.is_none() && !c.closed) {
        at(c.initiated_ms.saturating_add(REDELIVER_AFTER_MS));
    }
    due
}

/// The tasks of the run that a poller may take now (judged at `now_ms`).
pub fn ready_tasks(run: &RunState, shard: u32, now_ms: u64) -> Vec<(QueueKey, TaskRef)> {
    let mut out = Vec::new();
    if !run.is_open() {
        return out;
    }
    let key = RunKey {
        namespace_id: run.namespace_id.clone(),
        workflow_id: run.workflow_id.clone(),
        run_id: run.run_id.clone(),
    };
    if let Some(t) = run.workflow_task.as_ref().filter(|t| t.started_id.is_none()) {
        let q = QueueKey {
            namespace_id: run.namespace_id.clone(),
            name: run.workflow_task_queue(t.sticky).to_string(),
            kind: TaskKind::Workflow,
            normal: if t.sticky && !run.sticky_queue.is_empty() { run.task_queue.clone() } else { String::new() },
        };
        out.push((q, TaskRef { shard, run: key.clone(), scheduled_id: t.scheduled_id, query: None }));
    }
    for a in run.activities.values().filter(|a| a.request_id.is_empty() && a.scheduled_ms <= now_ms) {
        let q = QueueKey::normal(run.namespace_id.clone(), a.task_queue.clone(), TaskKind::Activity);
        out.push((q, TaskRef { shard, run: key.clone(), scheduled_id: a.scheduled_id, query: None }));
    }
    out
}

/// Every index entry of `run` (key -> value), as of `now_ms`, in shard `shard` of `shards`.
pub fn entries(run: &RunState, shard: u32, shards: u32, now_ms: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let key = RunKey {
        namespace_id: run.namespace_id.clone(),
        workflow_id: run.workflow_id.clone(),
        run_id: run.run_id.clone(),
    };
    let mut out = BTreeMap::new();
    if run.is_open() {
        if let Some(d) = next_due(run, now_ms) {
            out.insert(due_key(d, &key), enc(&key));
        }
        for (q, t) in ready_tasks(run, shard, now_ms) {
            let k = ready_key(&q, shards, &t.run.run_id, t.scheduled_id);
            out.insert(k, enc(&(q, t)));
        }
    } else {
        let close_ms = run.close_ms.unwrap_or(run.start_ms);
        let k = format!("closed/{}/{close_ms:020}/{}/{}", key.namespace_id, key.workflow_id, key.run_id);
        out.insert(k.into_bytes(), enc(&key));
    }
    out
}

/// postcard encoding of owned plain data (which cannot fail).
fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::engine;
    use norn_proto::protos::temporal::api::common::v1::WorkflowType;
    use norn_proto::protos::temporal::api::taskqueue::v1::TaskQueue;
    use norn_proto::protos::temporal::api::workflowservice::v1::StartWorkflowExecutionRequest;

    const T0: u64 = 1_700_000_000_000;

    fn run() -> RunState {
        let req = StartWorkflowExecutionRequest {
            namespace: "default".into(),
            workflow_id: "wf/with/slashes".into(),
            workflow_type: Some(WorkflowType { name: "Idle".into() }),
            task_queue: Some(TaskQueue { name: "q".into(), ..Default::default() }),
            request_id: "r".into(),
            ..Default::default()
        };
        engine::start("ns", "run-1", &req, T0).unwrap().0
    }

    #[test]
    fn an_idle_run_waiting_for_a_worker_is_ready_and_never_due() {
        let r = run();
        assert_eq!(next_due(&r, T0), None, "nothing to do until a worker comes");
        let e = entries(&r, 3, 16, T0);
        assert_eq!(e.len(), 1);
        let (k, v) = e.iter().next().unwrap();
        let q = QueueKey::normal("ns", "q", TaskKind::Workflow);
        assert!(k.starts_with(&ready_queue_prefix(&q, 16)), "{}", String::from_utf8_lossy(k));
        assert!(k.starts_with(&ready_home_prefix(q.home_shard(16))));
        let (vq, vt): (QueueKey, TaskRef) = postcard::from_bytes(v).unwrap();
        assert_eq!((vq, vt.shard, vt.scheduled_id), (q, 3, 2));
    }

    #[test]
    fn deadlines_pick_the_earliest_and_a_retry_waits_for_its_backoff() {
        let mut r = run();
        r.run_deadline_ms = Some(T0 + 50_000);
        r.timers.insert(
            "t".into(),
            crate::history::state::TimerInfo { timer_id: "t".into(), started_id: 5, fire_at_ms: T0 + 9_000 },
        );
        assert_eq!(next_due(&r, T0), Some(T0 + 9_000));
        let k = RunKey { namespace_id: "ns".into(), workflow_id: "wf/with/slashes".into(), run_id: "run-1".into() };
        assert_eq!(due_ms_of(&due_key(T0 + 9_000, &k)), Some(T0 + 9_000));
        assert!(due_key(T0 + 9_000, &k) < due_end(T0 + 9_000));
        assert!(due_key(T0 + 9_001, &k) >= due_end(T0 + 9_000));
        // Closed: only the closed-run index, ordered by close time.
        r.status = crate::history::state::RunStatus::Completed;
        r.close_ms = Some(T0 + 1);
        let e = entries(&r, 0, 16, T0 + 1);
        assert_eq!(e.len(), 1);
        let key = e.keys().next().unwrap();
        assert!(key.starts_with(&closed_prefix("ns")));
        assert_eq!(closed_ms_of("ns", key), Some(T0 + 1));
        assert!(key.as_slice() < closed_end("ns", T0 + 1).as_slice());
        assert!(key.as_slice() >= closed_end("ns", T0).as_slice());
    }
}
