//! Exact-output tests of the history engine: events (types and ids) and effects.

use norn_proto::protos::temporal::api::command::v1::{command::Attributes as Cmd, *};
use norn_proto::protos::temporal::api::common::v1::{ActivityType, Payload, Payloads, RetryPolicy, WorkflowType};
use norn_proto::protos::temporal::api::enums::v1::{CommandType, EventType, RetryState, WorkflowTaskFailedCause};
use norn_proto::protos::temporal::api::history::v1::history_event::Attributes as Ev;
use norn_proto::protos::temporal::api::taskqueue::v1::TaskQueue;
use norn_proto::protos::temporal::api::workflowservice::v1::*;
use prost::Message;

use super::engine::*;
use super::state::*;
use super::state::{ChildOutcome, ParentRef};

/// The engine's completion under Temporal's default limits.
fn workflow_task_completed(
    run: &mut RunState,
    scheduled_id: i64,
    started_id: i64,
    req: &RespondWorkflowTaskCompletedRequest,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    super::engine::workflow_task_completed(run, scheduled_id, started_id, req, &Default::default(), now_ms)
}

/// A signal under Temporal's default signal limit.
fn signal(
    run: &mut RunState,
    attrs: norn_proto::protos::temporal::api::history::v1::WorkflowExecutionSignaledEventAttributes,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    super::engine::signal(run, attrs, 10_000, now_ms)
}

/// A completion refused for a command's bad attributes: `WorkflowTaskFailed` with `cause` and a
/// new attempt are written, and the worker gets InvalidArgument (Temporal's behaviour).
fn assert_bad_attributes(r: Result<Outcome, EngineError>, cause: WorkflowTaskFailedCause) -> String {
    let out = r.expect("a bad command fails the task; it is not refused");
    let Some(EngineError::InvalidArgument(message)) = out.reply_error.clone() else {
        panic!("the worker must get InvalidArgument: {out:?}")
    };
    let Some(Ev::WorkflowTaskFailedEventAttributes(f)) = out.events.first().and_then(|e| e.attributes.as_ref()) else {
        panic!("no WorkflowTaskFailed: {out:?}")
    };
    assert_eq!(f.cause, cause as i32, "{message}");
    assert_eq!(f.failure.as_ref().map(|f| f.message.as_str()), Some(message.as_str()));
    assert!(
        out.effects.iter().any(|e| matches!(e, Effect::WorkflowTaskReady { .. })),
        "a new attempt is scheduled: {out:?}"
    );
    message
}

const T0: u64 = 1_700_000_000_000;

fn start_req() -> StartWorkflowExecutionRequest {
    StartWorkflowExecutionRequest {
        namespace: "default".into(),
        workflow_id: "wf-1".into(),
        workflow_type: Some(WorkflowType { name: "Greet".into() }),
        task_queue: Some(TaskQueue { name: "q".into(), ..Default::default() }),
        request_id: "req-1".into(),
        ..Default::default()
    }
}

fn types(o: &Outcome) -> Vec<(i64, EventType)> {
    o.events.iter().map(|e| (e.event_id, EventType::try_from(e.event_type).unwrap())).collect()
}

fn command(t: CommandType, a: Cmd) -> Command {
    Command { command_type: t as i32, attributes: Some(a), ..Default::default() }
}

fn schedule_activity(id: &str) -> Command {
    command(
        CommandType::ScheduleActivityTask,
        Cmd::ScheduleActivityTaskCommandAttributes(ScheduleActivityTaskCommandAttributes {
            activity_id: id.into(),
            activity_type: Some(ActivityType { name: "Hello".into() }),
            ..Default::default()
        }),
    )
}

fn complete_workflow() -> Command {
    command(
        CommandType::CompleteWorkflowExecution,
        Cmd::CompleteWorkflowExecutionCommandAttributes(CompleteWorkflowExecutionCommandAttributes {
            result: Some(Payloads { payloads: vec![Payload { data: b"\"done\"".to_vec(), ..Default::default() }] }),
        }),
    )
}

fn done(commands: Vec<Command>) -> RespondWorkflowTaskCompletedRequest {
    RespondWorkflowTaskCompletedRequest { commands, identity: "worker".into(), ..Default::default() }
}

fn started() -> RunState {
    let (mut run, _) = start("ns-id", "run-1", &start_req(), T0).unwrap();
    workflow_task_started(&mut run, 2, "poll-1", "worker", T0 + 1).unwrap();
    run
}

#[test]
fn start_writes_started_and_schedules_the_first_workflow_task() {
    let (run, out) = start("ns-id", "run-1", &start_req(), T0).unwrap();
    assert_eq!(types(&out), vec![(1, EventType::WorkflowExecutionStarted), (2, EventType::WorkflowTaskScheduled)]);
    assert_eq!(out.effects, vec![Effect::WorkflowTaskReady { task_queue: "q".into(), scheduled_id: 2 }]);
    assert_eq!(run.next_event_id, 3);
    assert_eq!(out.events[0].event_time.as_ref().unwrap().seconds, (T0 / 1000) as i64);
    let Some(Ev::WorkflowExecutionStartedEventAttributes(a)) = &out.events[0].attributes else { panic!() };
    assert_eq!(a.workflow_type.as_ref().unwrap().name, "Greet");
    assert_eq!(a.original_execution_run_id, "run-1");
}

#[test]
fn start_rejects_missing_fields() {
    for f in [
        |r: &mut StartWorkflowExecutionRequest| r.workflow_id.clear(),
        |r: &mut StartWorkflowExecutionRequest| r.workflow_type = None,
        |r: &mut StartWorkflowExecutionRequest| r.task_queue = None,
    ] {
        let mut r = start_req();
        f(&mut r);
        assert!(matches!(start("ns", "run", &r, T0), Err(EngineError::InvalidArgument(_))));
    }
}

#[test]
fn a_workflow_task_is_started_once() {
    let (mut run, _) = start("ns-id", "run-1", &start_req(), T0).unwrap();
    let out = workflow_task_started(&mut run, 2, "poll-1", "worker", T0 + 1).unwrap();
    assert_eq!(types(&out), vec![(3, EventType::WorkflowTaskStarted)]);
    let before = run.clone();
    assert!(matches!(workflow_task_started(&mut run, 2, "poll-2", "w2", T0 + 2), Err(EngineError::NotFound(_))));
    assert!(matches!(workflow_task_started(&mut run, 7, "poll-2", "w2", T0 + 2), Err(EngineError::NotFound(_))));
    assert_eq!(run, before, "a rejected start changed the run");
}

#[test]
fn an_activity_requested_eagerly_starts_with_the_completion_on_its_own_queue_only() {
    let mut run = started();
    let eager = |id: &str, tq: Option<&str>| {
        schedule_activity_with(id, |a| {
            a.request_eager_execution = true;
            a.task_queue = tq.map(|n| TaskQueue { name: n.into(), ..Default::default() });
        })
    };
    let cmds = vec![eager("a1", None), eager("a2", Some("other")), schedule_activity("a3")];
    let out = workflow_task_completed(&mut run, 2, 3, &done(cmds), T0 + 2).unwrap();
    assert_eq!(
        out.effects,
        vec![
            Effect::ActivityStartedEagerly {
                scheduled_id: 5,
                activity_id: "a1".into(),
                workflow_type: "Greet".into(),
                at_ms: T0 + 2
            },
            Effect::ActivityTaskReady { task_queue: "other".into(), scheduled_id: 6, ready_at_ms: 0 },
            Effect::ActivityTaskReady { task_queue: "q".into(), scheduled_id: 7, ready_at_ms: 0 },
        ]
    );
    // Started already: no poll may take it, its start-to-close clock runs, and its worker
    // completes it as attempt 1.
    assert!(matches!(activity_task_started(&mut run, 5, "poll", "w", T0 + 3), Err(EngineError::NotFound(_))));
    assert!(!super::index::ready_tasks(&run, 0, T0 + 3).iter().any(|(_, t)| t.scheduled_id == 5));
    assert_eq!(run.activities[&5].identity, "worker");
    let out = activity_task_completed(&mut run, 5, 1, vec![], "worker", T0 + 4).unwrap();
    assert_eq!(
        types(&out),
        vec![
            (8, EventType::ActivityTaskStarted),
            (9, EventType::ActivityTaskCompleted),
            (10, EventType::WorkflowTaskScheduled)
        ]
    );

    // A completion that also closes the run hands out nothing.
    let mut run = started();
    let out = workflow_task_completed(&mut run, 2, 3, &done(vec![eager("a1", None), complete_workflow()]), T0 + 2);
    assert!(!out.unwrap().effects.iter().any(|e| matches!(e, Effect::ActivityStartedEagerly { .. })));
}

