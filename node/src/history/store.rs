//! Runs in a shard's state, and the replicated workflow commands that drive the engine.
//!
//! Keys (inside the shard's state):
//! - `cur/<ns_id>/<workflow_id>` -> [`CurrentRun`]: the workflow id's latest run.
//! - `run/<ns_id>/<workflow_id>/<run_id>` -> [`RunState`] (postcard).
//! - `ev/<run_id>/<event_id u64 BE>` -> `HistoryEvent` (protobuf).
//! - `idx/<ns_id>/<workflow_id>/<run_id>` -> the run's index keys (see [`super::index`]): the
//!   due, ready and closed entries it holds, so the next save replaces exactly them.
//! - `tell/<ns_id>/<workflow_id>/<run_id>` -> [`RunKey`]: closed children whose parent has not
//!   recorded their close yet.

use norn_proto::protos::temporal::api::common::v1::Payloads;
use norn_proto::protos::temporal::api::history::v1::WorkflowExecutionSignaledEventAttributes;
use norn_proto::protos::temporal::api::workflowservice::v1::{
    RespondWorkflowTaskCompletedRequest, RespondWorkflowTaskFailedRequest, StartWorkflowExecutionRequest,
};
use norn_raft::{StateView, Txn};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::engine::{self, Effect, EngineError, Outcome};
use super::state::{ChildOutcome, ParentRef, RunState};
use crate::matching::{QueueKey, TaskRef};

/// Why the store could not read what it needed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed, or a value failed its checksum.
    #[error(transparent)]
    Storage(#[from] norn_storage::Error),
    /// A value passed its checksum but does not decode as what its key says it is.
    #[error("corrupt {what}: {detail}")]
    Decode {
        /// What was read.
        what: String,
        /// Why it did not decode.
        detail: String,
    },
}

impl StoreError {
    /// True when this replica's data is damaged (as opposed to the engine failing).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Decode { .. } | StoreError::Storage(norn_storage::Error::Corrupt { .. }))
    }
}

fn decode_err(what: impl Into<String>, e: impl std::fmt::Display) -> StoreError {
    StoreError::Decode { what: what.into(), detail: e.to_string() }
}

/// Identifies a run.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunKey {
    /// Namespace id.
    pub namespace_id: String,
    /// Workflow id.
    pub workflow_id: String,
    /// Run id.
    pub run_id: String,
}

/// A workflow id's latest run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentRun {
    /// Run id.
    pub run_id: String,
    /// Still open.
    pub open: bool,
    /// Request id that started it.
    pub request_id: String,
}

