//! The worker: polls a task queue for workflow and activity tasks and runs registered code.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use temporalio_protos::temporal::api::common::v1::Payloads;
use temporalio_protos::temporal::api::enums::v1::{QueryResultType, TaskQueueKind, WorkflowTaskFailedCause};
use temporalio_protos::temporal::api::history::v1::HistoryEvent;
use temporalio_protos::temporal::api::taskqueue::v1::{StickyExecutionAttributes, TaskQueue};
use temporalio_protos::temporal::api::workflowservice::v1 as ws;
use tokio::sync::{watch, Semaphore};

use crate::client::{Client, Route};
use crate::error::Error;
use crate::failure::{ApplicationError, Failure, FailureKind};
use crate::payload::{from_payloads, to_payloads};
use crate::workflow::machine::WorkflowFn;
use crate::workflow::{WfContext, WfResult};

mod cache;

/// The registered workflows and activities (shared by the worker and the replayer).
#[derive(Clone, Default)]
pub struct Registry {
    pub(crate) workflows: HashMap<String, WorkflowFn>,
    pub(crate) activities: HashMap<String, ActivityFn>,
}

type ActivityFn = Arc<
    dyn Fn(ActivityContext, Option<Payloads>) -> BoxFuture<'static, Result<Option<Payloads>, ApplicationError>>
        + Send
        + Sync,
>;

impl Registry {
    /// Registers a workflow function under a type name.
    pub fn register_workflow<A, R, F, Fut>(&mut self, workflow_type: &str, f: F)
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(WfContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = WfResult<R>> + 'static,
    {
        let f = Arc::new(f);
        let wf: WorkflowFn = Arc::new(move |ctx: WfContext, input: Option<Payloads>| {
            let f = f.clone();
            async move {
                let a: A = from_payloads(input.as_ref())?;
                let r = f(ctx, a).await?;
                Ok(Some(to_payloads(&r)?))
            }
            .boxed_local()
        });
        self.workflows.insert(workflow_type.into(), wf);
    }

    /// Registers an activity function under a type name.
    pub fn register_activity<A, R, F, Fut>(&mut self, activity_type: &str, f: F)
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(ActivityContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ApplicationError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let act: ActivityFn = Arc::new(move |ctx: ActivityContext, input: Option<Payloads>| {
            let decoded: Result<A, _> = from_payloads(input.as_ref());
            let f = f.clone();
            async move {
                let a = decoded.map_err(|e| ApplicationError::non_retryable(e.to_string(), "PayloadError"))?;
                let r = f(ctx, a).await?;
                to_payloads(&r).map(Some).map_err(|e| ApplicationError::non_retryable(e.to_string(), "PayloadError"))
            }
            .boxed()
        });
        self.activities.insert(activity_type.into(), act);
    }

    /// The workflow function of a type.
    pub(crate) fn workflow(&self, workflow_type: &str) -> Option<WorkflowFn> {
        self.workflows.get(workflow_type).cloned()
    }
}

/// Worker settings. The defaults are those of Temporal's SDKs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The task queue to poll.
    pub task_queue: String,
    /// Workflow tasks processed at once (polled and not yet answered).
    pub max_concurrent_workflow_tasks: usize,
    /// Activities run at once.
    pub max_concurrent_activities: usize,
    /// Workflow task long polls kept open at once (split between the normal and the sticky
    /// queue by [`WorkerOptions::nonsticky_to_sticky_poll_ratio`]).
    pub max_concurrent_workflow_task_polls: usize,
    /// Activity task long polls kept open at once.
    pub max_concurrent_activity_task_polls: usize,
    /// Runs whose workflow state the worker keeps between tasks, so that the next task of a run
    /// comes to this worker's sticky queue with only the new events and replays nothing (0
    /// turns the cache and the sticky queue off: every task then replays the whole history).
    pub max_cached_workflows: usize,
    /// The share of workflow polls on the normal queue; the others poll the sticky queue.
    pub nonsticky_to_sticky_poll_ratio: f32,
    /// How long the server keeps a run's task on this worker's sticky queue before giving it to
    /// the normal queue (for a worker that went away).
    pub sticky_queue_schedule_to_start_timeout: Duration,
    /// Never ask for activities to start with the workflow task's completion. By default an
    /// activity on the worker's own task queue is asked for eagerly when an activity slot is
    /// free (up to 3 per workflow task), sparing a poll round trip.
    pub disable_eager_activity_execution: bool,
    /// How long shutdown waits for in-flight tasks (activities are then canceled).
    pub graceful_shutdown_timeout: Duration,
    /// Called with each activity attempt just before it runs (tracing, metrics, tests).
    pub on_activity_attempt: AttemptHook,
}

