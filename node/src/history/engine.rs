//! Transitions of a run. Each function takes the run state, the input, and the leader's
//! timestamp, and returns the events to append (with ids), the effects for the leader, and
//! changes the state in place. A rejected input changes nothing.
//!
//! Events that arrive while a workflow task is started (activity results, fired timers) are
//! buffered in the state and written after that task's `WorkflowTaskCompleted` and the events of
//! its commands (or after its `WorkflowTaskFailed`), as Temporal does, so that a
//! `WorkflowTaskStarted` is always followed by its completion or failure.

use norn_proto::protos::temporal::api::command::v1::command::Attributes as Cmd;
use norn_proto::protos::temporal::api::command::v1::ContinueAsNewWorkflowExecutionCommandAttributes;
use norn_proto::protos::temporal::api::common::v1::{ActivityType, Payloads, WorkflowType};
use norn_proto::protos::temporal::api::enums::v1::TimeoutType;
use norn_proto::protos::temporal::api::enums::v1::{
    CancelExternalWorkflowExecutionFailedCause, CommandType, EventType, RetryState,
    SignalExternalWorkflowExecutionFailedCause, StartChildWorkflowExecutionFailedCause, TaskQueueKind,
    WorkflowTaskFailedCause,
};
use norn_proto::protos::temporal::api::failure::v1::failure::FailureInfo;
use norn_proto::protos::temporal::api::failure::v1::{Failure, TimeoutFailureInfo};
use norn_proto::protos::temporal::api::history::v1::history_event::Attributes as Ev;
use norn_proto::protos::temporal::api::history::v1::*;
use norn_proto::protos::temporal::api::taskqueue::v1::TaskQueue;
use norn_proto::protos::temporal::api::workflowservice::v1::{
    RespondWorkflowTaskCompletedRequest, RespondWorkflowTaskFailedRequest, StartWorkflowExecutionRequest,
};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::state::*;
use crate::limits::EngineLimits;

/// Workflow task timeout when the start request gives none (Temporal's default).
pub const WORKFLOW_TASK_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Sticky schedule-to-start timeout when the worker gives none (the SDKs' default).
pub const STICKY_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// The longest sticky schedule-to-start timeout honoured: a worker that vanished holds its runs
/// back no longer than this.
pub const STICKY_TIMEOUT_MS_MAX: u64 = 60_000;

/// Something the leader must do after the command commits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// A workflow task is ready for a poller of `task_queue`.
    WorkflowTaskReady { task_queue: String, scheduled_id: i64 },
    /// A workflow task is ready on the sticky queue of the worker that holds the run; if no
    /// worker has polled that queue lately it goes to `normal_queue` instead.
    StickyWorkflowTaskReady { sticky_queue: String, normal_queue: String, scheduled_id: i64 },
    /// An activity task is ready for a poller of `task_queue`: now (`ready_at_ms` 0; it is in the
    /// shard's ready index), or, for a retry waiting out its backoff, at `ready_at_ms` (the run's
    /// due index holds it and the leader's duties offer it then). Readiness is judged at the
    /// entry's timestamp, never by the clock of the node running the effect, which may be behind
    /// the leader that stamped the entry.
    ActivityTaskReady { task_queue: String, scheduled_id: i64, ready_at_ms: u64 },
    /// A timer must fire at `fire_at_ms`.
    TimerArmed { timer_id: String, started_id: i64, fire_at_ms: u64 },
    /// The run closed; wake waiters for its result.
    RunClosed,
    /// Start the child initiated at `initiated_id` (in its own shard) and report back.
    StartChild { initiated_id: i64 },
    /// This child run closed: tell its parent.
    TellParent,
    /// Deliver the signal or cancel request initiated at `initiated_id` and report back.
    DeliverExternal { initiated_id: i64 },
    /// The run closed with this child open: apply the parent close policy to it.
    CloseChild { workflow_id: String, run_id: String, parent_close_policy: i32 },
    /// The workflow task's completion asked for this activity eagerly and it was recorded
    /// started with the completion (attempt 1): the frontend answers the completion with it.
    /// Nothing offers it to a queue; if the worker never runs it, its start-to-close timeout
    /// retries it as for any started activity.
    ActivityStartedEagerly { scheduled_id: i64, activity_id: String, workflow_type: String, at_ms: u64 },
}

/// Why an input was rejected (nothing changed), or why the caller gets an error although
/// events were written (see [`Outcome::reply_error`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum EngineError {
    /// The task (token) does not match an open task: stale, already completed, or unknown.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The run is closed.
    #[error("workflow execution already completed")]
    AlreadyCompleted,
    /// New events arrived while the workflow task ran; its close command was not applied.
    #[error("UnhandledCommand")]
    UnhandledCommand,
    /// A command Norn does not implement yet.
    #[error("{0}")]
    Unimplemented(String),
    /// A per-run limit that frees up as work completes (updates in flight).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A per-run limit that never frees up (updates over the run's life).
    #[error("{0}")]
    FailedPrecondition(String),
}

/// The result of one transition.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Events to append, ids assigned.
    pub events: Vec<HistoryEvent>,
    /// Effects for the leader.
    pub effects: Vec<Effect>,
    /// Set when the events were written but the caller must still get this error.
    pub reply_error: Option<EngineError>,
    /// Set when the run continued as new: the store starts the next run from it.
    pub continued_as_new: Option<ContinueAsNew>,
}

/// The next run of a run that continued as new.
#[derive(Clone, Debug, PartialEq)]
pub struct ContinueAsNew {
    /// Its run id (derived from the closing run, so every replica picks the same).
    pub run_id: String,
    /// The command that asked for it.
    pub attributes: ContinueAsNewWorkflowExecutionCommandAttributes,
}

/// A run id derived from `parts`, formatted like a UUID (version 4 layout).
fn derived_run_id(parts: &[&[u8]]) -> String {
    let a = crate::placement::stable_hash(parts);
    let b = crate::placement::stable_hash(&[&a.to_be_bytes(), b"norn-run-id"]);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_be_bytes());
    bytes[8..].copy_from_slice(&b.to_be_bytes());
    uuid_v4_string(bytes)
}

