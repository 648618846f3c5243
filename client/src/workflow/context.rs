//! What workflow code calls: [`WfContext`] and the futures it hands out.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use temporalio_protos::temporal::api::command::v1::{command, Command};
use temporalio_protos::temporal::api::command::v1::{
    CancelTimerCommandAttributes, ContinueAsNewWorkflowExecutionCommandAttributes, RecordMarkerCommandAttributes,
    RequestCancelActivityTaskCommandAttributes, ScheduleActivityTaskCommandAttributes,
    SignalExternalWorkflowExecutionCommandAttributes, StartChildWorkflowExecutionCommandAttributes,
    StartTimerCommandAttributes, UpsertWorkflowSearchAttributesCommandAttributes,
};
use temporalio_protos::temporal::api::common::v1::{
    ActivityType, Payload, Payloads, SearchAttributes, WorkflowExecution, WorkflowType,
};
use temporalio_protos::temporal::api::enums::v1::{
    CommandType, ParentClosePolicy, TaskQueueKind, WorkflowIdReusePolicy,
};
use temporalio_protos::temporal::api::taskqueue::v1::TaskQueue;

use super::machine::{Slot, State};
use super::{WfError, WfResult};
use crate::client::{duration, RetryPolicy};
use crate::failure::Failure;
use crate::payload::{from_payload, from_payloads, to_payloads};

/// Facts about the running workflow.
#[derive(Clone, Debug, Default)]
pub struct WorkflowInfo {
    /// Namespace.
    pub namespace: String,
    /// Workflow id.
    pub workflow_id: String,
    /// This run.
    pub run_id: String,
    /// The first run of the chain (continue-as-new, retries).
    pub first_execution_run_id: String,
    /// Workflow type.
    pub workflow_type: String,
    /// Task queue.
    pub task_queue: String,
    /// Attempt (1-based; > 1 under a workflow retry policy).
    pub attempt: i32,
    /// The parent, for child workflows.
    pub parent: Option<WorkflowExecution>,
    /// When the run started.
    pub start_time: Option<SystemTime>,
}

/// A cancellation flag with parents: canceled when it or any ancestor is.
#[derive(Clone)]
pub struct CancelToken {
    inner: Rc<TokenInner>,
}

struct TokenInner {
    canceled: Cell<bool>,
    parent: Option<CancelToken>,
    progress: Rc<Cell<u64>>,
}

impl CancelToken {
    pub(crate) fn root(progress: Rc<Cell<u64>>) -> CancelToken {
        CancelToken { inner: Rc::new(TokenInner { canceled: Cell::new(false), parent: None, progress }) }
    }

    /// A token canceled with this one, or on its own.
    pub fn child(&self) -> CancelToken {
        CancelToken {
            inner: Rc::new(TokenInner {
                canceled: Cell::new(false),
                parent: Some(self.clone()),
                progress: self.inner.progress.clone(),
            }),
        }
    }

    /// Cancels this token and its children.
    pub fn cancel(&self) {
        if !self.inner.canceled.replace(true) {
            self.inner.progress.set(self.inner.progress.get() + 1);
        }
    }

    /// Whether this token or an ancestor is canceled.
    pub fn is_canceled(&self) -> bool {
        self.inner.canceled.get() || self.inner.parent.as_ref().is_some_and(|p| p.is_canceled())
    }
}

/// Options of one activity call.
#[derive(Clone, Debug, Default)]
pub struct ActivityOptions {
    /// The activity id (default: a sequence number, unique in the run).
    pub activity_id: Option<String>,
    /// Task queue (default: the workflow's).
    pub task_queue: Option<String>,
    /// Limit from scheduling to the final result, retries included.
    pub schedule_to_close_timeout: Option<Duration>,
    /// Limit from scheduling to a worker picking it up.
    pub schedule_to_start_timeout: Option<Duration>,
    /// Limit of one attempt.
    pub start_to_close_timeout: Option<Duration>,
    /// Longest gap between heartbeats.
    pub heartbeat_timeout: Option<Duration>,
    /// Retry policy (server default: unlimited attempts with backoff).
    pub retry_policy: Option<RetryPolicy>,
}

impl ActivityOptions {
    /// Options with only a start-to-close timeout.
    pub fn start_to_close(timeout: Duration) -> ActivityOptions {
        ActivityOptions { start_to_close_timeout: Some(timeout), ..Default::default() }
    }