#[test]
fn activity_round_trip_then_completion() {
    let mut run = started();
    let out = workflow_task_completed(&mut run, 2, 3, &done(vec![schedule_activity("a1")]), T0 + 2).unwrap();
    assert_eq!(types(&out), vec![(4, EventType::WorkflowTaskCompleted), (5, EventType::ActivityTaskScheduled)]);
    // Ready now (0), whatever the clock of the node that runs the effect says.
    assert_eq!(
        out.effects,
        vec![Effect::ActivityTaskReady { task_queue: "q".into(), scheduled_id: 5, ready_at_ms: 0 }]
    );

    let out = activity_task_started(&mut run, 5, "poll-a", "worker", T0 + 3).unwrap();
    assert!(out.events.is_empty(), "ActivityTaskStarted is written when the activity closes");
    assert!(matches!(activity_task_started(&mut run, 5, "poll-b", "w", T0 + 3), Err(EngineError::NotFound(_))));
    assert!(
        matches!(activity_task_completed(&mut run, 5, 2, vec![], "w", T0 + 4), Err(EngineError::NotFound(_))),
        "stale attempt"
    );

    let result = Payloads { payloads: vec![Payload { data: b"1".to_vec(), ..Default::default() }] }.encode_to_vec();
    let out = activity_task_completed(&mut run, 5, 1, result, "worker", T0 + 4).unwrap();
    assert_eq!(
        types(&out),
        vec![
            (6, EventType::ActivityTaskStarted),
            (7, EventType::ActivityTaskCompleted),
            (8, EventType::WorkflowTaskScheduled)
        ]
    );
    let Some(Ev::ActivityTaskCompletedEventAttributes(a)) = &out.events[1].attributes else { panic!() };
    assert_eq!((a.scheduled_event_id, a.started_event_id), (5, 6));
    assert!(
        matches!(activity_task_completed(&mut run, 5, 1, vec![], "w", T0 + 5), Err(EngineError::NotFound(_))),
        "twice"
    );

    workflow_task_started(&mut run, 8, "poll-3", "worker", T0 + 5).unwrap();
    let out = workflow_task_completed(&mut run, 8, 9, &done(vec![complete_workflow()]), T0 + 6).unwrap();
    assert_eq!(types(&out), vec![(10, EventType::WorkflowTaskCompleted), (11, EventType::WorkflowExecutionCompleted)]);
    assert_eq!(out.effects, vec![Effect::RunClosed]);
    assert_eq!(run.status, RunStatus::Completed);
    assert!(matches!(workflow_task_started(&mut run, 8, "p", "w", T0 + 7), Err(EngineError::NotFound(_))));
}

fn timer(id: &str, seconds: i64) -> Command {
    command(
        CommandType::StartTimer,
        Cmd::StartTimerCommandAttributes(StartTimerCommandAttributes {
            timer_id: id.into(),
            start_to_fire_timeout: Some(prost_wkt_types::Duration { seconds, nanos: 0 }),
        }),
    )
}

/// Activity `a1` (scheduled 5) is started by a worker while workflow task 8 (started 9), woken
/// by timer `t` (started 6, fired 7), is in flight.
fn activity_outstanding_during_a_task() -> RunState {
    let mut run = started();
    let out =
        workflow_task_completed(&mut run, 2, 3, &done(vec![schedule_activity("a1"), timer("t", 1)]), T0 + 2).unwrap();
    assert_eq!(
        types(&out),
        vec![
            (4, EventType::WorkflowTaskCompleted),
            (5, EventType::ActivityTaskScheduled),
            (6, EventType::TimerStarted)
        ]
    );
    activity_task_started(&mut run, 5, "poll-a", "worker", T0 + 3).unwrap();
    let out = timer_fired(&mut run, "t", 6, T0 + 1002).unwrap();
    assert_eq!(types(&out), vec![(7, EventType::TimerFired), (8, EventType::WorkflowTaskScheduled)]);
    let out = workflow_task_started(&mut run, 8, "poll-2", "worker", T0 + 1003).unwrap();
    assert_eq!(types(&out), vec![(9, EventType::WorkflowTaskStarted)]);
    run
}

#[test]
fn results_arriving_during_a_workflow_task_are_written_after_its_completion() {
    let mut run = activity_outstanding_during_a_task();
    let out = activity_task_completed(&mut run, 5, 1, vec![], "worker", T0 + 1004).unwrap();
    assert!(out.events.is_empty(), "buffered while the workflow task runs");
    assert!(out.effects.is_empty());
    let out = workflow_task_completed(&mut run, 8, 9, &done(vec![]), T0 + 1005).unwrap();
    assert_eq!(
        types(&out),
        vec![
            (10, EventType::WorkflowTaskCompleted),
            (11, EventType::ActivityTaskStarted),
            (12, EventType::ActivityTaskCompleted),
            (13, EventType::WorkflowTaskScheduled),
        ]
    );
    assert_eq!(out.effects, vec![Effect::WorkflowTaskReady { task_queue: "q".into(), scheduled_id: 13 }]);
}

#[test]
fn closing_while_new_events_are_buffered_is_an_unhandled_command() {
    let mut run = activity_outstanding_during_a_task();
    activity_task_completed(&mut run, 5, 1, vec![], "worker", T0 + 1004).unwrap();
    let out = workflow_task_completed(&mut run, 8, 9, &done(vec![complete_workflow()]), T0 + 1005).unwrap();
    assert_eq!(out.reply_error, Some(EngineError::UnhandledCommand));
    assert_eq!(
        types(&out),
        vec![
            (10, EventType::WorkflowTaskFailed),
            (11, EventType::ActivityTaskStarted),
            (12, EventType::ActivityTaskCompleted),
            (13, EventType::WorkflowTaskScheduled),
        ]
    );
    let Some(Ev::WorkflowTaskFailedEventAttributes(a)) = &out.events[0].attributes else { panic!() };
    assert_eq!(a.cause, WorkflowTaskFailedCause::UnhandledCommand as i32);
    assert!(run.is_open(), "the close command was not applied");
}

#[test]
fn timers_fire_once_and_never_early() {
    let mut run = started();
    let out = workflow_task_completed(&mut run, 2, 3, &done(vec![timer("t1", 5)]), T0 + 1000).unwrap();
    assert_eq!(types(&out), vec![(4, EventType::WorkflowTaskCompleted), (5, EventType::TimerStarted)]);
    assert_eq!(out.effects, vec![Effect::TimerArmed { timer_id: "t1".into(), started_id: 5, fire_at_ms: T0 + 6000 }]);
    assert!(timer_fired(&mut run, "t1", 5, T0 + 5999).is_err(), "fired early");
    let out = timer_fired(&mut run, "t1", 5, T0 + 6000).unwrap();
    assert_eq!(types(&out), vec![(6, EventType::TimerFired), (7, EventType::WorkflowTaskScheduled)]);
    assert!(matches!(timer_fired(&mut run, "t1", 5, T0 + 7000), Err(EngineError::NotFound(_))), "fired twice");
}

#[test]
fn failed_workflow_task_retries_are_transient_until_one_completes() {
    let mut run = started();
    let failed = RespondWorkflowTaskFailedRequest::default();
    let out = workflow_task_failed(&mut run, 2, 3, &failed, T0 + 2).unwrap();
    assert_eq!(types(&out), vec![(4, EventType::WorkflowTaskFailed)], "attempt 2 is not written");
    assert_eq!(out.effects, vec![Effect::WorkflowTaskReady { task_queue: "q".into(), scheduled_id: 5 }]);
    let t = run.workflow_task.clone().unwrap();
    assert_eq!((t.attempt, t.transient, t.scheduled_id), (2, true, 5));
    // Attempt 2 starts and fails: still nothing in history.
    assert!(workflow_task_started(&mut run, 5, "p2", "w", T0 + 3).unwrap().events.is_empty());
    let shown = transient_events(&run);
    assert_eq!(shown.iter().map(|e| e.event_id).collect::<Vec<_>>(), vec![5, 6], "what the worker is shown");
    assert!(workflow_task_failed(&mut run, 5, 6, &failed, T0 + 4).unwrap().events.is_empty());
    assert_eq!(run.next_event_id, 5);
    // Attempt 3 completes: its scheduled and started events are written with it.
    workflow_task_started(&mut run, 5, "p3", "w", T0 + 5).unwrap();
    let out = workflow_task_completed(&mut run, 5, 6, &done(vec![timer("t", 1)]), T0 + 6).unwrap();
    assert_eq!(
        types(&out),
        vec![
            (5, EventType::WorkflowTaskScheduled),
            (6, EventType::WorkflowTaskStarted),
            (7, EventType::WorkflowTaskCompleted),
            (8, EventType::TimerStarted)
        ]
    );
    let Some(Ev::WorkflowTaskScheduledEventAttributes(a)) = &out.events[0].attributes else { panic!() };
    assert_eq!(a.attempt, 3);
}