/// `bytes` as a version-4 UUID string (the version and variant bits are set).
pub fn uuid_v4_string(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Buffered input, turned into events when the started workflow task closes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Buffered {
    /// An activity completed.
    ActivityCompleted { scheduled_id: i64, result: Vec<u8>, identity: String },
    /// An activity failed for good (`retry_state` says why it is not retried).
    ActivityFailed { scheduled_id: i64, failure: Vec<u8>, identity: String, retry_state: i32 },
    /// A timer fired.
    TimerFired { timer_id: String, started_id: i64 },
    /// An activity attempt ran past a timeout and is not retried.
    ActivityTimedOut { scheduled_id: i64, retry_state: i32, timeout: AttemptTimeout },
    /// A signal arrived (encoded `WorkflowExecutionSignaledEventAttributes`).
    Signaled { attributes: Vec<u8> },
    /// A cancel was requested.
    CancelRequested { reason: String, identity: String },
    /// A started activity acknowledged its cancellation (`details`: encoded `Payloads`).
    ActivityCanceled { scheduled_id: i64, details: Vec<u8>, identity: String },
    /// A signal or cancel request reached (`delivered`) or missed its target.
    ExternalDone { initiated_id: i64, delivered: bool },
    /// A child started.
    ChildStarted { initiated_id: i64 },
    /// A child could not start: its workflow id is taken.
    ChildStartFailed { initiated_id: i64 },
    /// A child closed.
    ChildClosed { initiated_id: i64, outcome: ChildOutcome },
}

/// Signal request ids remembered per run for deduplication.
const SIGNAL_REQUEST_IDS_MAX: usize = 1000;

fn timestamp(ms: u64) -> prost_wkt_types::Timestamp {
    prost_wkt_types::Timestamp { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

fn duration(ms: u64) -> prost_wkt_types::Duration {
    prost_wkt_types::Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// Milliseconds of a proto duration; negative durations are rejected.
pub fn duration_ms(d: &Option<prost_wkt_types::Duration>) -> Result<Option<u64>, EngineError> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(EngineError::InvalidArgument("negative duration".into())),
        Some(d) => Ok(Some((d.seconds as u64).saturating_mul(1000).saturating_add(d.nanos as u64 / 1_000_000))),
    }
}

fn decode_or_default<T: Message + Default>(bytes: &[u8]) -> T {
    T::decode(bytes).unwrap_or_default()
}

mod update;
pub use update::{admit_update, update_messages};

/// Appends events to a run and collects effects.
struct Writer<'a> {
    run: &'a mut RunState,
    now_ms: u64,
    out: Outcome,
}

impl<'a> Writer<'a> {
    fn new(run: &'a mut RunState, now_ms: u64) -> Self {
        Self { run, now_ms, out: Outcome::default() }
    }

    fn event(&mut self, event_type: EventType, attributes: Ev) -> i64 {
        let own = matches!(
            event_type,
            EventType::WorkflowTaskScheduled
                | EventType::WorkflowTaskStarted
                | EventType::WorkflowTaskCompleted
                | EventType::WorkflowTaskFailed
                | EventType::WorkflowTaskTimedOut
                | EventType::WorkflowExecutionTerminated
                | EventType::WorkflowExecutionTimedOut
        );
        if !own {
            // Nothing may be written between a transient task's events and the events before.
            self.materialize_transient();
        }
        let id = self.run.next_event_id;
        self.run.next_event_id += 1;
        let event = HistoryEvent {
            event_id: id,
            event_time: Some(timestamp(self.now_ms)),
            event_type: event_type as i32,
            task_id: id,
            attributes: Some(attributes),
            ..Default::default()
        };
        self.run.history_bytes = self.run.history_bytes.saturating_add(event.encoded_len() as u64);
        self.out.events.push(event);
        id
    }

    fn schedule_workflow_task(&mut self, attempt: i32) {
        let transient = attempt > 1;
        let sticky = !self.run.sticky_queue.is_empty();
        let id = if transient {
            self.run.next_event_id
        } else {
            let (t, a) = scheduled_event(self.run, sticky, attempt);
            self.event(t, a)
        };
        self.run.workflow_task = Some(WorkflowTaskInfo {
            scheduled_id: id,
            started_id: None,
            attempt,
            request_id: String::new(),
            identity: String::new(),
            scheduled_ms: self.now_ms,
            started_ms: 0,
            transient,
            sticky,
        });
        self.out.effects.push(if sticky {
            Effect::StickyWorkflowTaskReady {
                sticky_queue: self.run.sticky_queue.clone(),
                normal_queue: self.run.task_queue.clone(),
                scheduled_id: id,
            }
        } else {
            Effect::WorkflowTaskReady { task_queue: self.run.task_queue.clone(), scheduled_id: id }
        });
    }

    /// Writes the events of a transient workflow task (scheduled, and started if it is), making it
    /// a normal one. Their ids were reserved: nothing was written since.
    fn materialize_transient(&mut self) {
        let Some(t) = self.run.workflow_task.clone().filter(|t| t.transient) else { return };
        if let Some(task) = self.run.workflow_task.as_mut() {
            task.transient = false;
        }
        let (et, a) = scheduled_event(self.run, t.sticky, t.attempt);
        let scheduled_id = self.event(et, a);
        debug_assert_eq!(scheduled_id, t.scheduled_id);
        if t.started_id.is_some() {
            let (et, a) = started_event(&t);
            self.event(et, a);
        }
    }

    /// Something happened that the workflow must see: schedule a workflow task, or note that the
    /// started one must be followed by another.
    fn need_workflow_task(&mut self) {
        if !self.run.is_open() {
            return;
        }
        match &self.run.workflow_task {
            None => self.schedule_workflow_task(1),
            Some(t) if t.started_id.is_some() => self.run.buffered_events = true,
            Some(_) => {}
        }
    }

    fn flush_buffer(&mut self) {
        for b in std::mem::take(&mut self.run.buffer) {
            match b {
                Buffered::ActivityCompleted { scheduled_id, result, identity } => {
                    self.activity_closed(scheduled_id, identity, Ok(result));
                }
                Buffered::ActivityFailed { scheduled_id, failure, identity, retry_state } => {
                    self.activity_closed(scheduled_id, identity, Err((failure, retry_state)));
                }
                Buffered::ActivityTimedOut { scheduled_id, retry_state, timeout } => {
                    let Some(a) = self.run.activities.remove(&scheduled_id) else { continue };
                    let started_id =
                        if a.request_id.is_empty() { 0 } else { self.activity_started_event(scheduled_id, &a) };
                    self.event(
                        EventType::ActivityTaskTimedOut,
                        Ev::ActivityTaskTimedOutEventAttributes(ActivityTaskTimedOutEventAttributes {
                            failure: Some(timeout_failure(timeout, &a.heartbeat_details)),
                            scheduled_event_id: scheduled_id,
                            started_event_id: started_id,
                            retry_state,
                        }),
                    );
                }
                Buffered::ActivityCanceled { scheduled_id, details, identity } => {
                    let Some(a) = self.run.activities.remove(&scheduled_id) else { continue };
                    let started_id = self.activity_started_event(scheduled_id, &a);
                    self.event(
                        EventType::ActivityTaskCanceled,
                        Ev::ActivityTaskCanceledEventAttributes(ActivityTaskCanceledEventAttributes {
                            details: (!details.is_empty()).then(|| decode_or_default::<Payloads>(&details)),
                            latest_cancel_requested_event_id: a.cancel_requested_id,
                            scheduled_event_id: scheduled_id,
                            started_event_id: started_id,
                            identity,
                            ..Default::default()
                        }),
                    );
                }
                Buffered::Signaled { attributes } => {
                    let a = decode_or_default::<WorkflowExecutionSignaledEventAttributes>(&attributes);
                    self.event(EventType::WorkflowExecutionSignaled, Ev::WorkflowExecutionSignaledEventAttributes(a));
                }
                Buffered::ExternalDone { initiated_id, delivered } => {
                    let Some(x) = self.run.externals.remove(&initiated_id) else { continue };
                    self.external_done_event(&x, delivered);
                }
                Buffered::ChildStarted { initiated_id } => {
                    let Some(c) = self.run.children.get(&initiated_id).cloned() else { continue };
                    let id = self.event(
                        EventType::ChildWorkflowExecutionStarted,
                        Ev::ChildWorkflowExecutionStartedEventAttributes(
                            ChildWorkflowExecutionStartedEventAttributes {
                                namespace_id: self.run.namespace_id.clone(),
                                initiated_event_id: initiated_id,
                                workflow_execution: Some(child_execution(&c)),
                                workflow_type: Some(WorkflowType { name: c.workflow_type.clone() }),
                                ..Default::default()
                            },
                        ),
                    );
                    if let Some(c) = self.run.children.get_mut(&initiated_id) {
                        c.started_event_id = id;
                    }
                }
                Buffered::ChildStartFailed { initiated_id } => {
                    let Some(c) = self.run.children.remove(&initiated_id) else { continue };
                    self.event(
                        EventType::StartChildWorkflowExecutionFailed,
                        Ev::StartChildWorkflowExecutionFailedEventAttributes(
                            StartChildWorkflowExecutionFailedEventAttributes {
                                namespace_id: self.run.namespace_id.clone(),
                                workflow_id: c.workflow_id.clone(),
                                workflow_type: Some(WorkflowType { name: c.workflow_type.clone() }),
                                cause: StartChildWorkflowExecutionFailedCause::WorkflowAlreadyExists as i32,
                                initiated_event_id: initiated_id,
                                ..Default::default()
                            },
                        ),
                    );
                }
                Buffered::ChildClosed { initiated_id, outcome } => {
                    let Some(c) = self.run.children.remove(&initiated_id) else { continue };
                    self.child_closed_event(&c, outcome);
                }
                Buffered::CancelRequested { reason, identity } => {
                    self.event(
                        EventType::WorkflowExecutionCancelRequested,
                        Ev::WorkflowExecutionCancelRequestedEventAttributes(
                            WorkflowExecutionCancelRequestedEventAttributes {
                                cause: reason,
                                identity,
                                ..Default::default()
                            },
                        ),
                    );
                }
                Buffered::TimerFired { timer_id, started_id } => {
                    self.event(
                        EventType::TimerFired,
                        Ev::TimerFiredEventAttributes(TimerFiredEventAttributes {
                            timer_id,
                            started_event_id: started_id,
                        }),
                    );
                }
            }
        }
    }

    fn activity_started_event(&mut self, scheduled_id: i64, a: &ActivityInfo) -> i64 {
        self.event(
            EventType::ActivityTaskStarted,
            Ev::ActivityTaskStartedEventAttributes(ActivityTaskStartedEventAttributes {
                scheduled_event_id: scheduled_id,
                identity: a.identity.clone(),
                request_id: a.request_id.clone(),
                attempt: a.attempt,
                last_failure: (!a.last_failure.is_empty()).then(|| decode_or_default::<Failure>(&a.last_failure)),
                ..Default::default()
            }),
        )
    }

    fn activity_closed(&mut self, scheduled_id: i64, identity: String, result: Result<Vec<u8>, (Vec<u8>, i32)>) {
        let Some(a) = self.run.activities.remove(&scheduled_id) else { return };
        let started_id = self.activity_started_event(scheduled_id, &a);
        match result {
            Ok(payloads) => {
                self.event(
                    EventType::ActivityTaskCompleted,
                    Ev::ActivityTaskCompletedEventAttributes(ActivityTaskCompletedEventAttributes {
                        result: (!payloads.is_empty()).then(|| decode_or_default::<Payloads>(&payloads)),
                        scheduled_event_id: scheduled_id,
                        started_event_id: started_id,
                        identity,
                        ..Default::default()
                    }),
                );
            }
            Err((failure, retry_state)) => {
                self.event(
                    EventType::ActivityTaskFailed,
                    Ev::ActivityTaskFailedEventAttributes(ActivityTaskFailedEventAttributes {
                        failure: Some(decode_or_default::<Failure>(&failure)),
                        scheduled_event_id: scheduled_id,
                        started_event_id: started_id,
                        identity,
                        retry_state,
                        ..Default::default()
                    }),
                );
            }
        }
    }

    fn close(&mut self, status: RunStatus) {
        self.run.status = status;
        self.run.close_ms = Some(self.now_ms);
        self.run.workflow_task = None;
        self.out.effects.push(Effect::RunClosed);
        // A child that continues as new tells its parent when the last run of the chain closes.
        if self.run.parent.is_some() && status != RunStatus::ContinuedAsNew {
            self.out.effects.push(Effect::TellParent);
        }
        for c in self.run.children.values().filter(|c| !c.closed) {
            if let Some(run_id) = &c.run_id {
                self.out.effects.push(Effect::CloseChild {
                    workflow_id: c.workflow_id.clone(),
                    run_id: run_id.clone(),
                    parent_close_policy: c.parent_close_policy,
                });
            }
        }
    }

    fn external_done_event(&mut self, x: &ExternalInfo, delivered: bool) {
        let exec = Some(norn_proto::protos::temporal::api::common::v1::WorkflowExecution {
            workflow_id: x.workflow_id.clone(),
            run_id: x.run_id.clone(),
        });
        let ns = self.run.namespace_id.clone();
        let id = x.initiated_id;
        let (t, a) = match (x.signal.is_empty(), delivered) {
            (false, true) => (
                EventType::ExternalWorkflowExecutionSignaled,
                Ev::ExternalWorkflowExecutionSignaledEventAttributes(
                    ExternalWorkflowExecutionSignaledEventAttributes {
                        initiated_event_id: id,
                        namespace_id: ns,
                        workflow_execution: exec,
                        ..Default::default()
                    },
                ),
            ),
            (false, false) => (
                EventType::SignalExternalWorkflowExecutionFailed,
                Ev::SignalExternalWorkflowExecutionFailedEventAttributes(
                    SignalExternalWorkflowExecutionFailedEventAttributes {
                        cause: SignalExternalWorkflowExecutionFailedCause::ExternalWorkflowExecutionNotFound as i32,
                        initiated_event_id: id,
                        namespace_id: ns,
                        workflow_execution: exec,
                        ..Default::default()
                    },
                ),
            ),
            (true, true) => (
                EventType::ExternalWorkflowExecutionCancelRequested,
                Ev::ExternalWorkflowExecutionCancelRequestedEventAttributes(
                    ExternalWorkflowExecutionCancelRequestedEventAttributes {
                        initiated_event_id: id,
                        namespace_id: ns,
                        workflow_execution: exec,
                        ..Default::default()
                    },
                ),
            ),
            (true, false) => (
                EventType::RequestCancelExternalWorkflowExecutionFailed,
                Ev::RequestCancelExternalWorkflowExecutionFailedEventAttributes(
                    RequestCancelExternalWorkflowExecutionFailedEventAttributes {
                        cause: CancelExternalWorkflowExecutionFailedCause::ExternalWorkflowExecutionNotFound as i32,
                        initiated_event_id: id,
                        namespace_id: ns,
                        workflow_execution: exec,
                        ..Default::default()
                    },
                ),
            ),
        };
        self.event(t, a);
    }

    fn child_closed_event(&mut self, c: &ChildInfo, outcome: ChildOutcome) {
        let ns = self.run.namespace_id.clone();
        let exec = Some(child_execution(c));
        let wt = Some(WorkflowType { name: c.workflow_type.clone() });
        let (ini, st) = (c.initiated_id, c.started_event_id);
        let (t, a) = match outcome {
            ChildOutcome::Completed(r) => (
                EventType::ChildWorkflowExecutionCompleted,
                Ev::ChildWorkflowExecutionCompletedEventAttributes(ChildWorkflowExecutionCompletedEventAttributes {
                    result: (!r.is_empty()).then(|| decode_or_default::<Payloads>(&r)),
                    namespace_id: ns,
                    workflow_execution: exec,
                    workflow_type: wt,
                    initiated_event_id: ini,
                    started_event_id: st,
                    ..Default::default()
                }),
            ),
            ChildOutcome::Failed(f) => (
                EventType::ChildWorkflowExecutionFailed,
                Ev::ChildWorkflowExecutionFailedEventAttributes(ChildWorkflowExecutionFailedEventAttributes {
                    failure: Some(decode_or_default::<Failure>(&f)),
                    namespace_id: ns,
                    workflow_execution: exec,
                    workflow_type: wt,
                    initiated_event_id: ini,
                    started_event_id: st,
                    retry_state: RetryState::RetryPolicyNotSet as i32,
                    ..Default::default()
                }),
            ),
            ChildOutcome::Canceled(d) => (
                EventType::ChildWorkflowExecutionCanceled,
                Ev::ChildWorkflowExecutionCanceledEventAttributes(ChildWorkflowExecutionCanceledEventAttributes {
                    details: (!d.is_empty()).then(|| decode_or_default::<Payloads>(&d)),
                    namespace_id: ns,
                    workflow_execution: exec,
                    workflow_type: wt,
                    initiated_event_id: ini,
                    started_event_id: st,
                    ..Default::default()
                }),
            ),
            ChildOutcome::Terminated => (
                EventType::ChildWorkflowExecutionTerminated,
                Ev::ChildWorkflowExecutionTerminatedEventAttributes(ChildWorkflowExecutionTerminatedEventAttributes {
                    namespace_id: ns,
                    workflow_execution: exec,
                    workflow_type: wt,
                    initiated_event_id: ini,
                    started_event_id: st,
                    ..Default::default()
                }),
            ),
            ChildOutcome::TimedOut => (
                EventType::ChildWorkflowExecutionTimedOut,
                Ev::ChildWorkflowExecutionTimedOutEventAttributes(ChildWorkflowExecutionTimedOutEventAttributes {
                    namespace_id: ns,
                    workflow_execution: exec,
                    workflow_type: wt,
                    initiated_event_id: ini,
                    started_event_id: st,
                    retry_state: RetryState::RetryPolicyNotSet as i32,
                    ..Default::default()
                }),
            ),
        };
        self.event(t, a);
    }
}

/// `WorkflowTaskScheduled`, naming the sticky queue (kind STICKY, with its normal queue) when the
/// task goes there, as Temporal writes it.
fn scheduled_event(run: &RunState, sticky: bool, attempt: i32) -> (EventType, Ev) {
    let queue = if sticky && !run.sticky_queue.is_empty() {
        TaskQueue {
            name: run.sticky_queue.clone(),
            kind: TaskQueueKind::Sticky as i32,
            normal_name: run.task_queue.clone(),
        }
    } else {
        task_queue(&run.task_queue)
    };
    (
        EventType::WorkflowTaskScheduled,
        Ev::WorkflowTaskScheduledEventAttributes(WorkflowTaskScheduledEventAttributes {
            task_queue: Some(queue),
            start_to_close_timeout: Some(duration(run.workflow_task_timeout_ms)),
            attempt,
        }),
    )
}

fn started_event(t: &WorkflowTaskInfo) -> (EventType, Ev) {
    (
        EventType::WorkflowTaskStarted,
        Ev::WorkflowTaskStartedEventAttributes(WorkflowTaskStartedEventAttributes {
            scheduled_event_id: t.scheduled_id,
            identity: t.identity.clone(),
            request_id: t.request_id.clone(),
            ..Default::default()
        }),
    )
}

/// The events of the started transient workflow task, which the worker gets after the history
/// (empty unless one is started).
pub fn transient_events(run: &RunState) -> Vec<HistoryEvent> {
    let Some(t) = run.workflow_task.as_ref().filter(|t| t.transient) else { return Vec::new() };
    let Some(started_id) = t.started_id else { return Vec::new() };
    let (st, sa) = scheduled_event(run, t.sticky, t.attempt);
    let (tt, ta) = started_event(t);
    vec![
        HistoryEvent {
            event_id: t.scheduled_id,
            event_time: Some(timestamp(t.scheduled_ms)),
            event_type: st as i32,
            task_id: t.scheduled_id,
            attributes: Some(sa),
            ..Default::default()
        },
        HistoryEvent {
            event_id: started_id,
            event_time: Some(timestamp(t.started_ms)),
            event_type: tt as i32,
            task_id: started_id,
            attributes: Some(ta),
            ..Default::default()
        },
    ]
}

fn child_execution(c: &ChildInfo) -> norn_proto::protos::temporal::api::common::v1::WorkflowExecution {
    norn_proto::protos::temporal::api::common::v1::WorkflowExecution {
        workflow_id: c.workflow_id.clone(),
        run_id: c.run_id.clone().unwrap_or_default(),
    }
}

fn task_queue(name: &str) -> TaskQueue {
    TaskQueue { name: name.to_string(), kind: TaskQueueKind::Normal as i32, ..Default::default() }
}

/// Starts a run: `WorkflowExecutionStarted` and the first `WorkflowTaskScheduled`.
pub fn start(
    namespace_id: &str,
    run_id: &str,
    req: &StartWorkflowExecutionRequest,
    now_ms: u64,
) -> Result<(RunState, Outcome), EngineError> {
    start_with_signal(namespace_id, run_id, req, None, now_ms)
}

/// Starts a run whose first event after `WorkflowExecutionStarted` is `signal` (signal-with-start).
pub fn start_with_signal(
    namespace_id: &str,
    run_id: &str,
    req: &StartWorkflowExecutionRequest,
    signal: Option<WorkflowExecutionSignaledEventAttributes>,
    now_ms: u64,
) -> Result<(RunState, Outcome), EngineError> {
    let workflow_type = req.workflow_type.as_ref().map(|t| t.name.clone()).unwrap_or_default();
    let tq = req.task_queue.as_ref().map(|t| t.name.clone()).unwrap_or_default();
    if req.workflow_id.is_empty() {
        return Err(EngineError::InvalidArgument("WorkflowId is not set on request.".into()));
    }
    if workflow_type.is_empty() {
        return Err(EngineError::InvalidArgument("WorkflowType is not set on request.".into()));
    }
    if tq.is_empty() {
        return Err(EngineError::InvalidArgument("TaskQueue is not set on request.".into()));
    }
    let wft_timeout_ms =
        duration_ms(&req.workflow_task_timeout)?.filter(|t| *t > 0).unwrap_or(WORKFLOW_TASK_TIMEOUT_MS_DEFAULT);
    let mut run = RunState {
        namespace_id: namespace_id.into(),
        workflow_id: req.workflow_id.clone(),
        run_id: run_id.into(),
        workflow_type: workflow_type.clone(),
        task_queue: tq.clone(),
        status: RunStatus::Running,
        next_event_id: 1,
        history_bytes: 0,
        last_completed_started_id: 0,
        workflow_task: None,
        activities: Default::default(),
        timers: Default::default(),
        start_request_id: req.request_id.clone(),
        start_ms: now_ms,
        close_ms: None,
        workflow_task_timeout_ms: wft_timeout_ms,
        buffered_events: false,
        buffer: Vec::new(),
        signal_request_ids: Default::default(),
        updates: Default::default(),
        sticky_queue: String::new(),
        sticky_timeout_ms: 0,
        signals_received: 0,
        cancel_requested: false,
        first_run_id: run_id.into(),
        children: Default::default(),
        parent: None,
        externals: Default::default(),
        run_deadline_ms: [duration_ms(&req.workflow_run_timeout)?, duration_ms(&req.workflow_execution_timeout)?]
            .into_iter()
            .flatten()
            .filter(|t| *t > 0)
            .min()
            .map(|t| now_ms.saturating_add(t)),
    };
    let mut w = Writer::new(&mut run, now_ms);
    w.event(
        EventType::WorkflowExecutionStarted,
        Ev::WorkflowExecutionStartedEventAttributes(WorkflowExecutionStartedEventAttributes {
            workflow_type: Some(WorkflowType { name: workflow_type }),
            task_queue: Some(task_queue(&tq)),
            input: req.input.clone(),
            workflow_execution_timeout: req.workflow_execution_timeout,
            workflow_run_timeout: req.workflow_run_timeout,
            workflow_task_timeout: Some(duration(wft_timeout_ms)),
            original_execution_run_id: run_id.into(),
            identity: req.identity.clone(),
            first_execution_run_id: run_id.into(),
            retry_policy: req.retry_policy.clone(),
            attempt: 1,
            memo: req.memo.clone(),
            search_attributes: req.search_attributes.clone(),
            header: req.header.clone(),
            workflow_id: req.workflow_id.clone(),
            ..Default::default()
        }),
    );
    if let Some(sig) = signal {
        if !sig.request_id.is_empty() {
            w.run.signal_request_ids.push_back(sig.request_id.clone());
        }
        w.run.signals_received = 1;
        w.event(EventType::WorkflowExecutionSignaled, Ev::WorkflowExecutionSignaledEventAttributes(sig));
    }
    w.schedule_workflow_task(1);
    let out = w.out;
    Ok((run, out))
}

/// Starts a child run of `parent` from the request its parent's command produced.
pub fn start_child(
    namespace_id: &str,
    run_id: &str,
    req: &StartWorkflowExecutionRequest,
    parent: ParentRef,
    now_ms: u64,
) -> Result<(RunState, Outcome), EngineError> {
    let (mut run, mut out) = start_with_signal(namespace_id, run_id, req, None, now_ms)?;
    if let Some(Ev::WorkflowExecutionStartedEventAttributes(s)) =
        out.events.first_mut().and_then(|e| e.attributes.as_mut())
    {
        s.parent_workflow_namespace = parent.namespace.clone();
        s.parent_workflow_namespace_id = parent.namespace_id.clone();
        s.parent_workflow_execution = Some(norn_proto::protos::temporal::api::common::v1::WorkflowExecution {
            workflow_id: parent.workflow_id.clone(),
            run_id: parent.run_id.clone(),
        });
        s.parent_initiated_event_id = parent.initiated_id;
    }
    run.parent = Some(parent);
    Ok((run, out))
}

fn pending_child(run: &RunState, initiated_id: i64) -> Result<&ChildInfo, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("the parent workflow is closed".into()));
    }
    match run.children.get(&initiated_id) {
        Some(c) if !c.closed => Ok(c),
        _ => Err(EngineError::NotFound(format!("no pending child was initiated by event {initiated_id}"))),
    }
}