/// The function behind an [`AttemptHook`].
pub type AttemptFn = dyn Fn(&ActivityContext) + Send + Sync;

/// A function called with each activity attempt before it runs (see
/// [`WorkerOptions::on_activity_attempt`]).
#[derive(Clone, Default)]
pub struct AttemptHook(pub Option<Arc<AttemptFn>>);

impl std::fmt::Debug for AttemptHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "AttemptHook(set)" } else { "AttemptHook(none)" })
    }
}

/// Activities asked for eagerly per workflow task at most (as Temporal's SDKs do).
const EAGER_ACTIVITIES_PER_TASK: usize = 3;

impl WorkerOptions {
    /// Defaults for a task queue.
    pub fn new(task_queue: impl Into<String>) -> WorkerOptions {
        WorkerOptions {
            task_queue: task_queue.into(),
            max_concurrent_workflow_tasks: 100,
            max_concurrent_activities: 100,
            max_concurrent_workflow_task_polls: 5,
            max_concurrent_activity_task_polls: 5,
            max_cached_workflows: 1000,
            nonsticky_to_sticky_poll_ratio: 0.2,
            sticky_queue_schedule_to_start_timeout: Duration::from_secs(10),
            disable_eager_activity_execution: false,
            graceful_shutdown_timeout: Duration::from_secs(10),
            on_activity_attempt: AttemptHook::default(),
        }
    }

    /// How many workflow polls go to the normal queue and how many to the sticky queue (none
    /// without a cache, or with a single poll).
    fn poll_split(&self) -> (usize, usize) {
        let total = self.max_concurrent_workflow_task_polls.max(1);
        if self.max_cached_workflows == 0 || total < 2 {
            return (total, 0);
        }
        let normal = ((total as f32 * self.nonsticky_to_sticky_poll_ratio).round() as usize).clamp(1, total - 1);
        (normal, total - normal)
    }
}

/// Facts about the running activity attempt.
#[derive(Clone, Debug, Default)]
pub struct ActivityInfo {
    /// Activity id.
    pub activity_id: String,
    /// Activity type.
    pub activity_type: String,
    /// The workflow that scheduled it.
    pub workflow_id: String,
    /// That workflow's run.
    pub run_id: String,
    /// Attempt (1-based).
    pub attempt: i32,
    /// Details of the last heartbeat of an earlier attempt.
    pub heartbeat_details: Option<Payloads>,
}

/// What activity code gets: its info, heartbeats, and cancellation.
#[derive(Clone)]
pub struct ActivityContext {
    info: ActivityInfo,
    client: Client,
    task_token: Vec<u8>,
    cancel_tx: Arc<watch::Sender<bool>>,
    cancel_rx: watch::Receiver<bool>,
}

impl ActivityContext {
    /// Facts about this attempt.
    pub fn info(&self) -> &ActivityInfo {
        &self.info
    }

    /// The server's token for this attempt (what completions and heartbeats carry).
    pub fn task_token(&self) -> &[u8] {
        &self.task_token
    }

