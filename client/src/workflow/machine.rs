//! The deterministic machine: runs a workflow function against a history, matches the commands
//! it issues with the command events recorded, and returns the new commands of the live task.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::LocalBoxFuture;
use rand::SeedableRng;
use temporalio_protos::temporal::api::command::v1::{command, Command};
use temporalio_protos::temporal::api::command::v1::{
    CancelWorkflowExecutionCommandAttributes, CompleteWorkflowExecutionCommandAttributes,
    FailWorkflowExecutionCommandAttributes,
};
use temporalio_protos::temporal::api::common::v1::Payloads;
use temporalio_protos::temporal::api::enums::v1::{CommandType, EventType, RetryState, TimeoutType};
use temporalio_protos::temporal::api::history::v1::history_event::Attributes as Ev;
use temporalio_protos::temporal::api::history::v1::HistoryEvent;
use temporalio_protos::temporal::api::protocol::v1::Message as ProtocolMessage;
use temporalio_protos::temporal::api::update::v1::{Acceptance, Meta, Rejection, Request as UpdateRequest, Response};

use super::context::{CancelToken, WfContext, WorkflowInfo};
use super::{WfError, WfResult};
use crate::failure::{Failure, FailureKind};

/// Marker name of side effects.
pub const SIDE_EFFECT_MARKER: &str = "SideEffect";
/// Marker name of patches (the one Temporal's SDK core uses).
pub const PATCH_MARKER: &str = "core_patch";

/// A type-erased workflow function.
pub type WorkflowFn =
    Arc<dyn Fn(WfContext, Option<Payloads>) -> LocalBoxFuture<'static, WfResult<Option<Payloads>>> + Send + Sync>;

/// A result slot.
pub(crate) enum Slot {
    Pending,
    Ready(WfResult<Option<Payloads>>),
    Taken,
}

impl Slot {
    /// Takes a ready value, leaving `Taken`.
    pub(crate) fn take(&mut self) -> Option<WfResult<Option<Payloads>>> {
        match std::mem::replace(self, Slot::Taken) {
            Slot::Ready(r) => Some(r),
            other => {
                *self = other;
                None
            }
        }
    }

    fn resolve(&mut self, r: WfResult<Option<Payloads>>) {
        if matches!(self, Slot::Pending) {
            *self = Slot::Ready(r);
        }
    }
}

type QueryFn = Box<dyn Fn(Option<Payloads>) -> Result<Payloads, Failure>>;

/// A type-erased update handler.
pub(crate) type UpdateFn =
    Rc<dyn Fn(WfContext, Option<Payloads>) -> LocalBoxFuture<'static, WfResult<Option<Payloads>>>>;
/// A type-erased update validator.
pub(crate) type ValidatorFn = Rc<dyn Fn(Option<&Payloads>) -> Result<(), Failure>>;

/// A registered update handler.
pub(crate) struct UpdateHandler {
    pub handler: UpdateFn,
    pub validator: Option<ValidatorFn>,
}

const ACCEPTANCE_URL: &str = "type.googleapis.com/temporal.api.update.v1.Acceptance";
const REJECTION_URL: &str = "type.googleapis.com/temporal.api.update.v1.Rejection";
const RESPONSE_URL: &str = "type.googleapis.com/temporal.api.update.v1.Response";
const REQUEST_TYPE: &str = "temporal.api.update.v1.Request";

/// The state workflow code and the machine share.
pub(crate) struct State {
    pub commands: Vec<Command>,
    pub next_activity: u32,
    pub next_timer: u32,
    pub next_child: u32,
    pub next_external: u32,
    pub next_side_effect: u32,
    pub activities: HashMap<String, Slot>,
    pub activity_scheduled: HashMap<String, i64>,
    pub activity_types: HashMap<String, String>,
    pub timers: HashMap<String, Slot>,
    pub children: HashMap<String, Slot>,
    pub externals: HashMap<String, Slot>,
    pub signals: HashMap<String, VecDeque<Option<Payloads>>>,
    pub queries: HashMap<String, QueryFn>,
    pub update_handlers: HashMap<String, UpdateHandler>,
    /// Protocol messages of the current activation (update acceptances, rejections, responses).
    pub messages: Vec<ProtocolMessage>,
    /// Message id -> (is an acceptance, update id), for matching replayed update events.
    pub message_kinds: HashMap<String, (bool, String)>,
    pub cancel_requested: bool,
    pub now: SystemTime,
    pub replaying: bool,
    pub side_effects: HashMap<u32, Option<Payloads>>,
    pub patches_in_history: HashSet<String>,
    pub patches_taken: HashMap<String, bool>,
    pub rng: rand::rngs::SmallRng,
    pub info: WorkflowInfo,
    pub spawned: Vec<LocalBoxFuture<'static, ()>>,
}

/// Workflow code and recorded history disagree.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("non-deterministic workflow: {message}")]
pub struct Nondeterminism {
    /// The event that disagrees (0 when the history ran out).
    pub event_id: i64,
    /// What disagrees, naming the event and the command.
    pub message: String,
}

