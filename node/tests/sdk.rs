//! The Rust client SDK (`norn-client`) against a real 3-node Norn cluster: every workflow
//! context feature, the client calls, payloads and failures, and replay.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{fast_raft, Cluster};
use futures::StreamExt;
use norn_client::protos::temporal::api::enums::v1::EventType;
use norn_client::workflow::{ActivityOptions, ChildOptions, ErrGroup, WaitGroup, WfContext, WfResult};
use norn_client::{
    ActivityContext, ApplicationError, Client, ClientOptions, Error, FailureKind, RawBytes, ReplayError, Replayer,
    RetryPolicy, StartOptions, Worker, WorkerOptions,
};
use serde::{Deserialize, Serialize};

const TQ: &str = "sdk-tests";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    items: Vec<String>,
    total: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Summary {
    order: Order,
    bytes: RawBytes,
    nothing: Option<String>,
    side_effect: u64,
    patched: bool,
    approver: String,
    child: u32,
    fan_out_error: String,
    sum: u32,
    uuid_len: usize,
    started_after_epoch: bool,
}

fn short() -> ActivityOptions {
    ActivityOptions::start_to_close(Duration::from_secs(10))
}

fn no_retry() -> ActivityOptions {
    short().retry(RetryPolicy { maximum_attempts: 1, ..Default::default() })
}

async fn everything(ctx: WfContext, order: Order) -> WfResult<Summary> {
    let log = Rc::new(RefCell::new(vec!["started".to_string()]));
    let l = log.clone();
    ctx.query_handler("log", move |_: ()| l.borrow().clone());

    let priced: Order = ctx.activity("price", &order, short()).await?;
    let bytes: RawBytes = ctx.activity("echo_bytes", &RawBytes(vec![0, 1, 255]), short()).await?;
    let nothing: Option<String> = ctx.activity("nothing", &(), short()).await?;
    let side_effect: u64 = ctx.side_effect(|| 42)?;
    let patched = ctx.patched("v2");
    let uuid = ctx.uuid();
    let _ = ctx.random();
    ctx.sleep(Duration::from_millis(300)).await?;
    log.borrow_mut().push("waiting".into());

    // A signal to another workflow (this one, here) arrives like any signal.
    let me = ctx.info().workflow_id;
    ctx.signal_external(&me, None, "note", &"to myself".to_string()).await?;
    let note: String = ctx.signal_channel::<String>("note").recv().await?;
    log.borrow_mut().push(note);

    let approvals = ctx.signal_channel::<String>("approve");
    let approver = approvals.recv().await?;
    log.borrow_mut().push(format!("approved by {approver}"));

    let child: u32 = ctx.child_workflow("double", &21u32, ChildOptions::default()).await?;

    // Fan-out: the failing activity cancels its sibling's hour-long timer.
    let mut g = ErrGroup::new(&ctx);
    g.spawn(|s| async move { s.sleep(Duration::from_secs(3600)).await.map(|_| 0u32) });
    g.spawn(|s| async move { s.activity::<_, u32>("fail", &"boom".to_string(), no_retry()).await });
    let fan_out_error = match g.wait().await {
        Ok(_) => "no error".to_string(),
        Err(e) => e.failure().and_then(|f| f.application_type()).unwrap_or("?").to_string(),
    };

    // Select: an activity races an hour-long timer and wins.
    let raced = {
        let timer = std::pin::pin!(ctx.sleep(Duration::from_secs(3600)));
        let act = std::pin::pin!(ctx.activity::<_, u32>("double_act", &50u32, short()));
        match futures::future::select(timer, act).await {
            futures::future::Either::Right((r, _)) => r?,
            futures::future::Either::Left(_) => 0,
        }
    };
    log.borrow_mut().push(format!("raced {raced}"));

    // A wait group over spawned tasks.
    let wg = WaitGroup::new(&ctx);
    let sum = Rc::new(Cell::new(0u32));
    for i in 1..=3u32 {
        wg.add(1);
        let (c, wg, sum) = (ctx.clone(), wg.clone(), sum.clone());
        ctx.spawn(async move {
            if let Ok(v) = c.activity::<_, u32>("double_act", &i, short()).await {
                sum.set(sum.get() + v);
            }
            wg.done();
        });
    }
    wg.wait().await;
    log.borrow_mut().push("done".into());

    Ok(Summary {
        order: priced,
        bytes,
        nothing,
        side_effect,
        patched,
        approver,
        child,
        fan_out_error,
        sum: sum.get(),
        uuid_len: uuid.len(),
        started_after_epoch: ctx.now() > std::time::UNIX_EPOCH,
    })
}