/// The child initiated at `initiated_id` started as `child_run_id`. A repeat changes nothing.
pub fn child_started(
    run: &mut RunState,
    initiated_id: i64,
    child_run_id: &str,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    match &pending_child(run, initiated_id)?.run_id {
        Some(r) if r == child_run_id => return Ok(Outcome::default()),
        Some(r) => return Err(EngineError::InvalidArgument(format!("the child already started as run {r}"))),
        None => {}
    }
    if let Some(c) = run.children.get_mut(&initiated_id) {
        c.run_id = Some(child_run_id.into());
    }
    Ok(activity_result(run, Buffered::ChildStarted { initiated_id }, now_ms))
}

/// The signal or cancel request initiated at `initiated_id` reached its target (`delivered`) or
/// found no such workflow. A repeat changes nothing.
pub fn external_done(
    run: &mut RunState,
    initiated_id: i64,
    delivered: bool,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("the workflow is closed".into()));
    }
    match run.externals.get_mut(&initiated_id) {
        Some(x) if !x.done => x.done = true,
        _ => return Ok(Outcome::default()),
    }
    Ok(activity_result(run, Buffered::ExternalDone { initiated_id, delivered }, now_ms))
}

/// The child initiated at `initiated_id` could not start (its workflow id is taken).
pub fn child_start_failed(run: &mut RunState, initiated_id: i64, now_ms: u64) -> Result<Outcome, EngineError> {
    if pending_child(run, initiated_id)?.run_id.is_some() {
        return Err(EngineError::InvalidArgument("the child has started".into()));
    }
    if let Some(c) = run.children.get_mut(&initiated_id) {
        c.closed = true;
    }
    Ok(activity_result(run, Buffered::ChildStartFailed { initiated_id }, now_ms))
}

/// The child run `child_run_id` closed with `outcome`.
pub fn child_closed(
    run: &mut RunState,
    initiated_id: i64,
    child_run_id: &str,
    outcome: ChildOutcome,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    match &pending_child(run, initiated_id)?.run_id {
        Some(r) if r == child_run_id => {}
        // Its start is not recorded yet: the child's shard retries.
        _ => return Err(EngineError::InvalidArgument("the child's start is not recorded yet".into())),
    }
    if let Some(c) = run.children.get_mut(&initiated_id) {
        c.closed = true;
    }
    Ok(activity_result(run, Buffered::ChildClosed { initiated_id, outcome }, now_ms))
}

/// Starts the run that continues `prev` (closed by continue-as-new).
pub fn start_continued(prev: &RunState, next: &ContinueAsNew, now_ms: u64) -> Result<(RunState, Outcome), EngineError> {
    let a = &next.attributes;
    let req = StartWorkflowExecutionRequest {
        workflow_id: prev.workflow_id.clone(),
        workflow_type: a.workflow_type.clone(),
        task_queue: a.task_queue.clone(),
        input: a.input.clone(),
        workflow_run_timeout: a.workflow_run_timeout,
        workflow_task_timeout: a.workflow_task_timeout,
        request_id: next.run_id.clone(),
        retry_policy: a.retry_policy.clone(),
        header: a.header.clone(),
        memo: a.memo.clone(),
        search_attributes: a.search_attributes.clone(),
        ..Default::default()
    };
    let (mut run, mut out) = start_with_signal(&prev.namespace_id, &next.run_id, &req, None, now_ms)?;
    run.first_run_id = prev.first_run_id.clone();
    run.parent = prev.parent.clone();
    if let Some(Ev::WorkflowExecutionStartedEventAttributes(s)) =
        out.events.first_mut().and_then(|e| e.attributes.as_mut())
    {
        s.continued_execution_run_id = prev.run_id.clone();
        s.first_execution_run_id = prev.first_run_id.clone();
        s.initiator = a.initiator;
        s.last_completion_result = a.last_completion_result.clone();
        s.continued_failure = a.failure.clone();
    }
    Ok((run, out))
}