/// A replicated workflow command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkflowCommand {
    /// Start a run (encoded `StartWorkflowExecutionRequest`); `run_id` chosen by the proposer.
    Start { namespace_id: String, run_id: String, request: Vec<u8> },
    /// A poller took a workflow task.
    WorkflowTaskStarted { run: RunKey, scheduled_id: i64, request_id: String, identity: String },
    /// A worker completed a workflow task (encoded `RespondWorkflowTaskCompletedRequest`), to be
    /// applied under the namespace's limits as the proposer saw them.
    WorkflowTaskCompleted {
        run: RunKey,
        scheduled_id: i64,
        started_id: i64,
        request: Vec<u8>,
        limits: crate::limits::EngineLimits,
    },
    /// A worker failed a workflow task (encoded `RespondWorkflowTaskFailedRequest`).
    WorkflowTaskFailed { run: RunKey, scheduled_id: i64, started_id: i64, request: Vec<u8> },
    /// A poller took an activity task.
    ActivityTaskStarted { run: RunKey, scheduled_id: i64, request_id: String, identity: String },
    /// An activity completed (encoded `Payloads`, empty for none).
    ActivityTaskCompleted { run: RunKey, scheduled_id: i64, attempt: i32, result: Vec<u8>, identity: String },
    /// An activity failed (encoded `Failure`), with its last heartbeat's details (encoded
    /// `Payloads`, empty for none) that the next attempt gets.
    ActivityTaskFailed {
        run: RunKey,
        scheduled_id: i64,
        attempt: i32,
        failure: Vec<u8>,
        identity: String,
        last_heartbeat_details: Vec<u8>,
    },
    /// A started activity acknowledged a cancel request (encoded `Payloads` details).
    ActivityTaskCanceled { run: RunKey, scheduled_id: i64, attempt: i32, details: Vec<u8>, identity: String },
    /// A started activity's heartbeat (encoded `Payloads` details).
    ActivityHeartbeat { run: RunKey, scheduled_id: i64, attempt: i32, details: Vec<u8> },
    /// A timer's deadline passed.
    TimerFired { run: RunKey, timer_id: String, started_id: i64 },
    /// A signal (encoded `WorkflowExecutionSignaledEventAttributes`) for the run, or for the
    /// workflow id's current run when `run.run_id` is empty.
    Signal { run: RunKey, attributes: Vec<u8>, signals_max: u64 },
    /// Signal the open run of the workflow id, or start one with the signal (encoded
    /// `StartWorkflowExecutionRequest` and signal attributes); `run_id` is for a new run.
    SignalWithStart { namespace_id: String, run_id: String, request: Vec<u8>, signal: Vec<u8>, signals_max: u64 },
    /// Request cancellation of the run (the current run when `run.run_id` is empty).
    RequestCancel { run: RunKey, reason: String, identity: String },
    /// A caller asks for a workflow update (encoded `update.v1.Request`).
    AdmitUpdate { run: RunKey, request: Vec<u8>, limits: crate::limits::EngineLimits },
    /// Terminate the run (the current run when `run.run_id` is empty); `details` is encoded `Payloads`.
    Terminate { run: RunKey, reason: String, details: Vec<u8>, identity: String },
    /// A started workflow task ran past its timeout.
    WorkflowTaskTimedOut { run: RunKey, scheduled_id: i64, started_id: i64 },
    /// A started activity attempt ran past its start-to-close or heartbeat timeout.
    ActivityTimedOut { run: RunKey, scheduled_id: i64, attempt: i32 },
    /// The run ran past its run or execution timeout.
    WorkflowTimedOut { run: RunKey },
    /// Delete a closed run (retention, or DeleteWorkflowExecution).
    DeleteRun { run: RunKey },
    /// Start a child run (encoded `StartWorkflowExecutionRequest`) of `parent`.
    StartChild { namespace_id: String, run_id: String, request: Vec<u8>, parent: ParentRef },
    /// The parent's child initiated at `initiated_id` started as `child_run_id`.
    ChildStarted { run: RunKey, initiated_id: i64, child_run_id: String },
    /// The parent's child initiated at `initiated_id` could not start.
    ChildStartFailed { run: RunKey, initiated_id: i64 },
    /// The parent's child closed.
    ChildClosed { run: RunKey, initiated_id: i64, child_run_id: String, outcome: ChildOutcome },
    /// The signal or cancel request initiated at `initiated_id` reached its target or missed it.
    ExternalDone { run: RunKey, initiated_id: i64, delivered: bool },
    /// The parent of this closed child run has recorded its close.
    ParentTold { run: RunKey },
    /// The leader found the run due without a timeout or timer to fire (an activity's retry
    /// backoff ended): re-evaluate the run's indexes at this command's time and offer what became
    /// ready. Writes no event.
    Recheck { run: RunKey },
    /// `ResetStickyTaskQueue`: the run forgets its sticky queue.
    ResetSticky { run: RunKey },
}

/// What a workflow command returns to its proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkflowResult {
    /// Applied. `reply_error` is set when events were written but the caller gets an error.
    Applied {
        run: RunKey,
        effects: Vec<Effect>,
        last_event_id: i64,
        reply_error: Option<EngineError>,
        /// The run that continued this one (continue-as-new) and its effects.
        next_run: Option<(RunKey, Vec<Effect>)>,
    },
    /// A start found an open run with the same workflow id (started by another request).
    AlreadyStarted { run_id: String },
    /// A start retried with the same request id: the run it started.
    Deduplicated { run_id: String },
    /// A start with conflict policy `UseExisting` found this open run.
    UsedExisting { run_id: String },
    /// The closed run is gone.
    Deleted,
    /// Rejected; nothing changed.
    Rejected(EngineError),
    /// The store failed or holds undecodable data.
    StorageFailed(String),
}

fn cur_key(ns: &str, wf: &str) -> Vec<u8> {
    format!("cur/{ns}/{wf}").into_bytes()
}

fn run_key(k: &RunKey) -> Vec<u8> {
    format!("run/{}/{}/{}", k.namespace_id, k.workflow_id, k.run_id).into_bytes()
}