async fn double(_ctx: WfContext, n: u32) -> WfResult<u32> {
    Ok(n * 2)
}

async fn counter(ctx: WfContext, n: u32) -> WfResult<u32> {
    if n < 3 {
        return Err(ctx.continue_as_new(&(n + 1)));
    }
    Ok(n)
}

async fn fails(ctx: WfContext, _: ()) -> WfResult<()> {
    ctx.activity::<_, ()>("fail", &"card declined".to_string(), no_retry()).await
}

async fn spinner(ctx: WfContext, _: ()) -> WfResult<()> {
    ctx.activity::<_, ()>(
        "spin",
        &(),
        ActivityOptions::start_to_close(Duration::from_secs(60)).heartbeat(Duration::from_secs(5)),
    )
    .await
}

async fn sleeper(ctx: WfContext, _: ()) -> WfResult<()> {
    ctx.sleep(Duration::from_secs(3600)).await
}

static SPIN_SAW_CANCEL: AtomicBool = AtomicBool::new(false);

fn worker(client: &Client) -> Worker {
    let mut w = Worker::new(client.clone(), WorkerOptions::new(TQ));
    w.register_workflow("everything", everything)
        .register_workflow("double", double)
        .register_workflow("counter", counter)
        .register_workflow("fails", fails)
        .register_workflow("spinner", spinner)
        .register_workflow("sleeper", sleeper)
        .register_activity("price", |_c, mut o: Order| async move {
            o.total = Some(o.items.len() as u64 * 10);
            Ok(o)
        })
        .register_activity("echo_bytes", |_c, b: RawBytes| async move { Ok(b) })
        .register_activity("nothing", |_c, _: ()| async move { Ok(None::<String>) })
        .register_activity("double_act", |_c, n: u32| async move { Ok(n * 2) })
        .register_activity("fail", |_c, msg: String| async move {
            Err::<u32, _>(ApplicationError::new(msg, "Boom").with_details(&"extra").unwrap_or_else(|e| e.into()))
        })
        .register_activity("spin", |c: ActivityContext, _: ()| async move {
            for i in 0..600u32 {
                c.heartbeat(&i).await;
                if c.is_cancelled() {
                    SPIN_SAW_CANCEL.store(true, Ordering::SeqCst);
                    return Err(c.cancelled_error());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        });
    w
}

async fn client(c: &Cluster) -> Client {
    Client::connect(&c.addrs(), ClientOptions::default()).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_use_every_context_feature_and_replay_clean() {
    let cluster = Cluster::start(3, 8, fast_raft()).await;
    let client = client(&cluster).await;
    let w = worker(&client);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let registry = w.registry().clone();
    let run = tokio::spawn(async move { w.run(async move { stop_rx.await.unwrap_or(()) }).await });

    let order = Order { id: 7, items: vec!["a".into(), "b".into()], total: None };
    let h = client.start_workflow("everything", &order, StartOptions::new("everything-1", TQ)).await.expect("start");

    // A second start of the same id is refused, naming the running run.
    match client.start_workflow("everything", &order, StartOptions::new("everything-1", TQ)).await {
        Err(Error::AlreadyStarted { workflow_id, run_id }) => {
            assert_eq!(workflow_id, "everything-1");
            assert_eq!(Some(run_id.as_str()), h.run_id());
        }
        other => panic!("expected AlreadyStarted, got {other:?}"),
    }

    // Query while it waits for the signal.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log: Vec<String> = h.query("log", &()).await.expect("query");
        if log.contains(&"waiting".to_string()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "workflow never reached the signal wait: {log:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match h.query::<_, Vec<String>>("nope", &()).await {
        Err(Error::QueryFailed(m)) => assert!(m.contains("nope"), "{m}"),
        other => panic!("expected QueryFailed, got {other:?}"),
    }
    h.signal("approve", &"ada".to_string()).await.expect("signal");
    let s: Summary = tokio::time::timeout(Duration::from_secs(60), h.result()).await.expect("in time").expect("result");
    assert_eq!(s.order.total, Some(20));
    assert_eq!(s.bytes, RawBytes(vec![0, 1, 255]));
    assert_eq!(s.nothing, None);
    assert_eq!(s.side_effect, 42);
    assert!(s.patched);
    assert_eq!(s.approver, "ada");
    assert_eq!(s.child, 42);
    assert_eq!(s.fan_out_error, "Boom");
    assert_eq!(s.sum, 12);
    assert_eq!(s.uuid_len, 36);
    assert!(s.started_after_epoch);
    let log: Vec<String> = h.query("log", &()).await.expect("query after close");
    assert_eq!(log.last().map(String::as_str), Some("done"));
    assert!(log.contains(&"to myself".to_string()), "{log:?}");
    assert!(log.contains(&"raced 100".to_string()), "{log:?}");

    // The history: complete, and it replays clean (also through Temporal's JSON format).
    let history = h.history().await.expect("history");
    assert_eq!(history.first().map(|e| e.event_type), Some(EventType::WorkflowExecutionStarted as i32));
    assert_eq!(history.last().map(|e| e.event_type), Some(EventType::WorkflowExecutionCompleted as i32));
    let replayer = Replayer::from_registry(registry.clone());
    replayer.replay(&history).expect("clean replay");
    let json = norn_client::history_to_json(&history).expect("to json");
    assert!(json.contains("EVENT_TYPE_WORKFLOW_EXECUTION_STARTED"), "proto-JSON enum names");
    assert_eq!(norn_client::history_from_json(&json).expect("from json"), history);
    replayer.replay_json(&json).expect("clean replay from JSON");
    replayer.replay_from_server(&client, "everything-1", None).await.expect("clean replay from server");

    // A changed workflow is reported as non-deterministic, naming the event and the command.
    let mut changed = Replayer::new();
    changed.register_workflow("everything", |ctx: WfContext, o: Order| async move {
        let _: Order = ctx.activity("price_v2", &o, short()).await?;
        Ok(())
    });
    match changed.replay(&history) {
        Err(ReplayError::Nondeterminism(nd)) => {
            assert_eq!(nd.event_id, 5, "{nd}");
            assert!(
                nd.message.contains("ACTIVITY_TASK_SCHEDULED") || nd.message.contains("ActivityTaskScheduled"),
                "{nd}"
            );
            assert!(nd.message.contains("price_v2"), "{nd}");
        }
        other => panic!("expected non-determinism, got {other:?}"),
    }

    // Continue-as-new: the handle follows the chain to the last run.
    let hc = client.start_workflow("counter", &0u32, StartOptions::new("counter-1", TQ)).await.expect("start counter");
    assert_eq!(hc.result::<u32>().await.expect("counter result"), 3);
    let runs: Vec<_> = client.list("WorkflowId = 'counter-1'").collect().await;
    assert_eq!(runs.len(), 4, "four runs of counter-1: {runs:?}");
    assert!(client.count("").await.expect("count") >= 6);

    // Failures arrive with their type and cause chain.
    let hf = client.start_workflow("fails", &(), StartOptions::new("fails-1", TQ)).await.expect("start fails");
    match hf.result::<()>().await {
        Err(Error::WorkflowFailed(f)) => {
            assert!(matches!(f.kind, FailureKind::Activity { .. }), "{f:?}");
            assert_eq!(f.application_type(), Some("Boom"));
            assert_eq!(f.root_cause().message, "card declined");
        }
        other => panic!("expected WorkflowFailed, got {other:?}"),
    }

    // Cancel reaches a heartbeating activity; the workflow ends canceled.
    let hs = client.start_workflow("spinner", &(), StartOptions::new("spinner-1", TQ)).await.expect("start spinner");
    tokio::time::sleep(Duration::from_millis(800)).await;
    hs.cancel("test").await.expect("cancel");
    let r = hs.result::<()>().await;
    assert!(matches!(r, Err(Error::WorkflowCanceled(_))), "{r:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !SPIN_SAW_CANCEL.load(Ordering::SeqCst) {
        assert!(tokio::time::Instant::now() < deadline, "the activity never saw the cancellation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Terminate, signal-with-start, describe, not found.
    let ht = client.start_workflow("sleeper", &(), StartOptions::new("sleeper-1", TQ)).await.expect("start sleeper");
    ht.terminate("enough").await.expect("terminate");
    assert!(matches!(ht.result::<()>().await, Err(Error::WorkflowTerminated(r)) if r == "enough"));
    let hw = client
        .signal_with_start("sleeper", &(), StartOptions::new("sleeper-2", TQ), "poke", &1u8)
        .await
        .expect("signal with start");
    let d = hw.describe().await.expect("describe");
    assert_eq!(d.info.execution.as_ref().map(|e| e.workflow_id.as_str()), Some("sleeper-2"));
    hw.terminate("done").await.expect("terminate 2");
    assert!(matches!(client.describe("no-such-workflow", None).await, Err(Error::NotFound(_))));

    for (id, _) in [("everything-1", ()), ("fails-1", ()), ("spinner-1", ())] {
        replayer.replay_from_server(&client, id, None).await.unwrap_or_else(|e| panic!("replay {id}: {e}"));
    }

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(20), run).await.expect("worker stops").expect("join").expect("run");
}

async fn patchy_v1(ctx: WfContext, _: ()) -> WfResult<u32> {
    ctx.activity::<_, u32>("double_act", &1u32, short()).await
}

async fn patchy_v2(ctx: WfContext, _: ()) -> WfResult<u32> {
    let extra = if ctx.patched("add-two") { ctx.activity::<_, u32>("double_act", &2u32, short()).await? } else { 0 };
    Ok(ctx.activity::<_, u32>("double_act", &1u32, short()).await? + extra)
}

async fn patchy_v3(ctx: WfContext, _: ()) -> WfResult<u32> {
    let extra = ctx.activity::<_, u32>("double_act", &2u32, short()).await?;
    Ok(ctx.activity::<_, u32>("double_act", &1u32, short()).await? + extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patched_changes_replay_clean_and_unpatched_changes_do_not() {
    let cluster = Cluster::start(3, 4, fast_raft()).await;
    let client = client(&cluster).await;
    let mut w = Worker::new(client.clone(), WorkerOptions::new("patchy"));
    w.register_workflow("patchy", patchy_v1)
        .register_activity("double_act", |_c, n: u32| async move { Ok::<_, ApplicationError>(n * 2) });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move { w.run(async move { stop_rx.await.unwrap_or(()) }).await });
    let h = client.start_workflow("patchy", &(), StartOptions::new("patchy-1", "patchy")).await.expect("start");
    assert_eq!(h.result::<u32>().await.expect("v1 result"), 2);
    let history = h.history().await.expect("history");
    let _ = stop_tx.send(());
    run.await.expect("join").expect("run");

    let mut v2 = Replayer::new();
    v2.register_workflow("patchy", patchy_v2);
    v2.replay(&history).expect("a patched change replays clean");

    let mut v3 = Replayer::new();
    v3.register_workflow("patchy", patchy_v3);
    match v3.replay(&history) {
        Err(ReplayError::Nondeterminism(nd)) => assert!(nd.message.contains("double_act"), "{nd}"),
        other => panic!("an unpatched change must be non-deterministic, got {other:?}"),
    }

    // The worker detects it live too: a v3 worker picking up a run that v1 started fails the
    // workflow task with the non-determinism cause, and the run stays open for a fix.
    let mut w1 = Worker::new(client.clone(), WorkerOptions::new("patchy"));
    w1.register_workflow("patchy", |ctx: WfContext, _: ()| async move {
        let v = ctx.activity::<_, u32>("double_act", &1u32, short()).await?;
        ctx.signal_channel::<()>("go").recv().await?;
        Ok(v)
    })
    .register_activity("double_act", |_c, n: u32| async move { Ok::<_, ApplicationError>(n * 2) });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move { w1.run(async move { stop_rx.await.unwrap_or(()) }).await });
    let h = client.start_workflow("patchy", &(), StartOptions::new("patchy-2", "patchy")).await.expect("start 2");
    wait_for_event(&client, "patchy-2", EventType::ActivityTaskCompleted, 1).await;
    wait_for_event(&client, "patchy-2", EventType::WorkflowTaskCompleted, 2).await;
    let _ = stop_tx.send(());
    run.await.expect("join").expect("run");

    let mut w3 = Worker::new(client.clone(), WorkerOptions::new("patchy"));
    w3.register_workflow("patchy", patchy_v3)
        .register_activity("double_act", |_c, n: u32| async move { Ok::<_, ApplicationError>(n * 2) });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move { w3.run(async move { stop_rx.await.unwrap_or(()) }).await });
    h.signal("go", &()).await.expect("signal");
    let failed = wait_for_event(&client, "patchy-2", EventType::WorkflowTaskFailed, 1).await;
    use norn_client::protos::temporal::api::enums::v1::WorkflowTaskFailedCause;
    use norn_client::protos::temporal::api::history::v1::history_event::Attributes;
    match &failed.attributes {
        Some(Attributes::WorkflowTaskFailedEventAttributes(a)) => {
            assert_eq!(a.cause, WorkflowTaskFailedCause::NonDeterministicError as i32);
            let msg = a.failure.as_ref().map(|f| f.message.clone()).unwrap_or_default();
            assert!(msg.contains("double_act"), "{msg}");
        }
        other => panic!("unexpected attributes {other:?}"),
    }
    let _ = stop_tx.send(());
    run.await.expect("join").expect("run");
    h.terminate("test over").await.expect("terminate");
}

/// Waits until the run's history holds `n` events of `kind`; returns the n-th.
async fn wait_for_event(
    client: &Client,
    workflow_id: &str,
    kind: EventType,
    n: usize,
) -> norn_client::protos::temporal::api::history::v1::HistoryEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let h = client.fetch_history(workflow_id, None).await.expect("history");
        let found: Vec<_> = h.into_iter().filter(|e| e.event_type == kind as i32).collect();
        if found.len() >= n {
            return found[n - 1].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no {n} {kind:?} events in {workflow_id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn tally(ctx: WfContext, _: ()) -> WfResult<i64> {
    let total = Rc::new(Cell::new(0i64));
    let t = total.clone();
    ctx.update_handler_with_validator(
        "add",
        |n: &i64| {
            if *n < 0 {
                Err(ApplicationError::new("only positive amounts", "Negative"))
            } else {
                Ok(())
            }
        },
        move |c: WfContext, n: i64| {
            let t = t.clone();
            async move {
                // Handlers may await: the amount is doubled by an activity first.
                let d: i64 = c.activity("double_i64", &n, short()).await?;
                t.set(t.get() + d);
                Ok(t.get())
            }
        },
    );
    ctx.signal_channel::<()>("done").recv().await?;
    Ok(total.get())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_validated_run_and_replayed() {
    let cluster = Cluster::start(3, 4, fast_raft()).await;
    let client = client(&cluster).await;
    let mut w = Worker::new(client.clone(), WorkerOptions::new("tally"));
    w.register_workflow("tally", tally)
        .register_activity("double_i64", |_c, n: i64| async move { Ok::<_, ApplicationError>(n * 2) });
    let registry = w.registry().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move { w.run(async move { stop_rx.await.unwrap_or(()) }).await });

    let h = client.start_workflow("tally", &(), StartOptions::new("tally-1", "tally")).await.expect("start");
    assert_eq!(h.update::<_, i64>("add", &5i64).await.expect("update"), 10);
    match h.update::<_, i64>("add", &-1i64).await {
        Err(Error::UpdateFailed(f)) => assert_eq!(f.application_type(), Some("Negative"), "{f:?}"),
        other => panic!("expected a rejected update, got {other:?}"),
    }
    match h.update::<_, i64>("nope", &1i64).await {
        Err(Error::UpdateFailed(f)) => assert!(f.message.contains("nope"), "{f:?}"),
        other => panic!("expected an unknown update to fail, got {other:?}"),
    }
    let u = h.start_update("add", &1i64).await.expect("start update");
    assert_eq!(u.result::<i64>().await.expect("update result"), 12);
    h.signal("done", &()).await.expect("signal");
    assert_eq!(h.result::<i64>().await.expect("result"), 12);

    let history = h.history().await.expect("history");
    let count = |k: EventType| history.iter().filter(|e| e.event_type == k as i32).count();
    assert_eq!(count(EventType::WorkflowExecutionUpdateAccepted), 2, "rejections leave no event");
    assert_eq!(count(EventType::WorkflowExecutionUpdateCompleted), 2);
    Replayer::from_registry(registry).replay(&history).expect("updates replay clean");

    let _ = stop_tx.send(());
    run.await.expect("join").expect("run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_at_any_point_end_the_workflow_canceled() {
    let cluster = Cluster::start(3, 4, fast_raft()).await;
    let client = client(&cluster).await;
    let w = worker(&client);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move { w.run(async move { stop_rx.await.unwrap_or(()) }).await });
    let mut handles = Vec::new();
    for i in 0..12u64 {
        let h = client
            .start_workflow("spinner", &(), StartOptions::new(format!("race-{i}"), TQ))
            .await
            .expect("start spinner");
        handles.push((i, h));
    }
    let mut waits = Vec::new();
    for (i, h) in handles {
        waits.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 70)).await;
            h.cancel("race").await.expect("cancel");
            let r = h.result::<()>().await;
            (i, format!("{r:?}"), matches!(r, Err(Error::WorkflowCanceled(_))))
        }));
    }
    for w in waits {
        let (i, r, ok) = w.await.expect("join");
        assert!(ok, "race-{i}: {r}");
    }
    let _ = stop_tx.send(());
    run.await.expect("join").expect("run");
}