/// What one run of the machine produced.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Commands of the live workflow task (empty in replay).
    pub commands: Vec<Command>,
    /// Protocol messages of the live workflow task (update answers).
    pub messages: Vec<ProtocolMessage>,
    /// Whether the workflow function returned.
    pub finished: bool,
}

/// Runs one workflow function against history. Make a new one per workflow task.
pub struct WorkflowMachine {
    factory: WorkflowFn,
    state: Rc<RefCell<State>>,
    progress: Rc<Cell<u64>>,
    root_token: CancelToken,
    root: Option<LocalBoxFuture<'static, WfResult<Option<Payloads>>>>,
    tasks: Vec<Option<LocalBoxFuture<'static, ()>>>,
    finished: bool,
    /// Commands issued by the last replayed activation, not yet matched with events.
    expected: VecDeque<Command>,
    /// Event id → activity id / child workflow id / external seq.
    by_event: HashMap<i64, String>,
    /// The started event id of the live task this machine last ran (a worker's cache resumes
    /// the machine with the events after it).
    live_started_id: Option<i64>,
}

impl WorkflowMachine {
    /// A machine for one run of `factory`'s workflow.
    pub fn new(factory: WorkflowFn, namespace: &str, workflow_id: &str, run_id: &str) -> WorkflowMachine {
        let progress = Rc::new(Cell::new(0));
        let seed = norn_proto::placement::stable_hash(&[run_id.as_bytes()]);
        let state = State {
            commands: Vec::new(),
            next_activity: 0,
            next_timer: 0,
            next_child: 0,
            next_external: 0,
            next_side_effect: 0,
            activities: HashMap::new(),
            activity_scheduled: HashMap::new(),
            activity_types: HashMap::new(),
            timers: HashMap::new(),
            children: HashMap::new(),
            externals: HashMap::new(),
            signals: HashMap::new(),
            queries: HashMap::new(),
            update_handlers: HashMap::new(),
            messages: Vec::new(),
            message_kinds: HashMap::new(),
            cancel_requested: false,
            now: UNIX_EPOCH,
            replaying: true,
            side_effects: HashMap::new(),
            patches_in_history: HashSet::new(),
            patches_taken: HashMap::new(),
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
            info: WorkflowInfo {
                namespace: namespace.into(),
                workflow_id: workflow_id.into(),
                run_id: run_id.into(),
                ..Default::default()
            },
            spawned: Vec::new(),
        };
        WorkflowMachine {
            factory,
            state: Rc::new(RefCell::new(state)),
            root_token: CancelToken::root(progress.clone()),
            progress,
            root: None,
            tasks: Vec::new(),
            finished: false,
            expected: VecDeque::new(),
            by_event: HashMap::new(),
            live_started_id: None,
        }
    }

    /// Runs the workflow over `history`. With `live`, the last workflow task that has not
    /// completed is the one being worked on and its commands are returned; without, every
    /// workflow task is a replay (closed histories, queries).
    pub fn run(&mut self, history: &[HistoryEvent], live: bool) -> Result<RunOutcome, Nondeterminism> {
        self.run_with_messages(history, live, &[])
    }

