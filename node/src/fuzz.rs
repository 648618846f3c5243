//! `norn debug fuzz`: an in-process fuzzing harness on the stable toolchain.
//!
//! Each target takes arbitrary bytes and must never panic; the history-engine target also checks
//! the engine's invariants after every step. Inputs come from a corpus directory (replayed first)
//! and from mutations of it (bit flips, byte runs, splices, truncations, interesting values),
//! driven by a seeded PRNG so a run is repeatable. An input that panics is written to
//! `<corpus>/../crashes/<target>/` and reported. `node/tests/fuzz_corpus.rs` replays the corpus
//! kept in the repository (`fuzz/corpus/`) on every CI run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use norn_proto::protos::temporal::api::command::v1::{command::Attributes as Cmd, *};
use norn_proto::protos::temporal::api::common::v1::{ActivityType, Payload, Payloads, WorkflowType};
use norn_proto::protos::temporal::api::history::v1::WorkflowExecutionSignaledEventAttributes;
use norn_proto::protos::temporal::api::taskqueue::v1::TaskQueue;
use norn_proto::protos::temporal::api::workflowservice::v1::*;
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::history::engine::{self, Outcome};
use crate::history::state::RunState;
use crate::limits::EngineLimits;

/// The fuzz targets.
pub const TARGETS: &[&str] =
    &["list_filter", "task_token", "state_value", "raft_codec", "requests", "history_engine", "node"];

/// Runs target `name` on one input. Panics are the failures the harness looks for.
pub fn run_one(name: &str, data: &[u8]) -> Result<(), String> {
    match name {
        "list_filter" => list_filter(data),
        "task_token" => task_token(data),
        "state_value" => state_value(data),
        "raft_codec" => raft_codec(data),
        "requests" => requests(data),
        "history_engine" => history_engine(data),
        "node" => crate::fuzz_node::target(data),
        // Shows the harness catches and reports a panic (its own tests use it).
        "_selftest" => assert!(!data.windows(4).any(|w| w == b"boom"), "selftest input"),
        other => return Err(format!("unknown fuzz target {other}; the targets are {}", TARGETS.join(", "))),
    }
    Ok(())
}

fn list_filter(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(q) = crate::list_filter::parse(&text) {
        struct Row;
        impl crate::list_filter::Row for Row {
            fn get(&self, f: crate::list_filter::Field) -> Option<crate::list_filter::Value> {
                use crate::list_filter::{Field, Value};
                Some(match f {
                    Field::StartTime | Field::ExecutionTime => Value::Time(1_700_000_000_000),
                    Field::CloseTime => return None,
                    _ => Value::Text("Running".into()),
                })
            }
        }
        let _ = q.matches(&Row);
        let _ = q.compare(&Row, &Row);
    }
    let _ = crate::list_filter::parse_rfc3339(&text);
}

fn task_token(data: &[u8]) {
    let _ = crate::frontend::check_task_token(data);
}

fn state_value(data: &[u8]) {
    // A stored value: the first byte is the key's length, then the key, then the sealed value
    // (CRC of key and value around postcard).
    let Some((&n, rest)) = data.split_first() else { return };
    let (key, stored) = rest.split_at((n as usize % 64).min(rest.len()));
    let value = norn_raft::codec::open_value(key, stored).unwrap_or(stored);
    let _ = postcard::from_bytes::<RunState>(value);
    let _ = postcard::from_bytes::<crate::history::store::CurrentRun>(value);
    let _ = postcard::from_bytes::<crate::namespace::NamespaceRecord>(value);
    let _ = postcard::from_bytes::<crate::command::ShardCommand>(value);
    let _ = postcard::from_bytes::<crate::command::ShardResult>(value);
}

fn raft_codec(data: &[u8]) {
    norn_raft::codec::fuzz_decode_all(data);
}