    /// With this retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> ActivityOptions {
        self.retry_policy = Some(policy);
        self
    }

    /// With this heartbeat timeout.
    pub fn heartbeat(mut self, timeout: Duration) -> ActivityOptions {
        self.heartbeat_timeout = Some(timeout);
        self
    }
}

/// Options of one child workflow.
#[derive(Clone, Debug, Default)]
pub struct ChildOptions {
    /// Workflow id (default: `<parent run id>-child-<n>`, the same on every replay).
    pub workflow_id: Option<String>,
    /// Task queue (default: the parent's).
    pub task_queue: Option<String>,
    /// Limit of the child's whole execution.
    pub execution_timeout: Option<Duration>,
    /// Limit of one run of the child.
    pub run_timeout: Option<Duration>,
    /// What happens to the child when the parent closes (default: terminate).
    pub parent_close_policy: ParentClosePolicy,
    /// Retry policy of the child.
    pub retry_policy: Option<RetryPolicy>,
}

/// The handle workflow code gets: every effect goes through it.
#[derive(Clone)]
pub struct WfContext {
    pub(crate) state: Rc<RefCell<State>>,
    pub(crate) progress: Rc<Cell<u64>>,
    pub(crate) token: CancelToken,
}

impl WfContext {
    fn bump(&self) {
        self.progress.set(self.progress.get() + 1);
    }

    fn push(&self, command_type: CommandType, attributes: command::Attributes) {
        self.state.borrow_mut().commands.push(Command {
            command_type: command_type as i32,
            attributes: Some(attributes),
            ..Default::default()
        });
        self.bump();
    }

    /// Facts about this run.
    pub fn info(&self) -> WorkflowInfo {
        self.state.borrow().info.clone()
    }

    /// The workflow's clock: the time of the current workflow task, the same on every replay.
    pub fn now(&self) -> SystemTime {
        self.state.borrow().now
    }

    /// Whether the code is running again over recorded history (logging can skip duplicates).
    pub fn is_replaying(&self) -> bool {
        self.state.borrow().replaying
    }

    /// A deterministic random number (seeded by the run; the same on every replay).
    pub fn random(&self) -> u64 {
        self.state.borrow_mut().rng.gen()
    }

    /// A deterministic UUID (v4 layout).
    pub fn uuid(&self) -> String {
        let b: [u8; 16] = self.state.borrow_mut().rng.gen();
        crate::client::uuid_string(b)
    }

    /// Whether this context's scope (or the whole workflow) was canceled.
    pub fn is_canceled(&self) -> bool {
        self.token.is_canceled()
    }

    /// Whether the workflow was asked to cancel.
    pub fn is_cancel_requested(&self) -> bool {
        self.state.borrow().cancel_requested
    }