    /// [`WorkflowMachine::run`] with the protocol messages (update requests) of the live task.
    pub fn run_with_messages(
        &mut self,
        history: &[HistoryEvent],
        live: bool,
        incoming: &[ProtocolMessage],
    ) -> Result<RunOutcome, Nondeterminism> {
        self.prescan(history);
        let mut pending: Vec<&HistoryEvent> = Vec::new();
        let mut i = 0;
        while i < history.len() {
            let e = &history[i];
            let et = EventType::try_from(e.event_type).unwrap_or(EventType::Unspecified);
            match et {
                EventType::WorkflowExecutionStarted => self.start(e),
                EventType::WorkflowTaskStarted => {
                    let outcome = history[i + 1..].iter().find_map(|x| {
                        match EventType::try_from(x.event_type).unwrap_or(EventType::Unspecified) {
                            EventType::WorkflowTaskCompleted => Some(true),
                            EventType::WorkflowTaskFailed | EventType::WorkflowTaskTimedOut => Some(false),
                            _ => None,
                        }
                    });
                    match outcome {
                        Some(true) => {
                            self.check_all_matched(e.event_id)?;
                            // Updates this task accepted, read back from the acceptance events.
                            let updates: Vec<(String, i64, UpdateRequest)> = history[i + 1..]
                                .iter()
                                .take_while(|x| x.event_type != EventType::WorkflowTaskStarted as i32)
                                .filter_map(|x| match &x.attributes {
                                    Some(Ev::WorkflowExecutionUpdateAcceptedEventAttributes(a)) => Some((
                                        a.accepted_request_message_id.clone(),
                                        a.accepted_request_sequencing_event_id,
                                        a.accepted_request.clone().unwrap_or_default(),
                                    )),
                                    _ => None,
                                })
                                .collect();
                            self.activate(e, std::mem::take(&mut pending), true, updates, false);
                            let mut st = self.state.borrow_mut();
                            self.expected = st.commands.drain(..).collect();
                            st.messages.clear();
                        }
                        Some(false) => {}
                        None if live => {
                            self.check_all_matched(e.event_id)?;
                            let updates = incoming
                                .iter()
                                .filter_map(|m| {
                                    let body = m.body.as_ref()?;
                                    if !body.type_url.ends_with(REQUEST_TYPE) {
                                        return None;
                                    }
                                    use prost::Message;
                                    let req = UpdateRequest::decode(body.value.as_slice()).ok()?;
                                    let seq = match m.sequencing_id {
                                        Some(temporalio_protos::temporal::api::protocol::v1::message::SequencingId::EventId(id)) => id,
                                        _ => e.event_id - 1,
                                    };
                                    Some((m.id.clone(), seq, req))
                                })
                                .collect();
                            self.activate(e, std::mem::take(&mut pending), false, updates, true);
                            let mut st = self.state.borrow_mut();
                            let commands: Vec<Command> = st.commands.drain(..).collect();
                            let messages = st.messages.drain(..).collect();
                            drop(st);
                            // What the next task's events must show first, if it resumes here.
                            self.expected = commands.iter().cloned().collect();
                            self.live_started_id = Some(e.event_id);
                            return Ok(RunOutcome { commands, messages, finished: self.finished });
                        }
                        None => {}
                    }
                }
                _ if is_command_event(et) => self.match_command(e, et)?,
                EventType::WorkflowTaskScheduled
                | EventType::WorkflowTaskCompleted
                | EventType::WorkflowTaskFailed
                | EventType::WorkflowTaskTimedOut => {}
                _ => pending.push(e),
            }
            i += 1;
        }
        if live {
            return Err(Nondeterminism { event_id: 0, message: "the history has no workflow task in progress".into() });
        }
        self.check_all_matched(0)?;
        Ok(RunOutcome { commands: Vec::new(), messages: Vec::new(), finished: self.finished })
    }

    /// Whether [`WorkflowMachine::resume`] can take a history that begins at `first_event_id`:
    /// right after the started event of the live task this machine ran last, the code not done.
    pub fn can_resume_at(&self, first_event_id: i64) -> bool {
        !self.finished && self.live_started_id.is_some_and(|s| s.checked_add(1) == Some(first_event_id))
    }

    /// Whether the workflow function has returned.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Runs the next live task of a machine kept since its last live task, given only the
    /// events after that task's started event (a sticky task's partial history). The events
    /// must begin right after it; otherwise the caller replays the whole history on a new one.
    pub fn resume(
        &mut self,
        events: &[HistoryEvent],
        incoming: &[ProtocolMessage],
    ) -> Result<RunOutcome, Nondeterminism> {
        let first = events.first().map_or(0, |e| e.event_id);
        if !self.can_resume_at(first) {
            return Err(Nondeterminism {
                event_id: first,
                message: format!(
                    "cannot resume at event {first}: the machine last ran the task started at {:?}",
                    self.live_started_id
                ),
            });
        }
        self.run_with_messages(events, true, incoming)
    }

    /// Answers a query from the state the last run left.
    pub fn query(&self, name: &str, args: Option<Payloads>) -> Result<Payloads, Failure> {
        let st = self.state.borrow();
        match st.queries.get(name) {
            Some(h) => h(args),
            None => {
                let mut known: Vec<&String> = st.queries.keys().collect();
                known.sort();
                Err(Failure::application(format!("unknown query type {name:?}; known: {known:?}"), "QueryNotFound"))
            }
        }
    }

    fn prescan(&mut self, history: &[HistoryEvent]) {
        let mut st = self.state.borrow_mut();
        for e in history {
            if let Some(Ev::MarkerRecordedEventAttributes(m)) = &e.attributes {
                if m.marker_name == SIDE_EFFECT_MARKER {
                    let id = m.details.get("id").and_then(|p| crate::payload::from_payloads::<u32>(Some(p)).ok());
                    if let Some(id) = id {
                        st.side_effects.insert(id, m.details.get("data").cloned());
                    }
                } else if m.marker_name == PATCH_MARKER {
                    if let Some(id) =
                        m.details.get("patch_id").and_then(|p| crate::payload::from_payloads::<String>(Some(p)).ok())
                    {
                        st.patches_in_history.insert(id);
                    }
                }
            }
        }
    }