fn idx_key(k: &RunKey) -> Vec<u8> {
    format!("idx/{}/{}/{}", k.namespace_id, k.workflow_id, k.run_id).into_bytes()
}

/// Where an apply runs, and what it tells the leader's duties.
#[derive(Clone, Debug)]
pub struct ApplyCtx {
    /// The shard being applied.
    pub shard: u32,
    /// The cluster's shard count (fixed at creation, the same on every replica).
    pub shards: u32,
    /// Set by the apply: the earliest due time it wrote into the due index.
    pub earliest_due_ms: Option<u64>,
}

impl ApplyCtx {
    /// A context for shard `shard` of `shards`.
    pub fn new(shard: u32, shards: u32) -> Self {
        Self { shard, shards, earliest_due_ms: None }
    }
}

/// Prefix of a run's events.
pub fn events_prefix(run_id: &str) -> Vec<u8> {
    format!("ev/{run_id}/").into_bytes()
}

/// The key of one event (for remote reads).
pub fn history_event_key(run_id: &str, event_id: i64) -> Vec<u8> {
    event_key(run_id, event_id)
}

fn event_key(run_id: &str, event_id: i64) -> Vec<u8> {
    let mut k = events_prefix(run_id);
    k.extend_from_slice(&(event_id as u64).to_be_bytes());
    k
}

/// Reads a workflow id's current run.
pub fn current(view: &dyn StateView, ns: &str, wf: &str) -> Result<Option<CurrentRun>, StoreError> {
    match view.get(&cur_key(ns, wf))? {
        None => Ok(None),
        Some(b) => postcard::from_bytes(&b).map(Some).map_err(|e| decode_err("current-run record", e)),
    }
}

/// Reads a run's state.
pub fn load(view: &dyn StateView, k: &RunKey) -> Result<Option<RunState>, StoreError> {
    match view.get(&run_key(k))? {
        None => Ok(None),
        Some(b) => postcard::from_bytes(&b).map(Some).map_err(|e| decode_err("run state", e)),
    }
}

/// Prefix of every run state of a namespace in a shard.
pub fn runs_prefix(namespace_id: &str) -> Vec<u8> {
    format!("run/{namespace_id}/").into_bytes()
}

/// The state key of a run (for remote reads).
pub fn run_state_key(k: &RunKey) -> Vec<u8> {
    run_key(k)
}

/// The current-run key (for remote reads).
pub fn current_key(ns: &str, wf: &str) -> Vec<u8> {
    cur_key(ns, wf)
}

/// Replaces a run's index entries by the ones its new state needs.
fn reindex(txn: &mut Txn<'_>, ctx: &mut ApplyCtx, run: &RunState, k: &RunKey, now_ms: u64) -> Result<(), String> {
    let ik = idx_key(k);
    let old: Vec<Vec<u8>> = match txn.get(&ik).map_err(|e| e.to_string())? {
        None => Vec::new(),
        Some(v) => postcard::from_bytes(&v).map_err(|e| format!("corrupt index list of run {}: {e}", k.run_id))?,
    };
    let new = super::index::entries(run, ctx.shard, ctx.shards, now_ms);
    for key in old.iter().filter(|key| !new.contains_key(*key)) {
        txn.delete(key.clone());
    }
    for (key, value) in &new {
        if let Some(due) = super::index::due_ms_of(key).filter(|_| key.starts_with(super::index::DUE)) {
            ctx.earliest_due_ms = Some(ctx.earliest_due_ms.map_or(due, |d| d.min(due)));
        }
        txn.put(key.clone(), value.clone());
    }
    let keys: Vec<&Vec<u8>> = new.keys().collect();
    txn.put(ik, postcard::to_stdvec(&keys).map_err(|e| e.to_string())?);
    Ok(())
}