    /// Resolves when this scope is canceled.
    pub fn cancelled(&self) -> impl Future<Output = ()> + 'static {
        let token = self.token.clone();
        futures::future::poll_fn(move |_| if token.is_canceled() { Poll::Ready(()) } else { Poll::Pending })
    }

    /// A child scope: what is started through it is canceled by [`WfContext::cancel`] on it, or
    /// when this scope is canceled.
    pub fn scope(&self) -> WfContext {
        WfContext { state: self.state.clone(), progress: self.progress.clone(), token: self.token.child() }
    }

    /// Cancels this scope: its pending activities, timers and waits end with `WfError::Canceled`.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// This scope's token.
    pub fn cancel_token(&self) -> CancelToken {
        self.token.clone()
    }

    /// Schedules an activity with one argument and waits for its result.
    pub fn activity<A: Serialize + 'static, R: DeserializeOwned + 'static>(
        &self,
        activity_type: &str,
        arg: &A,
        options: ActivityOptions,
    ) -> ActivityFuture<R> {
        let input = to_payloads(arg);
        let id = {
            let mut st = self.state.borrow_mut();
            st.next_activity += 1;
            options.activity_id.clone().unwrap_or_else(|| st.next_activity.to_string())
        };
        let input = match input {
            Ok(i) => i,
            Err(e) => return ActivityFuture::failed(self, id, e.into()),
        };
        let task_queue = options.task_queue.clone().unwrap_or_else(|| self.state.borrow().info.task_queue.clone());
        let attrs = ScheduleActivityTaskCommandAttributes {
            activity_id: id.clone(),
            activity_type: Some(ActivityType { name: activity_type.into() }),
            task_queue: Some(TaskQueue { name: task_queue, kind: TaskQueueKind::Normal as i32, ..Default::default() }),
            input: Some(input),
            schedule_to_close_timeout: options.schedule_to_close_timeout.map(duration),
            schedule_to_start_timeout: options.schedule_to_start_timeout.map(duration),
            start_to_close_timeout: options.start_to_close_timeout.map(duration),
            heartbeat_timeout: options.heartbeat_timeout.map(duration),
            retry_policy: options.retry_policy.as_ref().map(RetryPolicy::to_proto),
            ..Default::default()
        };
        self.state.borrow_mut().activities.insert(id.clone(), Slot::Pending);
        self.push(CommandType::ScheduleActivityTask, command::Attributes::ScheduleActivityTaskCommandAttributes(attrs));
        ActivityFuture { ctx: self.clone(), id, cancel_sent: false, _t: PhantomData }
    }

    /// Waits for `d` of workflow time (a durable server timer).
    pub fn sleep(&self, d: Duration) -> TimerFuture {
        let id = {
            let mut st = self.state.borrow_mut();
            st.next_timer += 1;
            st.next_timer.to_string()
        };
        self.state.borrow_mut().timers.insert(id.clone(), Slot::Pending);
        self.push(
            CommandType::StartTimer,
            command::Attributes::StartTimerCommandAttributes(StartTimerCommandAttributes {
                timer_id: id.clone(),
                start_to_fire_timeout: Some(duration(d.max(Duration::from_millis(1)))),
            }),
        );
        TimerFuture { ctx: self.clone(), id, done: false }
    }

    /// The signals named `name`, in arrival order (buffered from the start of the run).
    pub fn signal_channel<T: DeserializeOwned + 'static>(&self, name: &str) -> SignalChannel<T> {
        SignalChannel { ctx: self.clone(), name: name.into(), _t: PhantomData }
    }

    /// Answers queries named `name` with `handler(arg)`. Handlers read workflow state; they must
    /// not change it.
    pub fn query_handler<A, R, F>(&self, name: &str, handler: F)
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(A) -> R + 'static,
    {
        let f = move |args: Option<Payloads>| -> Result<Payloads, Failure> {
            let a: A = from_payloads(args.as_ref()).map_err(|e| Failure::application(e.to_string(), "PayloadError"))?;
            to_payloads(&handler(a)).map_err(|e| Failure::application(e.to_string(), "PayloadError"))
        };
        self.state.borrow_mut().queries.insert(name.into(), Box::new(f));
    }

    /// Handles updates named `name`: `handler(ctx, arg)` runs as its own task in the workflow
    /// (it may await activities and timers) and its result is the update's result.
    pub fn update_handler<A, R, F, Fut>(&self, name: &str, handler: F)
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(WfContext, A) -> Fut + 'static,
        Fut: Future<Output = WfResult<R>> + 'static,
    {
        self.register_update(name, None, handler);
    }

    /// Like [`WfContext::update_handler`], with a validator that runs first and may reject the
    /// update (a rejection leaves no trace in history). Validators must not change state.
    pub fn update_handler_with_validator<A, R, V, F, Fut>(&self, name: &str, validator: V, handler: F)
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        V: Fn(&A) -> Result<(), crate::failure::ApplicationError> + 'static,
        F: Fn(WfContext, A) -> Fut + 'static,
        Fut: Future<Output = WfResult<R>> + 'static,
    {
        let v: super::machine::ValidatorFn = Rc::new(move |args: Option<&Payloads>| {
            let a: A = from_payloads(args).map_err(|e| Failure::application(e.to_string(), "PayloadError"))?;
            validator(&a).map_err(|e| *e.0)
        });
        self.register_update(name, Some(v), handler);
    }

    fn register_update<A, R, F, Fut>(&self, name: &str, validator: Option<super::machine::ValidatorFn>, handler: F)
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(WfContext, A) -> Fut + 'static,
        Fut: Future<Output = WfResult<R>> + 'static,
    {
        let handler = Rc::new(handler);
        let h: super::machine::UpdateFn = Rc::new(move |ctx: WfContext, args: Option<Payloads>| {
            let handler = handler.clone();
            async move {
                let a: A = from_payloads(args.as_ref())?;
                let r = handler(ctx, a).await?;
                Ok(Some(to_payloads(&r)?))
            }
            .boxed_local()
        });
        self.state
            .borrow_mut()
            .update_handlers
            .insert(name.into(), super::machine::UpdateHandler { handler: h, validator });
    }

    /// Runs `f` once and records its value; replays read the record instead of running it.
    pub fn side_effect<T, F>(&self, f: F) -> WfResult<T>
    where
        T: Serialize + DeserializeOwned + 'static,
        F: FnOnce() -> T,
    {
        let (seq, recorded) = {
            let mut st = self.state.borrow_mut();
            st.next_side_effect += 1;
            let seq = st.next_side_effect;
            (seq, if st.replaying { st.side_effects.get(&seq).cloned() } else { None })
        };
        let value = match recorded {
            Some(p) => from_payloads::<T>(p.as_ref())?,
            None => f(),
        };
        let mut details = HashMap::new();
        details.insert("id".to_string(), to_payloads(&seq)?);
        details.insert("data".to_string(), to_payloads(&value)?);
        self.push(
            CommandType::RecordMarker,
            command::Attributes::RecordMarkerCommandAttributes(RecordMarkerCommandAttributes {
                marker_name: super::machine::SIDE_EFFECT_MARKER.into(),
                details,
                ..Default::default()
            }),
        );
        Ok(value)
    }

    /// A gate for changing workflow code safely: true for runs that reach this point with the
    /// new code (and from then on), false for runs whose history was made by the old code.
    pub fn patched(&self, patch_id: &str) -> bool {
        let (decided, take) = {
            let st = self.state.borrow();
            match st.patches_taken.get(patch_id) {
                Some(v) => (true, *v),
                None => (false, !st.replaying || st.patches_in_history.contains(patch_id)),
            }
        };
        if decided {
            return take;
        }
        self.state.borrow_mut().patches_taken.insert(patch_id.into(), take);
        if take {
            let mut details = HashMap::new();
            if let Ok(p) = to_payloads(&patch_id.to_string()) {
                details.insert("patch_id".to_string(), p);
            }
            self.push(
                CommandType::RecordMarker,
                command::Attributes::RecordMarkerCommandAttributes(RecordMarkerCommandAttributes {
                    marker_name: super::machine::PATCH_MARKER.into(),
                    details,
                    ..Default::default()
                }),
            );
        }
        take
    }

    /// Starts a child workflow with one argument and waits for its result.
    #[allow(deprecated)] // `namespace` is deprecated upstream but servers still read it.
    pub fn child_workflow<A: Serialize + 'static, R: DeserializeOwned + 'static>(
        &self,
        workflow_type: &str,
        arg: &A,
        options: ChildOptions,
    ) -> ChildFuture<R> {
        let (id, tq, ns) = {
            let mut st = self.state.borrow_mut();
            st.next_child += 1;
            let id =
                options.workflow_id.clone().unwrap_or_else(|| format!("{}-child-{}", st.info.run_id, st.next_child));
            (id, options.task_queue.clone().unwrap_or_else(|| st.info.task_queue.clone()), st.info.namespace.clone())
        };
        let input = match to_payloads(arg) {
            Ok(i) => i,
            Err(e) => {
                self.state.borrow_mut().children.insert(id.clone(), Slot::Ready(Err(e.into())));
                return ChildFuture { ctx: self.clone(), id, _t: PhantomData };
            }
        };
        let attrs = StartChildWorkflowExecutionCommandAttributes {
            namespace: ns,
            workflow_id: id.clone(),
            workflow_type: Some(WorkflowType { name: workflow_type.into() }),
            task_queue: Some(TaskQueue { name: tq, kind: TaskQueueKind::Normal as i32, ..Default::default() }),
            input: Some(input),
            workflow_execution_timeout: options.execution_timeout.map(duration),
            workflow_run_timeout: options.run_timeout.map(duration),
            parent_close_policy: options.parent_close_policy as i32,
            workflow_id_reuse_policy: WorkflowIdReusePolicy::AllowDuplicate as i32,
            retry_policy: options.retry_policy.as_ref().map(RetryPolicy::to_proto),
            ..Default::default()
        };
        self.state.borrow_mut().children.insert(id.clone(), Slot::Pending);
        self.push(
            CommandType::StartChildWorkflowExecution,
            command::Attributes::StartChildWorkflowExecutionCommandAttributes(attrs),
        );
        ChildFuture { ctx: self.clone(), id, _t: PhantomData }
    }

    /// Signals another workflow; resolves once the server delivered it (or failed to).
    #[allow(deprecated)] // `control` carries the signal's sequence number back in the result events.
    pub fn signal_external<A: Serialize + 'static>(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        signal: &str,
        arg: &A,
    ) -> impl Future<Output = WfResult<()>> + 'static {
        let seq = {
            let mut st = self.state.borrow_mut();
            st.next_external += 1;
            st.next_external.to_string()
        };
        let input = to_payloads(arg);
        let ctx = self.clone();
        match input {
            Ok(input) => {
                let ns = self.state.borrow().info.namespace.clone();
                self.state.borrow_mut().externals.insert(seq.clone(), Slot::Pending);
                self.push(
                    CommandType::SignalExternalWorkflowExecution,
                    command::Attributes::SignalExternalWorkflowExecutionCommandAttributes(
                        SignalExternalWorkflowExecutionCommandAttributes {
                            namespace: ns,
                            execution: Some(WorkflowExecution {
                                workflow_id: workflow_id.into(),
                                run_id: run_id.unwrap_or_default().into(),
                            }),
                            signal_name: signal.into(),
                            input: Some(input),
                            control: seq.clone(),
                            ..Default::default()
                        },
                    ),
                );
            }
            Err(e) => {
                self.state.borrow_mut().externals.insert(seq.clone(), Slot::Ready(Err(e.into())));
            }
        }
        futures::future::poll_fn(move |_| {
            let mut st = ctx.state.borrow_mut();
            match st.externals.get_mut(&seq).map(Slot::take) {
                Some(Some(r)) => {
                    drop(st);
                    ctx.bump();
                    Poll::Ready(r.map(|_| ()))
                }
                _ => Poll::Pending,
            }
        })
    }

    /// Replaces search attributes of this run.
    pub fn upsert_search_attributes(&self, attributes: HashMap<String, Payload>) {
        self.push(
            CommandType::UpsertWorkflowSearchAttributes,
            command::Attributes::UpsertWorkflowSearchAttributesCommandAttributes(
                UpsertWorkflowSearchAttributesCommandAttributes {
                    search_attributes: Some(SearchAttributes { indexed_fields: attributes }),
                },
            ),
        );
    }

    /// The error that ends this run and starts the next one with `arg`: `return Err(ctx.continue_as_new(&x))`.
    pub fn continue_as_new<A: Serialize + 'static>(&self, arg: &A) -> WfError {
        let input = match to_payloads(arg) {
            Ok(i) => i,
            Err(e) => return e.into(),
        };
        let info = self.info();
        WfError::ContinueAsNew(Box::new(ContinueAsNewWorkflowExecutionCommandAttributes {
            workflow_type: Some(WorkflowType { name: info.workflow_type }),
            task_queue: Some(TaskQueue {
                name: info.task_queue,
                kind: TaskQueueKind::Normal as i32,
                ..Default::default()
            }),
            input: Some(input),
            ..Default::default()
        }))
    }

    /// Runs `fut` concurrently with the workflow's main code (deterministically interleaved).
    pub fn spawn<T: 'static, F: Future<Output = T> + 'static>(&self, fut: F) -> JoinHandle<T> {
        let slot: Rc<RefCell<Option<T>>> = Rc::new(RefCell::new(None));
        let s = slot.clone();
        let progress = self.progress.clone();
        let task = async move {
            let v = fut.await;
            *s.borrow_mut() = Some(v);
            progress.set(progress.get() + 1);
        }
        .boxed_local();
        self.state.borrow_mut().spawned.push(task);
        self.bump();
        JoinHandle { slot }
    }
}