    fn start(&mut self, e: &HistoryEvent) {
        let Some(Ev::WorkflowExecutionStartedEventAttributes(a)) = &e.attributes else { return };
        {
            let mut st = self.state.borrow_mut();
            st.info.workflow_type = a.workflow_type.as_ref().map(|t| t.name.clone()).unwrap_or_default();
            st.info.task_queue = a.task_queue.as_ref().map(|t| t.name.clone()).unwrap_or_default();
            st.info.attempt = a.attempt.max(1);
            st.info.first_execution_run_id = a.first_execution_run_id.clone();
            st.info.parent = a.parent_workflow_execution.clone();
            st.info.start_time = e.event_time.as_ref().map(time_of);
        }
        let ctx =
            WfContext { state: self.state.clone(), progress: self.progress.clone(), token: self.root_token.clone() };
        self.root = Some((self.factory)(ctx, a.input.clone()));
    }

    fn check_all_matched(&self, at: i64) -> Result<(), Nondeterminism> {
        match self.expected.front() {
            None => Ok(()),
            Some(c) => Err(Nondeterminism {
                event_id: at,
                message: format!(
                    "the workflow issued {} but the history has no matching event (next event: {})",
                    describe_command(c),
                    if at == 0 { "end of history".to_string() } else { format!("event {at}") }
                ),
            }),
        }
    }