    /// The client this worker polls with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The last heartbeat details of an earlier attempt, decoded.
    pub fn last_heartbeat_details<T: DeserializeOwned + 'static>(&self) -> Option<T> {
        self.info.heartbeat_details.as_ref().and_then(|d| from_payloads(Some(d)).ok())
    }

    /// Records a heartbeat with details. If the server says the activity is canceled (or no
    /// longer exists), the context becomes canceled.
    pub async fn heartbeat<T: Serialize + 'static>(&self, details: &T) {
        let req = ws::RecordActivityTaskHeartbeatRequest {
            task_token: self.task_token.clone(),
            details: to_payloads(details).ok(),
            identity: self.client.identity().into(),
            namespace: self.client.namespace().into(),
            ..Default::default()
        };
        let r = self
            .client
            .call(Route::Workflow(self.info.workflow_id.clone()), false, req, |mut c, r| async move {
                c.record_activity_task_heartbeat(r).await
            })
            .await;
        match r {
            Ok(resp) if resp.cancel_requested => {
                let _ = self.cancel_tx.send(true);
            }
            Err(Error::NotFound(_)) => {
                let _ = self.cancel_tx.send(true);
            }
            _ => {}
        }
    }

    /// Whether cancellation was requested (seen through a heartbeat, or worker shutdown).
    pub fn is_cancelled(&self) -> bool {
        *self.cancel_rx.borrow()
    }

    /// Resolves when cancellation is requested.
    pub async fn cancelled(&self) {
        let mut rx = self.cancel_rx.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// The error to return when giving up because of cancellation.
    pub fn cancelled_error(&self) -> ApplicationError {
        ApplicationError(Box::new(Failure::canceled("activity canceled")))
    }
}

/// Polls one task queue and runs registered workflows and activities.
pub struct Worker {
    client: Client,
    options: WorkerOptions,
    registry: Registry,
}

impl Worker {
    /// A worker on `options.task_queue`.
    pub fn new(client: Client, options: WorkerOptions) -> Worker {
        Worker { client, options, registry: Registry::default() }
    }

    /// Registers a workflow (see [`Registry::register_workflow`]).
    pub fn register_workflow<A, R, F, Fut>(&mut self, workflow_type: &str, f: F) -> &mut Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(WfContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = WfResult<R>> + 'static,
    {
        self.registry.register_workflow(workflow_type, f);
        self
    }

    /// Registers an activity (see [`Registry::register_activity`]).
    pub fn register_activity<A, R, F, Fut>(&mut self, activity_type: &str, f: F) -> &mut Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(ActivityContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, ApplicationError>> + Send + 'static,
    {
        self.registry.register_activity(activity_type, f);
        self
    }

    /// The registered code (for a [`crate::Replayer`]).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registered code, to register into with code shared with a [`crate::Replayer`].
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Polls and runs tasks until `shutdown` resolves, then stops polling and waits for in-flight
    /// tasks up to the graceful timeout (canceling activities still running after it).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let wf_sem = Arc::new(Semaphore::new(self.options.max_concurrent_workflow_tasks.max(1)));
        let act_sem = Arc::new(Semaphore::new(self.options.max_concurrent_activities.max(1)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (cancel_all_tx, cancel_all_rx) = watch::channel(false);
        let registry = Arc::new(self.registry.clone());
        let (normal_polls, sticky_polls) = self.options.poll_split();
        let sticky_queue = (sticky_polls > 0).then(|| {
            // From the client's seeded source: the simulator replays a seed exactly.
            let id = self.client.new_request_id();
            format!("{}:{}-sticky-{id}", self.client.identity(), self.options.task_queue)
        });
        let executor = cache::Executor::start(
            registry.clone(),
            self.client.namespace().to_string(),
            if sticky_queue.is_some() { self.options.max_cached_workflows } else { 0 },
        )
        .map_err(|e| {
            Error::Rpc(Box::new(tonic::Status::internal(format!("could not start the worker's workflow thread: {e}"))))
        })?;
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            registry: registry.clone(),
            executor,
            task_queue: self.options.task_queue.clone(),
            sticky_queue: sticky_queue.clone(),
            sticky_timeout: self.options.sticky_queue_schedule_to_start_timeout,
            eager: !self.options.disable_eager_activity_execution && !registry.activities.is_empty(),
            act_sem: act_sem.clone(),
            cancel_all: cancel_all_rx,
            hook: self.options.on_activity_attempt.clone(),
        });
        let mut pollers = Vec::new();
        if !registry.workflows.is_empty() {
            let sticky = sticky_queue.as_ref().map(|name| TaskQueue {
                name: name.clone(),
                kind: TaskQueueKind::Sticky as i32,
                normal_name: self.options.task_queue.clone(),
            });
            for (queue, n) in [(task_queue_of(&self.options.task_queue), normal_polls), (sticky, sticky_polls)] {
                for _ in 0..n {
                    pollers.push(tokio::spawn(poll_workflows(
                        shared.clone(),
                        queue.clone(),
                        wf_sem.clone(),
                        stop_rx.clone(),
                    )));
                }
            }
        }
        if !registry.activities.is_empty() {
            for _ in 0..self.options.max_concurrent_activity_task_polls.max(1) {
                pollers.push(tokio::spawn(poll_activities(shared.clone(), stop_rx.clone())));
            }
        }
        drop(shared);
        shutdown.await;
        tracing::info!(task_queue = %self.options.task_queue, "worker shutting down");
        let _ = stop_tx.send(true);
        for p in pollers {
            let _ = p.await;
        }
        let wf_n = self.options.max_concurrent_workflow_tasks.max(1) as u32;
        let act_n = self.options.max_concurrent_activities.max(1) as u32;
        let drained = async {
            let _a = wf_sem.acquire_many(wf_n).await;
            let _b = act_sem.acquire_many(act_n).await;
        };
        if tokio::time::timeout(self.options.graceful_shutdown_timeout, drained).await.is_err() {
            tracing::warn!("in-flight tasks did not finish within the graceful shutdown timeout; canceling activities");
            let _ = cancel_all_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), act_sem.acquire_many(act_n)).await;
        }
        Ok(())
    }
}