/// A spawned task's result.
pub struct JoinHandle<T> {
    slot: Rc<RefCell<Option<T>>>,
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<T> {
        match self.slot.borrow_mut().take() {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending,
        }
    }
}

/// An activity's result.
pub struct ActivityFuture<R> {
    ctx: WfContext,
    id: String,
    cancel_sent: bool,
    _t: PhantomData<fn() -> R>,
}

impl<R> ActivityFuture<R> {
    fn failed(ctx: &WfContext, id: String, e: WfError) -> Self {
        ctx.state.borrow_mut().activities.insert(id.clone(), Slot::Ready(Err(e)));
        ActivityFuture { ctx: ctx.clone(), id, cancel_sent: false, _t: PhantomData }
    }

    /// The activity id.
    pub fn activity_id(&self) -> &str {
        &self.id
    }
}

impl<R: DeserializeOwned + 'static> Future for ActivityFuture<R> {
    type Output = WfResult<R>;
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<WfResult<R>> {
        let taken = self.ctx.state.borrow_mut().activities.get_mut(&self.id).and_then(Slot::take);
        if let Some(r) = taken {
            self.ctx.bump();
            return Poll::Ready(r.and_then(|p| Ok(from_payloads::<R>(p.as_ref())?)));
        }
        if self.ctx.token.is_canceled() && !self.cancel_sent {
            self.cancel_sent = true;
            let id = self.id.clone();
            let mut st = self.ctx.state.borrow_mut();
            // Not sent yet: drop the schedule command. Sent: ask the server to cancel it.
            let before = st.commands.len();
            st.commands.retain(|c| {
                !matches!(&c.attributes, Some(command::Attributes::ScheduleActivityTaskCommandAttributes(a)) if a.activity_id == id)
            });
            if st.commands.len() == before {
                if let Some(ev) = st.activity_scheduled.get(&id).copied() {
                    st.commands.push(Command {
                        command_type: CommandType::RequestCancelActivityTask as i32,
                        attributes: Some(command::Attributes::RequestCancelActivityTaskCommandAttributes(
                            RequestCancelActivityTaskCommandAttributes { scheduled_event_id: ev },
                        )),
                        ..Default::default()
                    });
                }
            }
            st.activities.insert(id, Slot::Taken);
            drop(st);
            self.ctx.bump();
            return Poll::Ready(Err(WfError::Canceled));
        }
        Poll::Pending
    }
}

