//! The worker's workflow cache. Workflow machines are not `Send` (workflow code runs as local
//! futures), so one thread owns every cached machine and runs every activation of the worker;
//! the async side hands it a task and waits for the answer. A task on the worker's sticky queue
//! carries only the events after the last task this worker ran for the run, and resumes the
//! cached machine where it stopped instead of replaying the whole history.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use temporalio_protos::temporal::api::enums::v1::{QueryResultType, WorkflowTaskFailedCause};
use temporalio_protos::temporal::api::history::v1::HistoryEvent;
use temporalio_protos::temporal::api::query::v1::WorkflowQueryResult;
use temporalio_protos::temporal::api::workflowservice::v1 as ws;

use super::Registry;
use crate::failure::Failure;
use crate::workflow::machine::Nondeterminism;
use crate::workflow::WorkflowMachine;

/// What a workflow task produced.
pub(crate) enum WftResult {
    Completed(
        Vec<temporalio_protos::temporal::api::command::v1::Command>,
        Vec<temporalio_protos::temporal::api::protocol::v1::Message>,
        HashMap<String, WorkflowQueryResult>,
    ),
    Failed(WorkflowTaskFailedCause, Failure),
    Query(Result<temporalio_protos::temporal::api::common::v1::Payloads, Failure>),
}

/// The executor's answer to one task.
pub(crate) enum Activation {
    Done(WftResult),
    /// The task's history is partial and no cached machine stops where it begins (evicted, or
    /// the worker restarted): run it again with the whole history.
    NeedFullHistory,
}

enum Job {
    Run {
        task: Arc<ws::PollWorkflowTaskQueueResponse>,
        history: Vec<HistoryEvent>,
        reply: std::sync::mpsc::SyncSender<Activation>,
    },
    Evict(String),
}

/// The handle of the executor thread; cheap to clone. The thread ends once every handle is gone.
#[derive(Clone)]
pub(crate) struct Executor {
    tx: std::sync::mpsc::Sender<Job>,
}

impl Executor {
    /// Starts the thread, caching up to `capacity` runs (0 caches none).
    pub(crate) fn start(registry: Arc<Registry>, namespace: String, capacity: usize) -> std::io::Result<Executor> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new().name("norn-workflows".into()).spawn(move || {
            let mut cache = Cache { runs: HashMap::new(), capacity, clock: 0 };
            while let Ok(job) = rx.recv() {
                match job {
                    Job::Run { task, history, reply } => {
                        let answer = activate(&registry, &namespace, &task, &history, &mut cache);
                        let _ = reply.send(answer);
                    }
                    Job::Evict(run_id) => {
                        cache.runs.remove(&run_id);
                    }
                }
            }
        })?;
        Ok(Executor { tx })
    }

    /// Runs a task's activation on the executor thread and waits for it, blocking this thread
    /// as running it here would: the caller never yields meanwhile, so the order of everything
    /// else is what inline execution gives (the simulator replays a seed exactly).
    pub(crate) fn run(&self, task: Arc<ws::PollWorkflowTaskQueueResponse>, history: Vec<HistoryEvent>) -> Activation {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Job::Run { task, history, reply }).is_err() {
            return Activation::Done(WftResult::Failed(
                WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure,
                Failure::application("the worker's workflow thread has stopped", "WorkerError"),
            ));
        }
        rx.recv().unwrap_or_else(|_| {
            Activation::Done(WftResult::Failed(
                WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure,
                Failure::application("the worker's workflow thread dropped the task", "WorkerError"),
            ))
        })
    }

    /// Forgets a run's machine (its task's completion was refused or never arrived).
    pub(crate) fn evict(&self, run_id: &str) {
        let _ = self.tx.send(Job::Evict(run_id.to_string()));
    }
}

/// Machines by run id, least recently used evicted first.
struct Cache {
    runs: HashMap<String, (WorkflowMachine, u64)>,
    capacity: usize,
    clock: u64,
}