/// A signal for an open run. Written at once, or after the started workflow task closes; a
/// retry with a request id already seen changes nothing.
pub fn signal(
    run: &mut RunState,
    attrs: WorkflowExecutionSignaledEventAttributes,
    signals_max: u64,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("workflow execution already completed".into()));
    }
    if attrs.signal_name.is_empty() {
        return Err(EngineError::InvalidArgument("SignalName is not set on request.".into()));
    }
    if !attrs.request_id.is_empty() && run.signal_request_ids.contains(&attrs.request_id) {
        return Ok(Outcome::default());
    }
    if run.signals_received >= signals_max {
        return Err(EngineError::FailedPrecondition(format!(
            "exceeded workflow execution limit for signal events: the run has received {} signals, the \
             namespace's limit (norn.limits.signals_per_run_max); continue as new to take more",
            run.signals_received
        )));
    }
    run.signals_received = run.signals_received.saturating_add(1);
    if !attrs.request_id.is_empty() {
        run.signal_request_ids.push_back(attrs.request_id.clone());
        if run.signal_request_ids.len() > SIGNAL_REQUEST_IDS_MAX {
            run.signal_request_ids.pop_front();
        }
    }
    Ok(activity_result(run, Buffered::Signaled { attributes: attrs.encode_to_vec() }, now_ms))
}

/// A worker took the workflow task scheduled at `scheduled_id`.
pub fn workflow_task_started(
    run: &mut RunState,
    scheduled_id: i64,
    request_id: &str,
    identity: &str,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("Workflow task not found: the workflow is closed.".into()));
    }
    let task = match &run.workflow_task {
        Some(t) if t.scheduled_id == scheduled_id => t.clone(),
        _ => return Err(EngineError::NotFound("Workflow task not found.".into())),
    };
    if task.started_id.is_some() {
        return Err(EngineError::NotFound("Workflow task already started.".into()));
    }
    let mut w = Writer::new(run, now_ms);
    let started_id = if task.transient {
        // Reserved, not written: see `WorkflowTaskInfo::transient`.
        scheduled_id + 1
    } else {
        w.event(
            EventType::WorkflowTaskStarted,
            Ev::WorkflowTaskStartedEventAttributes(WorkflowTaskStartedEventAttributes {
                scheduled_event_id: scheduled_id,
                identity: identity.into(),
                request_id: request_id.into(),
                ..Default::default()
            }),
        )
    };
    if let Some(t) = w.run.workflow_task.as_mut() {
        t.started_id = Some(started_id);
        t.request_id = request_id.into();
        t.identity = identity.into();
        t.started_ms = now_ms;
    }
    Ok(w.out)
}

fn started_task(run: &RunState, scheduled_id: i64, started_id: i64) -> Result<WorkflowTaskInfo, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("Workflow task not found: the workflow is closed.".into()));
    }
    match &run.workflow_task {
        Some(t) if t.scheduled_id == scheduled_id && t.started_id == Some(started_id) => Ok(t.clone()),
        _ => Err(EngineError::NotFound("Workflow task not found.".into())),
    }
}

/// Checks every command before any is applied; the index of the first bad one with why.
fn check_commands(
    req: &RespondWorkflowTaskCompletedRequest,
    run: &RunState,
    limits: &EngineLimits,
) -> Result<(), (usize, EngineError)> {
    for (i, c) in req.commands.iter().enumerate() {
        check_command(req, run, limits, i, c).map_err(|e| (i, e))?;
    }
    Ok(())
}

/// Checks command `i` of a completion.
#[allow(deprecated)] // SDKs still fill StartChildWorkflowExecution's namespace
fn check_command(
    req: &RespondWorkflowTaskCompletedRequest,
    run: &RunState,
    limits: &EngineLimits,
    i: usize,
    c: &norn_proto::protos::temporal::api::command::v1::Command,
) -> Result<(), EngineError> {
    let long = |what: &str, v: &str| -> Result<(), EngineError> {
        if v.len() as u64 > limits.id_length_max {
            return Err(EngineError::InvalidArgument(format!("{what} exceeds length limit.")));
        }
        Ok(())
    };
    let Some(attrs) = &c.attributes else {
        return Err(EngineError::InvalidArgument(format!("command {i} has no attributes")));
    };
    match attrs {
        Cmd::ScheduleActivityTaskCommandAttributes(a) => {
            if a.activity_id.is_empty() {
                return Err(EngineError::InvalidArgument("ActivityId is not set on command.".into()));
            }
            if a.activity_type.as_ref().map(|t| t.name.is_empty()).unwrap_or(true) {
                return Err(EngineError::InvalidArgument("ActivityType is not set on command.".into()));
            }
            long("ActivityId", &a.activity_id)?;
            long("ActivityType", a.activity_type.as_ref().map(|t| t.name.as_str()).unwrap_or(""))?;
            long("TaskQueue", a.task_queue.as_ref().map(|t| t.name.as_str()).unwrap_or(""))?;
            if run.activities.values().any(|x| x.activity_id == a.activity_id) {
                return Err(EngineError::InvalidArgument(format!("activity id {} is already in use", a.activity_id)));
            }
            duration_ms(&a.start_to_close_timeout)?;
            duration_ms(&a.schedule_to_close_timeout)?;
            duration_ms(&a.heartbeat_timeout)?;
            duration_ms(&a.schedule_to_start_timeout)?;
            retry_spec(&a.retry_policy)?;
        }
        Cmd::StartTimerCommandAttributes(t) => {
            if t.timer_id.is_empty() {
                return Err(EngineError::InvalidArgument("TimerId is not set on command.".into()));
            }
            long("TimerId", &t.timer_id)?;
            if run.timers.contains_key(&t.timer_id) {
                return Err(EngineError::InvalidArgument(format!("timer id {} is already in use", t.timer_id)));
            }
            if duration_ms(&t.start_to_fire_timeout)?.unwrap_or(0) == 0 {
                return Err(EngineError::InvalidArgument("StartToFireTimeout must be positive.".into()));
            }
        }
        Cmd::StartChildWorkflowExecutionCommandAttributes(a) => {
            if a.workflow_id.is_empty() {
                return Err(EngineError::InvalidArgument("WorkflowId is not set on command.".into()));
            }
            if a.workflow_type.as_ref().is_none_or(|t| t.name.is_empty()) {
                return Err(EngineError::InvalidArgument("WorkflowType is not set on command.".into()));
            }
            long("WorkflowId", &a.workflow_id)?;
            long("WorkflowType", a.workflow_type.as_ref().map(|t| t.name.as_str()).unwrap_or(""))?;
            long("TaskQueue", a.task_queue.as_ref().map(|t| t.name.as_str()).unwrap_or(""))?;
            if !a.namespace.is_empty() && a.namespace != req.namespace {
                return Err(EngineError::Unimplemented(
                    "child workflows in another namespace are not supported by Norn yet".into(),
                ));
            }
            duration_ms(&a.workflow_execution_timeout)?;
            duration_ms(&a.workflow_run_timeout)?;
            duration_ms(&a.workflow_task_timeout)?;
        }
        Cmd::RecordMarkerCommandAttributes(m) => {
            if m.marker_name.is_empty() {
                return Err(EngineError::InvalidArgument("MarkerName is not set on command.".into()));
            }
        }
        Cmd::UpsertWorkflowSearchAttributesCommandAttributes(_) | Cmd::ModifyWorkflowPropertiesCommandAttributes(_) => {
        }
        Cmd::SignalExternalWorkflowExecutionCommandAttributes(a) => {
            if a.execution.as_ref().is_none_or(|e| e.workflow_id.is_empty()) {
                return Err(EngineError::InvalidArgument("WorkflowId is not set on command.".into()));
            }
            if a.signal_name.is_empty() {
                return Err(EngineError::InvalidArgument("SignalName is not set on command.".into()));
            }
            long("SignalName", &a.signal_name)?;
            if !a.namespace.is_empty() && a.namespace != req.namespace {
                return Err(EngineError::Unimplemented("signals to another namespace are not supported yet".into()));
            }
        }
        Cmd::RequestCancelExternalWorkflowExecutionCommandAttributes(a) => {
            if a.workflow_id.is_empty() {
                return Err(EngineError::InvalidArgument("WorkflowId is not set on command.".into()));
            }
            if !a.namespace.is_empty() && a.namespace != req.namespace {
                return Err(EngineError::Unimplemented("cancels to another namespace are not supported yet".into()));
            }
        }
        Cmd::CancelTimerCommandAttributes(t) => {
            if !run.timers.contains_key(&t.timer_id) {
                return Err(EngineError::InvalidArgument(format!("timer {} is not pending", t.timer_id)));
            }
        }
        Cmd::RequestCancelActivityTaskCommandAttributes(a) => {
            if !run.activities.contains_key(&a.scheduled_event_id) {
                return Err(EngineError::InvalidArgument(format!(
                    "no pending activity was scheduled by event {}",
                    a.scheduled_event_id
                )));
            }
        }
        Cmd::CompleteWorkflowExecutionCommandAttributes(_)
        | Cmd::FailWorkflowExecutionCommandAttributes(_)
        | Cmd::CancelWorkflowExecutionCommandAttributes(_)
        | Cmd::ContinueAsNewWorkflowExecutionCommandAttributes(_) => {
            if let Cmd::ContinueAsNewWorkflowExecutionCommandAttributes(a) = attrs {
                duration_ms(&a.workflow_run_timeout)?;
                duration_ms(&a.workflow_task_timeout)?;
            }
            if i + 1 != req.commands.len() {
                return Err(EngineError::InvalidArgument("a workflow-closing command must be the last command".into()));
            }
        }
        // Checked with the messages (update::check_messages).
        Cmd::ProtocolMessageCommandAttributes(_) => {}
        _ => {
            let t = CommandType::try_from(c.command_type).map(|t| t.as_str_name()).unwrap_or("unknown");
            return Err(EngineError::Unimplemented(format!("command {t} is not implemented by Norn yet")));
        }
    }
    Ok(())
}

/// The `WorkflowTaskFailed` cause Temporal records for a command with bad attributes.
fn bad_attributes_cause(c: &norn_proto::protos::temporal::api::command::v1::Command) -> WorkflowTaskFailedCause {
    use WorkflowTaskFailedCause as F;
    match CommandType::try_from(c.command_type).unwrap_or(CommandType::Unspecified) {
        CommandType::ScheduleActivityTask => F::BadScheduleActivityAttributes,
        CommandType::RequestCancelActivityTask => F::BadRequestCancelActivityAttributes,
        CommandType::StartTimer => F::BadStartTimerAttributes,
        CommandType::CancelTimer => F::BadCancelTimerAttributes,
        CommandType::RecordMarker => F::BadRecordMarkerAttributes,
        CommandType::CompleteWorkflowExecution => F::BadCompleteWorkflowExecutionAttributes,
        CommandType::FailWorkflowExecution => F::BadFailWorkflowExecutionAttributes,
        CommandType::CancelWorkflowExecution => F::BadCancelWorkflowExecutionAttributes,
        CommandType::RequestCancelExternalWorkflowExecution => F::BadRequestCancelExternalWorkflowExecutionAttributes,
        CommandType::ContinueAsNewWorkflowExecution => F::BadContinueAsNewAttributes,
        CommandType::StartChildWorkflowExecution => F::BadStartChildExecutionAttributes,
        CommandType::SignalExternalWorkflowExecution => F::BadSignalWorkflowExecutionAttributes,
        CommandType::UpsertWorkflowSearchAttributes => F::BadSearchAttributes,
        CommandType::ModifyWorkflowProperties => F::BadModifyWorkflowPropertiesAttributes,
        _ => F::UnhandledCommand,
    }
}