/// What every poller and task of a running worker shares.
struct Shared {
    client: Client,
    registry: Arc<Registry>,
    executor: cache::Executor,
    task_queue: String,
    /// This worker's sticky queue, when it caches runs.
    sticky_queue: Option<String>,
    sticky_timeout: Duration,
    /// Whether to ask for eager activities.
    eager: bool,
    act_sem: Arc<Semaphore>,
    cancel_all: watch::Receiver<bool>,
    hook: AttemptHook,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// One poller: takes a permit, long-polls, and runs each task it gets on its own task (which
/// holds the permit), until `stop`. `poll` answers `None` when the long poll came back empty.
async fn poll_loop<T, P, PF, H, HF>(
    kind: &'static str,
    sem: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    poll: P,
    handle: H,
) where
    P: Fn() -> PF,
    PF: Future<Output = Result<Option<T>, Error>>,
    H: Fn(T) -> HF,
    HF: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        let permit = tokio::select! {
            _ = stopped(stop.clone()) => return,
            p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let polled = tokio::select! {
            _ = stopped(stop.clone()) => return,
            r = poll() => r,
        };
        match polled {
            Ok(Some(task)) => {
                backoff = Duration::from_millis(100);
                let work = handle(task);
                tokio::spawn(async move {
                    work.await;
                    drop(permit);
                });
            }
            Ok(None) | Err(Error::TimedOut(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, kind, "task poll failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn task_queue_of(name: &str) -> Option<TaskQueue> {
    Some(TaskQueue { name: name.into(), kind: TaskQueueKind::Normal as i32, ..Default::default() })
}

async fn poll_workflows(
    shared: Arc<Shared>,
    queue: Option<TaskQueue>,
    sem: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) {
    let kind =
        if queue.as_ref().is_some_and(|q| q.kind == TaskQueueKind::Sticky as i32) { "sticky" } else { "workflow" };
    // Polls go straight to the node serving the queue (a sticky queue lives with its normal one).
    let route = Route::Queue { name: shared.task_queue.clone(), activity: false };
    let poll = || {
        let req = ws::PollWorkflowTaskQueueRequest {
            namespace: shared.client.namespace().into(),
            task_queue: queue.clone(),
            identity: shared.client.identity().into(),
            ..Default::default()
        };
        let client = shared.client.clone();
        let route = route.clone();
        async move {
            let t =
                client.call(route, true, req, |mut c, r| async move { c.poll_workflow_task_queue(r).await }).await?;
            Ok((!t.task_token.is_empty()).then_some(t))
        }
    };
    let handle = |task| {
        let shared = shared.clone();
        async move { handle_workflow_task(&shared, task).await }
    };
    poll_loop(kind, sem, stop, poll, handle).await;
}

/// The rest of a task's history: the pages after the task's first one.
async fn full_history(
    client: &Client,
    task: &mut ws::PollWorkflowTaskQueueResponse,
) -> Result<Vec<HistoryEvent>, Error> {
    let events = task.history.take().map(|h| h.events).unwrap_or_default();
    let token = std::mem::take(&mut task.next_page_token);
    let exec = task.workflow_execution.clone().unwrap_or_default();
    read_history(client, &exec, events, token).await
}

/// Reads history pages from `token` on (from the start if empty and `events` is empty).
async fn read_history(
    client: &Client,
    exec: &temporalio_protos::temporal::api::common::v1::WorkflowExecution,
    mut events: Vec<HistoryEvent>,
    mut token: Vec<u8>,
) -> Result<Vec<HistoryEvent>, Error> {
    // No events and no token: the whole history, from its first page.
    let mut more = events.is_empty() || !token.is_empty();
    while more {
        let req = ws::GetWorkflowExecutionHistoryRequest {
            namespace: client.namespace().into(),
            execution: Some(exec.clone()),
            next_page_token: token,
            ..Default::default()
        };
        let resp = client
            .call(Route::Workflow(exec.workflow_id.clone()), false, req, |mut c, r| async move {
                c.get_workflow_execution_history(r).await
            })
            .await?;
        events.extend(resp.history.map(|h| h.events).unwrap_or_default());
        token = resp.next_page_token;
        more = !token.is_empty();
    }
    Ok(events)
}

async fn handle_workflow_task(shared: &Shared, task: ws::PollWorkflowTaskQueueResponse) {
    use tracing::Instrument;
    let exec = task.workflow_execution.clone().unwrap_or_default();
    // Instrumented, never entered across an await: a guard held over awaits corrupts the span
    // stack of whatever else the thread polls meanwhile (tracing-subscriber then panicked with
    // "tried to clone a span that already closed", taking the poller down).
    let span = tracing::info_span!("workflow_task", namespace = shared.client.namespace(), workflow_id = %exec.workflow_id, run_id = %exec.run_id);
    run_workflow_task(shared, task, exec).instrument(span).await
}

async fn run_workflow_task(
    shared: &Shared,
    mut task: ws::PollWorkflowTaskQueueResponse,
    exec: temporalio_protos::temporal::api::common::v1::WorkflowExecution,
) {
    let client = &shared.client;
    let history = match full_history(client, &mut task).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "could not load the history; the task will time out and be retried");
            return;
        }
    };
    let task = Arc::new(task);
    let result = match shared.executor.run(task.clone(), history) {
        cache::Activation::Done(r) => r,
        // A sticky task whose run is no longer cached here: replay the whole history.
        cache::Activation::NeedFullHistory => {
            let whole = match read_history(client, &exec, Vec::new(), Vec::new()).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "could not load the whole history; the task will time out and be retried");
                    return;
                }
            };
            match shared.executor.run(task.clone(), whole) {
                cache::Activation::Done(r) => r,
                cache::Activation::NeedFullHistory => cache::WftResult::Failed(
                    WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure,
                    Failure::application("the whole history did not start at event 1", "WorkerError"),
                ),
            }
        }
    };
    let token = task.task_token.clone();
    let identity = client.identity().to_string();
    let namespace = client.namespace().to_string();
    let sent = match result {
        cache::WftResult::Completed(mut commands, messages, query_results) => {
            let reserved = if shared.eager { reserve_eager(shared, &mut commands) } else { Vec::new() };
            let sticky_attributes = shared.sticky_queue.as_ref().map(|name| StickyExecutionAttributes {
                worker_task_queue: Some(TaskQueue {
                    name: name.clone(),
                    kind: TaskQueueKind::Sticky as i32,
                    normal_name: shared.task_queue.clone(),
                }),
                schedule_to_start_timeout: prost_wkt_types::Duration::try_from(shared.sticky_timeout).ok(),
            });
            let req = ws::RespondWorkflowTaskCompletedRequest {
                task_token: token,
                commands,
                messages,
                identity,
                namespace,
                query_results,
                sticky_attributes,
                ..Default::default()
            };
            let r = client
                .call(Route::Workflow(exec.workflow_id.clone()), false, req, |mut c, r| async move {
                    c.respond_workflow_task_completed(r).await
                })
                .await;
            if let Ok(resp) = &r {
                run_eager(shared, resp.activity_tasks.clone(), reserved);
            }
            r.map(|_| ())
        }
        cache::WftResult::Failed(cause, failure) => {
            tracing::warn!(cause = cause.as_str_name(), %failure, "failing workflow task");
            let req = ws::RespondWorkflowTaskFailedRequest {
                task_token: token,
                cause: cause as i32,
                failure: Some(failure.to_proto()),
                identity,
                namespace,
                ..Default::default()
            };
            client
                .call(Route::Workflow(exec.workflow_id.clone()), false, req, |mut c, r| async move {
                    c.respond_workflow_task_failed(r).await
                })
                .await
                .map(|_| ())
        }
        cache::WftResult::Query(r) => {
            let (completed_type, query_result, error_message, failure) = match r {
                Ok(p) => (QueryResultType::Answered, Some(p), String::new(), None),
                Err(f) => (QueryResultType::Failed, None, f.message.clone(), Some(f.to_proto())),
            };
            let req = ws::RespondQueryTaskCompletedRequest {
                task_token: token,
                completed_type: completed_type as i32,
                query_result,
                error_message,
                namespace,
                failure,
                ..Default::default()
            };
            client
                .call(Route::Workflow(exec.workflow_id.clone()), false, req, |mut c, r| async move {
                    c.respond_query_task_completed(r).await
                })
                .await
                .map(|_| ())
        }
    };
    if let Err(e) = sent {
        // The cached state may be ahead of what the server recorded: replay from the server next.
        shared.executor.evict(&exec.run_id);
        tracing::warn!(error = %e, "could not answer the workflow task (it will time out and be retried)");
    }
}