    #[allow(deprecated)] // `control` carries the signal's sequence number.
    fn match_command(&mut self, e: &HistoryEvent, et: EventType) -> Result<(), Nondeterminism> {
        let Some(c) = self.expected.pop_front() else {
            return Err(Nondeterminism {
                event_id: e.event_id,
                message: format!(
                    "history event {} {} has no matching command: the workflow issued nothing there",
                    e.event_id,
                    describe_event(e, et)
                ),
            });
        };
        let protocol_ok = match &c.attributes {
            Some(command::Attributes::ProtocolMessageCommandAttributes(a)) => {
                let kind = self.state.borrow().message_kinds.get(&a.message_id).cloned();
                match (kind, &e.attributes) {
                    (Some((true, id)), Some(Ev::WorkflowExecutionUpdateAcceptedEventAttributes(x))) => {
                        Some(x.protocol_instance_id == id)
                    }
                    (Some((false, id)), Some(Ev::WorkflowExecutionUpdateCompletedEventAttributes(x))) => {
                        Some(x.meta.as_ref().is_some_and(|m| m.update_id == id))
                    }
                    _ => Some(false),
                }
            }
            _ => None,
        };
        if !protocol_ok.unwrap_or_else(|| command_matches(&c, e)) {
            return Err(Nondeterminism {
                event_id: e.event_id,
                message: format!(
                    "history event {} {} does not match the command the workflow issued: {}",
                    e.event_id,
                    describe_event(e, et),
                    describe_command(&c)
                ),
            });
        }
        match &e.attributes {
            Some(Ev::ActivityTaskScheduledEventAttributes(a)) => {
                self.by_event.insert(e.event_id, a.activity_id.clone());
                let mut st = self.state.borrow_mut();
                st.activity_scheduled.insert(a.activity_id.clone(), e.event_id);
                let ty = a.activity_type.as_ref().map(|t| t.name.clone()).unwrap_or_default();
                st.activity_types.insert(a.activity_id.clone(), ty);
            }
            Some(Ev::StartChildWorkflowExecutionInitiatedEventAttributes(a)) => {
                self.by_event.insert(e.event_id, a.workflow_id.clone());
            }
            Some(Ev::SignalExternalWorkflowExecutionInitiatedEventAttributes(_)) => {
                // The command's `control` holds the sequence number (servers need not echo it).
                if let Some(command::Attributes::SignalExternalWorkflowExecutionCommandAttributes(a)) = &c.attributes {
                    self.by_event.insert(e.event_id, a.control.clone());
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Applies the events of one workflow task and runs the code until it waits.
    fn activate(
        &mut self,
        started: &HistoryEvent,
        events: Vec<&HistoryEvent>,
        replaying: bool,
        updates: Vec<(String, i64, UpdateRequest)>,
        validate: bool,
    ) {
        {
            let mut st = self.state.borrow_mut();
            st.replaying = replaying;
            if let Some(t) = &started.event_time {
                st.now = time_of(t);
            }
        }
        for e in events {
            self.apply(e);
        }
        self.run_until_stalled();
        if !updates.is_empty() && !self.finished {
            for (msg_id, seq, req) in updates {
                self.deliver_update(msg_id, seq, req, validate);
            }
            self.run_until_stalled();
        }
    }

    /// Runs an update's validator (live tasks only) and, unless it rejects, accepts the update
    /// and starts its handler as a task.
    fn deliver_update(&mut self, request_msg_id: String, seq: i64, req: UpdateRequest, validate: bool) {
        let update_id = req.meta.as_ref().map(|m| m.update_id.clone()).unwrap_or_default();
        let name = req.input.as_ref().map(|i| i.name.clone()).unwrap_or_default();
        let args = req.input.as_ref().and_then(|i| i.args.clone());
        let found = {
            let st = self.state.borrow();
            st.update_handlers.get(&name).map(|h| (h.handler.clone(), h.validator.clone()))
        };
        let rejection = match &found {
            None if validate => {
                let mut known: Vec<String> = self.state.borrow().update_handlers.keys().cloned().collect();
                known.sort();
                Some(Failure::application(format!("unknown update {name:?}; known: {known:?}"), "UpdateNotFound"))
            }
            Some((_, Some(v))) if validate => v(args.as_ref()).err(),
            _ => None,
        };
        let mut st = self.state.borrow_mut();
        if let Some(f) = rejection {
            st.messages.push(message(
                &update_id,
                "reject",
                REJECTION_URL,
                Rejection {
                    rejected_request_message_id: request_msg_id,
                    rejected_request_sequencing_event_id: seq,
                    rejected_request: Some(req),
                    failure: Some(f.to_proto()),
                },
            ));
            return;
        }
        let Some((handler, _)) = found else { return };
        let accept = message(
            &update_id,
            "accept",
            ACCEPTANCE_URL,
            Acceptance {
                accepted_request_message_id: request_msg_id,
                accepted_request_sequencing_event_id: seq,
                accepted_request: Some(req),
            },
        );
        st.message_kinds.insert(accept.id.clone(), (true, update_id.clone()));
        st.commands.push(protocol_command(&accept.id));
        st.messages.push(accept);
        let ctx =
            WfContext { state: self.state.clone(), progress: self.progress.clone(), token: self.root_token.clone() };
        let state = self.state.clone();
        let progress = self.progress.clone();
        st.spawned.push(Box::pin(async move {
            let r = handler(ctx, args).await;
            let outcome = temporalio_protos::temporal::api::update::v1::Outcome {
                value: Some(match r {
                    Ok(p) => {
                        temporalio_protos::temporal::api::update::v1::outcome::Value::Success(p.unwrap_or_default())
                    }
                    Err(WfError::Failure(f)) => {
                        temporalio_protos::temporal::api::update::v1::outcome::Value::Failure(f.to_proto())
                    }
                    Err(e) => temporalio_protos::temporal::api::update::v1::outcome::Value::Failure(
                        Failure::canceled(format!("update handler ended: {e}")).to_proto(),
                    ),
                }),
            };
            let resp = message(
                &update_id,
                "complete",
                RESPONSE_URL,
                Response {
                    meta: Some(Meta { update_id: update_id.clone(), identity: String::new() }),
                    outcome: Some(outcome),
                },
            );
            let mut st = state.borrow_mut();
            st.message_kinds.insert(resp.id.clone(), (false, update_id.clone()));
            st.commands.push(protocol_command(&resp.id));
            st.messages.push(resp);
            progress.set(progress.get() + 1);
        }));
        drop(st);
        self.progress.set(self.progress.get() + 1);
    }

    fn apply(&mut self, e: &HistoryEvent) {
        let by_event = |id: &i64| self.by_event.get(id).cloned().unwrap_or_default();
        let mut st = self.state.borrow_mut();
        match &e.attributes {
            Some(Ev::WorkflowExecutionSignaledEventAttributes(a)) => {
                st.signals.entry(a.signal_name.clone()).or_default().push_back(a.input.clone());
            }
            Some(Ev::WorkflowExecutionCancelRequestedEventAttributes(_)) => {
                st.cancel_requested = true;
                drop(st);
                self.root_token.cancel();
            }
            Some(Ev::ActivityTaskCompletedEventAttributes(a)) => {
                let id = by_event(&a.scheduled_event_id);
                if let Some(s) = st.activities.get_mut(&id) {
                    s.resolve(Ok(a.result.clone()));
                }
            }
            Some(Ev::ActivityTaskFailedEventAttributes(a)) => {
                let id = by_event(&a.scheduled_event_id);
                let f = activity_failure(&st, &id, a.failure.as_ref(), a.retry_state);
                if let Some(s) = st.activities.get_mut(&id) {
                    s.resolve(Err(WfError::Failure(Box::new(f))));
                }
            }
            Some(Ev::ActivityTaskTimedOutEventAttributes(a)) => {
                let id = by_event(&a.scheduled_event_id);
                let f = activity_failure(&st, &id, a.failure.as_ref(), a.retry_state);
                if let Some(s) = st.activities.get_mut(&id) {
                    s.resolve(Err(WfError::Failure(Box::new(f))));
                }
            }
            Some(Ev::ActivityTaskCanceledEventAttributes(a)) => {
                let id = by_event(&a.scheduled_event_id);
                if let Some(s) = st.activities.get_mut(&id) {
                    s.resolve(Err(WfError::Canceled));
                }
            }
            Some(Ev::TimerFiredEventAttributes(a)) => {
                if let Some(s) = st.timers.get_mut(&a.timer_id) {
                    s.resolve(Ok(None));
                }
            }
            Some(Ev::StartChildWorkflowExecutionFailedEventAttributes(a)) => {
                if let Some(s) = st.children.get_mut(&a.workflow_id) {
                    s.resolve(Err(WfError::Failure(Box::new(Failure::application(
                        format!("child workflow {} could not start: it is already running", a.workflow_id),
                        "ChildWorkflowAlreadyStarted",
                    )))));
                }
            }
            Some(Ev::ChildWorkflowExecutionCompletedEventAttributes(a)) => {
                let id = by_event(&a.initiated_event_id);
                if let Some(s) = st.children.get_mut(&id) {
                    s.resolve(Ok(a.result.clone()));
                }
            }
            Some(Ev::ChildWorkflowExecutionFailedEventAttributes(a)) => {
                let id = by_event(&a.initiated_event_id);
                let cause = a.failure.as_ref().map(Failure::from_proto);
                let f = child_failure(&id, a.workflow_type.as_ref().map(|t| t.name.as_str()), a.retry_state, cause);
                if let Some(s) = st.children.get_mut(&id) {
                    s.resolve(Err(WfError::Failure(Box::new(f))));
                }
            }
            Some(Ev::ChildWorkflowExecutionCanceledEventAttributes(a)) => {
                let id = by_event(&a.initiated_event_id);
                let f = child_failure(&id, None, 0, Some(Failure::canceled("child workflow canceled")));
                if let Some(s) = st.children.get_mut(&id) {
                    s.resolve(Err(WfError::Failure(Box::new(f))));
                }
            }
            Some(Ev::ChildWorkflowExecutionTimedOutEventAttributes(a)) => {
                let id = by_event(&a.initiated_event_id);
                let cause = Failure {
                    message: "child workflow timed out".into(),
                    kind: FailureKind::Timeout {
                        timeout_type: TimeoutType::StartToClose,
                        last_heartbeat_details: None,
                    },
                    stack_trace: String::new(),
                    source: String::new(),
                    cause: None,
                };
                let f = child_failure(&id, None, a.retry_state, Some(cause));
                if let Some(s) = st.children.get_mut(&id) {
                    s.resolve(Err(WfError::Failure(Box::new(f))));
                }
            }
            Some(Ev::ChildWorkflowExecutionTerminatedEventAttributes(a)) => {
                let id = by_event(&a.initiated_event_id);
                let cause = Failure {
                    message: "child workflow terminated".into(),
                    kind: FailureKind::Terminated,
                    stack_trace: String::new(),
                    source: String::new(),
                    cause: None,
                };
                let f = child_failure(&id, None, 0, Some(cause));
                if let Some(s) = st.children.get_mut(&id) {
                    s.resolve(Err(WfError::Failure(Box::new(f))));
                }
            }
            Some(Ev::ExternalWorkflowExecutionSignaledEventAttributes(a)) => {
                let seq = by_event(&a.initiated_event_id);
                if let Some(s) = st.externals.get_mut(&seq) {
                    s.resolve(Ok(None));
                }
            }
            Some(Ev::SignalExternalWorkflowExecutionFailedEventAttributes(a)) => {
                let seq = by_event(&a.initiated_event_id);
                if let Some(s) = st.externals.get_mut(&seq) {
                    let wid = a.workflow_execution.as_ref().map(|x| x.workflow_id.clone()).unwrap_or_default();
                    s.resolve(Err(WfError::Failure(Box::new(Failure::application(
                        format!("signal to workflow {wid} failed: it was not found"),
                        "ExternalWorkflowNotFound",
                    )))));
                }
            }
            _ => {}
        }
    }

    fn run_until_stalled(&mut self) {
        if self.finished || self.root.is_none() {
            return;
        }
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..100_000 {
            let before = self.progress.get();
            if let Some(root) = self.root.as_mut() {
                if let Poll::Ready(r) = root.as_mut().poll(&mut cx) {
                    self.root = None;
                    self.tasks.clear();
                    self.finish(r);
                    return;
                }
            }
            let spawned: Vec<_> = self.state.borrow_mut().spawned.drain(..).collect();
            self.tasks.extend(spawned.into_iter().map(Some));
            for t in self.tasks.iter_mut() {
                if let Some(f) = t {
                    if f.as_mut().poll(&mut cx).is_ready() {
                        *t = None;
                    }
                }
            }
            self.tasks.retain(Option::is_some);
            if self.progress.get() == before && self.state.borrow().spawned.is_empty() {
                return;
            }
        }
        tracing::warn!("workflow code keeps making progress without waiting; stopping this activation");
    }

    fn finish(&mut self, r: WfResult<Option<Payloads>>) {
        self.finished = true;
        let cancel_requested = self.state.borrow().cancel_requested;
        let (ty, attrs) = match r {
            Ok(result) => (
                CommandType::CompleteWorkflowExecution,
                command::Attributes::CompleteWorkflowExecutionCommandAttributes(
                    CompleteWorkflowExecutionCommandAttributes { result },
                ),
            ),
            Err(WfError::Canceled) if cancel_requested => (
                CommandType::CancelWorkflowExecution,
                command::Attributes::CancelWorkflowExecutionCommandAttributes(
                    CancelWorkflowExecutionCommandAttributes::default(),
                ),
            ),
            Err(WfError::Failure(f)) if cancel_requested && f.is_canceled() => (
                CommandType::CancelWorkflowExecution,
                command::Attributes::CancelWorkflowExecutionCommandAttributes(
                    CancelWorkflowExecutionCommandAttributes::default(),
                ),
            ),
            Err(WfError::Canceled) => fail_command(Failure::canceled("workflow code ended with a cancellation")),
            Err(WfError::Failure(f)) => fail_command(*f),
            Err(WfError::ContinueAsNew(a)) => (
                CommandType::ContinueAsNewWorkflowExecution,
                command::Attributes::ContinueAsNewWorkflowExecutionCommandAttributes(*a),
            ),
        };
        self.state.borrow_mut().commands.push(Command {
            command_type: ty as i32,
            attributes: Some(attrs),
            ..Default::default()
        });
    }
}

fn fail_command(f: Failure) -> (CommandType, command::Attributes) {
    (
        CommandType::FailWorkflowExecution,
        command::Attributes::FailWorkflowExecutionCommandAttributes(FailWorkflowExecutionCommandAttributes {
            failure: Some(f.to_proto()),
        }),
    )
}

fn activity_failure(
    st: &State,
    activity_id: &str,
    cause: Option<&temporalio_protos::temporal::api::failure::v1::Failure>,
    retry_state: i32,
) -> Failure {
    Failure {
        message: "activity failed".into(),
        kind: FailureKind::Activity {
            activity_type: st.activity_types.get(activity_id).cloned().unwrap_or_default(),
            activity_id: activity_id.into(),
            retry_state: RetryState::try_from(retry_state).unwrap_or(RetryState::Unspecified),
        },
        stack_trace: String::new(),
        source: String::new(),
        cause: cause.map(|c| Box::new(Failure::from_proto(c))),
    }
}

fn child_failure(workflow_id: &str, workflow_type: Option<&str>, retry_state: i32, cause: Option<Failure>) -> Failure {
    Failure {
        message: "child workflow execution failed".into(),
        kind: FailureKind::ChildWorkflow {
            workflow_id: workflow_id.into(),
            run_id: String::new(),
            workflow_type: workflow_type.unwrap_or_default().into(),
            retry_state: RetryState::try_from(retry_state).unwrap_or(RetryState::Unspecified),
        },
        stack_trace: String::new(),
        source: String::new(),
        cause: cause.map(Box::new),
    }
}

fn time_of(t: &prost_wkt_types::Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.seconds.max(0) as u64) + Duration::from_nanos(t.nanos.max(0) as u64)
}

fn is_command_event(et: EventType) -> bool {
    matches!(
        et,
        EventType::ActivityTaskScheduled
            | EventType::ActivityTaskCancelRequested
            | EventType::TimerStarted
            | EventType::TimerCanceled
            | EventType::MarkerRecorded
            | EventType::StartChildWorkflowExecutionInitiated
            | EventType::SignalExternalWorkflowExecutionInitiated
            | EventType::RequestCancelExternalWorkflowExecutionInitiated
            | EventType::UpsertWorkflowSearchAttributes
            | EventType::WorkflowPropertiesModified
            | EventType::WorkflowExecutionCompleted
            | EventType::WorkflowExecutionFailed
            | EventType::WorkflowExecutionCanceled
            | EventType::WorkflowExecutionContinuedAsNew
            | EventType::WorkflowExecutionUpdateAccepted
            | EventType::WorkflowExecutionUpdateCompleted
    )
}

fn message<M: prost::Message>(update_id: &str, suffix: &str, type_url: &str, body: M) -> ProtocolMessage {
    ProtocolMessage {
        id: format!("{update_id}/{suffix}"),
        protocol_instance_id: update_id.into(),
        sequencing_id: None,
        body: Some(prost_wkt_types::Any { type_url: type_url.into(), value: body.encode_to_vec() }),
    }
}

fn protocol_command(message_id: &str) -> Command {
    Command {
        command_type: CommandType::ProtocolMessage as i32,
        attributes: Some(command::Attributes::ProtocolMessageCommandAttributes(
            temporalio_protos::temporal::api::command::v1::ProtocolMessageCommandAttributes {
                message_id: message_id.into(),
            },
        )),
        ..Default::default()
    }
}

fn command_matches(c: &Command, e: &HistoryEvent) -> bool {
    use command::Attributes as C;
    match (&c.attributes, &e.attributes) {
        (Some(C::ScheduleActivityTaskCommandAttributes(c)), Some(Ev::ActivityTaskScheduledEventAttributes(e))) => {
            c.activity_id == e.activity_id && c.activity_type == e.activity_type
        }
        (
            Some(C::RequestCancelActivityTaskCommandAttributes(c)),
            Some(Ev::ActivityTaskCancelRequestedEventAttributes(e)),
        ) => c.scheduled_event_id == e.scheduled_event_id,
        (Some(C::StartTimerCommandAttributes(c)), Some(Ev::TimerStartedEventAttributes(e))) => c.timer_id == e.timer_id,
        (Some(C::CancelTimerCommandAttributes(c)), Some(Ev::TimerCanceledEventAttributes(e))) => {
            c.timer_id == e.timer_id
        }
        (Some(C::RecordMarkerCommandAttributes(c)), Some(Ev::MarkerRecordedEventAttributes(e))) => {
            c.marker_name == e.marker_name
        }
        (
            Some(C::StartChildWorkflowExecutionCommandAttributes(c)),
            Some(Ev::StartChildWorkflowExecutionInitiatedEventAttributes(e)),
        ) => c.workflow_id == e.workflow_id && c.workflow_type == e.workflow_type,
        (
            Some(C::SignalExternalWorkflowExecutionCommandAttributes(c)),
            Some(Ev::SignalExternalWorkflowExecutionInitiatedEventAttributes(e)),
        ) => c.signal_name == e.signal_name,
        (
            Some(C::RequestCancelExternalWorkflowExecutionCommandAttributes(_)),
            Some(Ev::RequestCancelExternalWorkflowExecutionInitiatedEventAttributes(_)),
        ) => true,
        (
            Some(C::UpsertWorkflowSearchAttributesCommandAttributes(_)),
            Some(Ev::UpsertWorkflowSearchAttributesEventAttributes(_)),
        ) => true,
        (
            Some(C::ModifyWorkflowPropertiesCommandAttributes(_)),
            Some(Ev::WorkflowPropertiesModifiedEventAttributes(_)),
        ) => true,
        (
            Some(C::CompleteWorkflowExecutionCommandAttributes(_)),
            Some(Ev::WorkflowExecutionCompletedEventAttributes(_)),
        ) => true,
        (Some(C::FailWorkflowExecutionCommandAttributes(_)), Some(Ev::WorkflowExecutionFailedEventAttributes(_))) => {
            true
        }
        (
            Some(C::CancelWorkflowExecutionCommandAttributes(_)),
            Some(Ev::WorkflowExecutionCanceledEventAttributes(_)),
        ) => true,
        (
            Some(C::ContinueAsNewWorkflowExecutionCommandAttributes(_)),
            Some(Ev::WorkflowExecutionContinuedAsNewEventAttributes(_)),
        ) => true,
        _ => false,
    }
}

/// A one-line description of a command, for errors.
pub fn describe_command(c: &Command) -> String {
    use command::Attributes as C;
    let name = CommandType::try_from(c.command_type).map(|t| t.as_str_name()).unwrap_or("COMMAND_TYPE_UNKNOWN");
    let detail = match &c.attributes {
        Some(C::ScheduleActivityTaskCommandAttributes(a)) => format!(
            "activity_id={}, activity_type={}",
            a.activity_id,
            a.activity_type.as_ref().map(|t| t.name.as_str()).unwrap_or("")
        ),
        Some(C::StartTimerCommandAttributes(a)) => format!("timer_id={}", a.timer_id),
        Some(C::CancelTimerCommandAttributes(a)) => format!("timer_id={}", a.timer_id),
        Some(C::RecordMarkerCommandAttributes(a)) => format!("marker_name={}", a.marker_name),
        Some(C::StartChildWorkflowExecutionCommandAttributes(a)) => format!(
            "workflow_id={}, workflow_type={}",
            a.workflow_id,
            a.workflow_type.as_ref().map(|t| t.name.as_str()).unwrap_or("")
        ),
        Some(C::SignalExternalWorkflowExecutionCommandAttributes(a)) => format!("signal_name={}", a.signal_name),
        Some(C::ProtocolMessageCommandAttributes(a)) => format!("message_id={}", a.message_id),
        _ => String::new(),
    };
    format!("{name}({detail})")
}

fn describe_event(e: &HistoryEvent, et: EventType) -> String {
    let detail = match &e.attributes {
        Some(Ev::ActivityTaskScheduledEventAttributes(a)) => format!(
            "activity_id={}, activity_type={}",
            a.activity_id,
            a.activity_type.as_ref().map(|t| t.name.as_str()).unwrap_or("")
        ),
        Some(Ev::TimerStartedEventAttributes(a)) => format!("timer_id={}", a.timer_id),
        Some(Ev::TimerCanceledEventAttributes(a)) => format!("timer_id={}", a.timer_id),
        Some(Ev::MarkerRecordedEventAttributes(a)) => format!("marker_name={}", a.marker_name),
        Some(Ev::StartChildWorkflowExecutionInitiatedEventAttributes(a)) => format!(
            "workflow_id={}, workflow_type={}",
            a.workflow_id,
            a.workflow_type.as_ref().map(|t| t.name.as_str()).unwrap_or("")
        ),
        Some(Ev::SignalExternalWorkflowExecutionInitiatedEventAttributes(a)) => {
            format!("signal_name={}", a.signal_name)
        }
        _ => String::new(),
    };
    format!("{}({detail})", et.as_str_name())
}