/// The worker completed the started workflow task with `req.commands`.
#[allow(deprecated)] // `control` of SignalExternalWorkflowExecution is echoed as Temporal does
pub fn workflow_task_completed(
    run: &mut RunState,
    scheduled_id: i64,
    started_id: i64,
    req: &RespondWorkflowTaskCompletedRequest,
    limits: &EngineLimits,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    let task = started_task(run, scheduled_id, started_id)?;
    if req.commands.len() as u64 > limits.commands_per_task_max {
        return Err(EngineError::InvalidArgument(format!(
            "the workflow task completion carries {} commands, more than the limit of {}",
            req.commands.len(),
            limits.commands_per_task_max
        )));
    }
    // A command with bad attributes fails the task as Temporal does: `WorkflowTaskFailed` with
    // the command's Bad...Attributes cause, a new attempt, and InvalidArgument to the worker.
    match check_commands(req, run, limits) {
        Ok(()) => {}
        Err((i, EngineError::InvalidArgument(message))) => {
            let cause = bad_attributes_cause(&req.commands[i]);
            return Ok(fail_for_limit(run, &task, req, cause, message, false, now_ms));
        }
        Err((_, e)) => return Err(e),
    }
    update::check_messages(req, run)?;
    if let Some((cause, message)) = oversized_command(req, limits) {
        return Ok(fail_for_limit(run, &task, req, cause, message, true, now_ms));
    }
    if let Some((cause, message)) = pending_over_limit(req, run, limits) {
        return Ok(fail_for_limit(run, &task, req, cause, message, false, now_ms));
    }
    let closes = req.commands.iter().any(|c| {
        matches!(
            c.attributes,
            Some(Cmd::CompleteWorkflowExecutionCommandAttributes(_))
                | Some(Cmd::FailWorkflowExecutionCommandAttributes(_))
                | Some(Cmd::CancelWorkflowExecutionCommandAttributes(_))
                | Some(Cmd::ContinueAsNewWorkflowExecutionCommandAttributes(_))
        )
    });
    let mut w = Writer::new(run, now_ms);
    // A transient task's scheduled and started events are written now, before its completion.
    w.materialize_transient();
    if closes && w.run.buffered_events {
        // New events arrived during the task: the workflow must see them before it may close.
        w.event(
            EventType::WorkflowTaskFailed,
            Ev::WorkflowTaskFailedEventAttributes(WorkflowTaskFailedEventAttributes {
                scheduled_event_id: scheduled_id,
                started_event_id: started_id,
                cause: WorkflowTaskFailedCause::UnhandledCommand as i32,
                identity: req.identity.clone(),
                ..Default::default()
            }),
        );
        w.run.workflow_task = None;
        w.run.buffered_events = false;
        w.run.clear_sticky();
        w.flush_buffer();
        w.schedule_workflow_task(1);
        let mut out = w.out;
        out.reply_error = Some(EngineError::UnhandledCommand);
        return Ok(out);
    }
    let completed_id = w.event(
        EventType::WorkflowTaskCompleted,
        Ev::WorkflowTaskCompletedEventAttributes(WorkflowTaskCompletedEventAttributes {
            scheduled_event_id: scheduled_id,
            started_event_id: started_id,
            identity: req.identity.clone(),
            sdk_metadata: req.sdk_metadata.clone(),
            metering_metadata: req.metering_metadata,
            ..Default::default()
        }),
    );
    w.run.workflow_task = None;
    w.run.last_completed_started_id = task.started_id.unwrap_or(0);
    set_sticky(w.run, req);
    let had_buffered = std::mem::replace(&mut w.run.buffered_events, false);
    let mut new_events = false;
    for c in &req.commands {
        match &c.attributes {
            Some(Cmd::ScheduleActivityTaskCommandAttributes(a)) => {
                let tq = a.task_queue.as_ref().map(|t| t.name.clone()).filter(|n| !n.is_empty());
                let tq = tq.unwrap_or_else(|| w.run.task_queue.clone());
                let retry = retry_spec(&a.retry_policy)?;
                let attrs = ActivityTaskScheduledEventAttributes {
                    activity_id: a.activity_id.clone(),
                    activity_type: a.activity_type.clone().or(Some(ActivityType::default())),
                    task_queue: Some(task_queue(&tq)),
                    header: a.header.clone(),
                    input: a.input.clone(),
                    schedule_to_close_timeout: a.schedule_to_close_timeout,
                    schedule_to_start_timeout: a.schedule_to_start_timeout,
                    start_to_close_timeout: a.start_to_close_timeout,
                    heartbeat_timeout: a.heartbeat_timeout,
                    workflow_task_completed_event_id: completed_id,
                    retry_policy: Some(retry_policy(&retry)),
                    priority: a.priority.clone(),
                    ..Default::default()
                };
                let encoded = attrs.encode_to_vec();
                let activity_type = a.activity_type.as_ref().map(|t| t.name.clone()).unwrap_or_default();
                let id = w.event(EventType::ActivityTaskScheduled, Ev::ActivityTaskScheduledEventAttributes(attrs));
                w.run.activities.insert(
                    id,
                    ActivityInfo {
                        scheduled_id: id,
                        activity_id: a.activity_id.clone(),
                        activity_type,
                        task_queue: tq.clone(),
                        attempt: 1,
                        scheduled_event: encoded,
                        scheduled_ms: now_ms,
                        started_ms: 0,
                        start_to_close_ms: duration_ms(&a.start_to_close_timeout)?
                            .filter(|t| *t > 0)
                            .or(duration_ms(&a.schedule_to_close_timeout)?)
                            .unwrap_or(0),
                        request_id: String::new(),
                        identity: String::new(),
                        first_scheduled_ms: now_ms,
                        schedule_to_close_ms: duration_ms(&a.schedule_to_close_timeout)?.unwrap_or(0),
                        retry,
                        last_failure: Vec::new(),
                        cancel_requested_id: 0,
                        heartbeat_details: Vec::new(),
                        heartbeat_timeout_ms: duration_ms(&a.heartbeat_timeout)?.unwrap_or(0),
                        last_heartbeat_ms: 0,
                        schedule_to_start_ms: duration_ms(&a.schedule_to_start_timeout)?.unwrap_or(0),
                    },
                );
                // Eager dispatch, as Temporal offers it: an activity of the workflow's own task
                // queue that the worker reserved a slot for starts with this very completion and
                // goes back in its answer, sparing a poll and a proposal.
                if a.request_eager_execution && tq == w.run.task_queue {
                    let request_id = format!("eager-{completed_id}-{id}");
                    if let Some(info) = w.run.activities.get_mut(&id) {
                        info.request_id = request_id;
                        info.identity = req.identity.clone();
                        info.started_ms = now_ms;
                        info.last_heartbeat_ms = now_ms;
                    }
                    w.out.effects.push(Effect::ActivityStartedEagerly {
                        scheduled_id: id,
                        activity_id: a.activity_id.clone(),
                        workflow_type: w.run.workflow_type.clone(),
                        at_ms: now_ms,
                    });
                } else {
                    w.out.effects.push(Effect::ActivityTaskReady { task_queue: tq, scheduled_id: id, ready_at_ms: 0 });
                }
            }
            Some(Cmd::StartTimerCommandAttributes(t)) => {
                let fire_ms = duration_ms(&t.start_to_fire_timeout)?.unwrap_or(0);
                let id = w.event(
                    EventType::TimerStarted,
                    Ev::TimerStartedEventAttributes(TimerStartedEventAttributes {
                        timer_id: t.timer_id.clone(),
                        start_to_fire_timeout: t.start_to_fire_timeout,
                        workflow_task_completed_event_id: completed_id,
                    }),
                );
                let fire_at_ms = now_ms.saturating_add(fire_ms);
                w.run
                    .timers
                    .insert(t.timer_id.clone(), TimerInfo { timer_id: t.timer_id.clone(), started_id: id, fire_at_ms });
                w.out.effects.push(Effect::TimerArmed { timer_id: t.timer_id.clone(), started_id: id, fire_at_ms });
            }
            Some(Cmd::StartChildWorkflowExecutionCommandAttributes(a)) => {
                let tq = a.task_queue.as_ref().map(|t| t.name.clone()).filter(|n| !n.is_empty());
                let tq = tq.unwrap_or_else(|| w.run.task_queue.clone());
                let initiated_id = w.event(
                    EventType::StartChildWorkflowExecutionInitiated,
                    Ev::StartChildWorkflowExecutionInitiatedEventAttributes(
                        StartChildWorkflowExecutionInitiatedEventAttributes {
                            namespace: req.namespace.clone(),
                            namespace_id: w.run.namespace_id.clone(),
                            workflow_id: a.workflow_id.clone(),
                            workflow_type: a.workflow_type.clone(),
                            task_queue: Some(task_queue(&tq)),
                            input: a.input.clone(),
                            workflow_execution_timeout: a.workflow_execution_timeout,
                            workflow_run_timeout: a.workflow_run_timeout,
                            workflow_task_timeout: a.workflow_task_timeout,
                            parent_close_policy: a.parent_close_policy,
                            workflow_task_completed_event_id: completed_id,
                            workflow_id_reuse_policy: a.workflow_id_reuse_policy,
                            retry_policy: a.retry_policy.clone(),
                            cron_schedule: a.cron_schedule.clone(),
                            header: a.header.clone(),
                            memo: a.memo.clone(),
                            search_attributes: a.search_attributes.clone(),
                            ..Default::default()
                        },
                    ),
                );
                let request = StartWorkflowExecutionRequest {
                    namespace: req.namespace.clone(),
                    workflow_id: a.workflow_id.clone(),
                    workflow_type: a.workflow_type.clone(),
                    task_queue: Some(task_queue(&tq)),
                    input: a.input.clone(),
                    workflow_execution_timeout: a.workflow_execution_timeout,
                    workflow_run_timeout: a.workflow_run_timeout,
                    workflow_task_timeout: a.workflow_task_timeout,
                    request_id: derived_run_id(&[w.run.run_id.as_bytes(), &initiated_id.to_be_bytes(), b"child"]),
                    workflow_id_reuse_policy: a.workflow_id_reuse_policy,
                    retry_policy: a.retry_policy.clone(),
                    header: a.header.clone(),
                    memo: a.memo.clone(),
                    search_attributes: a.search_attributes.clone(),
                    ..Default::default()
                };
                w.run.children.insert(
                    initiated_id,
                    ChildInfo {
                        initiated_id,
                        workflow_id: a.workflow_id.clone(),
                        workflow_type: a.workflow_type.as_ref().map(|t| t.name.clone()).unwrap_or_default(),
                        request: request.encode_to_vec(),
                        run_id: None,
                        started_event_id: 0,
                        initiated_ms: now_ms,
                        parent_close_policy: a.parent_close_policy,
                        closed: false,
                    },
                );
                w.out.effects.push(Effect::StartChild { initiated_id });
            }
            Some(Cmd::RecordMarkerCommandAttributes(m)) => {
                w.event(
                    EventType::MarkerRecorded,
                    Ev::MarkerRecordedEventAttributes(MarkerRecordedEventAttributes {
                        marker_name: m.marker_name.clone(),
                        details: m.details.clone(),
                        workflow_task_completed_event_id: completed_id,
                        header: m.header.clone(),
                        failure: m.failure.clone(),
                    }),
                );
            }
            Some(Cmd::UpsertWorkflowSearchAttributesCommandAttributes(u)) => {
                w.event(
                    EventType::UpsertWorkflowSearchAttributes,
                    Ev::UpsertWorkflowSearchAttributesEventAttributes(UpsertWorkflowSearchAttributesEventAttributes {
                        workflow_task_completed_event_id: completed_id,
                        search_attributes: u.search_attributes.clone(),
                    }),
                );
            }
            Some(Cmd::ModifyWorkflowPropertiesCommandAttributes(p)) => {
                w.event(
                    EventType::WorkflowPropertiesModified,
                    Ev::WorkflowPropertiesModifiedEventAttributes(WorkflowPropertiesModifiedEventAttributes {
                        workflow_task_completed_event_id: completed_id,
                        upserted_memo: p.upserted_memo.clone(),
                    }),
                );
            }
            Some(Cmd::SignalExternalWorkflowExecutionCommandAttributes(a)) => {
                let exec = a.execution.clone().unwrap_or_default();
                let initiated_id = w.event(
                    EventType::SignalExternalWorkflowExecutionInitiated,
                    Ev::SignalExternalWorkflowExecutionInitiatedEventAttributes(
                        SignalExternalWorkflowExecutionInitiatedEventAttributes {
                            workflow_task_completed_event_id: completed_id,
                            namespace: req.namespace.clone(),
                            namespace_id: w.run.namespace_id.clone(),
                            workflow_execution: Some(exec.clone()),
                            signal_name: a.signal_name.clone(),
                            input: a.input.clone(),
                            child_workflow_only: a.child_workflow_only,
                            header: a.header.clone(),
                            control: a.control.clone(),
                        },
                    ),
                );
                let signal = WorkflowExecutionSignaledEventAttributes {
                    signal_name: a.signal_name.clone(),
                    input: a.input.clone(),
                    identity: req.identity.clone(),
                    header: a.header.clone(),
                    external_workflow_execution: Some(
                        norn_proto::protos::temporal::api::common::v1::WorkflowExecution {
                            workflow_id: w.run.workflow_id.clone(),
                            run_id: w.run.run_id.clone(),
                        },
                    ),
                    request_id: derived_run_id(&[w.run.run_id.as_bytes(), &initiated_id.to_be_bytes(), b"signal"]),
                    ..Default::default()
                };
                let info = ExternalInfo {
                    initiated_id,
                    workflow_id: exec.workflow_id,
                    run_id: exec.run_id,
                    signal: signal.encode_to_vec(),
                    initiated_ms: now_ms,
                    done: false,
                };
                w.run.externals.insert(initiated_id, info);
                w.out.effects.push(Effect::DeliverExternal { initiated_id });
            }
            Some(Cmd::RequestCancelExternalWorkflowExecutionCommandAttributes(a)) => {
                let initiated_id = w.event(
                    EventType::RequestCancelExternalWorkflowExecutionInitiated,
                    Ev::RequestCancelExternalWorkflowExecutionInitiatedEventAttributes(
                        RequestCancelExternalWorkflowExecutionInitiatedEventAttributes {
                            workflow_task_completed_event_id: completed_id,
                            namespace: req.namespace.clone(),
                            namespace_id: w.run.namespace_id.clone(),
                            workflow_execution: Some(
                                norn_proto::protos::temporal::api::common::v1::WorkflowExecution {
                                    workflow_id: a.workflow_id.clone(),
                                    run_id: a.run_id.clone(),
                                },
                            ),
                            child_workflow_only: a.child_workflow_only,
                            reason: a.reason.clone(),
                            ..Default::default()
                        },
                    ),
                );
                let info = ExternalInfo {
                    initiated_id,
                    workflow_id: a.workflow_id.clone(),
                    run_id: a.run_id.clone(),
                    signal: Vec::new(),
                    initiated_ms: now_ms,
                    done: false,
                };
                w.run.externals.insert(initiated_id, info);
                w.out.effects.push(Effect::DeliverExternal { initiated_id });
            }
            Some(Cmd::CancelTimerCommandAttributes(t)) => {
                let Some(timer) = w.run.timers.remove(&t.timer_id) else { continue };
                w.event(
                    EventType::TimerCanceled,
                    Ev::TimerCanceledEventAttributes(TimerCanceledEventAttributes {
                        timer_id: t.timer_id.clone(),
                        started_event_id: timer.started_id,
                        workflow_task_completed_event_id: completed_id,
                        identity: req.identity.clone(),
                    }),
                );
            }
            Some(Cmd::RequestCancelActivityTaskCommandAttributes(c)) => {
                let scheduled_id = c.scheduled_event_id;
                let requested_id = w.event(
                    EventType::ActivityTaskCancelRequested,
                    Ev::ActivityTaskCancelRequestedEventAttributes(ActivityTaskCancelRequestedEventAttributes {
                        scheduled_event_id: scheduled_id,
                        workflow_task_completed_event_id: completed_id,
                    }),
                );
                let Some(a) = w.run.activities.get_mut(&scheduled_id) else { continue };
                a.cancel_requested_id = requested_id;
                if a.request_id.is_empty() {
                    // Not running anywhere: canceled at once. A started one learns of the
                    // request from its next heartbeat and answers RespondActivityTaskCanceled.
                    w.run.activities.remove(&scheduled_id);
                    w.event(
                        EventType::ActivityTaskCanceled,
                        Ev::ActivityTaskCanceledEventAttributes(ActivityTaskCanceledEventAttributes {
                            latest_cancel_requested_event_id: requested_id,
                            scheduled_event_id: scheduled_id,
                            identity: req.identity.clone(),
                            ..Default::default()
                        }),
                    );
                    new_events = true;
                }
            }
            Some(Cmd::CompleteWorkflowExecutionCommandAttributes(a)) => {
                w.event(
                    EventType::WorkflowExecutionCompleted,
                    Ev::WorkflowExecutionCompletedEventAttributes(WorkflowExecutionCompletedEventAttributes {
                        result: a.result.clone(),
                        workflow_task_completed_event_id: completed_id,
                        new_execution_run_id: String::new(),
                    }),
                );
                w.close(RunStatus::Completed);
            }
            Some(Cmd::FailWorkflowExecutionCommandAttributes(a)) => {
                w.event(
                    EventType::WorkflowExecutionFailed,
                    Ev::WorkflowExecutionFailedEventAttributes(WorkflowExecutionFailedEventAttributes {
                        failure: a.failure.clone(),
                        retry_state: RetryState::RetryPolicyNotSet as i32,
                        workflow_task_completed_event_id: completed_id,
                        new_execution_run_id: String::new(),
                    }),
                );
                w.close(RunStatus::Failed);
            }
            Some(Cmd::CancelWorkflowExecutionCommandAttributes(a)) => {
                w.event(
                    EventType::WorkflowExecutionCanceled,
                    Ev::WorkflowExecutionCanceledEventAttributes(WorkflowExecutionCanceledEventAttributes {
                        workflow_task_completed_event_id: completed_id,
                        details: a.details.clone(),
                    }),
                );
                w.close(RunStatus::Canceled);
            }
            Some(Cmd::ContinueAsNewWorkflowExecutionCommandAttributes(a)) => {
                let run_id = derived_run_id(&[w.run.run_id.as_bytes(), &completed_id.to_be_bytes(), b"continue"]);
                let mut a = a.clone();
                if a.workflow_type.as_ref().is_none_or(|t| t.name.is_empty()) {
                    a.workflow_type = Some(WorkflowType { name: w.run.workflow_type.clone() });
                }
                if a.task_queue.as_ref().is_none_or(|t| t.name.is_empty()) {
                    a.task_queue = Some(task_queue(&w.run.task_queue));
                }
                if a.workflow_task_timeout.is_none() {
                    a.workflow_task_timeout = Some(duration(w.run.workflow_task_timeout_ms));
                }
                w.event(
                    EventType::WorkflowExecutionContinuedAsNew,
                    Ev::WorkflowExecutionContinuedAsNewEventAttributes(
                        WorkflowExecutionContinuedAsNewEventAttributes {
                            new_execution_run_id: run_id.clone(),
                            workflow_type: a.workflow_type.clone(),
                            task_queue: a.task_queue.clone(),
                            input: a.input.clone(),
                            workflow_run_timeout: a.workflow_run_timeout,
                            workflow_task_timeout: a.workflow_task_timeout,
                            workflow_task_completed_event_id: completed_id,
                            backoff_start_interval: a.backoff_start_interval,
                            initiator: a.initiator,
                            last_completion_result: a.last_completion_result.clone(),
                            header: a.header.clone(),
                            memo: a.memo.clone(),
                            search_attributes: a.search_attributes.clone(),
                            ..Default::default()
                        },
                    ),
                );
                w.close(RunStatus::ContinuedAsNew);
                w.out.continued_as_new = Some(ContinueAsNew { run_id, attributes: a });
            }
            Some(Cmd::ProtocolMessageCommandAttributes(a)) => {
                if let Some(m) = req.messages.iter().find(|m| m.id == a.message_id) {
                    w.protocol_message(m);
                }
            }
            // check_commands rejected everything else.
            _ => {}
        }
    }
    // Messages no command placed (rejections, say) apply after the commands.
    for m in &req.messages {
        let placed = req
            .commands
            .iter()
            .any(|c| matches!(&c.attributes, Some(Cmd::ProtocolMessageCommandAttributes(a)) if a.message_id == m.id));
        if !placed {
            w.protocol_message(m);
        }
    }
    // What arrived during the task goes after the task's own events, as in Temporal. (A closing
    // command never gets here with a non-empty buffer: that is an UnhandledCommand.)
    w.flush_buffer();
    if w.run.is_open() && (had_buffered || new_events || req.force_create_new_workflow_task) {
        w.schedule_workflow_task(1);
    }
    // A history past its limits ends the run, as in Temporal.
    if w.run.is_open()
        && (w.run.next_event_id.saturating_sub(1) as u64 > limits.history_count_max
            || w.run.history_bytes > limits.history_size_max_bytes)
    {
        w.event(
            EventType::WorkflowExecutionTerminated,
            Ev::WorkflowExecutionTerminatedEventAttributes(WorkflowExecutionTerminatedEventAttributes {
                reason: crate::limits::HISTORY_TOO_LARGE.into(),
                details: None,
                identity: "history-service".into(),
            }),
        );
        w.run.activities.clear();
        w.run.timers.clear();
        w.run.buffer.clear();
        w.run.buffered_events = false;
        w.close(RunStatus::Terminated);
    }
    // A run that closed with this completion runs no activity: nothing goes back eagerly.
    if !w.run.is_open() {
        w.out.effects.retain(|e| !matches!(e, Effect::ActivityStartedEagerly { .. }));
    }
    Ok(w.out)
}