/// Asks for the first activities of the worker's own task queue to start eagerly, each holding
/// a free activity slot.
fn reserve_eager(
    shared: &Shared,
    commands: &mut [temporalio_protos::temporal::api::command::v1::Command],
) -> Vec<tokio::sync::OwnedSemaphorePermit> {
    use temporalio_protos::temporal::api::command::v1::command::Attributes;
    let mut reserved = Vec::new();
    for c in commands.iter_mut() {
        if reserved.len() >= EAGER_ACTIVITIES_PER_TASK {
            break;
        }
        let Some(Attributes::ScheduleActivityTaskCommandAttributes(a)) = c.attributes.as_mut() else { continue };
        let own_queue = a.task_queue.as_ref().is_none_or(|q| q.name.is_empty() || q.name == shared.task_queue);
        let known = a.activity_type.as_ref().is_some_and(|t| shared.registry.activities.contains_key(&t.name));
        if !own_queue || !known {
            continue;
        }
        let Ok(permit) = shared.act_sem.clone().try_acquire_owned() else { break };
        a.request_eager_execution = true;
        reserved.push(permit);
    }
    reserved
}

/// Runs the activities the server started with the completion, each on a reserved slot; slots
/// left over are freed.
fn run_eager(
    shared: &Shared,
    tasks: Vec<ws::PollActivityTaskQueueResponse>,
    mut reserved: Vec<tokio::sync::OwnedSemaphorePermit>,
) {
    for task in tasks {
        let permit = reserved.pop();
        let (client, registry, cancel_all, hook) =
            (shared.client.clone(), shared.registry.clone(), shared.cancel_all.clone(), shared.hook.clone());
        tokio::spawn(async move {
            run_activity(&client, &registry, task, cancel_all, &hook).await;
            drop(permit);
        });
    }
}