/// A timer.
pub struct TimerFuture {
    ctx: WfContext,
    id: String,
    done: bool,
}

impl Future for TimerFuture {
    type Output = WfResult<()>;
    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<WfResult<()>> {
        if self.done {
            return Poll::Ready(Err(WfError::Canceled));
        }
        let taken = self.ctx.state.borrow_mut().timers.get_mut(&self.id).and_then(Slot::take);
        if let Some(r) = taken {
            self.done = true;
            self.ctx.bump();
            return Poll::Ready(r.map(|_| ()));
        }
        if self.ctx.token.is_canceled() {
            self.done = true;
            let id = self.id.clone();
            let mut st = self.ctx.state.borrow_mut();
            let before = st.commands.len();
            st.commands.retain(|c| {
                !matches!(&c.attributes, Some(command::Attributes::StartTimerCommandAttributes(a)) if a.timer_id == id)
            });
            if st.commands.len() == before {
                st.commands.push(Command {
                    command_type: CommandType::CancelTimer as i32,
                    attributes: Some(command::Attributes::CancelTimerCommandAttributes(CancelTimerCommandAttributes {
                        timer_id: id.clone(),
                    })),
                    ..Default::default()
                });
            }
            st.timers.insert(id, Slot::Taken);
            drop(st);
            self.ctx.bump();
            return Poll::Ready(Err(WfError::Canceled));
        }
        Poll::Pending
    }
}