/// The first payload of `req`'s commands over the blob limit: the cause Temporal gives and its
/// message.
fn oversized_command(
    req: &RespondWorkflowTaskCompletedRequest,
    limits: &EngineLimits,
) -> Option<(WorkflowTaskFailedCause, String)> {
    fn size<M: Message>(m: &Option<M>) -> u64 {
        m.as_ref().map(|m| m.encoded_len() as u64).unwrap_or(0)
    }
    for c in &req.commands {
        let (bytes, cause, what) = match &c.attributes {
            Some(Cmd::ScheduleActivityTaskCommandAttributes(a)) => (
                size(&a.input),
                WorkflowTaskFailedCause::BadScheduleActivityAttributes,
                "ScheduleActivityTaskCommandAttributes.Input",
            ),
            Some(Cmd::CompleteWorkflowExecutionCommandAttributes(a)) => (
                size(&a.result),
                WorkflowTaskFailedCause::BadCompleteWorkflowExecutionAttributes,
                "CompleteWorkflowExecutionCommandAttributes.Result",
            ),
            Some(Cmd::FailWorkflowExecutionCommandAttributes(a)) => (
                size(&a.failure),
                WorkflowTaskFailedCause::BadFailWorkflowExecutionAttributes,
                "FailWorkflowExecutionCommandAttributes.Failure",
            ),
            Some(Cmd::CancelWorkflowExecutionCommandAttributes(a)) => (
                size(&a.details),
                WorkflowTaskFailedCause::BadCancelWorkflowExecutionAttributes,
                "CancelWorkflowExecutionCommandAttributes.Details",
            ),
            Some(Cmd::ContinueAsNewWorkflowExecutionCommandAttributes(a)) => (
                size(&a.input).max(size(&a.memo)).max(size(&a.header)),
                WorkflowTaskFailedCause::BadContinueAsNewAttributes,
                "ContinueAsNewWorkflowExecutionCommandAttributes.Input",
            ),
            Some(Cmd::StartChildWorkflowExecutionCommandAttributes(a)) => (
                size(&a.input).max(size(&a.memo)).max(size(&a.header)),
                WorkflowTaskFailedCause::BadStartChildExecutionAttributes,
                "StartChildWorkflowExecutionCommandAttributes.Input",
            ),
            Some(Cmd::SignalExternalWorkflowExecutionCommandAttributes(a)) => (
                size(&a.input),
                WorkflowTaskFailedCause::BadSignalInputSize,
                "SignalExternalWorkflowExecutionCommandAttributes.Input",
            ),
            Some(Cmd::RecordMarkerCommandAttributes(a)) => (
                a.details.values().map(|p| p.encoded_len() as u64).sum::<u64>() + size(&a.failure),
                WorkflowTaskFailedCause::BadRecordMarkerAttributes,
                "RecordMarkerCommandAttributes.Details",
            ),
            Some(Cmd::UpsertWorkflowSearchAttributesCommandAttributes(a)) => (
                size(&a.search_attributes),
                WorkflowTaskFailedCause::BadSearchAttributes,
                "UpsertWorkflowSearchAttributesCommandAttributes.SearchAttributes",
            ),
            Some(Cmd::ModifyWorkflowPropertiesCommandAttributes(a)) => (
                size(&a.upserted_memo),
                WorkflowTaskFailedCause::BadModifyWorkflowPropertiesAttributes,
                "ModifyWorkflowPropertiesCommandAttributes.UpsertedMemo",
            ),
            _ => continue,
        };
        if bytes > limits.blob_size_max_bytes {
            return Some((cause, format!("{what} exceeds size limit.")));
        }
    }
    let messages: u64 = req.messages.iter().map(|m| m.encoded_len() as u64).max().unwrap_or(0);
    if messages > limits.blob_size_max_bytes {
        return Some((
            WorkflowTaskFailedCause::BadUpdateWorkflowExecutionMessage,
            "Message exceeds size limit.".into(),
        ));
    }
    None
}