async fn poll_activities(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let poll = || {
        let req = ws::PollActivityTaskQueueRequest {
            namespace: shared.client.namespace().into(),
            task_queue: task_queue_of(&shared.task_queue),
            identity: shared.client.identity().into(),
            ..Default::default()
        };
        let client = shared.client.clone();
        let route = Route::Queue { name: shared.task_queue.clone(), activity: true };
        async move {
            let t =
                client.call(route, true, req, |mut c, r| async move { c.poll_activity_task_queue(r).await }).await?;
            Ok((!t.task_token.is_empty()).then_some(t))
        }
    };
    let handle = |task| {
        let shared = shared.clone();
        async move { run_activity(&shared.client, &shared.registry, task, shared.cancel_all.clone(), &shared.hook).await }
    };
    poll_loop("activity", shared.act_sem.clone(), stop, poll, handle).await;
}

async fn run_activity(
    client: &Client,
    registry: &Registry,
    task: ws::PollActivityTaskQueueResponse,
    mut cancel_all: watch::Receiver<bool>,
    hook: &AttemptHook,
) {
    let activity_type = task.activity_type.as_ref().map(|t| t.name.clone()).unwrap_or_default();
    let exec = task.workflow_execution.clone().unwrap_or_default();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let cancel_tx = Arc::new(cancel_tx);
    let ctx = ActivityContext {
        info: ActivityInfo {
            activity_id: task.activity_id.clone(),
            activity_type: activity_type.clone(),
            workflow_id: exec.workflow_id.clone(),
            run_id: exec.run_id.clone(),
            attempt: task.attempt,
            heartbeat_details: task.heartbeat_details.clone(),
        },
        client: client.clone(),
        task_token: task.task_token.clone(),
        cancel_tx: cancel_tx.clone(),
        cancel_rx,
    };
    if let Some(hook) = &hook.0 {
        hook(&ctx);
    }
    let result = match registry.activities.get(&activity_type) {
        Some(f) => {
            let mut fut = std::pin::pin!(AssertUnwindSafe(f(ctx, task.input.clone())).catch_unwind());
            // A shutdown past its grace period cancels the activity, which then finishes its way.
            let done = tokio::select! {
                r = &mut fut => r,
                _ = async { let _ = cancel_all.wait_for(|c| *c).await; } => {
                    let _ = cancel_tx.send(true);
                    fut.await
                }
            };
            done.unwrap_or_else(|_| Err(ApplicationError::new(format!("activity {activity_type} panicked"), "Panic")))
        }
        None => {
            let mut known: Vec<&String> = registry.activities.keys().collect();
            known.sort();
            Err(ApplicationError::new(
                format!("activity type {activity_type:?} is not registered on this worker (registered: {known:?})"),
                "NotFoundError",
            ))
        }
    };
    let identity = client.identity().to_string();
    let namespace = client.namespace().to_string();
    let token = task.task_token;
    let sent = match result {
        Ok(payloads) => {
            let req = ws::RespondActivityTaskCompletedRequest {
                task_token: token,
                result: payloads,
                identity,
                namespace,
                ..Default::default()
            };
            client
                .call(Route::Workflow(exec.workflow_id.clone()), false, req, |mut c, r| async move {
                    c.respond_activity_task_completed(r).await
                })
                .await
                .map(|_| ())
        }
        Err(ApplicationError(f)) if matches!(f.kind, FailureKind::Canceled { .. }) => {
            let details = match &f.kind {
                FailureKind::Canceled { details } => details.clone(),
                _ => None,
            };
            let req = ws::RespondActivityTaskCanceledRequest {
                task_token: token,
                details,
                identity,
                namespace,
                ..Default::default()
            };
            client
                .call(Route::Workflow(exec.workflow_id.clone()), false, req, |mut c, r| async move {
                    c.respond_activity_task_canceled(r).await
                })
                .await
                .map(|_| ())
        }
        Err(ApplicationError(f)) => {
            let req = ws::RespondActivityTaskFailedRequest {
                task_token: token,
                failure: Some(f.to_proto()),
                identity,
                namespace,
                ..Default::default()
            };
            client
                .call(Route::Workflow(exec.workflow_id.clone()), false, req, |mut c, r| async move {
                    c.respond_activity_task_failed(r).await
                })
                .await
                .map(|_| ())
        }
    };
    match sent {
        Ok(()) | Err(Error::NotFound(_)) => {}
        Err(e) => tracing::warn!(error = %e, activity_type, "could not report the activity result"),
    }
}
