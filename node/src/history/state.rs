//! A run's mutable state, persisted with the run. Proto payloads are kept as their encoded bytes
//! so the state's own encoding stays independent of the proto crate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Lifecycle of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    /// Open.
    Running,
    /// Closed by `CompleteWorkflowExecution`.
    Completed,
    /// Closed by `FailWorkflowExecution`.
    Failed,
    /// Closed by `CancelWorkflowExecution` after a cancel request.
    Canceled,
    /// Closed by `TerminateWorkflowExecution`.
    Terminated,
    /// Closed by its run or execution timeout.
    TimedOut,
    /// Closed by `ContinueAsNewWorkflowExecution`; a new run of the same workflow id follows.
    ContinuedAsNew,
}

/// The workflow task in flight, if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowTaskInfo {
    /// Event id of `WorkflowTaskScheduled`.
    pub scheduled_id: i64,
    /// Event id of `WorkflowTaskStarted` once a worker has it.
    pub started_id: Option<i64>,
    /// 1 for the first try; increases while tasks fail in a row.
    pub attempt: i32,
    /// The poll request that started it (a retried start with the same id is idempotent).
    pub request_id: String,
    /// Identity of the worker that started it.
    pub identity: String,
    /// Leader time when scheduled and started.
    pub scheduled_ms: u64,
    /// Leader time when started.
    pub started_ms: u64,
    /// A retry (attempt > 1) whose `WorkflowTaskScheduled`/`Started` events are not in history
    /// yet: they go to the worker with the task and are written only when it completes (or when
    /// another event must be written before it starts), as in Temporal.
    pub transient: bool,
    /// Scheduled on the run's sticky queue (the worker that holds the run in its cache), which
    /// gets only the events after `RunState::last_completed_started_id`.
    pub sticky: bool,
}

/// An activity scheduled by the workflow and not yet closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityInfo {
    /// Event id of `ActivityTaskScheduled`.
    pub scheduled_id: i64,
    /// The workflow's activity id.
    pub activity_id: String,
    /// Activity type name.
    pub activity_type: String,
    /// Task queue name.
    pub task_queue: String,
    /// Attempt, from 1.
    pub attempt: i32,
    /// The `ActivityTaskScheduled` event, encoded (the worker needs its fields).
    pub scheduled_event: Vec<u8>,
    /// Leader time when scheduled.
    pub scheduled_ms: u64,
    /// Leader time when started.
    pub started_ms: u64,
    /// How long one attempt may run once started (0: no limit).
    pub start_to_close_ms: u64,
    /// The poll request that started it; empty until a worker takes it.
    pub request_id: String,
    /// Identity of the worker that started it.
    pub identity: String,
    /// When the first attempt was scheduled (leader time).
    pub first_scheduled_ms: u64,
    /// Schedule-to-close limit over all attempts (0: none).
    pub schedule_to_close_ms: u64,
    /// The effective retry policy.
    pub retry: RetrySpec,
    /// The previous attempt's failure (encoded `Failure`), empty on the first attempt.
    pub last_failure: Vec<u8>,
    /// Event id of `ActivityTaskCancelRequested` once the workflow asked to cancel (0: not asked).
    pub cancel_requested_id: i64,
    /// Details of the last heartbeat (encoded `Payloads`).
    pub heartbeat_details: Vec<u8>,
    /// Longest silence allowed between heartbeats of a started attempt (0: no limit).
    pub heartbeat_timeout_ms: u64,
    /// Leader time of the attempt's start or last heartbeat, whichever is later.
    pub last_heartbeat_ms: u64,
    /// Longest wait of an attempt for a worker (0: no limit).
    pub schedule_to_start_ms: u64,
}

/// Which limit an activity ran past.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptTimeout {
    /// Start-to-close (one attempt).
    StartToClose,
    /// Heartbeat (one attempt).
    Heartbeat,
    /// Schedule-to-start (one attempt waited too long for a worker; not retried).
    ScheduleToStart,
    /// Schedule-to-close (all attempts; not retried).
    ScheduleToClose,
}

impl AttemptTimeout {
    /// True for the limits that end the activity instead of its attempt.
    pub fn ends_activity(self) -> bool {
        matches!(self, AttemptTimeout::ScheduleToStart | AttemptTimeout::ScheduleToClose)
    }
}

