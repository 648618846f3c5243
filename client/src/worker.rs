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
use temporalio_protos::temporal::api::query::v1::WorkflowQueryResult;
use temporalio_protos::temporal::api::taskqueue::v1::TaskQueue;
use temporalio_protos::temporal::api::workflowservice::v1 as ws;
use tokio::sync::{watch, Semaphore};

use crate::client::{Client, Route};
use crate::error::Error;
use crate::failure::{ApplicationError, Failure, FailureKind};
use crate::payload::{from_payloads, to_payloads};
use crate::workflow::machine::WorkflowFn;
use crate::workflow::{WfContext, WfResult, WorkflowMachine};

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

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The task queue to poll.
    pub task_queue: String,
    /// Workflow tasks processed at once.
    pub max_concurrent_workflow_tasks: usize,
    /// Activities run at once.
    pub max_concurrent_activities: usize,
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

impl WorkerOptions {
    /// Defaults for a task queue.
    pub fn new(task_queue: impl Into<String>) -> WorkerOptions {
        WorkerOptions {
            task_queue: task_queue.into(),
            max_concurrent_workflow_tasks: 8,
            max_concurrent_activities: 32,
            graceful_shutdown_timeout: Duration::from_secs(10),
            on_activity_attempt: AttemptHook::default(),
        }
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
            .call(Route::Any, false, req, |mut c, r| async move { c.record_activity_task_heartbeat(r).await })
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
        let mut pollers = Vec::new();
        if !registry.workflows.is_empty() {
            pollers.push(tokio::spawn(poll_workflows(
                self.client.clone(),
                self.options.task_queue.clone(),
                registry.clone(),
                wf_sem.clone(),
                stop_rx.clone(),
            )));
        }
        if !registry.activities.is_empty() {
            pollers.push(tokio::spawn(poll_activities(
                self.client.clone(),
                self.options.task_queue.clone(),
                registry.clone(),
                act_sem.clone(),
                stop_rx.clone(),
                cancel_all_rx,
                self.options.on_activity_attempt.clone(),
            )));
        }
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
    client: Client,
    task_queue: String,
    registry: Arc<Registry>,
    sem: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
) {
    let poll = || {
        let req = ws::PollWorkflowTaskQueueRequest {
            namespace: client.namespace().into(),
            task_queue: task_queue_of(&task_queue),
            identity: client.identity().into(),
            ..Default::default()
        };
        let client = client.clone();
        async move {
            let t = client
                .call(Route::Any, true, req, |mut c, r| async move { c.poll_workflow_task_queue(r).await })
                .await?;
            Ok((!t.task_token.is_empty()).then_some(t))
        }
    };
    let handle = |task| {
        let (client, registry) = (client.clone(), registry.clone());
        async move { handle_workflow_task(&client, &registry, task).await }
    };
    poll_loop("workflow", sem, stop, poll, handle).await;
}

enum WftResult {
    Completed(
        Vec<temporalio_protos::temporal::api::command::v1::Command>,
        Vec<temporalio_protos::temporal::api::protocol::v1::Message>,
        HashMap<String, WorkflowQueryResult>,
    ),
    Failed(WorkflowTaskFailedCause, Failure),
    Query(Result<Payloads, Failure>),
}

/// Runs a workflow task synchronously (the workflow's futures never cross an await).
fn run_workflow_task(
    registry: &Registry,
    namespace: &str,
    task: &ws::PollWorkflowTaskQueueResponse,
    history: &[HistoryEvent],
) -> WftResult {
    let wf_type = task.workflow_type.as_ref().map(|t| t.name.clone()).unwrap_or_default();
    let exec = task.workflow_execution.clone().unwrap_or_default();
    let Some(f) = registry.workflow(&wf_type) else {
        let mut known: Vec<&String> = registry.workflows.keys().collect();
        known.sort();
        return WftResult::Failed(
            WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure,
            Failure::application(
                format!("workflow type {wf_type:?} is not registered on this worker (registered: {known:?})"),
                "NotFoundError",
            ),
        );
    };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut m = WorkflowMachine::new(f, namespace, &exec.workflow_id, &exec.run_id);
        if let Some(q) = &task.query {
            return match m.run(history, false) {
                Ok(_) => WftResult::Query(m.query(&q.query_type, q.query_args.clone())),
                Err(nd) => WftResult::Query(Err(Failure::application(nd.to_string(), "NondeterminismError"))),
            };
        }
        match m.run_with_messages(history, true, &task.messages) {
            Ok(out) => {
                let mut answers = HashMap::new();
                for (id, q) in &task.queries {
                    let r = m.query(&q.query_type, q.query_args.clone());
                    answers.insert(id.clone(), query_result(r));
                }
                WftResult::Completed(out.commands, out.messages, answers)
            }
            Err(nd) => WftResult::Failed(
                WorkflowTaskFailedCause::NonDeterministicError,
                Failure::application(nd.to_string(), "NondeterminismError"),
            ),
        }
    }));
    match outcome {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "workflow code panicked".into());
            WftResult::Failed(
                WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure,
                Failure::application(format!("workflow code panicked: {msg}"), "Panic"),
            )
        }
    }
}

