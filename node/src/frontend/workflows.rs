//! Workflow RPCs: start, poll and respond to workflow and activity tasks, history, describe.
//!
//! A run lives in shard `hash(namespace_id, workflow_id)`; commands go to that shard's leader
//! through the admin service's routing. A task queue's matching lives on the leader of its home
//! shard; polls are forwarded there. The leader-only effects of a command (offering tasks to
//! matching, arming timers) are run by the node that proposed it.

use std::time::Duration;

use norn_proto::protos::google::rpc::Status as RpcStatus;
use norn_proto::protos::temporal::api::command::v1::command::Attributes as Attrs;
use norn_proto::protos::temporal::api::common::v1::{ActivityType, Payloads, WorkflowExecution, WorkflowType};
use norn_proto::protos::temporal::api::enums::v1::{HistoryEventFilterType, TaskQueueKind, WorkflowExecutionStatus};
use norn_proto::protos::temporal::api::errordetails::v1::WorkflowExecutionAlreadyStartedFailure;
use norn_proto::protos::temporal::api::history::v1::history_event::Attributes as Ev;
use norn_proto::protos::temporal::api::history::v1::{
    ActivityTaskScheduledEventAttributes, History, HistoryEvent, WorkflowExecutionSignaledEventAttributes,
};
use norn_proto::protos::temporal::api::taskqueue::v1::TaskQueue;
use norn_proto::protos::temporal::api::workflow::v1::{
    PendingActivityInfo, WorkflowExecutionConfig, WorkflowExecutionInfo,
};
use norn_proto::protos::temporal::api::workflowservice::v1::*;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::Frontend;
use crate::command::{ShardCommand, ShardResult};
use crate::history::engine::{Effect, EngineError};
use crate::history::state::{RunState, RunStatus};
use crate::history::store::{RunKey, WorkflowCommand, WorkflowResult};
use crate::limits::Limits;
use crate::matching::{QueueKey, TaskKind, TaskRef};
use crate::routing::Target;

/// How long a poll waits for a task before answering empty (Temporal's SDKs wait 70 s).
const POLL_WAIT: Duration = Duration::from_secs(60);
/// Events per history page when the request does not say.
const HISTORY_PAGE_DEFAULT: usize = 1000;
/// Longest wait between re-reads of a long-polled history on a node with a replica of the run's
/// shard (a safety net: applies wake the poll).
const HISTORY_REREAD_HOSTED: Duration = Duration::from_secs(2);
/// Re-read period of a long-polled history on a node without a replica.
const HISTORY_REREAD_REMOTE: Duration = Duration::from_millis(100);
/// How long a history long poll waits for a new event.
const HISTORY_WAIT: Duration = Duration::from_secs(60);
/// Bytes of events one page of history carries at most (a page always has at least one event):
/// a history of any size reaches a client as pages under the 4 MiB gRPC limit SDKs use.
const HISTORY_PAGE_BYTES_MAX: usize = 2 << 20;
/// First wait before a failed task offer is retried, and the longest.
const OFFER_RETRY_FIRST: Duration = Duration::from_millis(100);
const OFFER_RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a failed task offer is retried.
const OFFER_RETRY_FOR: Duration = Duration::from_secs(600);
/// How long a node trusts its cached copy of a namespace (its id never changes; its limits may).
const NAMESPACE_REFRESH: Duration = Duration::from_secs(10);
/// Metadata carrying how many times a call was forwarded between nodes.
pub const HOPS_HEADER: &str = "norn-hops";

/// What a task token carries. Encoded with a checksum; a damaged token is `InvalidArgument`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct TaskToken {
    shard: u32,
    run: RunKey,
    kind: TaskKind,
    scheduled_id: i64,
    /// Workflow tasks: the started event id. Activity tasks: the attempt.
    started_or_attempt: i64,
    /// Query tasks: the query id and the node where its caller waits.
    query: Option<(String, u64)>,
}

/// The query id and origin node of a query task's token.
pub(super) fn query_of_token(bytes: &[u8]) -> Result<(String, u64), Status> {
    decode_token(bytes, TaskKind::Workflow)?
        .query
        .ok_or_else(|| Status::invalid_argument("task token is not a query task's"))
}

fn encode_token(t: &TaskToken) -> Result<Vec<u8>, Status> {
    norn_raft::codec::encode("task token", t).map_err(|e| Status::internal(e.to_string()))
}

fn decode_token(bytes: &[u8], kind: TaskKind) -> Result<TaskToken, Status> {
    let t: TaskToken = norn_raft::codec::decode("task token", bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed task token: {e}")))?;
    if t.kind != kind {
        return Err(Status::invalid_argument("task token is for another kind of task"));
    }
    Ok(t)
}

/// A valid workflow task token (a fuzzing seed).
pub(super) fn sample_token() -> Vec<u8> {
    let t = TaskToken {
        shard: 3,
        run: RunKey {
            namespace_id: "ns".into(),
            workflow_id: "wf".into(),
            run_id: "00000000-0000-4000-8000-000000000000".into(),
        },
        kind: TaskKind::Workflow,
        scheduled_id: 2,
        started_or_attempt: 3,
        query: Some(("q".into(), 1)),
    };
    encode_token(&t).unwrap_or_default()
}

/// Decodes a task token of either kind (the fuzzing harness's entry point).
pub(super) fn check_token(bytes: &[u8]) -> Result<(), Status> {
    let a = decode_token(bytes, TaskKind::Workflow).map(drop);
    let b = decode_token(bytes, TaskKind::Activity).map(drop);
    let _ = query_of_token(bytes);
    a.or(b)
}

/// Keeps the first page of `events` (at most `max_events`, at most [`HISTORY_PAGE_BYTES_MAX`]
/// bytes, at least one event); true when events were cut.
fn cut_page(events: &mut Vec<HistoryEvent>, max_events: usize) -> bool {
    let mut bytes = 0;
    let mut n = 0;
    for e in events.iter() {
        let len = e.encoded_len();
        if n > 0 && (n >= max_events || bytes + len > HISTORY_PAGE_BYTES_MAX) {
            break;
        }
        bytes += len;
        n += 1;
    }
    let more = n < events.len();
    events.truncate(n);
    more
}

/// A history page token: events after `after`, up to `upto` (0: no bound).
fn page_token(after: i64, upto: i64) -> Vec<u8> {
    let mut t = after.to_be_bytes().to_vec();
    if upto > 0 {
        t.extend_from_slice(&upto.to_be_bytes());
    }
    t
}

/// Reads a [`page_token`]: (after, upto), `upto` 0 for no bound.
fn read_page_token(t: &[u8]) -> Result<(i64, i64), Status> {
    let bad = || Status::invalid_argument("malformed next_page_token");
    let word = |b: &[u8]| <[u8; 8]>::try_from(b).map(i64::from_be_bytes).map_err(|_| bad());
    match t.len() {
        0 => Ok((0, 0)),
        8 => Ok((word(t)?, 0)),
        16 => Ok((word(&t[..8])?, word(&t[8..])?)),
        _ => Err(bad()),
    }
}

/// Offers a task to its queue's matching, retrying with backoff for up to 10 minutes: nothing
/// else would offer it again unless the queue's home or the run's shard changes leader, and the
/// workflow would wait forever (found by norn-jepsen: a workflow stuck after a partition healed).
/// Matching drops duplicates; a task started twice is refused by the engine.
pub(super) async fn offer_retrying(router: &crate::routing::Router, queue: &QueueKey, task: &TaskRef) {
    let mut backoff = OFFER_RETRY_FIRST;
    let give_up = tokio::time::Instant::now() + OFFER_RETRY_FOR;
    loop {
        match router.add_task(queue, task).await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() >= give_up => {
                tracing::warn!(queue = %queue.name, run = %task.run.run_id, error = %e, "could not offer task to matching; giving up, the shard re-offers it when a leader changes");
                return;
            }
            Err(e) => {
                tracing::debug!(queue = %queue.name, run = %task.run.run_id, error = %e, "offer failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(OFFER_RETRY_MAX);
            }
        }
    }
}

pub(super) fn timestamp(ms: u64) -> prost_wkt_types::Timestamp {
    prost_wkt_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::NotFound(m) => Status::not_found(m),
        EngineError::InvalidArgument(m) => Status::invalid_argument(m),
        EngineError::AlreadyCompleted => Status::not_found("workflow execution already completed"),
        EngineError::UnhandledCommand => Status::invalid_argument("UnhandledCommand"),
        EngineError::Unimplemented(m) => Status::unimplemented(m),
        EngineError::ResourceExhausted(m) => Status::resource_exhausted(m),
        EngineError::FailedPrecondition(m) => Status::failed_precondition(m),
    }
}