impl Cache {
    fn put(&mut self, run_id: String, m: WorkflowMachine) {
        if self.capacity == 0 {
            return;
        }
        if self.runs.len() >= self.capacity {
            if let Some(oldest) = self.runs.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone()) {
                self.runs.remove(&oldest);
            }
        }
        self.clock += 1;
        self.runs.insert(run_id, (m, self.clock));
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "workflow code panicked".into())
}

fn panicked(panic: Box<dyn std::any::Any + Send>) -> WftResult {
    WftResult::Failed(
        WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure,
        Failure::application(format!("workflow code panicked: {}", panic_message(panic)), "Panic"),
    )
}

fn nondeterministic(nd: Nondeterminism) -> WftResult {
    WftResult::Failed(
        WorkflowTaskFailedCause::NonDeterministicError,
        Failure::application(nd.to_string(), "NondeterminismError"),
    )
}

/// Runs one workflow task synchronously (the workflow's futures never cross an await).
fn activate(
    registry: &Registry,
    namespace: &str,
    task: &ws::PollWorkflowTaskQueueResponse,
    history: &[HistoryEvent],
    cache: &mut Cache,
) -> Activation {
    let wf_type = task.workflow_type.as_ref().map(|t| t.name.clone()).unwrap_or_default();
    let exec = task.workflow_execution.clone().unwrap_or_default();
    let Some(f) = registry.workflow(&wf_type) else {
        let mut known: Vec<&String> = registry.workflows.keys().collect();
        known.sort();
        return Activation::Done(WftResult::Failed(
            WorkflowTaskFailedCause::WorkflowWorkerUnhandledFailure,
            Failure::application(
                format!("workflow type {wf_type:?} is not registered on this worker (registered: {known:?})"),
                "NotFoundError",
            ),
        ));
    };
    // A query task replays the whole history on a machine of its own; the cache is left as is.
    if let Some(q) = &task.query {
        let answer = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut m = WorkflowMachine::new(f.clone(), namespace, &exec.workflow_id, &exec.run_id);
            match m.run(history, false) {
                Ok(_) => m.query(&q.query_type, q.query_args.clone()),
                Err(nd) => Err(Failure::application(nd.to_string(), "NondeterminismError")),
            }
        }));
        return Activation::Done(match answer {
            Ok(r) => WftResult::Query(r),
            Err(p) => WftResult::Query(Err(Failure::application(panic_message(p), "Panic"))),
        });
    }
    let first = history.first().map(|e| e.event_id).unwrap_or(0);
    let cached = cache.runs.remove(&exec.run_id).map(|(m, _)| m);
    let (mut m, resume) = if first <= 1 {
        (WorkflowMachine::new(f, namespace, &exec.workflow_id, &exec.run_id), false)
    } else {
        match cached {
            Some(m) if m.can_resume_at(first) => (m, true),
            _ => return Activation::NeedFullHistory,
        }
    };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let out =
            if resume { m.resume(history, &task.messages) } else { m.run_with_messages(history, true, &task.messages) };
        match out {
            Ok(out) => {
                let mut answers = HashMap::new();
                for (id, q) in &task.queries {
                    answers.insert(id.clone(), query_result(m.query(&q.query_type, q.query_args.clone())));
                }
                WftResult::Completed(out.commands, out.messages, answers)
            }
            Err(nd) => nondeterministic(nd),
        }
    }));
    match outcome {
        Ok(r) => {
            // Kept for the run's next task unless this task failed or the code returned.
            if matches!(r, WftResult::Completed(..)) && !m.finished() {
                cache.put(exec.run_id.clone(), m);
            }
            Activation::Done(r)
        }
        Err(panic) => Activation::Done(panicked(panic)),
    }
}

fn query_result(r: Result<temporalio_protos::temporal::api::common::v1::Payloads, Failure>) -> WorkflowQueryResult {
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