/// How many times each workflow id's function body began (each replay from the start begins it).
static BODY_STARTS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

async fn steps(ctx: WfContext, n: u32) -> WfResult<u32> {
    BODY_STARTS.lock().unwrap_or_else(|p| p.into_inner()).push(ctx.info().workflow_id);
    let mut v = 0u32;
    for _ in 0..n {
        v = ctx.activity("step", &v, short()).await?;
    }
    Ok(v)
}

/// Runs `steps(5)` under a worker with `options` and returns how often its body began and the
/// request ids of its activity starts.
async fn run_steps(client: &Client, options: WorkerOptions, id: &str) -> (usize, Vec<String>) {
    let tq = options.task_queue.clone();
    let mut w = Worker::new(client.clone(), options);
    w.register_workflow("steps", steps).register_activity("step", |_c, v: u32| async move { Ok(v + 1) });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move { w.run(async move { stop_rx.await.unwrap_or(()) }).await });
    let h = client.start_workflow("steps", &5u32, StartOptions::new(id, tq)).await.expect("start");
    let r = tokio::time::timeout(Duration::from_secs(60), h.result::<u32>()).await.expect("in time");
    assert_eq!(r.expect("result"), 5);
    let history = h.history().await.expect("history");
    let starts: Vec<String> = history
        .iter()
        .filter_map(|e| match &e.attributes {
            Some(norn_client::protos::temporal::api::history::v1::history_event::Attributes::ActivityTaskStartedEventAttributes(a)) => {
                Some(a.request_id.clone())
            }
            _ => None,
        })
        .collect();
    let _ = stop_tx.send(());
    run.await.expect("join").expect("run");
    let began = BODY_STARTS.lock().unwrap_or_else(|p| p.into_inner()).iter().filter(|w| *w == id).count();
    (began, starts)
}

/// With its defaults the worker keeps each run's state between tasks (its sticky queue gets
/// only new events, nothing is replayed) and has its activities started eagerly with the
/// workflow task's completion; with the cache and eager activities off, every task replays
/// the whole history and every activity goes through a poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_caches_runs_and_takes_activities_eagerly() {
    let cluster = Cluster::start(3, 4, fast_raft()).await;
    let client = client(&cluster).await;

    let (began, starts) = run_steps(&client, WorkerOptions::new("cached"), "steps-cached").await;
    assert_eq!(began, 1, "a cached run never replays");
    assert_eq!(starts.len(), 5);
    assert!(starts.iter().all(|r| r.starts_with("eager-")), "every activity started eagerly: {starts:?}");

    let mut plain = WorkerOptions::new("uncached");
    plain.max_cached_workflows = 0;
    plain.disable_eager_activity_execution = true;
    let (began, starts) = run_steps(&client, plain, "steps-uncached").await;
    assert_eq!(began, 6, "without a cache, each of the six workflow tasks replays from the start");
    assert!(starts.iter().all(|r| !r.starts_with("eager-")), "no activity started eagerly: {starts:?}");
}