fn save(txn: &mut Txn<'_>, ctx: &mut ApplyCtx, run: &RunState, out: &Outcome, now_ms: u64) -> Result<(), String> {
    let k = RunKey {
        namespace_id: run.namespace_id.clone(),
        workflow_id: run.workflow_id.clone(),
        run_id: run.run_id.clone(),
    };
    // Event ids of a run are contiguous: the new events follow the ones written before. A break
    // is a bug in the engine; the apply fails (halting the shard on this replica, loudly) rather
    // than write a history with a gap.
    let first_new = run.next_event_id - out.events.len() as i64;
    for (i, e) in out.events.iter().enumerate() {
        if e.event_id != first_new + i as i64 {
            return Err(format!(
                "invariant broken: event {} of run {} written at position {} (expected id {})",
                e.event_id,
                run.run_id,
                i,
                first_new + i as i64
            ));
        }
        txn.put(event_key(&run.run_id, e.event_id), e.encode_to_vec());
    }
    txn.put(run_key(&k), postcard::to_stdvec(run).map_err(|e| e.to_string())?);
    let cur = CurrentRun { run_id: run.run_id.clone(), open: run.is_open(), request_id: run.start_request_id.clone() };
    txn.put(cur_key(&run.namespace_id, &run.workflow_id), postcard::to_stdvec(&cur).map_err(|e| e.to_string())?);
    if !run.is_open() && run.parent.is_some() && out.effects.contains(&Effect::TellParent) {
        txn.put(tell_key(&k), postcard::to_stdvec(&k).map_err(|e| e.to_string())?);
    }
    reindex(txn, ctx, run, &k, now_ms)
}

/// Closed child runs whose parent has not recorded their close yet.
fn tell_key(k: &RunKey) -> Vec<u8> {
    format!("tell/{}/{}/{}", k.namespace_id, k.workflow_id, k.run_id).into_bytes()
}

/// Closed child runs of a shard whose parents still have to record their close (at most `limit`).
pub fn untold_children(view: &dyn StateView, limit: usize) -> Result<Vec<RunKey>, StoreError> {
    view.scan_prefix(b"tell/", limit)?
        .into_iter()
        .map(|(_, v)| postcard::from_bytes(&v).map_err(|e| decode_err("child index", e)))
        .collect()
}

/// Closed runs of namespace `namespace_id` in a shard, oldest close first, that closed at or
/// before `until_ms` (at most `limit`), with their close times.
pub fn closed_runs(
    view: &dyn StateView,
    namespace_id: &str,
    until_ms: u64,
    limit: usize,
) -> Result<Vec<(u64, RunKey)>, StoreError> {
    let mut out = Vec::new();
    let end = super::index::closed_end(namespace_id, until_ms);
    for (key, v) in view.scan_prefix(&super::index::closed_prefix(namespace_id), limit)? {
        if key >= end {
            break;
        }
        let close_ms = super::index::closed_ms_of(namespace_id, &key)
            .ok_or_else(|| decode_err("closed-run index key", "bad key"))?;
        out.push((close_ms, postcard::from_bytes(&v).map_err(|e| decode_err("closed-run index", e))?));
    }
    Ok(out)
}

/// Runs due at or before `until_ms`, earliest first, starting after `after` (a due-index key),
/// at most `limit`: `(due-index key, due time, run)`.
pub fn due_runs(
    view: &norn_raft::GroupView,
    until_ms: u64,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, u64, RunKey)>, StoreError> {
    let end = super::index::due_end(until_ms);
    let (pairs, _) = view.scan_page(super::index::DUE, after, limit, usize::MAX)?;
    let mut out = Vec::new();
    for (key, v) in pairs {
        if key >= end {
            break;
        }
        let due = super::index::due_ms_of(&key).ok_or_else(|| decode_err("due index key", "bad key"))?;
        let run: RunKey = postcard::from_bytes(&v).map_err(|e| decode_err("due index", e))?;
        out.push((key, due, run));
    }
    Ok(out)
}

/// The earliest due time after `now_ms` in a shard's due index, if any.
pub fn first_due_after(view: &norn_raft::GroupView, now_ms: u64) -> Result<Option<u64>, StoreError> {
    let from = super::index::due_end(now_ms);
    let (pairs, _) = view.scan_page(super::index::DUE, Some(&from), 1, usize::MAX)?;
    Ok(pairs.first().and_then(|(k, _)| super::index::due_ms_of(k)))
}

/// A ready-index entry: its key, the task's queue and the task.
pub type ReadyEntry = (Vec<u8>, QueueKey, TaskRef);