/// The first per-run pending limit `req`'s commands would pass, with Temporal's cause and text.
fn pending_over_limit(
    req: &RespondWorkflowTaskCompletedRequest,
    run: &RunState,
    limits: &EngineLimits,
) -> Option<(WorkflowTaskFailedCause, String)> {
    let count = |f: fn(&Option<Cmd>) -> bool| req.commands.iter().filter(|c| f(&c.attributes)).count() as u64;
    let activities = count(|a| matches!(a, Some(Cmd::ScheduleActivityTaskCommandAttributes(_))));
    let children = count(|a| matches!(a, Some(Cmd::StartChildWorkflowExecutionCommandAttributes(_))));
    let signals = count(|a| matches!(a, Some(Cmd::SignalExternalWorkflowExecutionCommandAttributes(_))));
    let cancels = count(|a| matches!(a, Some(Cmd::RequestCancelExternalWorkflowExecutionCommandAttributes(_))));
    let pending_children = run.children.values().filter(|c| !c.closed).count() as u64;
    let pending_signals = run.externals.values().filter(|x| !x.signal.is_empty()).count() as u64;
    let pending_cancels = run.externals.len() as u64 - pending_signals;
    let checks = [
        (
            run.activities.len() as u64,
            activities,
            limits.pending_activities_max,
            "activities",
            WorkflowTaskFailedCause::PendingActivitiesLimitExceeded,
        ),
        (
            pending_children,
            children,
            limits.pending_children_max,
            "child workflows",
            WorkflowTaskFailedCause::PendingChildWorkflowsLimitExceeded,
        ),
        (
            pending_signals,
            signals,
            limits.pending_signals_max,
            "signals to external workflows",
            WorkflowTaskFailedCause::PendingSignalsLimitExceeded,
        ),
        (
            pending_cancels,
            cancels,
            limits.pending_cancels_max,
            "requests to cancel external workflows",
            WorkflowTaskFailedCause::PendingRequestCancelLimitExceeded,
        ),
    ];
    for (pending, new, max, what, cause) in checks {
        if new > 0 && pending.saturating_add(new) > max {
            return Some((
                cause,
                format!("the number of pending {what}, {pending}, has reached the per-workflow limit of {max}"),
            ));
        }
    }
    None
}

/// Ends a workflow task whose commands break a limit: `WorkflowTaskFailed` with `cause`, then
/// either the run fails (`fail_run`, as Temporal does for an oversized payload) or a new attempt is
/// scheduled (a pending limit, which the workflow can wait out). The worker gets InvalidArgument.
fn fail_for_limit(
    run: &mut RunState,
    task: &WorkflowTaskInfo,
    req: &RespondWorkflowTaskCompletedRequest,
    cause: WorkflowTaskFailedCause,
    message: String,
    fail_run: bool,
    now_ms: u64,
) -> Outcome {
    let failure = Failure { message: message.clone(), source: "history-service".into(), ..Default::default() };
    let mut w = Writer::new(run, now_ms);
    if fail_run || !task.transient {
        w.materialize_transient();
        w.event(
            EventType::WorkflowTaskFailed,
            Ev::WorkflowTaskFailedEventAttributes(WorkflowTaskFailedEventAttributes {
                scheduled_event_id: task.scheduled_id,
                started_event_id: task.started_id.unwrap_or(0),
                cause: cause as i32,
                failure: Some(failure.clone()),
                identity: req.identity.clone(),
                ..Default::default()
            }),
        );
    }
    w.run.workflow_task = None;
    w.run.buffered_events = false;
    w.run.clear_sticky();
    w.flush_buffer();
    if fail_run {
        let failed_id = w.run.next_event_id - 1;
        w.event(
            EventType::WorkflowExecutionFailed,
            Ev::WorkflowExecutionFailedEventAttributes(WorkflowExecutionFailedEventAttributes {
                failure: Some(failure),
                retry_state: RetryState::NonRetryableFailure as i32,
                workflow_task_completed_event_id: failed_id,
                new_execution_run_id: String::new(),
            }),
        );
        w.run.activities.clear();
        w.run.timers.clear();
        w.close(RunStatus::Failed);
    } else {
        w.schedule_workflow_task(task.attempt.saturating_add(1));
    }
    let mut out = w.out;
    out.reply_error = Some(EngineError::InvalidArgument(message));
    out
}

/// The worker failed the started workflow task; a new attempt is scheduled.
pub fn workflow_task_failed(
    run: &mut RunState,
    scheduled_id: i64,
    started_id: i64,
    req: &RespondWorkflowTaskFailedRequest,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    let task = started_task(run, scheduled_id, started_id)?;
    let mut w = Writer::new(run, now_ms);
    // A failed retry leaves no trace in history (Temporal's transient rule); the first failure does.
    if !task.transient {
        w.event(
            EventType::WorkflowTaskFailed,
            Ev::WorkflowTaskFailedEventAttributes(WorkflowTaskFailedEventAttributes {
                scheduled_event_id: scheduled_id,
                started_event_id: started_id,
                cause: req.cause,
                failure: req.failure.clone(),
                identity: req.identity.clone(),
                ..Default::default()
            }),
        );
    }
    w.run.workflow_task = None;
    w.run.buffered_events = false;
    // The worker's copy of the run is no good: the next attempt goes to the normal queue.
    w.run.clear_sticky();
    w.flush_buffer();
    w.schedule_workflow_task(task.attempt.saturating_add(1));
    Ok(w.out)
}

/// A worker took the activity task scheduled at `scheduled_id`. No event is written until the
/// activity closes (as in Temporal); the start is recorded in the run state.
pub fn activity_task_started(
    run: &mut RunState,
    scheduled_id: i64,
    request_id: &str,
    identity: &str,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("Activity task not found: the workflow is closed.".into()));
    }
    let a = run
        .activities
        .get_mut(&scheduled_id)
        .ok_or_else(|| EngineError::NotFound("Activity task not found.".into()))?;
    if !a.request_id.is_empty() {
        return Err(EngineError::NotFound("Activity task already started.".into()));
    }
    a.request_id = request_id.into();
    a.identity = identity.into();
    a.started_ms = now_ms;
    a.last_heartbeat_ms = now_ms;
    Ok(Outcome::default())
}

fn started_activity(run: &RunState, scheduled_id: i64, attempt: i32) -> Result<(), EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("Activity task not found: the workflow is closed.".into()));
    }
    match run.activities.get(&scheduled_id) {
        Some(a) if !a.request_id.is_empty() && a.attempt == attempt => Ok(()),
        _ => Err(EngineError::NotFound("Activity task not found.".into())),
    }
}

fn activity_result(run: &mut RunState, b: Buffered, now_ms: u64) -> Outcome {
    let mut w = Writer::new(run, now_ms);
    let started = w.run.workflow_task.as_ref().map(|t| t.started_id.is_some()).unwrap_or(false);
    if started {
        w.run.buffer.push(b);
        w.run.buffered_events = true;
    } else {
        w.run.buffer.push(b);
        w.flush_buffer();
        w.need_workflow_task();
    }
    w.out
}

/// The started activity completed with `result` (encoded `Payloads`, empty for none).
pub fn activity_task_completed(
    run: &mut RunState,
    scheduled_id: i64,
    attempt: i32,
    result: Vec<u8>,
    identity: &str,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    started_activity(run, scheduled_id, attempt)?;
    Ok(activity_result(run, Buffered::ActivityCompleted { scheduled_id, result, identity: identity.into() }, now_ms))
}

/// The started activity failed (encoded `Failure`). If its retry policy allows another attempt,
/// the activity is scheduled again after the backoff and no event is written (as in Temporal);
/// otherwise the failure goes to the workflow.
pub fn activity_task_failed(
    run: &mut RunState,
    scheduled_id: i64,
    attempt: i32,
    failure: Vec<u8>,
    identity: &str,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    started_activity(run, scheduled_id, attempt)?;
    let decoded = decode_or_default::<Failure>(&failure);
    match next_attempt_at(&run.activities[&scheduled_id], &decoded, now_ms) {
        Ok(ready_at_ms) => Ok(retry_activity(run, scheduled_id, ready_at_ms, failure, now_ms)),
        Err(retry_state) => Ok(activity_result(
            run,
            Buffered::ActivityFailed {
                scheduled_id,
                failure,
                identity: identity.into(),
                retry_state: retry_state as i32,
            },
            now_ms,
        )),
    }
}

/// The retry policy an activity task carries to its worker: the given one with Temporal's
/// defaults filled in (as its scheduled event records it).
pub fn effective_retry_policy(
    p: &Option<norn_proto::protos::temporal::api::common::v1::RetryPolicy>,
) -> Result<norn_proto::protos::temporal::api::common::v1::RetryPolicy, EngineError> {
    Ok(retry_policy(&retry_spec(p)?))
}

/// Temporal's retry defaults: 1 s initial interval, doubling, capped at 100 × the initial one.
const RETRY_INITIAL_MS_DEFAULT: u64 = 1_000;
const RETRY_BACKOFF_MILLI_DEFAULT: u64 = 2_000;
const RETRY_MAX_INTERVAL_FACTOR: u64 = 100;

/// The effective retry policy of an activity: the given one with defaults filled in; a policy
/// Temporal would refuse is refused.
pub fn retry_spec(
    p: &Option<norn_proto::protos::temporal::api::common::v1::RetryPolicy>,
) -> Result<RetrySpec, EngineError> {
    let p = p.clone().unwrap_or_default();
    let initial = duration_ms(&p.initial_interval)?.filter(|v| *v > 0).unwrap_or(RETRY_INITIAL_MS_DEFAULT);
    if !p.backoff_coefficient.is_finite() || (p.backoff_coefficient != 0.0 && p.backoff_coefficient < 1.0) {
        return Err(EngineError::InvalidArgument("BackoffCoefficient cannot be less than 1.".into()));
    }
    let backoff_milli = if p.backoff_coefficient == 0.0 {
        RETRY_BACKOFF_MILLI_DEFAULT
    } else {
        (p.backoff_coefficient.min(1.0e6) * 1000.0).round() as u64
    };
    let maximum = duration_ms(&p.maximum_interval)?.filter(|v| *v > 0);
    if maximum.is_some_and(|m| m < initial) {
        return Err(EngineError::InvalidArgument("MaximumInterval cannot be less than InitialInterval.".into()));
    }
    if p.maximum_attempts < 0 {
        return Err(EngineError::InvalidArgument("MaximumAttempts cannot be negative.".into()));
    }
    Ok(RetrySpec {
        initial_interval_ms: initial,
        backoff_milli,
        maximum_interval_ms: maximum.unwrap_or(initial.saturating_mul(RETRY_MAX_INTERVAL_FACTOR)),
        maximum_attempts: p.maximum_attempts,
        non_retryable_error_types: p.non_retryable_error_types,
    })
}

/// The policy as a worker sees it in `ActivityTaskScheduled` and in the poll response.
fn retry_policy(r: &RetrySpec) -> norn_proto::protos::temporal::api::common::v1::RetryPolicy {
    norn_proto::protos::temporal::api::common::v1::RetryPolicy {
        initial_interval: Some(duration(r.initial_interval_ms)),
        backoff_coefficient: r.backoff_milli as f64 / 1000.0,
        maximum_interval: Some(duration(r.maximum_interval_ms)),
        maximum_attempts: r.maximum_attempts,
        non_retryable_error_types: r.non_retryable_error_types.clone(),
    }
}

/// When the next attempt of a failed activity becomes ready, or why there is none.
fn next_attempt_at(a: &ActivityInfo, failure: &Failure, now_ms: u64) -> Result<u64, RetryState> {
    if let Some(FailureInfo::ApplicationFailureInfo(info)) = &failure.failure_info {
        if info.non_retryable || a.retry.non_retryable_error_types.contains(&info.r#type) {
            return Err(RetryState::NonRetryableFailure);
        }
    }
    if a.retry.maximum_attempts > 0 && a.attempt >= a.retry.maximum_attempts {
        return Err(RetryState::MaximumAttemptsReached);
    }
    let at = now_ms.saturating_add(a.retry.delay_after(a.attempt));
    if a.schedule_to_close_ms > 0 && at >= a.first_scheduled_ms.saturating_add(a.schedule_to_close_ms) {
        return Err(RetryState::Timeout);
    }
    Ok(at)
}