pub(super) fn new_uuid() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    // The node's seedable source: the OS's entropy in production, the seed in the simulator.
    norn_raft::runtime::ThreadRng.fill_bytes(&mut b);
    crate::history::engine::uuid_v4_string(b)
}

pub(super) fn hops<T>(req: &tonic::Request<T>) -> u32 {
    req.metadata().get(HOPS_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub(super) fn forwarded<T>(msg: T, hops: u32) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Ok(v) = (hops + 1).to_string().parse() {
        r.metadata_mut().insert(HOPS_HEADER, v);
    }
    r
}

impl Frontend {
    pub(super) fn run_shard(&self, namespace_id: &str, workflow_id: &str) -> u32 {
        crate::placement::shard_of(&[namespace_id.as_bytes(), workflow_id.as_bytes()], self.router.config().shards)
    }

    pub(super) async fn namespace_id(&self, name: &str) -> Result<String, Status> {
        Ok(self.namespace(name).await?.0)
    }

    /// A namespace's id and limits, cached for [`NAMESPACE_REFRESH`] (as Temporal's namespace
    /// cache is): a changed limit reaches every node within that time.
    pub(super) async fn namespace(&self, name: &str) -> Result<(String, Limits), Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument("Namespace is not set on request."));
        }
        if let Some((id, limits, at)) = self.ns_cache.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            if at.elapsed() < NAMESPACE_REFRESH {
                return Ok((id.clone(), *limits));
            }
        }
        let rec = super::lookup(&self.router, name).await?;
        let limits = Limits::of(&rec.data);
        let now = tokio::time::Instant::now();
        self.ns_cache.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), (rec.id.clone(), limits, now));
        Ok((rec.id, limits))
    }

    /// The limits of namespace id `namespace_id` as last read here (Temporal's defaults if this
    /// node has not read them).
    pub(super) fn cached_limits(&self, namespace_id: &str) -> Limits {
        let cache = self.ns_cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.values().find(|(id, _, _)| id == namespace_id).map(|(_, l, _)| *l).unwrap_or_default()
    }

    /// Checks a request against its namespace's limits; returns the limits.
    pub(super) async fn checked<R: super::checks::Check>(&self, r: &R) -> Result<Limits, Status> {
        let (_, limits) = self.namespace(r.namespace()).await?;
        r.check(&limits)?;
        Ok(limits)
    }

    /// Proposes `cmd` to its shard; the caller runs the effects of what it returns. The proposal
    /// runs detached from the caller: a caller that goes away mid-proposal (its client's
    /// connection broke, dropping the request's future) leaves a command that may well commit,
    /// and the detached proposal then runs its effects itself. Otherwise nobody would offer the
    /// tasks it scheduled (found by norn-jepsen: a signal sent as a partition began scheduled a
    /// workflow task nobody ever offered).
    pub(super) async fn propose(&self, shard: u32, cmd: WorkflowCommand) -> Result<WorkflowResult, Status> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move {
            let r = match this.router.propose_command(shard, &ShardCommand::Workflow(cmd)).await {
                Ok(ShardResult::Workflow(WorkflowResult::StorageFailed(e))) => {
                    Err(Status::internal(format!("shard {shard} storage failure: {e}")))
                }
                Ok(ShardResult::Workflow(r)) => Ok(r),
                Ok(other) => Err(Status::internal(format!("unexpected result {other:?}"))),
                Err(e) => Err(e),
            };
            if let Err(Ok(WorkflowResult::Applied { run, effects, next_run, .. })) = tx.send(r) {
                tracing::debug!(shard, workflow_id = %run.workflow_id, "the proposer went away; running the effects of its command");
                this.run_effects(shard, &run, effects);
                if let Some((next, next_effects)) = next_run {
                    this.run_effects(shard, &next, next_effects);
                }
            }
        });
        rx.await.map_err(|_| Status::internal("the proposal's task ended without an answer"))?
    }

    /// Proposes and runs the effects; returns the applied run and last event id.
    pub(super) async fn apply(&self, shard: u32, cmd: WorkflowCommand) -> Result<(RunKey, i64), Status> {
        self.apply_eager(shard, cmd).await.map(|(run, last, _)| (run, last))
    }

    /// As [`Self::apply`], and also returns the activities the command started eagerly.
    async fn apply_eager(&self, shard: u32, cmd: WorkflowCommand) -> Result<(RunKey, i64, Vec<Effect>), Status> {
        match self.propose(shard, cmd).await? {
            WorkflowResult::Applied { run, effects, last_event_id, reply_error, next_run } => {
                let eager: Vec<Effect> =
                    effects.iter().filter(|e| matches!(e, Effect::ActivityStartedEagerly { .. })).cloned().collect();
                self.run_effects(shard, &run, effects);
                if let Some((next, next_effects)) = next_run {
                    self.run_effects(shard, &next, next_effects);
                }
                match reply_error {
                    Some(e) => Err(engine_status(e)),
                    None => Ok((run, last_event_id, eager)),
                }
            }
            WorkflowResult::Rejected(e) => Err(engine_status(e)),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    /// Runs the effects of commands that other nodes proposed through this node while it led
    /// the run's shard (see [`crate::routing::Router::take_effects`]), until the node stops.
    pub async fn run_leader_effects(self, mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::routing::LeaderEffects>) {
        while let Some((shard, run, effects)) = rx.recv().await {
            self.run_effects(shard, &run, effects);
        }
    }

    pub(super) fn run_effects(&self, shard: u32, run: &RunKey, effects: Vec<Effect>) {
        for effect in effects {
            let this = self.clone();
            let run = run.clone();
            let offer =
                |kind: TaskKind, task_queue: String, sticky: Option<String>, scheduled_id: i64, ready_at_ms: u64| {
                    // A retry still in its backoff is offered by the shard leader's duties when the
                    // backoff ends (the run's due index holds it). Never judged by this node's
                    // clock: one behind the entry's timestamp skipped ready tasks, and nothing
                    // offered them again (found by norn-jepsen's clock-skew nemesis).
                    if ready_at_ms > 0 {
                        return;
                    }
                    let sticky = sticky.map(|name| QueueKey {
                        namespace_id: run.namespace_id.clone(),
                        name,
                        kind,
                        normal: task_queue.clone(),
                    });
                    let queue = QueueKey::normal(run.namespace_id.clone(), task_queue, kind);
                    let task = TaskRef { shard, run: run.clone(), scheduled_id, query: None };
                    let router = self.router.clone();
                    tokio::spawn(async move {
                        // The worker holding the run in its cache gets it if it polls; otherwise (or
                        // if its queue's home cannot be reached) the normal queue does, at once.
                        if let Some(sticky) = &sticky {
                            if let Ok(true) = router.add_sticky_task(sticky, &task).await {
                                return;
                            }
                        }
                        offer_retrying(&router, &queue, &task).await;
                    });
                };
            match effect {
                Effect::WorkflowTaskReady { task_queue, scheduled_id } => {
                    offer(TaskKind::Workflow, task_queue, None, scheduled_id, 0)
                }
                Effect::StickyWorkflowTaskReady { sticky_queue, normal_queue, scheduled_id } => {
                    offer(TaskKind::Workflow, normal_queue, Some(sticky_queue), scheduled_id, 0)
                }
                Effect::ActivityTaskReady { task_queue, scheduled_id, ready_at_ms } => {
                    offer(TaskKind::Activity, task_queue, None, scheduled_id, ready_at_ms)
                }
                // The shard leader's duties fire it from the run's due index.
                Effect::TimerArmed { .. } => {}
                // The completion's answer carries it to the worker.
                Effect::ActivityStartedEagerly { .. } => {}
                Effect::RunClosed => {}
                Effect::StartChild { initiated_id } => {
                    tokio::spawn(async move { this.start_child(shard, run, initiated_id).await });
                }
                Effect::DeliverExternal { initiated_id } => {
                    tokio::spawn(async move { this.deliver_external(shard, run, initiated_id).await });
                }
                Effect::TellParent => {
                    tokio::spawn(async move { this.tell_parent(shard, run).await });
                }
                Effect::CloseChild { workflow_id, run_id, parent_close_policy } => {
                    tokio::spawn(async move {
                        this.close_child(&run.namespace_id, workflow_id, run_id, parent_close_policy).await
                    });
                }
            }
        }
    }

    pub(super) async fn read_run(&self, shard: u32, run: &RunKey) -> Result<RunState, Status> {
        self.router.read_run(shard, run).await?.ok_or_else(|| {
            Status::not_found(format!("workflow execution {}/{} not found", run.workflow_id, run.run_id))
        })
    }

    pub(super) async fn read_events(&self, shard: u32, run_id: &str) -> Result<Vec<HistoryEvent>, Status> {
        self.router.read_events(shard, run_id, usize::MAX).await
    }

    /// Resolves an execution whose run id may be empty (the current run).
    pub(super) async fn resolve(
        &self,
        namespace_id: &str,
        exec: Option<&WorkflowExecution>,
    ) -> Result<(u32, RunKey), Status> {
        let exec = exec.ok_or_else(|| Status::invalid_argument("execution is not set on request"))?;
        if exec.workflow_id.is_empty() {
            return Err(Status::invalid_argument("WorkflowId is not set on request."));
        }
        let shard = self.run_shard(namespace_id, &exec.workflow_id);
        let run_id = if exec.run_id.is_empty() {
            let cur = self.router.read_current(shard, namespace_id, &exec.workflow_id).await?;
            cur.ok_or_else(|| Status::not_found(format!("workflow execution {} not found", exec.workflow_id)))?.run_id
        } else {
            exec.run_id.clone()
        };
        Ok((shard, RunKey { namespace_id: namespace_id.into(), workflow_id: exec.workflow_id.clone(), run_id }))
    }

    pub(super) async fn start_workflow(
        &self,
        mut req: StartWorkflowExecutionRequest,
    ) -> Result<StartWorkflowExecutionResponse, Status> {
        let ns = self.namespace_id(&req.namespace).await?;
        if req.request_id.is_empty() {
            req.request_id = new_uuid();
        }
        let shard = self.run_shard(&ns, &req.workflow_id);
        let run_id = new_uuid();
        let cmd = WorkflowCommand::Start { namespace_id: ns, run_id, request: req.encode_to_vec() };
        match self.propose(shard, cmd).await? {
            WorkflowResult::Applied { run, effects, .. } => {
                self.run_effects(shard, &run, effects);
                Ok(StartWorkflowExecutionResponse {
                    run_id: run.run_id,
                    started: true,
                    status: WorkflowExecutionStatus::Running as i32,
                    ..Default::default()
                })
            }
            WorkflowResult::Deduplicated { run_id } => Ok(StartWorkflowExecutionResponse {
                run_id,
                started: true,
                status: WorkflowExecutionStatus::Running as i32,
                ..Default::default()
            }),
            WorkflowResult::UsedExisting { run_id } => Ok(StartWorkflowExecutionResponse {
                run_id,
                started: false,
                status: WorkflowExecutionStatus::Running as i32,
                ..Default::default()
            }),
            WorkflowResult::AlreadyStarted { run_id } => Err(already_started(&req, &run_id)),
            WorkflowResult::Rejected(e) => Err(engine_status(e)),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    pub(super) async fn signal(
        &self,
        req: SignalWorkflowExecutionRequest,
    ) -> Result<SignalWorkflowExecutionResponse, Status> {
        let (ns, limits) = self.namespace(&req.namespace).await?;
        let exec = req
            .workflow_execution
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("execution is not set on request"))?;
        if exec.workflow_id.is_empty() {
            return Err(Status::invalid_argument("WorkflowId is not set on request."));
        }
        if req.signal_name.is_empty() {
            return Err(Status::invalid_argument("SignalName is not set on request."));
        }
        let shard = self.run_shard(&ns, &exec.workflow_id);
        let run = RunKey { namespace_id: ns, workflow_id: exec.workflow_id.clone(), run_id: exec.run_id.clone() };
        let attrs = WorkflowExecutionSignaledEventAttributes {
            signal_name: req.signal_name,
            input: req.input,
            identity: req.identity,
            header: req.header,
            request_id: if req.request_id.is_empty() { new_uuid() } else { req.request_id },
            ..Default::default()
        };
        let signals_max = limits.signals_per_run_max;
        self.apply(shard, WorkflowCommand::Signal { run, attributes: attrs.encode_to_vec(), signals_max }).await?;
        Ok(SignalWorkflowExecutionResponse::default())
    }

    fn exec_key(&self, ns: String, exec: Option<&WorkflowExecution>) -> Result<(u32, RunKey), Status> {
        let exec = exec.ok_or_else(|| Status::invalid_argument("execution is not set on request"))?;
        if exec.workflow_id.is_empty() {
            return Err(Status::invalid_argument("WorkflowId is not set on request."));
        }
        let shard = self.run_shard(&ns, &exec.workflow_id);
        Ok((shard, RunKey { namespace_id: ns, workflow_id: exec.workflow_id.clone(), run_id: exec.run_id.clone() }))
    }

    pub(super) async fn request_cancel(
        &self,
        req: RequestCancelWorkflowExecutionRequest,
    ) -> Result<RequestCancelWorkflowExecutionResponse, Status> {
        let ns = self.namespace_id(&req.namespace).await?;
        let (shard, run) = self.exec_key(ns, req.workflow_execution.as_ref())?;
        self.apply(shard, WorkflowCommand::RequestCancel { run, reason: req.reason, identity: req.identity }).await?;
        Ok(RequestCancelWorkflowExecutionResponse::default())
    }

    /// `ResetStickyTaskQueue`: the run's next workflow task goes to its normal queue.
    pub(super) async fn reset_sticky(
        &self,
        req: ResetStickyTaskQueueRequest,
    ) -> Result<ResetStickyTaskQueueResponse, Status> {
        let ns = self.namespace_id(&req.namespace).await?;
        let (shard, run) = self.resolve(&ns, req.execution.as_ref()).await?;
        self.apply(shard, WorkflowCommand::ResetSticky { run }).await?;
        Ok(ResetStickyTaskQueueResponse::default())
    }

    pub(super) async fn terminate(
        &self,
        req: TerminateWorkflowExecutionRequest,
    ) -> Result<TerminateWorkflowExecutionResponse, Status> {
        let ns = self.namespace_id(&req.namespace).await?;
        let (shard, run) = self.exec_key(ns, req.workflow_execution.as_ref())?;
        let details = req.details.map(|d| d.encode_to_vec()).unwrap_or_default();
        self.apply(shard, WorkflowCommand::Terminate { run, reason: req.reason, details, identity: req.identity })
            .await?;
        Ok(TerminateWorkflowExecutionResponse::default())
    }

    /// Deletes a run and its history; an open run is terminated first (as Temporal does).
    pub(super) async fn delete_execution(
        &self,
        req: DeleteWorkflowExecutionRequest,
    ) -> Result<DeleteWorkflowExecutionResponse, Status> {
        let ns = self.namespace_id(&req.namespace).await?;
        let (shard, run) = self.resolve(&ns, req.workflow_execution.as_ref()).await?;
        if self.read_run(shard, &run).await?.is_open() {
            let cmd = WorkflowCommand::Terminate {
                run: run.clone(),
                reason: "Delete workflow execution".into(),
                details: Vec::new(),
                identity: String::new(),
            };
            match self.apply(shard, cmd).await {
                Ok(_) => {}
                // Closed in the meantime.
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s),
            }
        }
        match self.propose(shard, WorkflowCommand::DeleteRun { run }).await? {
            WorkflowResult::Deleted => Ok(DeleteWorkflowExecutionResponse::default()),
            WorkflowResult::Rejected(e) => Err(engine_status(e)),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    pub(super) async fn signal_with_start(
        &self,
        req: SignalWithStartWorkflowExecutionRequest,
    ) -> Result<SignalWithStartWorkflowExecutionResponse, Status> {
        let (ns, limits) = self.namespace(&req.namespace).await?;
        if req.signal_name.is_empty() {
            return Err(Status::invalid_argument("SignalName is not set on request."));
        }
        let request_id = if req.request_id.is_empty() { new_uuid() } else { req.request_id.clone() };
        let start = StartWorkflowExecutionRequest {
            namespace: req.namespace.clone(),
            workflow_id: req.workflow_id.clone(),
            workflow_type: req.workflow_type.clone(),
            task_queue: req.task_queue.clone(),
            input: req.input.clone(),
            workflow_execution_timeout: req.workflow_execution_timeout,
            workflow_run_timeout: req.workflow_run_timeout,
            workflow_task_timeout: req.workflow_task_timeout,
            identity: req.identity.clone(),
            request_id: request_id.clone(),
            retry_policy: req.retry_policy.clone(),
            memo: req.memo.clone(),
            search_attributes: req.search_attributes.clone(),
            header: req.header.clone(),
            ..Default::default()
        };
        let signal = WorkflowExecutionSignaledEventAttributes {
            signal_name: req.signal_name.clone(),
            input: req.signal_input.clone(),
            identity: req.identity.clone(),
            header: req.header.clone(),
            request_id,
            ..Default::default()
        };
        let shard = self.run_shard(&ns, &req.workflow_id);
        let cmd = WorkflowCommand::SignalWithStart {
            namespace_id: ns,
            run_id: new_uuid(),
            request: start.encode_to_vec(),
            signal: signal.encode_to_vec(),
            signals_max: limits.signals_per_run_max,
        };
        let (run, _) = self.apply(shard, cmd).await?;
        Ok(SignalWithStartWorkflowExecutionResponse { run_id: run.run_id, started: true, ..Default::default() })
    }

    /// Forwards a poll to the task queue's home, or runs it here if this node is the home.
    async fn poll_target(&self, queue: &QueueKey) -> Result<Target, Status> {
        self.router.leader_target(queue.home_shard(self.router.config().shards)).await
    }

    pub(super) async fn poll_workflow_task(
        &self,
        req: tonic::Request<PollWorkflowTaskQueueRequest>,
    ) -> Result<PollWorkflowTaskQueueResponse, Status> {
        let hops = hops(&req);
        let req = req.into_inner();
        self.checked(&req).await?;
        let ns = self.namespace_id(&req.namespace).await?;
        let tq = req.task_queue.as_ref().map(|t| t.name.clone()).unwrap_or_default();
        if tq.is_empty() {
            return Err(Status::invalid_argument("TaskQueue is not set on request."));
        }
        let sticky_poll = req.task_queue.as_ref().is_some_and(|q| q.kind == TaskQueueKind::Sticky as i32);
        let _in_flight = self.router.metrics().poll_in_flight(if sticky_poll { "sticky" } else { "workflow" });
        // A sticky queue is known by its normal queue too (its home, and where its idle polls
        // also take tasks from).
        let normal = match &req.task_queue {
            Some(q) if sticky_poll && q.normal_name != q.name => q.normal_name.clone(),
            _ => String::new(),
        };
        let queue = QueueKey { namespace_id: ns, name: tq, kind: TaskKind::Workflow, normal };
        if let Target::Remote(addr) = self.poll_target(&queue).await? {
            if hops >= 2 {
                return Err(Status::unavailable("task queue home moved while forwarding; retry"));
            }
            let mut c = self.workflow_client(&addr)?;
            return c.poll_workflow_task_queue(forwarded(req, hops)).await.map(|r| r.into_inner());
        }
        let deadline = tokio::time::Instant::now() + POLL_WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some((task, from)) = self.router.matching().poll_from(&queue, &req.identity, left).await else {
                return Ok(PollWorkflowTaskQueueResponse::default());
            };
            if let Some(q) = &task.query {
                return self.query_task_response(&task, q).await;
            }
            let taken_at = tokio::time::Instant::now();
            let request_id = new_uuid();
            let cmd = WorkflowCommand::WorkflowTaskStarted {
                run: task.run.clone(),
                scheduled_id: task.scheduled_id,
                request_id: request_id.clone(),
                identity: req.identity.clone(),
            };
            // Until the start is recorded the task goes back to its queue if this poll is dropped.
            let taken = crate::matching::Taken::new(self.router.matching(), &from, task.clone());
            let started_id = match self.apply(task.shard, cmd).await {
                Ok((_, last)) => {
                    taken.done();
                    last
                }
                // Stale: already started, completed, or the run closed. Take the next task.
                Err(s) if s.code() == tonic::Code::NotFound => {
                    taken.done();
                    continue;
                }
                // Unknown outcome: the task goes back (dropping `taken`); the shard refuses a
                // second start.
                Err(s) => return Err(s),
            };
            // A task scheduled on this worker's sticky queue carries only what came after the
            // last task the worker ran (Temporal's partial history); any other (a normal queue's
            // task, also when a sticky poll takes it) carries the whole history.
            let partial = |run: &RunState| {
                sticky_poll && run.sticky_queue == queue.name && run.workflow_task.as_ref().is_some_and(|t| t.sticky)
            };
            // This node's replica usually has the start applied already (on 3 nodes it holds
            // every shard): read from it when it shows this very start, else from the leader.
            let here = self.router.read_run_here(task.shard, &task.run).and_then(|run| {
                let ours = run.workflow_task.as_ref().is_some_and(|t| {
                    t.scheduled_id == task.scheduled_id
                        && t.started_id == Some(started_id)
                        && t.request_id == request_id
                });
                if !ours {
                    return None;
                }
                let after = if partial(&run) { run.last_completed_started_id } else { 0 };
                let upto = started_id.min(run.next_event_id - 1);
                let events = self.router.read_events_here(task.shard, &task.run.run_id, after, upto)?;
                Some((run, events))
            });
            let (run, mut events) = match here {
                Some(found) => found,
                None => {
                    let run = self.read_run(task.shard, &task.run).await?;
                    let after = if partial(&run) { run.last_completed_started_id } else { 0 };
                    let events = self.router.read_events_after(task.shard, &task.run.run_id, after, usize::MAX).await?;
                    (run, events)
                }
            };
            let wft = match run.workflow_task.clone() {
                Some(t) if t.scheduled_id == task.scheduled_id && t.started_id.is_some() => t,
                // Timed out or closed in the meantime: its completion will be refused.
                _ => continue,
            };
            let started_id = wft.started_id.unwrap_or(started_id);
            events.extend(crate::history::engine::transient_events(&run));
            let token = TaskToken {
                shard: task.shard,
                run: task.run.clone(),
                kind: TaskKind::Workflow,
                scheduled_id: task.scheduled_id,
                started_or_attempt: started_id,
                query: None,
            };
            // The first page here; the SDK fetches the rest with GetWorkflowExecutionHistory.
            let mut events: Vec<HistoryEvent> = events.into_iter().filter(|e| e.event_id <= started_id).collect();
            let next_page_token = if cut_page(&mut events, usize::MAX) {
                page_token(events.last().map(|e| e.event_id).unwrap_or(0), started_id)
            } else {
                Vec::new()
            };
            self.router
                .metrics()
                .observe_poll_answer(if sticky_poll { "sticky" } else { "workflow" }, taken_at.elapsed());
            return Ok(PollWorkflowTaskQueueResponse {
                next_page_token,
                task_token: encode_token(&token)?,
                workflow_execution: Some(WorkflowExecution {
                    workflow_id: run.workflow_id.clone(),
                    run_id: run.run_id.clone(),
                }),
                workflow_type: Some(WorkflowType { name: run.workflow_type.clone() }),
                previous_started_event_id: run.last_completed_started_id,
                started_event_id: started_id,
                attempt: wft.attempt,
                history: Some(History { events }),
                workflow_execution_task_queue: Some(TaskQueue {
                    name: run.task_queue.clone(),
                    kind: TaskQueueKind::Normal as i32,
                    ..Default::default()
                }),
                scheduled_time: Some(timestamp(wft.scheduled_ms)),
                started_time: Some(timestamp(wft.started_ms)),
                messages: crate::history::engine::update_messages(&run, started_id),
                ..Default::default()
            });
        }
    }

    /// A query task: the run's whole history and the query; nothing is recorded.
    async fn query_task_response(
        &self,
        task: &TaskRef,
        q: &crate::matching::QueryTask,
    ) -> Result<PollWorkflowTaskQueueResponse, Status> {
        let run = self.read_run(task.shard, &task.run).await?;
        let mut events = self.read_events(task.shard, &task.run.run_id).await?;
        let last = events.last().map(|e| e.event_id).unwrap_or(0);
        let next_page_token = if cut_page(&mut events, usize::MAX) {
            page_token(events.last().map(|e| e.event_id).unwrap_or(0), last)
        } else {
            Vec::new()
        };
        let token = TaskToken {
            shard: task.shard,
            run: task.run.clone(),
            kind: TaskKind::Workflow,
            scheduled_id: 0,
            started_or_attempt: 0,
            query: Some((q.id.clone(), q.origin)),
        };
        Ok(PollWorkflowTaskQueueResponse {
            task_token: encode_token(&token)?,
            workflow_execution: Some(WorkflowExecution {
                workflow_id: run.workflow_id.clone(),
                run_id: run.run_id.clone(),
            }),
            workflow_type: Some(WorkflowType { name: run.workflow_type.clone() }),
            previous_started_event_id: run.last_completed_started_id,
            started_event_id: last,
            attempt: 1,
            history: Some(History { events }),
            next_page_token,
            query: Some(super::queries::decode_query(&q.query)?),
            workflow_execution_task_queue: Some(TaskQueue {
                name: run.task_queue.clone(),
                kind: TaskQueueKind::Normal as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    pub(super) async fn respond_workflow_task_completed(
        &self,
        mut req: RespondWorkflowTaskCompletedRequest,
    ) -> Result<RespondWorkflowTaskCompletedResponse, Status> {
        let limits = self.checked(&req).await?;
        let t = decode_token(&req.task_token, TaskKind::Workflow)?;
        if self.router.config().raft.planted_bug == Some(norn_raft::PlantedBug::UncommittedActivityStart) {
            // The planted bug lives in the activity poll: every activity must go through one.
            for c in &mut req.commands {
                if let Some(Attrs::ScheduleActivityTaskCommandAttributes(a)) = c.attributes.as_mut() {
                    a.request_eager_execution = false;
                }
            }
        }
        let cmd = WorkflowCommand::WorkflowTaskCompleted {
            run: t.run.clone(),
            scheduled_id: t.scheduled_id,
            started_id: t.started_or_attempt,
            request: req.encode_to_vec(),
            limits: limits.engine(),
        };
        let (run, _, eager) = self.apply_eager(t.shard, cmd).await?;
        let mut activity_tasks = Vec::with_capacity(eager.len());
        for e in eager {
            let Effect::ActivityStartedEagerly { scheduled_id, activity_id, workflow_type, at_ms } = e else {
                continue;
            };
            let Some(a) = req.commands.iter().find_map(|c| match &c.attributes {
                Some(Attrs::ScheduleActivityTaskCommandAttributes(a)) if a.activity_id == activity_id => Some(a),
                _ => None,
            }) else {
                continue;
            };
            let token = TaskToken {
                shard: t.shard,
                run: run.clone(),
                kind: TaskKind::Activity,
                scheduled_id,
                started_or_attempt: 1,
                query: None,
            };
            activity_tasks.push(PollActivityTaskQueueResponse {
                task_token: encode_token(&token)?,
                workflow_namespace: req.namespace.clone(),
                workflow_type: Some(WorkflowType { name: workflow_type }),
                workflow_execution: Some(WorkflowExecution {
                    workflow_id: run.workflow_id.clone(),
                    run_id: run.run_id.clone(),
                }),
                activity_type: Some(a.activity_type.clone().unwrap_or_default()),
                activity_id,
                header: a.header.clone(),
                input: a.input.clone(),
                scheduled_time: Some(timestamp(at_ms)),
                current_attempt_scheduled_time: Some(timestamp(at_ms)),
                started_time: Some(timestamp(at_ms)),
                attempt: 1,
                schedule_to_close_timeout: a.schedule_to_close_timeout,
                start_to_close_timeout: a.start_to_close_timeout,
                heartbeat_timeout: a.heartbeat_timeout,
                retry_policy: crate::history::engine::effective_retry_policy(&a.retry_policy).ok(),
                priority: a.priority.clone(),
                ..Default::default()
            });
        }
        if !activity_tasks.is_empty() {
            self.router.metrics().eager_activities(activity_tasks.len());
        }
        Ok(RespondWorkflowTaskCompletedResponse { activity_tasks, ..Default::default() })
    }

    pub(super) async fn respond_workflow_task_failed(
        &self,
        req: RespondWorkflowTaskFailedRequest,
    ) -> Result<RespondWorkflowTaskFailedResponse, Status> {
        let t = decode_token(&req.task_token, TaskKind::Workflow)?;
        let cmd = WorkflowCommand::WorkflowTaskFailed {
            run: t.run,
            scheduled_id: t.scheduled_id,
            started_id: t.started_or_attempt,
            request: req.encode_to_vec(),
        };
        self.apply(t.shard, cmd).await?;
        Ok(RespondWorkflowTaskFailedResponse::default())
    }

    pub(super) async fn poll_activity_task(
        &self,
        req: tonic::Request<PollActivityTaskQueueRequest>,
    ) -> Result<PollActivityTaskQueueResponse, Status> {
        let _in_flight = self.router.metrics().poll_in_flight("activity");
        let hops = hops(&req);
        let req = req.into_inner();
        self.checked(&req).await?;
        let ns = self.namespace_id(&req.namespace).await?;
        let tq = req.task_queue.as_ref().map(|t| t.name.clone()).unwrap_or_default();
        if tq.is_empty() {
            return Err(Status::invalid_argument("TaskQueue is not set on request."));
        }
        let queue = QueueKey::normal(ns, tq, TaskKind::Activity);
        if let Target::Remote(addr) = self.poll_target(&queue).await? {
            if hops >= 2 {
                return Err(Status::unavailable("task queue home moved while forwarding; retry"));
            }
            let mut c = self.workflow_client(&addr)?;
            return c.poll_activity_task_queue(forwarded(req, hops)).await.map(|r| r.into_inner());
        }
        let deadline = tokio::time::Instant::now() + POLL_WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(task) = self.router.matching().poll(&queue, &req.identity, left).await else {
                return Ok(PollActivityTaskQueueResponse::default());
            };
            let taken_at = tokio::time::Instant::now();
            let request_id = new_uuid();
            let cmd = WorkflowCommand::ActivityTaskStarted {
                run: task.run.clone(),
                scheduled_id: task.scheduled_id,
                request_id: request_id.clone(),
                identity: req.identity.clone(),
            };
            let planted =
                self.router.config().raft.planted_bug == Some(norn_raft::PlantedBug::UncommittedActivityStart);
            // Until the start is recorded the task goes back to its queue if this poll is dropped.
            let taken = crate::matching::Taken::new(self.router.matching(), &queue, task.clone());
            let applied = if planted { Ok((task.run.clone(), 0)) } else { self.apply(task.shard, cmd).await };
            match applied {
                Ok(_) => taken.done(),
                Err(s) if s.code() == tonic::Code::NotFound => {
                    taken.done();
                    continue;
                }
                // Unknown outcome: the task goes back (dropping `taken`); the shard refuses a
                // second start.
                Err(s) => return Err(s),
            }
            // This node's replica, when it shows this very start; else the leader.
            let here = self
                .router
                .read_run_here(task.shard, &task.run)
                .filter(|run| run.activities.get(&task.scheduled_id).is_some_and(|a| a.request_id == request_id));
            let run = match here {
                Some(run) => run,
                None => self.read_run(task.shard, &task.run).await?,
            };
            let Some(a) = run.activities.get(&task.scheduled_id) else { continue };
            let sched = ActivityTaskScheduledEventAttributes::decode(a.scheduled_event.as_slice())
                .map_err(|e| Status::internal(format!("corrupt scheduled event: {e}")))?;
            let token = TaskToken {
                shard: task.shard,
                run: task.run.clone(),
                kind: TaskKind::Activity,
                scheduled_id: task.scheduled_id,
                started_or_attempt: i64::from(a.attempt),
                query: None,
            };
            self.router.metrics().observe_poll_answer("activity", taken_at.elapsed());
            return Ok(PollActivityTaskQueueResponse {
                task_token: encode_token(&token)?,
                workflow_namespace: req.namespace.clone(),
                workflow_type: Some(WorkflowType { name: run.workflow_type.clone() }),
                workflow_execution: Some(WorkflowExecution {
                    workflow_id: run.workflow_id.clone(),
                    run_id: run.run_id.clone(),
                }),
                activity_type: Some(ActivityType { name: a.activity_type.clone() }),
                activity_id: a.activity_id.clone(),
                header: sched.header,
                input: sched.input,
                scheduled_time: Some(timestamp(a.first_scheduled_ms)),
                current_attempt_scheduled_time: Some(timestamp(a.scheduled_ms)),
                started_time: Some(timestamp(a.started_ms)),
                attempt: a.attempt,
                schedule_to_close_timeout: sched.schedule_to_close_timeout,
                start_to_close_timeout: sched.start_to_close_timeout,
                heartbeat_timeout: sched.heartbeat_timeout,
                retry_policy: sched.retry_policy,
                priority: sched.priority,
                heartbeat_details: (!a.heartbeat_details.is_empty())
                    .then(|| Payloads::decode(a.heartbeat_details.as_slice()).unwrap_or_default()),
                ..Default::default()
            });
        }
    }

    pub(super) async fn respond_activity_completed(
        &self,
        req: RespondActivityTaskCompletedRequest,
    ) -> Result<RespondActivityTaskCompletedResponse, Status> {
        let (_, limits) = self.namespace(&req.namespace).await?;
        limits.check_id("Identity", &req.identity)?;
        if super::checks::oversized_result(&limits, &req) {
            // As in Temporal: the activity fails, for good, and the worker is told nothing is wrong.
            let failure = norn_proto::protos::temporal::api::failure::v1::Failure {
                message: super::checks::RESULT_TOO_LARGE.into(),
                source: "history-service".into(),
                failure_info: Some(
                    norn_proto::protos::temporal::api::failure::v1::failure::FailureInfo::ServerFailureInfo(
                        norn_proto::protos::temporal::api::failure::v1::ServerFailureInfo { non_retryable: true },
                    ),
                ),
                ..Default::default()
            };
            let failed = RespondActivityTaskFailedRequest {
                task_token: req.task_token,
                failure: Some(failure),
                identity: req.identity,
                namespace: req.namespace,
                ..Default::default()
            };
            self.respond_activity_failed(failed).await?;
            return Ok(RespondActivityTaskCompletedResponse::default());
        }
        let t = decode_token(&req.task_token, TaskKind::Activity)?;
        let cmd = WorkflowCommand::ActivityTaskCompleted {
            run: t.run,
            scheduled_id: t.scheduled_id,
            attempt: t.started_or_attempt as i32,
            result: req.result.map(|r: Payloads| r.encode_to_vec()).unwrap_or_default(),
            identity: req.identity,
        };
        self.apply(t.shard, cmd).await?;
        Ok(RespondActivityTaskCompletedResponse::default())
    }

    pub(super) async fn respond_activity_failed(
        &self,
        req: RespondActivityTaskFailedRequest,
    ) -> Result<RespondActivityTaskFailedResponse, Status> {
        let t = decode_token(&req.task_token, TaskKind::Activity)?;
        let cmd = WorkflowCommand::ActivityTaskFailed {
            run: t.run,
            scheduled_id: t.scheduled_id,
            attempt: t.started_or_attempt as i32,
            failure: req.failure.map(|f| f.encode_to_vec()).unwrap_or_default(),
            identity: req.identity,
            last_heartbeat_details: req.last_heartbeat_details.map(|d| d.encode_to_vec()).unwrap_or_default(),
        };
        self.apply(t.shard, cmd).await?;
        Ok(RespondActivityTaskFailedResponse::default())
    }

    pub(super) async fn respond_activity_canceled(
        &self,
        req: RespondActivityTaskCanceledRequest,
    ) -> Result<RespondActivityTaskCanceledResponse, Status> {
        let t = decode_token(&req.task_token, TaskKind::Activity)?;
        let cmd = WorkflowCommand::ActivityTaskCanceled {
            run: t.run,
            scheduled_id: t.scheduled_id,
            attempt: t.started_or_attempt as i32,
            details: req.details.map(|d: Payloads| d.encode_to_vec()).unwrap_or_default(),
            identity: req.identity,
        };
        self.apply(t.shard, cmd).await?;
        Ok(RespondActivityTaskCanceledResponse::default())
    }

    /// Records the details (replicated, so a retry on another node sees them) and tells the
    /// worker whether the workflow asked to cancel the activity.
    pub(super) async fn record_heartbeat(
        &self,
        req: RecordActivityTaskHeartbeatRequest,
    ) -> Result<RecordActivityTaskHeartbeatResponse, Status> {
        let t = decode_token(&req.task_token, TaskKind::Activity)?;
        let cmd = WorkflowCommand::ActivityHeartbeat {
            run: t.run.clone(),
            scheduled_id: t.scheduled_id,
            attempt: t.started_or_attempt as i32,
            details: req.details.map(|d: Payloads| d.encode_to_vec()).unwrap_or_default(),
        };
        self.apply(t.shard, cmd).await?;
        let run = self.read_run(t.shard, &t.run).await?;
        let cancel_requested = run.activities.get(&t.scheduled_id).map(|a| a.cancel_requested_id > 0).unwrap_or(false);
        Ok(RecordActivityTaskHeartbeatResponse { cancel_requested, ..Default::default() })
    }

    /// How long a wait on a run's changes may go without re-reading: a replica here wakes the
    /// waiter on every apply, elsewhere only re-reads notice changes.
    pub(super) fn reread_every(&self, shard: u32) -> Duration {
        if self.router.raft().group_ids().binary_search(&shard).is_ok() {
            HISTORY_REREAD_HOSTED
        } else {
            HISTORY_REREAD_REMOTE
        }
    }

    pub(super) async fn get_history(
        &self,
        req: GetWorkflowExecutionHistoryRequest,
    ) -> Result<GetWorkflowExecutionHistoryResponse, Status> {
        let ns = self.namespace_id(&req.namespace).await?;
        let (shard, run) = self.resolve(&ns, req.execution.as_ref()).await?;
        let close_only = req.history_event_filter_type == HistoryEventFilterType::CloseEvent as i32;
        let (after, upto) = read_page_token(&req.next_page_token)?;
        let deadline = tokio::time::Instant::now() + HISTORY_WAIT;
        let sub = self.watch.subscribe(&run.run_id);
        let reread = self.reread_every(shard);
        loop {
            // Armed before the read, so an apply between the read and the wait is not missed.
            let woken = sub.notify().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            // A long poll is answered from this node's replica when it shows something new:
            // events never change once written and a closed run stays closed, so what a replica
            // has applied is committed and final. Until then it waits for this node's applies,
            // without asking the leader at every event of the run; at the deadline, and for
            // every other read, the leader answers (linearizable).
            let news =
                |s: &RunState| !s.is_open() || (!close_only && (upto > 0 || s.next_event_id.saturating_sub(1) > after));
            let local = if req.wait_new_event && tokio::time::Instant::now() < deadline {
                self.router.read_run_here(shard, &run)
            } else {
                None
            };
            let (state, from_here) = match local {
                Some(s) if news(&s) => (s, true),
                Some(_) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let _ = tokio::time::timeout(reread.min(left), woken).await;
                    continue;
                }
                // The state is read before the events: a run seen closed then has its close
                // event in the events read after (closing is one atomic apply), never the other
                // way round.
                None => (self.read_run(shard, &run).await?, false),
            };
            let closed = !state.is_open();
            let last_id = state.next_event_id.saturating_sub(1);
            // Only what the answer needs: the close event, or the events after `after`.
            let (from, to) = if close_only {
                (last_id.saturating_sub(1), last_id)
            } else {
                (after, if upto > 0 { upto.min(last_id) } else { last_id })
            };
            let wanted = !close_only || closed;
            let events = if !wanted || to <= from {
                Vec::new()
            } else if let Some(e) =
                from_here.then(|| self.router.read_events_here(shard, &run.run_id, from, to)).flatten()
            {
                e
            } else {
                let mut e = self.router.read_events_after(shard, &run.run_id, from, usize::MAX).await?;
                e.retain(|e| e.event_id <= to);
                e
            };
            let selected: Vec<HistoryEvent> =
                if close_only { events.last().cloned().into_iter().collect() } else { events };
            let mut selected = selected;
            let page = match req.maximum_page_size {
                n if n <= 0 => HISTORY_PAGE_DEFAULT,
                n => n as usize,
            };
            let more = cut_page(&mut selected, page);
            let ready = !req.wait_new_event || !selected.is_empty() || (closed && !close_only) || upto > 0;
            if ready || tokio::time::Instant::now() >= deadline {
                let last = selected.last().map(|e| e.event_id).unwrap_or(after);
                // A token when this page is not the end, or when a long poll may see more later.
                let next_page_token = if more || (upto == 0 && req.wait_new_event && !closed && !close_only) {
                    page_token(last, upto)
                } else {
                    Vec::new()
                };
                return Ok(GetWorkflowExecutionHistoryResponse {
                    history: Some(History { events: selected }),
                    next_page_token,
                    ..Default::default()
                });
            }
            // Woken by this node's apply of a command for the run; the timeout covers nodes
            // that host no replica of the shard.
            let _ = tokio::time::timeout(reread, woken).await;
        }
    }

    pub(super) async fn describe(
        &self,
        req: DescribeWorkflowExecutionRequest,
    ) -> Result<DescribeWorkflowExecutionResponse, Status> {
        let ns = self.namespace_id(&req.namespace).await?;
        let (shard, run) = self.resolve(&ns, req.execution.as_ref()).await?;
        let s = self.read_run(shard, &run).await?;
        let tq = TaskQueue { name: s.task_queue.clone(), kind: TaskQueueKind::Normal as i32, ..Default::default() };
        // Memo and search attributes live in the run's first event.
        let first = self.router.read_event(shard, &run.run_id, 1).await?;
        let started = first.and_then(|e| match e.attributes {
            Some(Ev::WorkflowExecutionStartedEventAttributes(a)) => Some(a),
            _ => None,
        });
        let mut info = execution_info(&s);
        if let Some(a) = started {
            info.memo = a.memo;
            info.search_attributes = a.search_attributes;
            info.parent_execution = a.parent_workflow_execution;
        }
        Ok(DescribeWorkflowExecutionResponse {
            execution_config: Some(WorkflowExecutionConfig {
                task_queue: Some(tq),
                default_workflow_task_timeout: Some(prost_wkt_types::Duration {
                    seconds: (s.workflow_task_timeout_ms / 1000) as i64,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            workflow_execution_info: Some(info),
            pending_activities: s
                .activities
                .values()
                .map(|a| PendingActivityInfo {
                    activity_id: a.activity_id.clone(),
                    activity_type: Some(ActivityType { name: a.activity_type.clone() }),
                    attempt: a.attempt,
                    scheduled_time: Some(timestamp(a.first_scheduled_ms)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }
}

/// What describe and list say about a run.
pub(super) fn execution_info(s: &RunState) -> WorkflowExecutionInfo {
    WorkflowExecutionInfo {
        execution: Some(WorkflowExecution { workflow_id: s.workflow_id.clone(), run_id: s.run_id.clone() }),
        r#type: Some(WorkflowType { name: s.workflow_type.clone() }),
        start_time: Some(timestamp(s.start_ms)),
        close_time: s.close_ms.map(timestamp),
        status: status_of(s.status) as i32,
        history_length: s.next_event_id - 1,
        execution_time: Some(timestamp(s.start_ms)),
        task_queue: s.task_queue.clone(),
        first_run_id: s.first_run_id.clone(),
        ..Default::default()
    }
}

/// The Temporal status of a run.
pub(super) fn status_of(s: RunStatus) -> WorkflowExecutionStatus {
    match s {
        RunStatus::Running => WorkflowExecutionStatus::Running,
        RunStatus::Completed => WorkflowExecutionStatus::Completed,
        RunStatus::Failed => WorkflowExecutionStatus::Failed,
        RunStatus::Canceled => WorkflowExecutionStatus::Canceled,
        RunStatus::Terminated => WorkflowExecutionStatus::Terminated,
        RunStatus::TimedOut => WorkflowExecutionStatus::TimedOut,
        RunStatus::ContinuedAsNew => WorkflowExecutionStatus::ContinuedAsNew,
    }
}

fn already_started(req: &StartWorkflowExecutionRequest, run_id: &str) -> Status {
    let failure = WorkflowExecutionAlreadyStartedFailure {
        start_request_id: req.request_id.clone(),
        run_id: run_id.to_string(),
        first_execution_run_id: run_id.to_string(),
    };
    let msg = format!("Workflow execution is already running. WorkflowId: {}, RunId: {run_id}.", req.workflow_id);
    let details = RpcStatus {
        code: tonic::Code::AlreadyExists as i32,
        message: msg.clone(),
        details: vec![prost_wkt_types::Any {
            type_url: "type.googleapis.com/temporal.api.errordetails.v1.WorkflowExecutionAlreadyStartedFailure".into(),
            value: failure.encode_to_vec(),
        }],
    };
    Status::with_details(tonic::Code::AlreadyExists, msg, details.encode_to_vec().into())
}