/// One page of a shard's ready tasks bound for home shard `home` (all homes with `None`),
/// after `after`: `(index key, queue, task)`, and whether more follow.
pub fn ready_page(
    view: &norn_raft::GroupView,
    home: Option<u32>,
    after: Option<&[u8]>,
    limit: usize,
) -> Result<(Vec<ReadyEntry>, bool), StoreError> {
    let prefix = match home {
        Some(h) => super::index::ready_home_prefix(h),
        None => super::index::READY.to_vec(),
    };
    let (pairs, more) = view.scan_page(&prefix, after, limit, usize::MAX)?;
    let mut out = Vec::with_capacity(pairs.len());
    for (key, v) in pairs {
        let (q, t): (QueueKey, TaskRef) = postcard::from_bytes(&v).map_err(|e| decode_err("ready index", e))?;
        out.push((key, q, t));
    }
    Ok((out, more))
}

/// Removes a closed run: its state, history, index entries, and the current-run record if it
/// still names this run.
fn delete_run(txn: &mut Txn<'_>, k: &RunKey) -> Result<WorkflowResult, Failure> {
    let run = loaded(txn, k)?;
    if run.is_open() {
        return Err(Failure::Engine(EngineError::InvalidArgument(
            "the run is open; terminate it before deleting it".into(),
        )));
    }
    for (key, _) in
        txn.scan_prefix(&events_prefix(&k.run_id), usize::MAX).map_err(|e| Failure::Storage(e.to_string()))?
    {
        txn.delete(key);
    }
    txn.delete(run_key(k));
    let ik = idx_key(k);
    if let Some(v) = txn.get(&ik).map_err(|e| Failure::Storage(e.to_string()))? {
        let keys: Vec<Vec<u8>> = postcard::from_bytes(&v)
            .map_err(|e| Failure::Storage(format!("corrupt index list of run {}: {e}", k.run_id)))?;
        for key in keys {
            txn.delete(key);
        }
    }
    txn.delete(ik);
    if current(&*txn, &k.namespace_id, &k.workflow_id).map_err(storage)?.is_some_and(|c| c.run_id == k.run_id) {
        txn.delete(cur_key(&k.namespace_id, &k.workflow_id));
    }
    Ok(WorkflowResult::Deleted)
}

fn applied(run: &RunState, out: Outcome) -> WorkflowResult {
    WorkflowResult::Applied {
        run: RunKey {
            namespace_id: run.namespace_id.clone(),
            workflow_id: run.workflow_id.clone(),
            run_id: run.run_id.clone(),
        },
        effects: out.effects,
        last_event_id: run.next_event_id - 1,
        reply_error: out.reply_error,
        next_run: None,
    }
}

fn decode<T: Message + Default>(bytes: &[u8], what: &str) -> Result<T, EngineError> {
    T::decode(bytes).map_err(|e| EngineError::InvalidArgument(format!("undecodable {what}: {e}")))
}

/// Applies a workflow command to the shard's state.
pub fn apply(txn: &mut Txn<'_>, ctx: &mut ApplyCtx, cmd: WorkflowCommand, now_ms: u64) -> WorkflowResult {
    match apply_inner(txn, ctx, cmd, now_ms) {
        Ok(r) => r,
        Err(Failure::Engine(e)) => WorkflowResult::Rejected(e),
        Err(Failure::Storage(e)) => WorkflowResult::StorageFailed(e),
    }
}

enum Failure {
    Engine(EngineError),
    Storage(String),
}

fn storage(e: StoreError) -> Failure {
    Failure::Storage(e.to_string())
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Failure::Engine(e)
    }
}

/// Fills in the current run id when `run.run_id` is empty.
fn with_current(txn: &Txn<'_>, mut run: RunKey) -> Result<RunKey, Failure> {
    if run.run_id.is_empty() {
        let cur = current(txn, &run.namespace_id, &run.workflow_id).map_err(storage)?;
        let cur = cur.ok_or_else(|| {
            Failure::Engine(EngineError::NotFound(format!("workflow execution {} not found", run.workflow_id)))
        })?;
        run.run_id = cur.run_id;
    }
    Ok(run)
}

fn loaded(txn: &Txn<'_>, k: &RunKey) -> Result<RunState, Failure> {
    load(txn, k).map_err(storage)?.ok_or_else(|| {
        Failure::Engine(EngineError::NotFound(format!("workflow execution {}/{} not found", k.workflow_id, k.run_id)))
    })
}