/// Schedules the next attempt of an activity; nothing is written to history.
fn retry_activity(run: &mut RunState, scheduled_id: i64, ready_at_ms: u64, failure: Vec<u8>, now_ms: u64) -> Outcome {
    let mut out = Outcome::default();
    if let Some(a) = run.activities.get_mut(&scheduled_id) {
        a.attempt = a.attempt.saturating_add(1);
        a.request_id.clear();
        a.started_ms = 0;
        a.scheduled_ms = ready_at_ms;
        a.last_failure = failure;
        // Ready at once (no backoff) or when the backoff ends (see `Effect::ActivityTaskReady`).
        let ready_at_ms = if ready_at_ms > now_ms { ready_at_ms } else { 0 };
        out.effects.push(Effect::ActivityTaskReady { task_queue: a.task_queue.clone(), scheduled_id, ready_at_ms });
    }
    out
}

fn timeout_failure(timeout: AttemptTimeout, heartbeat_details: &[u8]) -> Failure {
    let (name, timeout_type) = match timeout {
        AttemptTimeout::StartToClose => ("StartToClose", TimeoutType::StartToClose),
        AttemptTimeout::Heartbeat => ("Heartbeat", TimeoutType::Heartbeat),
        AttemptTimeout::ScheduleToStart => ("ScheduleToStart", TimeoutType::ScheduleToStart),
        AttemptTimeout::ScheduleToClose => ("ScheduleToClose", TimeoutType::ScheduleToClose),
    };
    Failure {
        message: format!("activity {name} timeout"),
        source: "Server".into(),
        failure_info: Some(FailureInfo::TimeoutFailureInfo(TimeoutFailureInfo {
            timeout_type: timeout_type as i32,
            last_heartbeat_details: (!heartbeat_details.is_empty())
                .then(|| decode_or_default::<Payloads>(heartbeat_details)),
        })),
        ..Default::default()
    }
}

/// The started activity acknowledged a cancel request (`details`: encoded `Payloads`).
pub fn activity_task_canceled(
    run: &mut RunState,
    scheduled_id: i64,
    attempt: i32,
    details: Vec<u8>,
    identity: &str,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    started_activity(run, scheduled_id, attempt)?;
    if run.activities[&scheduled_id].cancel_requested_id == 0 {
        return Err(EngineError::InvalidArgument("the activity was not asked to cancel".into()));
    }
    Ok(activity_result(run, Buffered::ActivityCanceled { scheduled_id, details, identity: identity.into() }, now_ms))
}

/// A heartbeat of the started activity: keeps its details for the next attempt. The caller reads
/// the run back to tell the worker whether the workflow asked to cancel.
pub fn activity_heartbeat(
    run: &mut RunState,
    scheduled_id: i64,
    attempt: i32,
    details: Vec<u8>,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    started_activity(run, scheduled_id, attempt)?;
    if let Some(a) = run.activities.get_mut(&scheduled_id) {
        a.heartbeat_details = details;
        a.last_heartbeat_ms = a.last_heartbeat_ms.max(now_ms);
    }
    Ok(Outcome::default())
}

/// The timer `timer_id` (started at `started_id`) fires. Never before its deadline.
pub fn timer_fired(run: &mut RunState, timer_id: &str, started_id: i64, now_ms: u64) -> Result<Outcome, EngineError> {
    if !run.is_open() {
        return Err(EngineError::AlreadyCompleted);
    }
    match run.timers.get(timer_id) {
        Some(t) if t.started_id == started_id => {
            if now_ms < t.fire_at_ms {
                return Err(EngineError::InvalidArgument(format!(
                    "timer {timer_id} fires at {} and it is only {now_ms}",
                    t.fire_at_ms
                )));
            }
        }
        _ => return Err(EngineError::NotFound(format!("timer {timer_id} is not pending"))),
    }
    run.timers.remove(timer_id);
    Ok(activity_result(run, Buffered::TimerFired { timer_id: timer_id.into(), started_id }, now_ms))
}

/// The started workflow task ran past its start-to-close timeout: a new attempt is scheduled.
/// With `started_id` 0, a task waited on its sticky queue past the sticky schedule-to-start
/// timeout: it goes to the normal queue (a new task, same attempt) and the run is no longer sticky.
pub fn workflow_task_timed_out(
    run: &mut RunState,
    scheduled_id: i64,
    started_id: i64,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    if started_id == 0 {
        return sticky_task_timed_out(run, scheduled_id, now_ms);
    }
    let task = started_task(run, scheduled_id, started_id)?;
    if now_ms < task.started_ms.saturating_add(run.workflow_task_timeout_ms) {
        return Err(EngineError::InvalidArgument("workflow task has not timed out yet".into()));
    }
    let mut w = Writer::new(run, now_ms);
    if !task.transient {
        w.event(
            EventType::WorkflowTaskTimedOut,
            Ev::WorkflowTaskTimedOutEventAttributes(WorkflowTaskTimedOutEventAttributes {
                scheduled_event_id: scheduled_id,
                started_event_id: started_id,
                timeout_type: TimeoutType::StartToClose as i32,
            }),
        );
    }
    w.run.workflow_task = None;
    w.run.buffered_events = false;
    w.run.clear_sticky();
    w.flush_buffer();
    w.schedule_workflow_task(task.attempt.saturating_add(1));
    Ok(w.out)
}

/// When a task scheduled at `scheduled_ms` on the sticky queue times out, if the run has one.
pub fn sticky_deadline(run: &RunState) -> Option<u64> {
    let t = run.workflow_task.as_ref().filter(|t| t.sticky && t.started_id.is_none())?;
    Some(t.scheduled_ms.saturating_add(run.sticky_timeout_ms))
}

fn sticky_task_timed_out(run: &mut RunState, scheduled_id: i64, now_ms: u64) -> Result<Outcome, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("Workflow task not found: the workflow is closed.".into()));
    }
    let task = match &run.workflow_task {
        Some(t) if t.scheduled_id == scheduled_id && t.sticky && t.started_id.is_none() => t.clone(),
        _ => return Err(EngineError::NotFound("Workflow task not found.".into())),
    };
    if sticky_deadline(run).is_none_or(|d| now_ms < d) {
        return Err(EngineError::InvalidArgument("sticky workflow task has not timed out yet".into()));
    }
    let mut w = Writer::new(run, now_ms);
    w.run.clear_sticky();
    if task.transient {
        // Nothing was written for it: reschedule the same attempt on the normal queue.
        w.run.workflow_task = None;
        w.schedule_workflow_task(task.attempt);
    } else {
        w.event(
            EventType::WorkflowTaskTimedOut,
            Ev::WorkflowTaskTimedOutEventAttributes(WorkflowTaskTimedOutEventAttributes {
                scheduled_event_id: scheduled_id,
                started_event_id: 0,
                timeout_type: TimeoutType::ScheduleToStart as i32,
            }),
        );
        w.run.workflow_task = None;
        w.flush_buffer();
        w.schedule_workflow_task(1);
    }
    Ok(w.out)
}

/// `ResetStickyTaskQueue`: the run forgets its sticky queue; a task waiting there moves to the
/// normal queue at once (no event: the task is the same).
pub fn reset_sticky(run: &mut RunState) -> Result<Outcome, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("Workflow execution already completed.".into()));
    }
    run.clear_sticky();
    let mut out = Outcome::default();
    if let Some(t) = run.workflow_task.as_mut().filter(|t| t.sticky && t.started_id.is_none()) {
        t.sticky = false;
        out.effects
            .push(Effect::WorkflowTaskReady { task_queue: run.task_queue.clone(), scheduled_id: t.scheduled_id });
    }
    Ok(out)
}

/// Records the sticky queue the completing worker asks for (none clears it).
fn set_sticky(run: &mut RunState, req: &RespondWorkflowTaskCompletedRequest) {
    let queue = req.sticky_attributes.as_ref().and_then(|a| a.worker_task_queue.as_ref().map(|q| (a, q)));
    match queue {
        Some((a, q)) if !q.name.is_empty() && q.name != run.task_queue => {
            run.sticky_queue = q.name.clone();
            run.sticky_timeout_ms = duration_ms(&a.schedule_to_start_timeout)
                .ok()
                .flatten()
                .filter(|t| *t > 0)
                .unwrap_or(STICKY_TIMEOUT_MS_DEFAULT)
                .min(STICKY_TIMEOUT_MS_MAX);
        }
        _ => run.clear_sticky(),
    }
}

/// The started activity attempt ran past its start-to-close or heartbeat timeout: retried like a
/// failure, or, when the policy allows no more attempts, the timeout goes to the workflow.
pub fn activity_timed_out(
    run: &mut RunState,
    scheduled_id: i64,
    attempt: i32,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("Activity task not found: the workflow is closed.".into()));
    }
    let a = match run.activities.get(&scheduled_id) {
        Some(a) if a.attempt == attempt => a,
        _ => return Err(EngineError::NotFound("Activity task not found.".into())),
    };
    let timeout = match a.attempt_deadline() {
        Some((at, timeout)) if now_ms >= at => timeout,
        _ => return Err(EngineError::InvalidArgument("activity has not timed out yet".into())),
    };
    let failure = timeout_failure(timeout, &a.heartbeat_details);
    let next = if timeout.ends_activity() { Err(RetryState::Timeout) } else { next_attempt_at(a, &failure, now_ms) };
    match next {
        Ok(ready_at_ms) => Ok(retry_activity(run, scheduled_id, ready_at_ms, failure.encode_to_vec(), now_ms)),
        Err(retry_state) => Ok(activity_result(
            run,
            Buffered::ActivityTimedOut { scheduled_id, retry_state: retry_state as i32, timeout },
            now_ms,
        )),
    }
}

/// A request to cancel the run: `WorkflowExecutionCancelRequested`, delivered to the workflow
/// like a signal. A second request changes nothing.
pub fn request_cancel(run: &mut RunState, reason: &str, identity: &str, now_ms: u64) -> Result<Outcome, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("workflow execution already completed".into()));
    }
    if run.cancel_requested {
        return Ok(Outcome::default());
    }
    run.cancel_requested = true;
    Ok(activity_result(run, Buffered::CancelRequested { reason: reason.into(), identity: identity.into() }, now_ms))
}

/// The run ran past its run or execution timeout: `WorkflowExecutionTimedOut`, and it closes;
/// pending work is dropped as for a termination.
pub fn workflow_timed_out(run: &mut RunState, now_ms: u64) -> Result<Outcome, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("workflow execution already completed".into()));
    }
    match run.run_deadline_ms {
        Some(d) if now_ms >= d => {}
        _ => return Err(EngineError::InvalidArgument("workflow run has not timed out yet".into())),
    }
    let mut w = Writer::new(run, now_ms);
    w.event(
        EventType::WorkflowExecutionTimedOut,
        Ev::WorkflowExecutionTimedOutEventAttributes(WorkflowExecutionTimedOutEventAttributes {
            retry_state: RetryState::RetryPolicyNotSet as i32,
            new_execution_run_id: String::new(),
        }),
    );
    w.run.activities.clear();
    w.run.timers.clear();
    w.run.buffer.clear();
    w.run.buffered_events = false;
    w.close(RunStatus::TimedOut);
    Ok(w.out)
}

/// Ends the run at once: `WorkflowExecutionTerminated`; pending tasks, activities and timers are
/// dropped (their later completions get `NotFound`).
pub fn terminate(
    run: &mut RunState,
    reason: &str,
    details: Option<Payloads>,
    identity: &str,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("workflow execution already completed".into()));
    }
    let mut w = Writer::new(run, now_ms);
    w.event(
        EventType::WorkflowExecutionTerminated,
        Ev::WorkflowExecutionTerminatedEventAttributes(WorkflowExecutionTerminatedEventAttributes {
            reason: reason.into(),
            details,
            identity: identity.into(),
        }),
    );
    w.run.activities.clear();
    w.run.timers.clear();
    w.run.buffer.clear();
    w.run.buffered_events = false;
    w.close(RunStatus::Terminated);
    Ok(w.out)
}