/// Every WorkflowService request type decoded from the bytes and checked against the limits
/// (what a node does with a request before it proposes anything).
fn requests(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let limits = crate::limits::Limits::default();
    crate::frontend::check_request_bytes(which, body, &limits);
}

/// A little reader of structure from fuzz bytes (the role `arbitrary::Unstructured` plays).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn small(&mut self, n: u8) -> i64 {
        (self.u8() % n.max(1)) as i64
    }
    fn id(&mut self, prefix: &str) -> String {
        format!("{prefix}{}", self.u8() % 4)
    }
    fn payloads(&mut self) -> Option<Payloads> {
        let n = self.u8() % 3;
        (n > 0).then(|| Payloads {
            payloads: (0..n)
                .map(|_| Payload { data: vec![self.u8(); self.u8() as usize], ..Default::default() })
                .collect(),
        })
    }
    fn duration(&mut self) -> Option<prost_wkt_types::Duration> {
        match self.u8() % 4 {
            0 => None,
            1 => Some(prost_wkt_types::Duration { seconds: self.small(100), nanos: 0 }),
            2 => Some(prost_wkt_types::Duration { seconds: -1 - self.small(3), nanos: 0 }),
            _ => Some(prost_wkt_types::Duration { seconds: i64::MAX - self.small(3), nanos: 999_999_999 }),
        }
    }
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fn command(u: &mut Bytes) -> Command {
    let attributes = match u.u8() % 12 {
        0 => Cmd::ScheduleActivityTaskCommandAttributes(ScheduleActivityTaskCommandAttributes {
            activity_id: u.id("a"),
            activity_type: Some(ActivityType { name: u.id("t") }),
            input: u.payloads(),
            start_to_close_timeout: u.duration(),
            schedule_to_close_timeout: u.duration(),
            heartbeat_timeout: u.duration(),
            ..Default::default()
        }),
        1 => Cmd::StartTimerCommandAttributes(StartTimerCommandAttributes {
            timer_id: u.id("timer"),
            start_to_fire_timeout: u.duration(),
        }),
        2 => Cmd::CancelTimerCommandAttributes(CancelTimerCommandAttributes { timer_id: u.id("timer") }),
        3 => Cmd::CompleteWorkflowExecutionCommandAttributes(CompleteWorkflowExecutionCommandAttributes {
            result: u.payloads(),
        }),
        4 => Cmd::FailWorkflowExecutionCommandAttributes(FailWorkflowExecutionCommandAttributes::default()),
        5 => Cmd::RequestCancelActivityTaskCommandAttributes(RequestCancelActivityTaskCommandAttributes {
            scheduled_event_id: u.small(20),
        }),
        6 => Cmd::RecordMarkerCommandAttributes(RecordMarkerCommandAttributes {
            marker_name: u.id("m"),
            ..Default::default()
        }),
        7 => Cmd::StartChildWorkflowExecutionCommandAttributes(StartChildWorkflowExecutionCommandAttributes {
            workflow_id: u.id("child"),
            workflow_type: Some(WorkflowType { name: u.id("ct") }),
            input: u.payloads(),
            workflow_run_timeout: u.duration(),
            ..Default::default()
        }),
        8 => Cmd::SignalExternalWorkflowExecutionCommandAttributes(SignalExternalWorkflowExecutionCommandAttributes {
            execution: Some(norn_proto::protos::temporal::api::common::v1::WorkflowExecution {
                workflow_id: u.id("other"),
                run_id: String::new(),
            }),
            signal_name: u.id("s"),
            input: u.payloads(),
            ..Default::default()
        }),
        9 => Cmd::RequestCancelExternalWorkflowExecutionCommandAttributes(
            RequestCancelExternalWorkflowExecutionCommandAttributes {
                workflow_id: u.id("other"),
                ..Default::default()
            },
        ),
        10 => Cmd::ContinueAsNewWorkflowExecutionCommandAttributes(ContinueAsNewWorkflowExecutionCommandAttributes {
            workflow_type: Some(WorkflowType { name: u.id("t") }),
            task_queue: Some(TaskQueue { name: "q".into(), ..Default::default() }),
            input: u.payloads(),
            workflow_run_timeout: u.duration(),
            ..Default::default()
        }),
        _ => Cmd::CancelWorkflowExecutionCommandAttributes(CancelWorkflowExecutionCommandAttributes::default()),
    };
    Command { attributes: Some(attributes), ..Default::default() }
}