/// What a start finds at its workflow id: `Some` answer when it must not create a run (a retry of
/// the same request, or a policy refusal), `None` to go ahead.
fn check_start(
    txn: &mut Txn<'_>,
    ctx: &mut ApplyCtx,
    namespace_id: &str,
    req: &StartWorkflowExecutionRequest,
    now_ms: u64,
) -> Result<Option<WorkflowResult>, Failure> {
    let Some(cur) = current(&*txn, namespace_id, &req.workflow_id).map_err(storage)? else {
        return Ok(None);
    };
    if !req.request_id.is_empty() && cur.request_id == req.request_id {
        return Ok(Some(WorkflowResult::Deduplicated { run_id: cur.run_id }));
    }
    let k = RunKey { namespace_id: namespace_id.to_string(), workflow_id: req.workflow_id.clone(), run_id: cur.run_id };
    apply_id_policies(txn, ctx, req, &k, cur.open, now_ms)
}

/// Applies a start's workflow-id reuse and conflict policies to the id's current run `k`:
/// `Some` is the answer when the start must not create a run; `None` lets it go ahead (after
/// terminating the open run when the policy says so).
#[allow(deprecated)] // TerminateIfRunning is deprecated but SDKs still send it
fn apply_id_policies(
    txn: &mut Txn<'_>,
    ctx: &mut ApplyCtx,
    req: &StartWorkflowExecutionRequest,
    k: &RunKey,
    open: bool,
    now_ms: u64,
) -> Result<Option<WorkflowResult>, Failure> {
    use super::state::RunStatus;
    use norn_proto::protos::temporal::api::enums::v1::{WorkflowIdConflictPolicy, WorkflowIdReusePolicy};
    let reuse = WorkflowIdReusePolicy::try_from(req.workflow_id_reuse_policy).unwrap_or_default();
    let conflict = WorkflowIdConflictPolicy::try_from(req.workflow_id_conflict_policy).unwrap_or_default();
    if reuse == WorkflowIdReusePolicy::TerminateIfRunning && conflict != WorkflowIdConflictPolicy::Unspecified {
        return Err(Failure::Engine(EngineError::InvalidArgument(
            "WorkflowIdReusePolicy TerminateIfRunning cannot be combined with a WorkflowIdConflictPolicy".into(),
        )));
    }
    if open {
        let terminate = match conflict {
            WorkflowIdConflictPolicy::UseExisting => {
                return Ok(Some(WorkflowResult::UsedExisting { run_id: k.run_id.clone() }))
            }
            WorkflowIdConflictPolicy::TerminateExisting => true,
            _ => reuse == WorkflowIdReusePolicy::TerminateIfRunning,
        };
        if !terminate {
            return Ok(Some(WorkflowResult::AlreadyStarted { run_id: k.run_id.clone() }));
        }
        let mut old = loaded(txn, k)?;
        let reason = "terminated by a new start of the same workflow id (WorkflowIdConflictPolicy TerminateExisting)";
        let out = engine::terminate(&mut old, reason, None, &req.identity, now_ms)?;
        save(txn, ctx, &old, &out, now_ms).map_err(Failure::Storage)?;
        return Ok(None);
    }
    let refused = match reuse {
        WorkflowIdReusePolicy::RejectDuplicate => true,
        WorkflowIdReusePolicy::AllowDuplicateFailedOnly => loaded(txn, k)?.status == RunStatus::Completed,
        _ => false,
    };
    Ok(refused.then(|| WorkflowResult::AlreadyStarted { run_id: k.run_id.clone() }))
}