impl ActivityInfo {
    /// The earliest deadline the activity has now, if any.
    pub fn attempt_deadline(&self) -> Option<(u64, AttemptTimeout)> {
        let started = !self.request_id.is_empty();
        let candidates = [
            (started && self.start_to_close_ms > 0)
                .then(|| (self.started_ms.saturating_add(self.start_to_close_ms), AttemptTimeout::StartToClose)),
            (started && self.heartbeat_timeout_ms > 0)
                .then(|| (self.last_heartbeat_ms.saturating_add(self.heartbeat_timeout_ms), AttemptTimeout::Heartbeat)),
            (!started && self.schedule_to_start_ms > 0).then(|| {
                (self.scheduled_ms.saturating_add(self.schedule_to_start_ms), AttemptTimeout::ScheduleToStart)
            }),
            (self.schedule_to_close_ms > 0).then(|| {
                (self.first_scheduled_ms.saturating_add(self.schedule_to_close_ms), AttemptTimeout::ScheduleToClose)
            }),
        ];
        candidates.into_iter().flatten().min_by_key(|(at, _)| *at)
    }
}

/// An activity's retry policy with Temporal's defaults filled in. The backoff coefficient is kept
/// in thousandths so that the state stays integer-only and every replica computes the same delay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrySpec {
    /// Delay before the second attempt.
    pub initial_interval_ms: u64,
    /// Growth of the delay per attempt, in thousandths (2000 = doubles).
    pub backoff_milli: u64,
    /// Upper bound of the delay.
    pub maximum_interval_ms: u64,
    /// Attempts allowed in all (0: unlimited).
    pub maximum_attempts: i32,
    /// Failure types that are never retried.
    pub non_retryable_error_types: Vec<String>,
}

impl RetrySpec {
    /// Delay before attempt `attempt + 1`, given that attempt `attempt` (from 1) just failed.
    pub fn delay_after(&self, attempt: i32) -> u64 {
        let mut ms = self.initial_interval_ms;
        for _ in 1..attempt.max(1) {
            let next = u64::try_from(u128::from(ms) * u128::from(self.backoff_milli) / 1000).unwrap_or(u64::MAX);
            // Capped, or no longer growing (a coefficient of 1): later attempts change nothing, so
            // the loop never runs long however many attempts an activity has had.
            if ms >= self.maximum_interval_ms || next <= ms {
                break;
            }
            ms = next;
        }
        ms.min(self.maximum_interval_ms)
    }
}

/// A child workflow the run started (or is starting) and that has not closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildInfo {
    /// Event id of `StartChildWorkflowExecutionInitiated`.
    pub initiated_id: i64,
    /// The child's workflow id.
    pub workflow_id: String,
    /// The child's workflow type.
    pub workflow_type: String,
    /// The child's start request (encoded `StartWorkflowExecutionRequest`; its request id makes
    /// a retried start idempotent).
    pub request: Vec<u8>,
    /// The child's run id once it started.
    pub run_id: Option<String>,
    /// Event id of `ChildWorkflowExecutionStarted` once written.
    pub started_event_id: i64,
    /// Leader time of the initiation.
    pub initiated_ms: u64,
    /// `ParentClosePolicy` (as the proto enum's number).
    pub parent_close_policy: i32,
    /// Its close has been recorded (the event may still be buffered).
    pub closed: bool,
}

/// A signal or cancel request the run sends to another workflow, until it is delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalInfo {
    /// Event id of the `...Initiated` event.
    pub initiated_id: i64,
    /// Target workflow id.
    pub workflow_id: String,
    /// Target run id (empty: the current run).
    pub run_id: String,
    /// Encoded `WorkflowExecutionSignaledEventAttributes` for a signal; empty for a cancel.
    pub signal: Vec<u8>,
    /// Leader time of the initiation.
    pub initiated_ms: u64,
    /// Its outcome has been recorded (the event may still be buffered).
    pub done: bool,
}

/// The parent of a child run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// Namespace id (children live in their parent's namespace).
    pub namespace_id: String,
    /// Namespace name.
    pub namespace: String,
    /// Parent workflow id.
    pub workflow_id: String,
    /// Parent run id.
    pub run_id: String,
    /// The parent's `StartChildWorkflowExecutionInitiated` event id.
    pub initiated_id: i64,
}

/// How a child run closed, as its parent records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildOutcome {
    /// Completed with a result (encoded `Payloads`, empty for none).
    Completed(Vec<u8>),
    /// Failed (encoded `Failure`).
    Failed(Vec<u8>),
    /// Canceled (encoded `Payloads` details).
    Canceled(Vec<u8>),
    /// Terminated.
    Terminated,
    /// Timed out.
    TimedOut,
}