#[test]
fn a_signal_makes_a_scheduled_transient_task_normal() {
    let mut run = started();
    workflow_task_failed(&mut run, 2, 3, &RespondWorkflowTaskFailedRequest::default(), T0 + 2).unwrap();
    let attrs = norn_proto::protos::temporal::api::history::v1::WorkflowExecutionSignaledEventAttributes {
        signal_name: "s".into(),
        ..Default::default()
    };
    let out = signal(&mut run, attrs, T0 + 3).unwrap();
    assert_eq!(types(&out), vec![(5, EventType::WorkflowTaskScheduled), (6, EventType::WorkflowExecutionSignaled)]);
    assert!(!run.workflow_task.as_ref().unwrap().transient);
    let out = workflow_task_started(&mut run, 5, "p", "w", T0 + 4).unwrap();
    assert_eq!(types(&out), vec![(7, EventType::WorkflowTaskStarted)]);
}

#[test]
fn unimplemented_commands_change_nothing_and_bad_ones_fail_the_task() {
    let mut run = started();
    let before = run.clone();
    let nexus = command(
        CommandType::ScheduleNexusOperation,
        Cmd::ScheduleNexusOperationCommandAttributes(ScheduleNexusOperationCommandAttributes::default()),
    );
    assert!(matches!(
        workflow_task_completed(&mut run, 2, 3, &done(vec![nexus]), T0),
        Err(EngineError::Unimplemented(_))
    ));
    // A protocol message command naming a message the request does not carry.
    let orphan = command(
        CommandType::ProtocolMessage,
        Cmd::ProtocolMessageCommandAttributes(ProtocolMessageCommandAttributes { message_id: "m".into() }),
    );
    assert!(matches!(
        workflow_task_completed(&mut run, 2, 3, &done(vec![orphan]), T0),
        Err(EngineError::InvalidArgument(_))
    ));
    assert_eq!(run, before);
    // Bad attributes fail the task with the command's cause (checked on copies of the run).
    let cancel = command(
        CommandType::CancelTimer,
        Cmd::CancelTimerCommandAttributes(CancelTimerCommandAttributes { timer_id: "x".into() }),
    );
    assert_bad_attributes(
        workflow_task_completed(&mut run.clone(), 2, 3, &done(vec![cancel]), T0),
        WorkflowTaskFailedCause::BadCancelTimerAttributes,
    );
    assert_bad_attributes(
        workflow_task_completed(&mut run.clone(), 2, 3, &done(vec![complete_workflow(), schedule_activity("a")]), T0),
        WorkflowTaskFailedCause::BadCompleteWorkflowExecutionAttributes,
    );
    assert!(matches!(workflow_task_completed(&mut run, 2, 99, &done(vec![]), T0), Err(EngineError::NotFound(_))));
    assert_eq!(run, before);
}

#[test]
fn replicas_applying_the_same_inputs_produce_identical_bytes() {
    let run_on_replica = || {
        let (mut run, mut all) = start("ns-id", "run-1", &start_req(), T0).unwrap();
        all.events.extend(workflow_task_started(&mut run, 2, "p", "w", T0 + 1).unwrap().events);
        all.events.extend(
            workflow_task_completed(&mut run, 2, 3, &done(vec![schedule_activity("a")]), T0 + 2).unwrap().events,
        );
        (postcard::to_stdvec(&run).unwrap(), all.events.iter().map(|e| e.encode_to_vec()).collect::<Vec<_>>())
    };
    assert_eq!(run_on_replica(), run_on_replica());
}

#[test]
fn a_started_workflow_task_times_out_into_a_new_attempt() {
    let mut run = started();
    assert!(workflow_task_timed_out(&mut run, 2, 3, T0 + 1 + 9_999).is_err(), "timed out early");
    let out = workflow_task_timed_out(&mut run, 2, 3, T0 + 1 + 10_000).unwrap();
    assert_eq!(types(&out), vec![(4, EventType::WorkflowTaskTimedOut)], "the retry is transient");
    assert_eq!(run.workflow_task.as_ref().unwrap().attempt, 2);
    assert!(matches!(workflow_task_timed_out(&mut run, 2, 3, T0 + 20_000), Err(EngineError::NotFound(_))));
}

fn schedule_activity_with(id: &str, f: impl FnOnce(&mut ScheduleActivityTaskCommandAttributes)) -> Command {
    let mut cmd = schedule_activity(id);
    if let Some(Cmd::ScheduleActivityTaskCommandAttributes(a)) = cmd.attributes.as_mut() {
        f(a);
    }
    cmd
}

fn secs(s: i64) -> Option<prost_wkt_types::Duration> {
    Some(prost_wkt_types::Duration { seconds: s, nanos: 0 })
}