/// A child workflow's result.
pub struct ChildFuture<R> {
    ctx: WfContext,
    id: String,
    _t: PhantomData<fn() -> R>,
}

impl<R> ChildFuture<R> {
    /// The child's workflow id.
    pub fn workflow_id(&self) -> &str {
        &self.id
    }
}

impl<R: DeserializeOwned + 'static> Future for ChildFuture<R> {
    type Output = WfResult<R>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<WfResult<R>> {
        let taken = self.ctx.state.borrow_mut().children.get_mut(&self.id).and_then(Slot::take);
        match taken {
            Some(r) => {
                self.ctx.bump();
                Poll::Ready(r.and_then(|p| Ok(from_payloads::<R>(p.as_ref())?)))
            }
            None => Poll::Pending,
        }
    }
}

/// Signals of one name.
pub struct SignalChannel<T> {
    ctx: WfContext,
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + 'static> SignalChannel<T> {
    /// The next signal, if one has arrived.
    pub fn try_recv(&self) -> Option<WfResult<T>> {
        let p = self.ctx.state.borrow_mut().signals.get_mut(&self.name).and_then(VecDeque::pop_front)?;
        self.ctx.bump();
        Some(match p.as_ref().and_then(|p| p.payloads.first()) {
            Some(x) => from_payload(x).map_err(WfError::from),
            None => from_payloads(None).map_err(WfError::from),
        })
    }