/// A user timer that has not fired or been canceled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerInfo {
    /// The workflow's timer id.
    pub timer_id: String,
    /// Event id of `TimerStarted`.
    pub started_id: i64,
    /// When it fires (leader time, ms since the epoch).
    pub fire_at_ms: u64,
}

/// Where a workflow update stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateStage {
    /// Admitted: waiting for a workflow task to deliver it (no event).
    Admitted,
    /// Accepted by the workflow (`WorkflowExecutionUpdateAccepted` at `event_id`).
    Accepted {
        /// The acceptance event.
        event_id: i64,
    },
    /// Completed or rejected: the encoded `update.v1.Outcome` (a rejection is a failure outcome).
    Completed {
        /// Encoded outcome.
        outcome: Vec<u8>,
    },
}

/// A workflow update the run has been asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateInfo {
    /// The caller's update id.
    pub update_id: String,
    /// The encoded `update.v1.Request`.
    pub request: Vec<u8>,
    /// Where it stands.
    pub stage: UpdateStage,
    /// Leader time of admission.
    pub admitted_ms: u64,
}

/// Everything the engine needs to know about a run besides its history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Namespace id.
    pub namespace_id: String,
    /// Workflow id.
    pub workflow_id: String,
    /// Run id.
    pub run_id: String,
    /// Workflow type name.
    pub workflow_type: String,
    /// Task queue of workflow tasks.
    pub task_queue: String,
    /// Status.
    pub status: RunStatus,
    /// Id the next event gets.
    pub next_event_id: i64,
    /// Encoded size of the run's history so far, in bytes (checked against the history limit).
    pub history_bytes: u64,
    /// `WorkflowTaskStarted` id of the last completed workflow task (0 if none).
    pub last_completed_started_id: i64,
    /// Workflow task in flight.
    pub workflow_task: Option<WorkflowTaskInfo>,
    /// Open activities by scheduled event id.
    pub activities: BTreeMap<i64, ActivityInfo>,
    /// Open timers by timer id.
    pub timers: BTreeMap<String, TimerInfo>,
    /// Start request id (idempotent retries of the start return this run).
    pub start_request_id: String,
    /// Start time.
    pub start_ms: u64,
    /// Close time, once closed.
    pub close_ms: Option<u64>,
    /// Workflow task start-to-close timeout.
    pub workflow_task_timeout_ms: u64,
    /// New events arrived while a workflow task was started (it must be followed by another).
    pub buffered_events: bool,
    /// Inputs that become events once the started workflow task closes.
    pub buffer: Vec<super::engine::Buffered>,
    /// A cancel was requested (later requests change nothing).
    pub cancel_requested: bool,
    /// Child workflows by initiated event id.
    pub children: BTreeMap<i64, ChildInfo>,
    /// The parent, for a child run.
    pub parent: Option<ParentRef>,
    /// Signals and cancel requests to other workflows, by initiated event id.
    pub externals: BTreeMap<i64, ExternalInfo>,
    /// Run id of the first run in this run's continue-as-new chain (its own id if it is the first).
    pub first_run_id: String,
    /// When the run times out (the earlier of its run and execution timeouts), if it has one.
    pub run_deadline_ms: Option<u64>,
    /// Request ids of the signals accepted most recently (a retried signal is applied once).
    pub signal_request_ids: std::collections::VecDeque<String>,
    /// Workflow updates by update id (completed ones stay, so a retried update gets its outcome).
    pub updates: BTreeMap<String, UpdateInfo>,
    /// The sticky queue of the worker that completed the last workflow task and asked for
    /// stickiness (empty: none). Workflow tasks go there until it fails to start one in time.
    pub sticky_queue: String,
    /// How long a task may wait on the sticky queue before it goes to the normal queue.
    pub sticky_timeout_ms: u64,
    /// Signals received over the run's life (capped by the namespace's `signals_per_run_max`).
    pub signals_received: u64,
}

impl RunState {
    /// The queue the next workflow task goes to, and whether it is the sticky one.
    pub fn workflow_task_queue(&self, sticky: bool) -> &str {
        if sticky && !self.sticky_queue.is_empty() {
            &self.sticky_queue
        } else {
            &self.task_queue
        }
    }

    /// Forgets the sticky queue (its worker failed a task, timed out, or asked to be reset).
    pub fn clear_sticky(&mut self) {
        self.sticky_queue.clear();
        self.sticky_timeout_ms = 0;
    }
}

impl RunState {
    /// True while the run is open.
    pub fn is_open(&self) -> bool {
        self.status == RunStatus::Running
    }
}