/// The engine's invariants after a successful step from `before`.
fn check_step(before: &RunState, after: &RunState, out: &Outcome, step: &str) {
    let mut next = before.next_event_id;
    for e in &out.events {
        assert_eq!(e.event_id, next, "{step}: event ids not contiguous");
        next += 1;
    }
    assert!(after.next_event_id >= next, "{step}: next_event_id {} behind the events written", after.next_event_id);
    assert!(after.history_bytes >= before.history_bytes, "{step}: history bytes shrank");
    if !before.is_open() {
        assert!(out.events.is_empty(), "{step}: events written to a closed run");
    }
    if !after.is_open() {
        assert!(after.workflow_task.is_none(), "{step}: a closed run holds a workflow task");
    }
}

fn history_engine(data: &[u8]) {
    let mut u = Bytes(data);
    let limits = EngineLimits {
        pending_activities_max: 1 + u.small(4) as u64,
        history_count_max: 20 + u.small(60) as u64,
        blob_size_max_bytes: 64 + u.small(200) as u64 * 4,
        ..Default::default()
    };
    let req = StartWorkflowExecutionRequest {
        namespace: "default".into(),
        workflow_id: "wf".into(),
        workflow_type: Some(WorkflowType { name: "t".into() }),
        task_queue: Some(TaskQueue { name: "q".into(), ..Default::default() }),
        workflow_run_timeout: u.duration(),
        workflow_task_timeout: u.duration(),
        request_id: "r".into(),
        ..Default::default()
    };
    let mut now: u64 = 1_700_000_000_000;
    let Ok((mut run, _)) = engine::start("ns", "00000000-0000-4000-8000-000000000000", &req, now) else { return };
    let (mut steps, mut applied) = (0, 0u32);
    while !u.done() && steps < 64 {
        steps += 1;
        now = now.saturating_add(u.u8() as u64 * 1000);
        let before = run.clone();
        let mut work = run.clone();
        // Mostly ids the run really holds (so steps get deep), sometimes arbitrary ones.
        let task = run.workflow_task.clone();
        let activity = run.activities.values().nth(u.small(4) as usize).cloned();
        let timer = run.timers.values().nth(u.small(4) as usize).cloned();
        let (sched, started, attempt) = match u.u8() % 4 {
            0 => (u.small(24), u.small(24), u.small(3) as i32 + 1),
            1 | 2 => match &task {
                Some(t) => (t.scheduled_id, t.started_id.unwrap_or(t.scheduled_id + 1), t.attempt),
                None => (u.small(24), u.small(24), 1),
            },
            _ => match &activity {
                Some(a) => (a.scheduled_id, 0, a.attempt),
                None => (u.small(24), u.small(24), 1),
            },
        };
        if u.u8() % 2 == 0 {
            // Jump to a due time, so timeouts and timers really fire.
            if let Some(t) = &timer {
                now = now.max(t.fire_at_ms);
            }
        }
        // Half the time, the step a well-behaved worker would take next.
        let natural = match (&task, &activity) {
            (Some(t), _) if t.started_id.is_none() => 0,
            (Some(_), _) => 1,
            (None, Some(a)) if a.started_ms == 0 => 4,
            (None, Some(_)) => 5 + u.small(2) as u8,
            (None, None) => 9,
        };
        let op = if u.u8() % 2 == 0 { natural } else { u.u8() % 14 };
        let (name, result) = match op {
            0 => ("wft started", engine::workflow_task_started(&mut work, sched, "p", "w", now)),
            1 => {
                let n = u.u8() % 5;
                let commands = (0..n).map(|_| command(&mut u)).collect();
                let r = RespondWorkflowTaskCompletedRequest { commands, identity: "w".into(), ..Default::default() };
                ("wft completed", engine::workflow_task_completed(&mut work, sched, started, &r, &limits, now))
            }
            2 => {
                let r = RespondWorkflowTaskFailedRequest::default();
                ("wft failed", engine::workflow_task_failed(&mut work, sched, started, &r, now))
            }
            3 => (
                "wft timed out",
                engine::workflow_task_timed_out(&mut work, sched, started, now.saturating_add(60_000)),
            ),
            4 => ("act started", engine::activity_task_started(&mut work, sched, "p", "w", now)),
            5 => ("act completed", engine::activity_task_completed(&mut work, sched, attempt, vec![1, 2], "w", now)),
            6 => {
                let f = norn_proto::protos::temporal::api::failure::v1::Failure {
                    message: "boom".into(),
                    ..Default::default()
                };
                ("act failed", engine::activity_task_failed(&mut work, sched, attempt, f.encode_to_vec(), "w", now))
            }
            7 => ("act timed out", engine::activity_timed_out(&mut work, sched, attempt, now)),
            8 => ("act heartbeat", engine::activity_heartbeat(&mut work, sched, attempt, vec![u.u8()], now)),
            9 => match &timer {
                Some(t) => ("timer fired", engine::timer_fired(&mut work, &t.timer_id, t.started_id, now)),
                None => {
                    let id = u.id("timer");
                    ("timer fired", engine::timer_fired(&mut work, &id, sched, now))
                }
            },
            10 => {
                let attrs = WorkflowExecutionSignaledEventAttributes {
                    signal_name: u.id("s"),
                    input: u.payloads(),
                    request_id: format!("sig-{}", u.u32() % 8),
                    ..Default::default()
                };
                let signals_max = u64::from(u.u8() % 16);
                ("signal", engine::signal(&mut work, attrs, signals_max, now))
            }
            11 => ("cancel", engine::request_cancel(&mut work, "why", "me", now)),
            12 => ("run timed out", engine::workflow_timed_out(&mut work, now)),
            _ => ("terminate", engine::terminate(&mut work, "end", None, "me", now)),
        };
        match result {
            Ok(out) => {
                check_step(&before, &work, &out, name);
                run = work;
                applied += 1;
            }
            // A refused step is dropped whole (the store rolls its writes back).
            Err(_) => run = before,
        }
    }
    STEPS_APPLIED.fetch_add(applied as u64, std::sync::atomic::Ordering::Relaxed);
}