fn query_result(r: Result<Payloads, Failure>) -> WorkflowQueryResult {
    match r {
        Ok(p) => {
            WorkflowQueryResult { result_type: QueryResultType::Answered as i32, answer: Some(p), ..Default::default() }
        }
        Err(f) => WorkflowQueryResult {
            result_type: QueryResultType::Failed as i32,
            error_message: f.message.clone(),
            failure: Some(f.to_proto()),
            ..Default::default()
        },
    }
}

async fn full_history(client: &Client, task: &ws::PollWorkflowTaskQueueResponse) -> Result<Vec<HistoryEvent>, Error> {
    let mut events = task.history.clone().map(|h| h.events).unwrap_or_default();
    let mut token = task.next_page_token.clone();
    let exec = task.workflow_execution.clone().unwrap_or_default();
    while !token.is_empty() {
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
    }
    Ok(events)
}

async fn handle_workflow_task(client: &Client, registry: &Registry, task: ws::PollWorkflowTaskQueueResponse) {
    let exec = task.workflow_execution.clone().unwrap_or_default();
    let span = tracing::info_span!("workflow_task", namespace = client.namespace(), workflow_id = %exec.workflow_id, run_id = %exec.run_id);
    let _g = span.enter();
    let history = match full_history(client, &task).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "could not load the history; the task will time out and be retried");
            return;
        }
    };
    let token = task.task_token.clone();
    let result = run_workflow_task(registry, client.namespace(), &task, &history);
    let identity = client.identity().to_string();
    let namespace = client.namespace().to_string();
    let sent = match result {
        WftResult::Completed(commands, messages, query_results) => {
            let req = ws::RespondWorkflowTaskCompletedRequest {
                task_token: token,
                commands,
                messages,
                identity,
                namespace,
                query_results,
                ..Default::default()
            };
            client
                .call(Route::Any, false, req, |mut c, r| async move { c.respond_workflow_task_completed(r).await })
                .await
                .map(|_| ())
        }
        WftResult::Failed(cause, failure) => {
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
                .call(Route::Any, false, req, |mut c, r| async move { c.respond_workflow_task_failed(r).await })
                .await
                .map(|_| ())
        }
        WftResult::Query(r) => {
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
                .call(Route::Any, false, req, |mut c, r| async move { c.respond_query_task_completed(r).await })
                .await
                .map(|_| ())
        }
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not answer the workflow task (it will time out and be retried)");
    }
}

async fn poll_activities(
    client: Client,
    task_queue: String,
    registry: Arc<Registry>,
    sem: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    cancel_all: watch::Receiver<bool>,
    hook: AttemptHook,
) {
    let poll = || {
        let req = ws::PollActivityTaskQueueRequest {
            namespace: client.namespace().into(),
            task_queue: task_queue_of(&task_queue),
            identity: client.identity().into(),
            ..Default::default()
        };
        let client = client.clone();
        async move {
            let t = client
                .call(Route::Any, true, req, |mut c, r| async move { c.poll_activity_task_queue(r).await })
                .await?;
            Ok((!t.task_token.is_empty()).then_some(t))
        }
    };
    let handle = |task| {
        let (client, registry, cancel_all, hook) = (client.clone(), registry.clone(), cancel_all.clone(), hook.clone());
        async move { run_activity(&client, &registry, task, cancel_all, &hook).await }
    };
    poll_loop("activity", sem, stop, poll, handle).await;
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
                .call(Route::Any, false, req, |mut c, r| async move { c.respond_activity_task_completed(r).await })
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
                .call(Route::Any, false, req, |mut c, r| async move { c.respond_activity_task_canceled(r).await })
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
                .call(Route::Any, false, req, |mut c, r| async move { c.respond_activity_task_failed(r).await })
                .await
                .map(|_| ())
        }
    };
    match sent {
        Ok(()) | Err(Error::NotFound(_)) => {}
        Err(e) => tracing::warn!(error = %e, activity_type, "could not report the activity result"),
    }
}