fn apply_inner(
    txn: &mut Txn<'_>,
    ctx: &mut ApplyCtx,
    cmd: WorkflowCommand,
    now_ms: u64,
) -> Result<WorkflowResult, Failure> {
    let (run, out) = match cmd {
        WorkflowCommand::Start { namespace_id, run_id, request } => {
            let req: StartWorkflowExecutionRequest = decode(&request, "start request")?;
            if let Some(answer) = check_start(txn, ctx, &namespace_id, &req, now_ms)? {
                return Ok(answer);
            }
            let (run, out) = engine::start(&namespace_id, &run_id, &req, now_ms)?;
            (run, out)
        }
        WorkflowCommand::Signal { run, attributes, signals_max } => {
            let attrs: WorkflowExecutionSignaledEventAttributes = decode(&attributes, "signal")?;
            let run = with_current(txn, run)?;
            let mut state = loaded(txn, &run)?;
            let out = engine::signal(&mut state, attrs, signals_max, now_ms)?;
            (state, out)
        }
        WorkflowCommand::AdmitUpdate { run, request, limits } => {
            let request: norn_proto::protos::temporal::api::update::v1::Request = decode(&request, "update request")?;
            let run = with_current(txn, run)?;
            let mut state = loaded(txn, &run)?;
            let out = engine::admit_update(&mut state, request, &limits, now_ms)?;
            (state, out)
        }
        WorkflowCommand::RequestCancel { run, reason, identity } => {
            let run = with_current(txn, run)?;
            let mut state = loaded(txn, &run)?;
            let out = engine::request_cancel(&mut state, &reason, &identity, now_ms)?;
            (state, out)
        }
        WorkflowCommand::Terminate { run, reason, details, identity } => {
            let run = with_current(txn, run)?;
            let details = if details.is_empty() { None } else { Some(decode::<Payloads>(&details, "details")?) };
            let mut state = loaded(txn, &run)?;
            let out = engine::terminate(&mut state, &reason, details, &identity, now_ms)?;
            (state, out)
        }
        WorkflowCommand::SignalWithStart { namespace_id, run_id, request, signal, signals_max } => {
            let req: StartWorkflowExecutionRequest = decode(&request, "start request")?;
            let attrs: WorkflowExecutionSignaledEventAttributes = decode(&signal, "signal")?;
            let cur = current(&*txn, &namespace_id, &req.workflow_id).map_err(storage)?;
            if let Some(closed) = cur.as_ref().filter(|c| !c.open) {
                let k = RunKey {
                    namespace_id: namespace_id.clone(),
                    workflow_id: req.workflow_id.clone(),
                    run_id: closed.run_id.clone(),
                };
                if let Some(refused) = apply_id_policies(txn, ctx, &req, &k, false, now_ms)? {
                    return Ok(refused);
                }
            }
            match cur.filter(|c| c.open) {
                Some(cur) => {
                    let k = RunKey { namespace_id, workflow_id: req.workflow_id.clone(), run_id: cur.run_id };
                    let mut state = loaded(txn, &k)?;
                    let out = engine::signal(&mut state, attrs, signals_max, now_ms)?;
                    (state, out)
                }
                None => engine::start_with_signal(&namespace_id, &run_id, &req, Some(attrs), now_ms)?,
            }
        }
        WorkflowCommand::WorkflowTaskStarted { run, scheduled_id, request_id, identity } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::workflow_task_started(&mut state, scheduled_id, &request_id, &identity, now_ms)?;
            (state, out)
        }
        WorkflowCommand::WorkflowTaskCompleted { run, scheduled_id, started_id, request, limits } => {
            let req: RespondWorkflowTaskCompletedRequest = decode(&request, "workflow task completion")?;
            let mut state = loaded(txn, &run)?;
            let mut out = engine::workflow_task_completed(&mut state, scheduled_id, started_id, &req, &limits, now_ms)?;
            if let Some(next) = out.continued_as_new.take() {
                let (new_state, new_out) = engine::start_continued(&state, &next, now_ms)?;
                save(txn, ctx, &state, &out, now_ms).map_err(Failure::Storage)?;
                save(txn, ctx, &new_state, &new_out, now_ms).map_err(Failure::Storage)?;
                let mut result = applied(&state, out);
                if let WorkflowResult::Applied { next_run, .. } = &mut result {
                    let k = RunKey {
                        namespace_id: new_state.namespace_id.clone(),
                        workflow_id: new_state.workflow_id.clone(),
                        run_id: new_state.run_id.clone(),
                    };
                    *next_run = Some((k, new_out.effects));
                }
                return Ok(result);
            }
            (state, out)
        }
        WorkflowCommand::WorkflowTaskFailed { run, scheduled_id, started_id, request } => {
            let req: RespondWorkflowTaskFailedRequest = decode(&request, "workflow task failure")?;
            let mut state = loaded(txn, &run)?;
            let out = engine::workflow_task_failed(&mut state, scheduled_id, started_id, &req, now_ms)?;
            (state, out)
        }
        WorkflowCommand::ActivityTaskStarted { run, scheduled_id, request_id, identity } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::activity_task_started(&mut state, scheduled_id, &request_id, &identity, now_ms)?;
            (state, out)
        }
        WorkflowCommand::ActivityTaskCompleted { run, scheduled_id, attempt, result, identity } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::activity_task_completed(&mut state, scheduled_id, attempt, result, &identity, now_ms)?;
            (state, out)
        }
        WorkflowCommand::ActivityTaskFailed {
            run,
            scheduled_id,
            attempt,
            failure,
            identity,
            last_heartbeat_details,
        } => {
            let mut state = loaded(txn, &run)?;
            if !last_heartbeat_details.is_empty() {
                engine::activity_heartbeat(&mut state, scheduled_id, attempt, last_heartbeat_details, now_ms)?;
            }
            let out = engine::activity_task_failed(&mut state, scheduled_id, attempt, failure, &identity, now_ms)?;
            (state, out)
        }
        WorkflowCommand::ActivityTaskCanceled { run, scheduled_id, attempt, details, identity } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::activity_task_canceled(&mut state, scheduled_id, attempt, details, &identity, now_ms)?;
            (state, out)
        }
        WorkflowCommand::ActivityHeartbeat { run, scheduled_id, attempt, details } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::activity_heartbeat(&mut state, scheduled_id, attempt, details, now_ms)?;
            (state, out)
        }
        WorkflowCommand::TimerFired { run, timer_id, started_id } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::timer_fired(&mut state, &timer_id, started_id, now_ms)?;
            (state, out)
        }
        WorkflowCommand::WorkflowTaskTimedOut { run, scheduled_id, started_id } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::workflow_task_timed_out(&mut state, scheduled_id, started_id, now_ms)?;
            (state, out)
        }
        WorkflowCommand::DeleteRun { run } => return delete_run(txn, &run),
        WorkflowCommand::StartChild { namespace_id, run_id, request, parent } => {
            let req: StartWorkflowExecutionRequest = decode(&request, "child start request")?;
            if let Some(answer) = check_start(txn, ctx, &namespace_id, &req, now_ms)? {
                return Ok(answer);
            }
            engine::start_child(&namespace_id, &run_id, &req, parent, now_ms)?
        }
        WorkflowCommand::ChildStarted { run, initiated_id, child_run_id } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::child_started(&mut state, initiated_id, &child_run_id, now_ms)?;
            (state, out)
        }
        WorkflowCommand::ChildStartFailed { run, initiated_id } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::child_start_failed(&mut state, initiated_id, now_ms)?;
            (state, out)
        }
        WorkflowCommand::ChildClosed { run, initiated_id, child_run_id, outcome } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::child_closed(&mut state, initiated_id, &child_run_id, outcome, now_ms)?;
            (state, out)
        }
        WorkflowCommand::ExternalDone { run, initiated_id, delivered } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::external_done(&mut state, initiated_id, delivered, now_ms)?;
            (state, out)
        }
        WorkflowCommand::ResetSticky { run } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::reset_sticky(&mut state)?;
            (state, out)
        }
        WorkflowCommand::Recheck { run } => {
            let state = loaded(txn, &run)?;
            if !state.is_open() {
                return Err(Failure::Engine(EngineError::AlreadyCompleted));
            }
            let mut out = Outcome::default();
            for a in state.activities.values().filter(|a| a.request_id.is_empty() && a.scheduled_ms <= now_ms) {
                out.effects.push(Effect::ActivityTaskReady {
                    task_queue: a.task_queue.clone(),
                    scheduled_id: a.scheduled_id,
                    ready_at_ms: 0,
                });
            }
            (state, out)
        }
        WorkflowCommand::ParentTold { run } => {
            txn.delete(tell_key(&run));
            return Ok(WorkflowResult::Deleted);
        }
        WorkflowCommand::WorkflowTimedOut { run } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::workflow_timed_out(&mut state, now_ms)?;
            (state, out)
        }
        WorkflowCommand::ActivityTimedOut { run, scheduled_id, attempt } => {
            let mut state = loaded(txn, &run)?;
            let out = engine::activity_timed_out(&mut state, scheduled_id, attempt, now_ms)?;
            (state, out)
        }
    };
    save(txn, ctx, &run, &out, now_ms).map_err(Failure::Storage)?;
    Ok(applied(&run, out))
}