    /// Waits for the next signal; ends with `Canceled` if the scope is canceled first.
    pub fn recv(&self) -> impl Future<Output = WfResult<T>> + '_ {
        futures::future::poll_fn(move |_| {
            if let Some(v) = self.try_recv() {
                return Poll::Ready(v);
            }
            if self.ctx.token.is_canceled() {
                return Poll::Ready(Err(WfError::Canceled));
            }
            Poll::Pending
        })
    }
}

/// Waits until a count of concurrent pieces of work is done (Go's `sync.WaitGroup`).
#[derive(Clone)]
pub struct WaitGroup {
    count: Rc<Cell<i64>>,
    progress: Rc<Cell<u64>>,
}

impl WaitGroup {
    /// A group with count 0.
    pub fn new(ctx: &WfContext) -> WaitGroup {
        WaitGroup { count: Rc::new(Cell::new(0)), progress: ctx.progress.clone() }
    }

    /// Adds `n` to the count.
    pub fn add(&self, n: i64) {
        self.count.set(self.count.get() + n);
        self.progress.set(self.progress.get() + 1);
    }

    /// Subtracts one.
    pub fn done(&self) {
        self.add(-1);
    }

    /// Resolves when the count is zero or less.
    pub fn wait(&self) -> impl Future<Output = ()> + 'static {
        let count = self.count.clone();
        futures::future::poll_fn(move |_| if count.get() <= 0 { Poll::Ready(()) } else { Poll::Pending })
    }
}

/// Runs futures concurrently in a child scope; the first error cancels the scope (so the
/// siblings' activities and timers are canceled) and is what [`ErrGroup::wait`] returns.
pub struct ErrGroup<T> {
    scope: WfContext,
    futures: Vec<LocalBoxFuture<'static, WfResult<T>>>,
}

impl<T: 'static> ErrGroup<T> {
    /// A group in a new child scope of `ctx`.
    pub fn new(ctx: &WfContext) -> ErrGroup<T> {
        ErrGroup { scope: ctx.scope(), futures: Vec::new() }
    }

    /// The group's scope: start the group's work through it.
    pub fn scope(&self) -> &WfContext {
        &self.scope
    }

    /// Adds a piece of work, made from the group's scope.
    pub fn spawn<F, Fut>(&mut self, f: F)
    where
        F: FnOnce(WfContext) -> Fut,
        Fut: Future<Output = WfResult<T>> + 'static,
    {
        self.futures.push(f(self.scope.clone()).boxed_local());
    }

    /// Waits for every piece; the results in the order they were added, or the first error.
    pub async fn wait(self) -> WfResult<Vec<T>> {
        let scope = self.scope;
        let mut futs: Vec<Option<LocalBoxFuture<'static, WfResult<T>>>> = self.futures.into_iter().map(Some).collect();
        let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
        let mut first_err: Option<WfError> = None;
        futures::future::poll_fn(move |cx| {
            let mut pending = false;
            for (i, slot) in futs.iter_mut().enumerate() {
                let Some(f) = slot else { continue };
                match f.as_mut().poll(cx) {
                    Poll::Ready(Ok(v)) => {
                        out[i] = Some(v);
                        *slot = None;
                    }
                    Poll::Ready(Err(e)) => {
                        if first_err.is_none() {
                            first_err = Some(e);
                            scope.cancel();
                        }
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
            if pending {
                return Poll::Pending;
            }
            match first_err.take() {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Ready(Ok(out.iter_mut().filter_map(Option::take).collect())),
            }
        })
        .await
    }
}