/// Engine steps that applied, over every history_engine input run in this process (how deep the
/// fuzzer gets; reported by `norn debug fuzz`).
pub static STEPS_APPLIED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A stable name for an input (file names of seeds and crashes).
fn digest(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// Structurally valid inputs each target starts from (beside its corpus directory).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "list_filter" => [
            "WorkflowId = 'a'",
            "WorkflowType = 'x' AND (ExecutionStatus = 'Running' OR ExecutionStatus != 'Failed')",
            "StartTime BETWEEN '2024-01-01T00:00:00Z' AND '2024-02-01T00:00:00.5+01:00' ORDER BY StartTime DESC",
            "TaskQueue IN ('a', 'b') AND CloseTime IS NULL",
            "WorkflowId STARTS_WITH 'pre' ORDER BY CloseTime ASC, WorkflowId",
        ]
        .iter()
        .map(|q| q.as_bytes().to_vec())
        .collect(),
        "task_token" => vec![crate::frontend::sample_task_token()],
        "state_value" => {
            let run = engine::start(
                "ns",
                "00000000-0000-4000-8000-000000000000",
                &StartWorkflowExecutionRequest {
                    workflow_id: "wf".into(),
                    workflow_type: Some(WorkflowType { name: "t".into() }),
                    task_queue: Some(TaskQueue { name: "q".into(), ..Default::default() }),
                    ..Default::default()
                },
                1,
            )
            .map(|(r, _)| r)
            .ok();
            let value = postcard::to_allocvec(&run).unwrap_or_default();
            let key = b"run/ns/wf/00000000-0000-4000-8000-000000000000";
            let mut seed = vec![key.len() as u8];
            seed.extend_from_slice(key);
            seed.extend(norn_raft::codec::seal_value(key, &value));
            vec![seed, value]
        }
        "raft_codec" => norn_raft::codec::fuzz_seeds(),
        "requests" => {
            let start = StartWorkflowExecutionRequest {
                namespace: "default".into(),
                workflow_id: "wf".into(),
                workflow_type: Some(WorkflowType { name: "t".into() }),
                task_queue: Some(TaskQueue { name: "q".into(), ..Default::default() }),
                input: Some(Payloads { payloads: vec![Payload { data: b"1".to_vec(), ..Default::default() }] }),
                ..Default::default()
            };
            let done = RespondWorkflowTaskCompletedRequest {
                namespace: "default".into(),
                commands: vec![Command {
                    attributes: Some(Cmd::StartTimerCommandAttributes(StartTimerCommandAttributes {
                        timer_id: "t".into(),
                        start_to_fire_timeout: Some(prost_wkt_types::Duration { seconds: 1, nanos: 0 }),
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            };
            (0u8..20)
                .map(|which| {
                    let mut v = vec![which];
                    v.extend(if which == 13 { done.encode_to_vec() } else { start.encode_to_vec() });
                    v
                })
                .collect()
        }
        "history_engine" => (0u8..32).map(|i| (0..200u32).map(|j| (j.wrapping_mul(31) as u8) ^ i).collect()).collect(),
        "node" => crate::fuzz_node::seeds(),
        _ => Vec::new(),
    }
}

/// Writes a target's seeds into its corpus directory (`norn debug fuzz --write-seeds`).
pub fn write_seeds(name: &str, dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let seeds = seeds(name);
    for s in &seeds {
        std::fs::write(dir.join(format!("seed-{:016x}", digest(s))), s)?;
    }
    Ok(seeds.len())
}

/// What a fuzz run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Inputs run.
    pub execs: u64,
    /// Inputs that panicked (saved under the crashes directory), with the panic message.
    pub crashes: Vec<(PathBuf, String)>,
    /// Corpus inputs replayed first.
    pub corpus: usize,
}

fn corpus_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .filter_map(|e| std::fs::read(e.path()).ok().map(|b| (e.path(), b)))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Mutates `input` in place (a few random edits).
fn mutate(rng: &mut SmallRng, input: &mut Vec<u8>, other: &[u8]) {
    const INTERESTING: &[&[u8]] = &[
        b"(",
        b")",
        b"AND",
        b" OR ",
        b"'",
        b"=",
        b"!=",
        b"BETWEEN",
        b"IN (",
        b"ORDER BY",
        b"WorkflowId",
        b"StartTime",
        b"2024-01-01T00:00:00Z",
        b"\xff\xff\xff\xff",
        b"\x00\x00\x00\x00",
        b"\x7f",
        b"\x80\x80\x80\x80\x80",
    ];
    for _ in 0..rng.gen_range(1..=4) {
        match rng.gen_range(0..7) {
            0 if !input.is_empty() => {
                let i = rng.gen_range(0..input.len());
                input[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !input.is_empty() => {
                let i = rng.gen_range(0..input.len());
                input[i] = rng.gen();
            }
            2 => {
                let i = rng.gen_range(0..=input.len());
                let w = INTERESTING[rng.gen_range(0..INTERESTING.len())];
                input.splice(i..i, w.iter().copied());
            }
            3 if !input.is_empty() => {
                let a = rng.gen_range(0..input.len());
                let b = rng.gen_range(a..=input.len().min(a + 16));
                input.drain(a..b);
            }
            4 if !other.is_empty() => {
                let a = rng.gen_range(0..other.len());
                let b = rng.gen_range(a..=other.len());
                let i = rng.gen_range(0..=input.len());
                input.splice(i..i, other[a..b].iter().copied());
            }
            5 if !input.is_empty() => {
                // Repeat a slice (long chains, deep nesting).
                let a = rng.gen_range(0..input.len());
                let b = rng.gen_range(a..=input.len().min(a + 8));
                let piece = input[a..b].to_vec();
                for _ in 0..rng.gen_range(1..64) {
                    input.splice(a..a, piece.iter().copied());
                }
            }
            _ => {
                let n = rng.gen_range(1..16);
                input.extend((0..n).map(|_| rng.gen::<u8>()));
            }
        }
    }
    input.truncate(64 << 10);
}

/// Runs target `name`: replays every input in `corpus`, then `execs` mutated inputs from `seed`.
/// Panicking inputs are written to `crashes`.
pub fn run(name: &str, corpus: &Path, crashes: &Path, execs: u64, seed: u64) -> Result<Report, String> {
    run_one(name, b"")?;
    let files = corpus_files(corpus);
    let mut report = Report { corpus: files.len(), ..Default::default() };
    let mut pool: Vec<Vec<u8>> = files.into_iter().map(|(_, b)| b).collect();
    pool.extend(seeds(name));
    pool.push(Vec::new());
    // Panics are the findings: keep the default hook from printing each one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        crate::fuzz_node::note_panic();
        if let Some(l) = info.location() {
            *LAST_PANIC_AT.lock().unwrap_or_else(|p| p.into_inner()) = format!("{}:{}", l.file(), l.line());
        }
    }));
    let mut rng = SmallRng::seed_from_u64(seed);
    let save = |input: &[u8], why: Box<dyn std::any::Any + Send>, report: &mut Report| {
        let _ = std::fs::create_dir_all(crashes);
        let path = crashes.join(format!("crash-{:016x}", digest(input)));
        let _ = std::fs::write(&path, input);
        report.crashes.push((path, panic_message(&why)));
    };
    for input in pool.clone() {
        report.execs += 1;
        if let Err(why) = catch_unwind(AssertUnwindSafe(|| run_one(name, &input))) {
            save(&input, why, &mut report);
        }
    }
    for _ in 0..execs {
        let mut input = pool[rng.gen_range(0..pool.len())].clone();
        let other = pool[rng.gen_range(0..pool.len())].clone();
        mutate(&mut rng, &mut input, &other);
        report.execs += 1;
        if let Err(why) = catch_unwind(AssertUnwindSafe(|| run_one(name, &input))) {
            save(&input, why, &mut report);
            if report.crashes.len() >= 16 {
                break;
            }
        }
        // Keep some mutants as seeds for further mutation (no coverage feedback: a bounded pool).
        if pool.len() < 4096 && rng.gen_ratio(1, 64) {
            pool.push(input);
        }
    }
    std::panic::set_hook(hook);
    Ok(report)
}

/// Where the last panic under the harness's hook happened.
static LAST_PANIC_AT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let what = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    let at = std::mem::take(&mut *LAST_PANIC_AT.lock().unwrap_or_else(|p| p.into_inner()));
    if at.is_empty() {
        what
    } else {
        format!("{what} at {at}")
    }
}

/// Replays one corpus directory; the inputs that panic.
pub fn replay(name: &str, dir: &Path) -> Vec<(PathBuf, String)> {
    corpus_files(dir)
        .into_iter()
        .filter_map(|(path, input)| match catch_unwind(AssertUnwindSafe(|| run_one(name, &input))) {
            Ok(_) => None,
            Err(p) => Some((path, panic_message(&p))),
        })
        .collect()
}