fn app_failure(non_retryable: bool, kind: &str) -> Vec<u8> {
    use norn_proto::protos::temporal::api::failure::v1::{failure::FailureInfo, ApplicationFailureInfo, Failure};
    Failure {
        message: "boom".into(),
        failure_info: Some(FailureInfo::ApplicationFailureInfo(ApplicationFailureInfo {
            r#type: kind.into(),
            non_retryable,
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn an_activity_past_start_to_close_is_retried_then_times_out_to_the_workflow() {
    let mut run = started();
    let cmd = schedule_activity_with("a1", |a| {
        a.start_to_close_timeout = secs(2);
        a.retry_policy = Some(RetryPolicy { maximum_attempts: 2, ..Default::default() });
    });
    workflow_task_completed(&mut run, 2, 3, &done(vec![cmd]), T0 + 2).unwrap();
    assert!(activity_timed_out(&mut run, 5, 1, T0 + 100_000).is_err(), "not started: nothing to time out");
    activity_task_started(&mut run, 5, "p", "w", T0 + 10).unwrap();
    assert!(activity_timed_out(&mut run, 5, 1, T0 + 2_009).is_err(), "early");
    let out = activity_timed_out(&mut run, 5, 1, T0 + 2_010).unwrap();
    assert!(out.events.is_empty(), "a retried attempt writes no event");
    assert_eq!(
        out.effects,
        vec![Effect::ActivityTaskReady { task_queue: "q".into(), scheduled_id: 5, ready_at_ms: T0 + 3_010 }]
    );
    assert!(
        matches!(activity_task_completed(&mut run, 5, 1, vec![], "w", T0 + 2_500), Err(EngineError::NotFound(_))),
        "the timed-out attempt's late completion is refused"
    );
    activity_task_started(&mut run, 5, "p2", "w2", T0 + 3_010).unwrap();
    let out = activity_timed_out(&mut run, 5, 2, T0 + 5_010).unwrap();
    assert_eq!(
        types(&out),
        vec![
            (6, EventType::ActivityTaskStarted),
            (7, EventType::ActivityTaskTimedOut),
            (8, EventType::WorkflowTaskScheduled)
        ]
    );
    let Some(Ev::ActivityTaskStartedEventAttributes(st)) = &out.events[0].attributes else { panic!() };
    assert_eq!(st.attempt, 2);
    assert!(st.last_failure.is_some(), "the started event carries the previous attempt's failure");
    let Some(Ev::ActivityTaskTimedOutEventAttributes(t)) = &out.events[1].attributes else { panic!() };
    assert_eq!(t.retry_state, RetryState::MaximumAttemptsReached as i32);
}

#[test]
fn failed_activities_retry_with_backoff_until_the_policy_says_stop() {
    let mut run = started();
    let cmd = schedule_activity_with("a1", |a| {
        a.retry_policy = Some(RetryPolicy {
            initial_interval: secs(1),
            backoff_coefficient: 3.0,
            maximum_interval: secs(5),
            non_retryable_error_types: vec!["Fatal".into()],
            ..Default::default()
        });
    });
    let out = workflow_task_completed(&mut run, 2, 3, &done(vec![cmd]), T0).unwrap();
    let Some(Ev::ActivityTaskScheduledEventAttributes(s)) = &out.events[1].attributes else { panic!() };
    assert_eq!(s.retry_policy.as_ref().unwrap().maximum_attempts, 0, "unlimited attempts by default");
    // Delays 1 s, 3 s, then capped at 5 s.
    let mut now = T0;
    for (attempt, delay) in [(1, 1_000), (2, 3_000), (3, 5_000), (4, 5_000)] {
        activity_task_started(&mut run, 5, &format!("p{attempt}"), "w", now).unwrap();
        let out = activity_task_failed(&mut run, 5, attempt, app_failure(false, "Transient"), "w", now + 10).unwrap();
        assert!(out.events.is_empty());
        assert_eq!(
            out.effects,
            vec![Effect::ActivityTaskReady { task_queue: "q".into(), scheduled_id: 5, ready_at_ms: now + 10 + delay }]
        );
        now += 10 + delay;
    }
    activity_task_started(&mut run, 5, "p5", "w", now).unwrap();
    let out = activity_task_failed(&mut run, 5, 5, app_failure(false, "Fatal"), "w", now + 1).unwrap();
    assert_eq!(types(&out)[1], (7, EventType::ActivityTaskFailed));
    let Some(Ev::ActivityTaskFailedEventAttributes(f)) = &out.events[1].attributes else { panic!() };
    assert_eq!(f.retry_state, RetryState::NonRetryableFailure as i32);
}

#[test]
fn non_retryable_failures_and_schedule_to_close_end_the_retries() {
    let mut run = started();
    let cmds = vec![schedule_activity("a1"), schedule_activity_with("a2", |a| a.schedule_to_close_timeout = secs(3))];
    workflow_task_completed(&mut run, 2, 3, &done(cmds), T0).unwrap();
    activity_task_started(&mut run, 5, "p", "w", T0).unwrap();
    let out = activity_task_failed(&mut run, 5, 1, app_failure(true, "X"), "w", T0 + 1).unwrap();
    let Some(Ev::ActivityTaskFailedEventAttributes(f)) = &out.events[1].attributes else { panic!() };
    assert_eq!(f.retry_state, RetryState::NonRetryableFailure as i32);
    // a2: the first retry (at +1 s) fits in 3 s, the second (at +1 s + 2 s) does not.
    activity_task_started(&mut run, 6, "p", "w", T0).unwrap();
    assert!(activity_task_failed(&mut run, 6, 1, app_failure(false, "X"), "w", T0 + 10).unwrap().events.is_empty());
    activity_task_started(&mut run, 6, "p2", "w", T0 + 1_010).unwrap();
    let out = activity_task_failed(&mut run, 6, 2, app_failure(false, "X"), "w", T0 + 1_020).unwrap();
    let failed = out.events.iter().find_map(|e| match &e.attributes {
        Some(Ev::ActivityTaskFailedEventAttributes(f)) => Some(f.clone()),
        _ => None,
    });
    assert_eq!(failed.unwrap().retry_state, RetryState::Timeout as i32);
}

#[test]
fn a_retry_policy_temporal_would_refuse_is_refused() {
    for bad in [
        RetryPolicy { backoff_coefficient: 0.5, ..Default::default() },
        RetryPolicy { maximum_attempts: -1, ..Default::default() },
        RetryPolicy { initial_interval: secs(10), maximum_interval: secs(5), ..Default::default() },
    ] {
        let mut run = started();
        let cmd = schedule_activity_with("a1", |a| a.retry_policy = Some(bad.clone()));
        assert_bad_attributes(
            workflow_task_completed(&mut run, 2, 3, &done(vec![cmd]), T0),
            WorkflowTaskFailedCause::BadScheduleActivityAttributes,
        );
        assert!(run.activities.is_empty(), "nothing of the bad task is applied");
    }
}

fn signal_attrs(
    name: &str,
    request_id: &str,
) -> norn_proto::protos::temporal::api::history::v1::WorkflowExecutionSignaledEventAttributes {
    norn_proto::protos::temporal::api::history::v1::WorkflowExecutionSignaledEventAttributes {
        signal_name: name.into(),
        request_id: request_id.into(),
        ..Default::default()
    }
}

#[test]
fn signals_are_applied_once_and_never_after_close() {
    let (mut run, _) = start("ns-id", "run-1", &start_req(), T0).unwrap();
    // A task is scheduled but not started: the signal is written at once, no second task.
    let out = signal(&mut run, signal_attrs("go", "s1"), T0 + 1).unwrap();
    assert_eq!(types(&out), vec![(3, EventType::WorkflowExecutionSignaled)]);
    assert!(out.effects.is_empty());
    assert_eq!(
        signal(&mut run, signal_attrs("go", "s1"), T0 + 2).unwrap(),
        Outcome::default(),
        "retried signal applied twice"
    );
    workflow_task_started(&mut run, 2, "p", "w", T0 + 3).unwrap();
    // During a started task: buffered, then written after its completion with a new task.
    assert!(signal(&mut run, signal_attrs("go", "s2"), T0 + 4).unwrap().events.is_empty());
    let out = workflow_task_completed(&mut run, 2, 4, &done(vec![]), T0 + 5).unwrap();
    assert_eq!(
        types(&out),
        vec![
            (5, EventType::WorkflowTaskCompleted),
            (6, EventType::WorkflowExecutionSignaled),
            (7, EventType::WorkflowTaskScheduled)
        ]
    );
    workflow_task_started(&mut run, 7, "p", "w", T0 + 6).unwrap();
    workflow_task_completed(&mut run, 7, 8, &done(vec![complete_workflow()]), T0 + 7).unwrap();
    assert!(matches!(signal(&mut run, signal_attrs("late", "s3"), T0 + 8), Err(EngineError::NotFound(_))));
}

#[test]
fn signal_with_start_puts_the_signal_before_the_first_task() {
    let (_, out) = start_with_signal("ns", "run", &start_req(), Some(signal_attrs("go", "s")), T0).unwrap();
    assert_eq!(
        types(&out),
        vec![
            (1, EventType::WorkflowExecutionStarted),
            (2, EventType::WorkflowExecutionSignaled),
            (3, EventType::WorkflowTaskScheduled)
        ]
    );
}

#[test]
fn cancel_is_requested_once_and_closed_by_the_workflow() {
    let (mut run, _) = start("ns-id", "run-1", &start_req(), T0).unwrap();
    let out = request_cancel(&mut run, "stop", "me", T0 + 1).unwrap();
    assert_eq!(types(&out), vec![(3, EventType::WorkflowExecutionCancelRequested)]);
    assert_eq!(request_cancel(&mut run, "again", "me", T0 + 2).unwrap(), Outcome::default());
    workflow_task_started(&mut run, 2, "p", "w", T0 + 3).unwrap();
    let cancel = command(
        CommandType::CancelWorkflowExecution,
        Cmd::CancelWorkflowExecutionCommandAttributes(CancelWorkflowExecutionCommandAttributes { details: None }),
    );
    let out = workflow_task_completed(&mut run, 2, 4, &done(vec![cancel]), T0 + 4).unwrap();
    assert_eq!(types(&out), vec![(5, EventType::WorkflowTaskCompleted), (6, EventType::WorkflowExecutionCanceled)]);
    assert_eq!(run.status, RunStatus::Canceled);
}

#[test]
fn terminate_closes_at_once_and_drops_pending_work() {
    let mut run = started();
    workflow_task_completed(&mut run, 2, 3, &done(vec![schedule_activity("a1")]), T0 + 2).unwrap();
    let out = terminate(&mut run, "ops", None, "admin", T0 + 3).unwrap();
    assert_eq!(types(&out), vec![(6, EventType::WorkflowExecutionTerminated)]);
    assert_eq!(out.effects, vec![Effect::RunClosed]);
    assert_eq!(run.status, RunStatus::Terminated);
    assert!(activity_task_started(&mut run, 5, "p", "w", T0 + 4).is_err());
    assert!(matches!(terminate(&mut run, "again", None, "admin", T0 + 5), Err(EngineError::NotFound(_))));
}

fn cancel_activity(scheduled_id: i64) -> Command {
    command(
        CommandType::RequestCancelActivityTask,
        Cmd::RequestCancelActivityTaskCommandAttributes(RequestCancelActivityTaskCommandAttributes {
            scheduled_event_id: scheduled_id,
        }),
    )
}

#[test]
fn timers_and_activities_are_canceled_by_the_workflow() {
    let mut run = started();
    // 5: a1, 6: a2, 7: timer t.
    let cmds = vec![schedule_activity("a1"), schedule_activity("a2"), timer("t", 60)];
    workflow_task_completed(&mut run, 2, 3, &done(cmds), T0).unwrap();
    activity_task_started(&mut run, 5, "p", "w", T0 + 1).unwrap();
    activity_task_started(&mut run, 6, "p", "w", T0 + 1).unwrap();
    // a1 completes (8 started, 9 completed), which schedules workflow task 10.
    activity_task_completed(&mut run, 5, 1, vec![], "w", T0 + 2).unwrap();
    workflow_task_started(&mut run, 10, "poll", "w", T0 + 3).unwrap();
    let cmd = command(
        CommandType::CancelTimer,
        Cmd::CancelTimerCommandAttributes(CancelTimerCommandAttributes { timer_id: "t".into() }),
    );
    let bad = done(vec![cancel_activity(5)]);
    // a1 is closed already.
    assert_bad_attributes(
        workflow_task_completed(&mut run.clone(), 10, 11, &bad, T0 + 4),
        WorkflowTaskFailedCause::BadRequestCancelActivityAttributes,
    );
    let out = workflow_task_completed(&mut run, 10, 11, &done(vec![cmd, cancel_activity(6)]), T0 + 4).unwrap();
    assert_eq!(
        types(&out),
        vec![
            (12, EventType::WorkflowTaskCompleted),
            (13, EventType::TimerCanceled),
            (14, EventType::ActivityTaskCancelRequested)
        ]
    );
    assert!(run.timers.is_empty());
    assert!(matches!(timer_fired(&mut run, "t", 7, T0 + 70_000), Err(EngineError::NotFound(_))));
    // a2 is running: it hears of the cancel through its heartbeat, then acknowledges it.
    activity_heartbeat(&mut run, 6, 1, b"d".to_vec(), T0 + 4).unwrap();
    assert_eq!(run.activities[&6].cancel_requested_id, 14);
    let out = activity_task_canceled(&mut run, 6, 1, vec![], "w", T0 + 5).unwrap();
    assert_eq!(
        types(&out),
        vec![
            (15, EventType::ActivityTaskStarted),
            (16, EventType::ActivityTaskCanceled),
            (17, EventType::WorkflowTaskScheduled)
        ]
    );
    let Some(Ev::ActivityTaskCanceledEventAttributes(c)) = &out.events[1].attributes else { panic!() };
    assert_eq!((c.latest_cancel_requested_event_id, c.scheduled_event_id, c.started_event_id), (14, 6, 15));
}

#[test]
fn an_activity_not_yet_started_is_canceled_at_once() {
    let mut run = started();
    workflow_task_completed(&mut run, 2, 3, &done(vec![schedule_activity("a1")]), T0).unwrap();
    let out = activity_task_canceled(&mut run, 5, 1, vec![], "w", T0 + 1);
    assert!(matches!(out, Err(EngineError::NotFound(_))), "not started, not asked");
    let mut run = started();
    let cmds = vec![schedule_activity("a1"), timer("t", 1)];
    workflow_task_completed(&mut run, 2, 3, &done(cmds), T0).unwrap();
    timer_fired(&mut run, "t", 6, T0 + 1_000).unwrap(); // 7 fired, 8 scheduled
    workflow_task_started(&mut run, 8, "poll", "w", T0 + 1_001).unwrap(); // 9
    let out = workflow_task_completed(&mut run, 8, 9, &done(vec![cancel_activity(5)]), T0 + 1_002).unwrap();
    assert_eq!(
        types(&out),
        vec![
            (10, EventType::WorkflowTaskCompleted),
            (11, EventType::ActivityTaskCancelRequested),
            (12, EventType::ActivityTaskCanceled),
            (13, EventType::WorkflowTaskScheduled)
        ]
    );
    assert!(run.activities.is_empty());
}

#[test]
fn a_silent_activity_times_out_on_its_heartbeat() {
    let mut run = started();
    let cmd = schedule_activity_with("a1", |a| {
        a.start_to_close_timeout = secs(60);
        a.heartbeat_timeout = secs(2);
        a.retry_policy = Some(RetryPolicy { maximum_attempts: 1, ..Default::default() });
    });
    workflow_task_completed(&mut run, 2, 3, &done(vec![cmd]), T0).unwrap();
    activity_task_started(&mut run, 5, "p", "w", T0).unwrap();
    activity_heartbeat(&mut run, 5, 1, b"progress".to_vec(), T0 + 1_500).unwrap();
    assert!(activity_timed_out(&mut run, 5, 1, T0 + 3_000).is_err(), "the heartbeat moved the deadline");
    let out = activity_timed_out(&mut run, 5, 1, T0 + 3_500).unwrap();
    let Some(Ev::ActivityTaskTimedOutEventAttributes(t)) = &out.events[1].attributes else { panic!() };
    use norn_proto::protos::temporal::api::failure::v1::failure::FailureInfo;
    let Some(FailureInfo::TimeoutFailureInfo(info)) = &t.failure.as_ref().unwrap().failure_info else { panic!() };
    assert_eq!(info.timeout_type, norn_proto::protos::temporal::api::enums::v1::TimeoutType::Heartbeat as i32);
    assert!(info.last_heartbeat_details.is_some(), "the last heartbeat's details reach the workflow");
    assert_eq!(t.retry_state, RetryState::MaximumAttemptsReached as i32);
}

#[test]
fn a_run_past_its_timeout_times_out() {
    let mut req = start_req();
    req.workflow_run_timeout = secs(10);
    req.workflow_execution_timeout = secs(5);
    let (mut run, _) = start("ns", "run-1", &req, T0).unwrap();
    assert_eq!(run.run_deadline_ms, Some(T0 + 5_000), "the earlier of the two timeouts");
    assert!(matches!(workflow_timed_out(&mut run, T0 + 4_999), Err(EngineError::InvalidArgument(_))));
    let out = workflow_timed_out(&mut run, T0 + 5_000).unwrap();
    assert_eq!(types(&out), vec![(3, EventType::WorkflowExecutionTimedOut)]);
    assert_eq!(run.status, RunStatus::TimedOut);
    assert!(out.effects.contains(&Effect::RunClosed));
    assert!(workflow_timed_out(&mut run, T0 + 6_000).is_err(), "once");
    let (mut forever, _) = start("ns", "run-2", &start_req(), T0).unwrap();
    assert_eq!(forever.run_deadline_ms, None);
    assert!(workflow_timed_out(&mut forever, u64::MAX).is_err());
}

#[test]
fn schedule_to_start_and_schedule_to_close_end_the_activity_without_retry() {
    let mut run = started();
    let cmds = vec![
        schedule_activity_with("a1", |a| a.schedule_to_start_timeout = secs(2)),
        schedule_activity_with("a2", |a| {
            a.schedule_to_close_timeout = secs(5);
            a.start_to_close_timeout = secs(60);
        }),
    ];
    workflow_task_completed(&mut run, 2, 3, &done(cmds), T0).unwrap();
    // a1 (5) is never picked up.
    assert!(activity_timed_out(&mut run, 5, 1, T0 + 1_999).is_err());
    let out = activity_timed_out(&mut run, 5, 1, T0 + 2_000).unwrap();
    assert_eq!(types(&out), vec![(7, EventType::ActivityTaskTimedOut), (8, EventType::WorkflowTaskScheduled)]);
    let Some(Ev::ActivityTaskTimedOutEventAttributes(t)) = &out.events[0].attributes else { panic!() };
    assert_eq!((t.started_event_id, t.retry_state), (0, RetryState::Timeout as i32));
    // a2 (6) is running when its schedule-to-close passes: no retry although attempts remain.
    activity_task_started(&mut run, 6, "p", "w", T0 + 1_000).unwrap();
    let out = activity_timed_out(&mut run, 6, 1, T0 + 5_000).unwrap();
    assert_eq!(types(&out)[..2], [(9, EventType::ActivityTaskStarted), (10, EventType::ActivityTaskTimedOut)]);
}

#[test]
fn events_buffered_during_a_task_follow_its_command_events() {
    let mut run = started();
    let attrs = norn_proto::protos::temporal::api::history::v1::WorkflowExecutionSignaledEventAttributes {
        signal_name: "s".into(),
        ..Default::default()
    };
    assert!(signal(&mut run, attrs, T0 + 2).unwrap().events.is_empty(), "buffered while the task runs");
    let out = workflow_task_completed(&mut run, 2, 3, &done(vec![timer("t", 5)]), T0 + 3).unwrap();
    assert_eq!(
        types(&out),
        vec![
            (4, EventType::WorkflowTaskCompleted),
            (5, EventType::TimerStarted),
            (6, EventType::WorkflowExecutionSignaled),
            (7, EventType::WorkflowTaskScheduled)
        ]
    );
}

#[test]
fn continue_as_new_closes_the_run_and_describes_the_next() {
    let mut run = started();
    let cmd = command(
        CommandType::ContinueAsNewWorkflowExecution,
        Cmd::ContinueAsNewWorkflowExecutionCommandAttributes(ContinueAsNewWorkflowExecutionCommandAttributes {
            input: Some(Payloads { payloads: vec![Payload { data: b"2".to_vec(), ..Default::default() }] }),
            ..Default::default()
        }),
    );
    let mut twin = run.clone();
    let out = workflow_task_completed(&mut run, 2, 3, &done(vec![cmd.clone()]), T0 + 5).unwrap();
    assert_eq!(
        types(&out),
        vec![(4, EventType::WorkflowTaskCompleted), (5, EventType::WorkflowExecutionContinuedAsNew)]
    );
    assert_eq!(run.status, RunStatus::ContinuedAsNew);
    let next = out.continued_as_new.clone().unwrap();
    let again = workflow_task_completed(&mut twin, 2, 3, &done(vec![cmd]), T0 + 5).unwrap();
    assert_eq!(again.continued_as_new.unwrap().run_id, next.run_id, "every replica derives the same run id");
    assert_ne!(next.run_id, run.run_id);
    let (new_run, new_out) = start_continued(&run, &next, T0 + 5).unwrap();
    assert_eq!((new_run.workflow_type.as_str(), new_run.task_queue.as_str()), ("Greet", "q"), "inherited");
    assert_eq!(new_run.first_run_id, run.run_id);
    let Some(Ev::WorkflowExecutionStartedEventAttributes(s)) = &new_out.events[0].attributes else { panic!() };
    assert_eq!(s.continued_execution_run_id, run.run_id);
    assert_eq!(s.input.as_ref().unwrap().payloads[0].data, b"2");
    assert!(new_out.effects.iter().any(|e| matches!(e, Effect::WorkflowTaskReady { .. })));
}

#[test]
fn a_child_is_initiated_started_and_closed_in_the_parent_history() {
    let mut run = started();
    let cmd = command(
        CommandType::StartChildWorkflowExecution,
        Cmd::StartChildWorkflowExecutionCommandAttributes(StartChildWorkflowExecutionCommandAttributes {
            workflow_id: "kid".into(),
            workflow_type: Some(WorkflowType { name: "Kid".into() }),
            ..Default::default()
        }),
    );
    let mut req = done(vec![cmd]);
    req.namespace = "default".into();
    let out = workflow_task_completed(&mut run, 2, 3, &req, T0).unwrap();
    assert_eq!(
        types(&out),
        vec![(4, EventType::WorkflowTaskCompleted), (5, EventType::StartChildWorkflowExecutionInitiated)]
    );
    assert!(out.effects.contains(&Effect::StartChild { initiated_id: 5 }));
    let request = StartWorkflowExecutionRequest::decode(run.children[&5].request.as_slice()).unwrap();
    assert_eq!((request.workflow_id.as_str(), request.task_queue.unwrap().name.as_str()), ("kid", "q"));
    assert!(
        matches!(
            child_closed(&mut run, 5, "kid-run", ChildOutcome::Terminated, T0 + 1),
            Err(EngineError::InvalidArgument(_))
        ),
        "a close before the start is recorded is retried later"
    );
    let out = child_started(&mut run, 5, "kid-run", T0 + 1).unwrap();
    assert_eq!(types(&out), vec![(6, EventType::ChildWorkflowExecutionStarted), (7, EventType::WorkflowTaskScheduled)]);
    assert!(child_started(&mut run, 5, "kid-run", T0 + 2).unwrap().events.is_empty(), "a repeat changes nothing");
    let out = child_closed(&mut run, 5, "kid-run", ChildOutcome::Completed(vec![]), T0 + 3).unwrap();
    assert_eq!(types(&out), vec![(8, EventType::ChildWorkflowExecutionCompleted)]);
    let Some(Ev::ChildWorkflowExecutionCompletedEventAttributes(c)) = &out.events[0].attributes else { panic!() };
    assert_eq!((c.initiated_event_id, c.started_event_id), (5, 6));
    assert!(run.children.is_empty());
    assert!(matches!(
        child_closed(&mut run, 5, "kid-run", ChildOutcome::Terminated, T0 + 4),
        Err(EngineError::NotFound(_))
    ));
}

#[test]
fn a_child_run_tells_its_parent_unless_it_continues_as_new() {
    let parent = ParentRef {
        namespace_id: "ns".into(),
        namespace: "default".into(),
        workflow_id: "p".into(),
        run_id: "p-run".into(),
        initiated_id: 5,
    };
    let (mut child, out) = start_child("ns", "kid-run", &start_req(), parent.clone(), T0).unwrap();
    let Some(Ev::WorkflowExecutionStartedEventAttributes(s)) = &out.events[0].attributes else { panic!() };
    assert_eq!(
        (s.parent_initiated_event_id, s.parent_workflow_execution.as_ref().unwrap().run_id.as_str()),
        (5, "p-run")
    );
    let out = terminate(&mut child, "r", None, "", T0 + 1).unwrap();
    assert!(out.effects.contains(&Effect::TellParent));
    assert_eq!(child.parent, Some(parent));
}

#[test]
fn external_signals_are_initiated_then_recorded_once() {
    let mut run = started();
    let cmd = command(
        CommandType::SignalExternalWorkflowExecution,
        Cmd::SignalExternalWorkflowExecutionCommandAttributes(SignalExternalWorkflowExecutionCommandAttributes {
            execution: Some(norn_proto::protos::temporal::api::common::v1::WorkflowExecution {
                workflow_id: "other".into(),
                run_id: String::new(),
            }),
            signal_name: "poke".into(),
            ..Default::default()
        }),
    );
    let out = workflow_task_completed(&mut run, 2, 3, &done(vec![cmd]), T0).unwrap();
    assert_eq!(
        types(&out),
        vec![(4, EventType::WorkflowTaskCompleted), (5, EventType::SignalExternalWorkflowExecutionInitiated)]
    );
    assert!(out.effects.contains(&Effect::DeliverExternal { initiated_id: 5 }));
    let sent = norn_proto::protos::temporal::api::history::v1::WorkflowExecutionSignaledEventAttributes::decode(
        run.externals[&5].signal.as_slice(),
    )
    .unwrap();
    assert!(!sent.request_id.is_empty(), "the target deduplicates redeliveries by this id");
    let out = external_done(&mut run, 5, false, T0 + 1).unwrap();
    assert_eq!(
        types(&out),
        vec![(6, EventType::SignalExternalWorkflowExecutionFailed), (7, EventType::WorkflowTaskScheduled)]
    );
    assert!(external_done(&mut run, 5, true, T0 + 2).unwrap().events.is_empty(), "recorded once");
}

#[test]
fn retry_delays_are_computed_in_bounded_time_for_any_attempt() {
    let flat = RetrySpec {
        initial_interval_ms: 1_000,
        backoff_milli: 1_000,
        maximum_interval_ms: 100_000,
        maximum_attempts: 0,
        non_retryable_error_types: vec![],
    };
    assert_eq!(flat.delay_after(i32::MAX), 1_000, "a coefficient of 1 never grows");
    let doubling = RetrySpec { backoff_milli: 2_000, ..flat };
    assert_eq!(doubling.delay_after(3), 4_000);
    assert_eq!(doubling.delay_after(i32::MAX), 100_000);
}

mod updates {
    use super::*;
    use norn_proto::protos::temporal::api::protocol::v1::Message as ProtocolMessage;
    use norn_proto::protos::temporal::api::update::v1::{
        outcome, Acceptance, Input, Meta, Outcome as UpdateOutcome, Rejection, Request, Response,
    };

    fn request(id: &str) -> Request {
        Request {
            meta: Some(Meta { update_id: id.into(), identity: "caller".into() }),
            input: Some(Input { header: None, name: "add".into(), args: None }),
            ..Default::default()
        }
    }

    fn msg<M: Message>(id: &str, update: &str, url: &str, body: M) -> ProtocolMessage {
        ProtocolMessage {
            id: id.into(),
            protocol_instance_id: update.into(),
            sequencing_id: None,
            body: Some(prost_wkt_types::Any { type_url: url.into(), value: body.encode_to_vec() }),
        }
    }

    fn protocol(id: &str) -> Command {
        command(
            CommandType::ProtocolMessage,
            Cmd::ProtocolMessageCommandAttributes(ProtocolMessageCommandAttributes { message_id: id.into() }),
        )
    }

    fn admit_update(run: &mut RunState, r: Request, now_ms: u64) -> Result<Outcome, EngineError> {
        super::super::engine::admit_update(run, r, &Default::default(), now_ms)
    }

    #[test]
    fn updates_past_the_in_flight_and_total_limits_are_refused() {
        let mut run = idle();
        let limits =
            crate::limits::EngineLimits { updates_in_flight_max: 2, updates_total_max: 3, ..Default::default() };
        super::super::engine::admit_update(&mut run, request("u1"), &limits, T0 + 3).unwrap();
        super::super::engine::admit_update(&mut run, request("u2"), &limits, T0 + 3).unwrap();
        let e = super::super::engine::admit_update(&mut run, request("u3"), &limits, T0 + 3).unwrap_err();
        assert!(matches!(e, EngineError::ResourceExhausted(_)), "{e:?}");
        // A retried admission of an update already in is still accepted.
        super::super::engine::admit_update(&mut run, request("u1"), &limits, T0 + 3).unwrap();
        let limits =
            crate::limits::EngineLimits { updates_in_flight_max: 10, updates_total_max: 2, ..Default::default() };
        let e = super::super::engine::admit_update(&mut run, request("u3"), &limits, T0 + 3).unwrap_err();
        assert!(matches!(e, EngineError::FailedPrecondition(_)), "{e:?}");
    }

    /// A run whose first task completed idle (nothing scheduled).
    fn idle() -> RunState {
        let mut run = started();
        workflow_task_completed(&mut run, 2, 3, &done(vec![]), T0 + 2).unwrap();
        run
    }

    #[test]
    fn admission_writes_no_event_and_schedules_a_task_that_carries_the_request() {
        let mut run = idle();
        let out = admit_update(&mut run, request("u1"), T0 + 3).unwrap();
        assert_eq!(types(&out), vec![(5, EventType::WorkflowTaskScheduled)]);
        // A second admission of the same id changes nothing.
        assert!(types(&admit_update(&mut run, request("u1"), T0 + 4).unwrap()).is_empty());
        workflow_task_started(&mut run, 5, "poll-2", "worker", T0 + 5).unwrap();
        let m = update_messages(&run, 6);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].id, "u1/request");
        assert_eq!(Request::decode(m[0].body.as_ref().unwrap().value.as_slice()).unwrap(), request("u1"));
    }

    #[test]
    fn acceptance_and_response_write_their_events_in_command_order() {
        let mut run = idle();
        admit_update(&mut run, request("u1"), T0 + 3).unwrap();
        workflow_task_started(&mut run, 5, "poll-2", "worker", T0 + 5).unwrap();
        let accept = msg(
            "u1/accept",
            "u1",
            "type.googleapis.com/temporal.api.update.v1.Acceptance",
            Acceptance {
                accepted_request_message_id: "u1/request".into(),
                accepted_request_sequencing_event_id: 5,
                accepted_request: None,
            },
        );
        let success = UpdateOutcome { value: Some(outcome::Value::Success(Payloads::default())) };
        let respond = msg(
            "u1/complete",
            "u1",
            "type.googleapis.com/temporal.api.update.v1.Response",
            Response {
                meta: Some(Meta { update_id: "u1".into(), identity: String::new() }),
                outcome: Some(success.clone()),
            },
        );
        let mut req = done(vec![protocol("u1/accept"), schedule_activity("a1"), protocol("u1/complete")]);
        req.messages = vec![accept, respond];
        let out = workflow_task_completed(&mut run, 5, 6, &req, T0 + 6).unwrap();
        assert_eq!(
            types(&out),
            vec![
                (7, EventType::WorkflowTaskCompleted),
                (8, EventType::WorkflowExecutionUpdateAccepted),
                (9, EventType::ActivityTaskScheduled),
                (10, EventType::WorkflowExecutionUpdateCompleted),
            ]
        );
        match &out.events[1].attributes {
            Some(Ev::WorkflowExecutionUpdateAcceptedEventAttributes(a)) => {
                assert_eq!(a.accepted_request, Some(request("u1")), "the request is filled in for replays");
            }
            other => panic!("{other:?}"),
        }
        match &out.events[3].attributes {
            Some(Ev::WorkflowExecutionUpdateCompletedEventAttributes(a)) => assert_eq!(a.accepted_event_id, 8),
            other => panic!("{other:?}"),
        }
        assert_eq!(run.updates["u1"].stage, UpdateStage::Completed { outcome: success.encode_to_vec() });
    }

    #[test]
    fn a_rejection_records_the_outcome_without_an_event() {
        let mut run = idle();
        admit_update(&mut run, request("u1"), T0 + 3).unwrap();
        workflow_task_started(&mut run, 5, "poll-2", "worker", T0 + 5).unwrap();
        let reject = msg(
            "u1/reject",
            "u1",
            "type.googleapis.com/temporal.api.update.v1.Rejection",
            Rejection { rejected_request_message_id: "u1/request".into(), ..Default::default() },
        );
        let mut req = done(vec![]);
        req.messages = vec![reject];
        let out = workflow_task_completed(&mut run, 5, 6, &req, T0 + 6).unwrap();
        assert_eq!(types(&out), vec![(7, EventType::WorkflowTaskCompleted)]);
        assert!(matches!(run.updates["u1"].stage, UpdateStage::Completed { .. }));
        assert!(update_messages(&run, 8).is_empty());
    }

    #[test]
    fn bad_messages_are_refused_and_change_nothing() {
        let mut run = idle();
        admit_update(&mut run, request("u1"), T0 + 3).unwrap();
        workflow_task_started(&mut run, 5, "poll-2", "worker", T0 + 5).unwrap();
        let before = run.clone();
        let mut req = done(vec![protocol("missing")]);
        assert!(matches!(workflow_task_completed(&mut run, 5, 6, &req, T0 + 6), Err(EngineError::InvalidArgument(_))));
        req = done(vec![]);
        req.messages =
            vec![msg("x", "other-update", "type.googleapis.com/temporal.api.update.v1.Response", Response::default())];
        assert!(matches!(workflow_task_completed(&mut run, 5, 6, &req, T0 + 6), Err(EngineError::InvalidArgument(_))));
        assert_eq!(run, before);
        let closed = &mut run;
        closed.status = RunStatus::Completed;
        assert!(matches!(admit_update(closed, request("u2"), T0 + 7), Err(EngineError::NotFound(_))));
    }
}

fn limited(pending_activities_max: u64) -> crate::limits::EngineLimits {
    crate::limits::EngineLimits { pending_activities_max, ..Default::default() }
}

#[test]
fn a_task_past_the_pending_activities_limit_fails_with_temporals_cause_and_schedules_a_retry() {
    let mut run = started();
    let cmds = vec![schedule_activity("a1"), schedule_activity("a2"), schedule_activity("a3")];
    let out = super::engine::workflow_task_completed(&mut run, 2, 3, &done(cmds), &limited(2), T0 + 2).unwrap();
    assert_eq!(types(&out), vec![(4, EventType::WorkflowTaskFailed)]);
    let Some(Ev::WorkflowTaskFailedEventAttributes(a)) = &out.events[0].attributes else { panic!() };
    assert_eq!(a.cause, WorkflowTaskFailedCause::PendingActivitiesLimitExceeded as i32);
    assert!(a.failure.as_ref().unwrap().message.contains("per-workflow limit of 2"), "{a:?}");
    assert!(matches!(out.reply_error, Some(EngineError::InvalidArgument(_))));
    assert!(run.activities.is_empty(), "no activity was scheduled");
    assert!(run.is_open());
    assert_eq!(run.workflow_task.as_ref().map(|t| t.attempt), Some(2), "a retry is scheduled");
    // Within the limit the same commands go through.
    let mut run = started();
    let cmds = vec![schedule_activity("a1"), schedule_activity("a2")];
    super::engine::workflow_task_completed(&mut run, 2, 3, &done(cmds), &limited(2), T0 + 2).unwrap();
    assert_eq!(run.activities.len(), 2);
}

#[test]
fn an_oversized_activity_input_fails_the_run_and_a_long_history_terminates_it() {
    let mut run = started();
    let mut cmd = schedule_activity("a1");
    if let Some(Cmd::ScheduleActivityTaskCommandAttributes(a)) = &mut cmd.attributes {
        a.input = Some(Payloads { payloads: vec![Payload { data: vec![7; 4096], ..Default::default() }] });
    }
    let limits = crate::limits::EngineLimits { blob_size_max_bytes: 1024, ..Default::default() };
    let out = super::engine::workflow_task_completed(&mut run, 2, 3, &done(vec![cmd]), &limits, T0 + 2).unwrap();
    assert_eq!(types(&out), vec![(4, EventType::WorkflowTaskFailed), (5, EventType::WorkflowExecutionFailed)]);
    let Some(Ev::WorkflowExecutionFailedEventAttributes(a)) = &out.events[1].attributes else { panic!() };
    assert_eq!(a.failure.as_ref().unwrap().message, "ScheduleActivityTaskCommandAttributes.Input exceeds size limit.");
    assert_eq!(run.status, RunStatus::Failed);

    let mut run = started();
    let limits = crate::limits::EngineLimits { history_count_max: 4, ..Default::default() };
    let out =
        super::engine::workflow_task_completed(&mut run, 2, 3, &done(vec![timer("t", 5)]), &limits, T0 + 2).unwrap();
    let last = out.events.last().unwrap();
    assert_eq!(EventType::try_from(last.event_type).unwrap(), EventType::WorkflowExecutionTerminated);
    let Some(Ev::WorkflowExecutionTerminatedEventAttributes(a)) = &last.attributes else { panic!() };
    assert_eq!(a.reason, crate::limits::HISTORY_TOO_LARGE);
    assert_eq!(run.status, RunStatus::Terminated);
    assert!(run.history_bytes > 0);
}

#[test]
fn ids_past_the_length_limit_fail_the_task() {
    let mut run = started();
    let limits = crate::limits::EngineLimits { id_length_max: 8, ..Default::default() };
    let r = super::engine::workflow_task_completed(
        &mut run,
        2,
        3,
        &done(vec![schedule_activity("a-very-long-id")]),
        &limits,
        T0,
    );
    let message = assert_bad_attributes(r, WorkflowTaskFailedCause::BadScheduleActivityAttributes);
    assert_eq!(message, "ActivityId exceeds length limit.");
    assert!(run.activities.is_empty());
}

fn sticky_done(commands: Vec<Command>, queue: &str) -> RespondWorkflowTaskCompletedRequest {
    RespondWorkflowTaskCompletedRequest {
        sticky_attributes: Some(norn_proto::protos::temporal::api::taskqueue::v1::StickyExecutionAttributes {
            worker_task_queue: Some(TaskQueue {
                name: queue.into(),
                kind: norn_proto::protos::temporal::api::enums::v1::TaskQueueKind::Sticky as i32,
                normal_name: "q".into(),
            }),
            schedule_to_start_timeout: Some(prost_wkt_types::Duration { seconds: 5, nanos: 0 }),
        }),
        ..done(commands)
    }
}

#[test]
fn a_sticky_worker_gets_the_next_task_until_it_misses_the_sticky_timeout() {
    let mut run = started();
    workflow_task_completed(&mut run, 2, 3, &sticky_done(vec![], "worker-a-sticky"), T0 + 2).unwrap();
    assert_eq!((run.sticky_queue.as_str(), run.sticky_timeout_ms), ("worker-a-sticky", 5_000));
    // A signal schedules a task on the sticky queue, with the normal queue to fall back on.
    let out = signal(&mut run, signal_attrs("go", "s1"), T0 + 10).unwrap();
    assert_eq!(
        out.effects,
        vec![Effect::StickyWorkflowTaskReady {
            sticky_queue: "worker-a-sticky".into(),
            normal_queue: "q".into(),
            scheduled_id: 6
        }]
    );
    let Some(Ev::WorkflowTaskScheduledEventAttributes(a)) = out.events[1].attributes.as_ref() else { panic!() };
    assert_eq!(a.task_queue.as_ref().map(|q| q.name.as_str()), Some("worker-a-sticky"));
    assert_eq!(super::index::next_due(&run, T0 + 10), Some(T0 + 5_010), "the sticky timeout is due");
    let ready = super::index::ready_tasks(&run, 0, T0 + 10);
    assert_eq!(ready[0].0.name, "worker-a-sticky", "a rebuilt matching offers it to the sticky queue");
    // Too early: refused, nothing changes.
    assert!(workflow_task_timed_out(&mut run.clone(), 6, 0, T0 + 5_009).is_err());
    // The worker never polls: ScheduleToStart timeout, and a new task on the normal queue.
    let out = workflow_task_timed_out(&mut run, 6, 0, T0 + 5_010).unwrap();
    assert_eq!(types(&out), vec![(7, EventType::WorkflowTaskTimedOut), (8, EventType::WorkflowTaskScheduled)]);
    assert_eq!(out.effects, vec![Effect::WorkflowTaskReady { task_queue: "q".into(), scheduled_id: 8 }]);
    assert!(run.sticky_queue.is_empty());
    // Started and completed with stickiness again, then failed: the retry goes to the normal queue.
    workflow_task_started(&mut run, 8, "poll-2", "worker", T0 + 5_100).unwrap();
    workflow_task_completed(&mut run, 8, 9, &sticky_done(vec![], "worker-b-sticky"), T0 + 5_200).unwrap();
    let out = signal(&mut run, signal_attrs("go", "s2"), T0 + 5_300).unwrap();
    assert!(
        matches!(out.effects[0], Effect::StickyWorkflowTaskReady { ref sticky_queue, .. } if sticky_queue == "worker-b-sticky")
    );
    // ResetStickyTaskQueue moves the waiting task to the normal queue.
    let out = reset_sticky(&mut run).unwrap();
    assert_eq!(out.effects, vec![Effect::WorkflowTaskReady { task_queue: "q".into(), scheduled_id: 12 }]);
    assert!(out.events.is_empty());
    assert!(run.sticky_queue.is_empty() && !run.workflow_task.as_ref().unwrap().sticky);
    assert_eq!(super::index::ready_tasks(&run, 0, T0 + 5_400)[0].0.name, "q");
    // A completion without sticky attributes leaves the run without a sticky queue.
    workflow_task_started(&mut run, 12, "poll-3", "worker", T0 + 5_500).unwrap();
    workflow_task_completed(&mut run, 12, 13, &sticky_done(vec![], "worker-c-sticky"), T0 + 5_600).unwrap();
    let out = signal(&mut run, signal_attrs("go", "s3"), T0 + 5_700).unwrap();
    let sid = run.workflow_task.as_ref().unwrap().scheduled_id;
    workflow_task_started(&mut run, sid, "poll-4", "worker", T0 + 5_800).unwrap();
    assert!(!out.effects.is_empty());
    workflow_task_failed(&mut run, sid, sid + 1, &RespondWorkflowTaskFailedRequest::default(), T0 + 5_900).unwrap();
    assert!(run.sticky_queue.is_empty(), "a failed task clears stickiness");
    assert!(!run.workflow_task.as_ref().unwrap().sticky);
}

#[test]
fn a_run_takes_signals_up_to_its_limit_and_retries_of_taken_ones_change_nothing() {
    let mut run = started();
    for i in 0..3 {
        super::engine::signal(&mut run, signal_attrs("go", &format!("s{i}")), 3, T0 + 2).unwrap();
    }
    assert_eq!(run.signals_received, 3);
    let before = run.clone();
    let refused = super::engine::signal(&mut run, signal_attrs("go", "s3"), 3, T0 + 3).unwrap_err();
    assert!(
        matches!(&refused, EngineError::FailedPrecondition(m) if m.contains("limit for signal events")),
        "{refused:?}"
    );
    assert_eq!(run, before, "a refused signal changes nothing");
    // A retry of an accepted signal is still answered (and applied once).
    let out = super::engine::signal(&mut run, signal_attrs("go", "s1"), 3, T0 + 4).unwrap();
    assert!(out.events.is_empty());
    // The first signal of a signal-with-start counts.
    let (run, _) = start_with_signal("ns-id", "run-2", &start_req(), Some(signal_attrs("go", "w")), T0).unwrap();
    assert_eq!(run.signals_received, 1);
}
