//! The workload, driven by Norn's Rust SDK: workflows started with unique and with colliding ids,
//! signals carrying sequence numbers, updates and queries of a per-workflow register, cancels,
//! describes and history reads through every node, and workers on every node running a workflow
//! with an activity and a timer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use norn_client::workflow::{ActivityOptions, WfContext, WfResult};
use norn_client::{Client, ClientOptions, Error, RetryOptions, StartOptions, UpdateWait, Worker, WorkerOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::history::{Kind, Recorder};

/// The task queue of the workload.
pub const QUEUE: &str = "jepsen";

/// The workflow: an activity and a timer, then signals until the finish signal (-1); returns the
/// signals it saw, in order. It also holds a register: the update `set` writes it, the query
/// `get` reads it (the linearizability checker's per-workflow register).
pub async fn jepsen_wf(ctx: WfContext, _: ()) -> WfResult<Vec<i64>> {
    let reg: std::rc::Rc<std::cell::Cell<Option<i64>>> = Default::default();
    let r = reg.clone();
    ctx.query_handler("get", move |_: ()| r.get());
    let r = reg.clone();
    ctx.update_handler("set", move |_ctx, v: i64| {
        r.set(Some(v));
        async { Ok(()) }
    });
    let ops = ctx.signal_channel::<i64>("op");
    let _: u64 = ctx.activity("touch", &1u64, ActivityOptions::start_to_close(Duration::from_secs(10))).await?;
    ctx.sleep(Duration::from_millis(100)).await?;
    let mut seen = Vec::new();
    loop {
        let v = ops.recv().await?;
        if v < 0 {
            return Ok(seen);
        }
        seen.push(v);
    }
}

/// A client of node `addr` for the workload: no client-side routing (a call goes where it is
/// sent), short deadlines, few retries.
pub async fn client(addr: &str) -> anyhow::Result<Client> {
    let opts = ClientOptions {
        shard_routing: false,
        rpc_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        retry: RetryOptions { max_attempts: 2, ..Default::default() },
        ..Default::default()
    };
    Ok(Client::connect(&[addr], opts).await?)
}

/// Runs a worker through `addr` until `stop` turns true.
pub async fn worker(addr: String, stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow() {
        let Ok(c) = client(&addr).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let mut w = Worker::new(c, WorkerOptions::new(QUEUE));
        w.register_workflow("jepsen", jepsen_wf).register_activity("touch", |_c, n: u64| async move { Ok(n + 1) });
        let mut s = stop.clone();
        let _ = w
            .run(async move {
                let _ = s.wait_for(|v| *v).await;
            })
            .await;
        if !*stop.borrow() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _ = stop.has_changed();
    }
}

/// How an error counts in the history.
pub fn outcome(e: &Error) -> Kind {
    match e {
        Error::NotFound(_) | Error::AlreadyStarted { .. } | Error::InvalidArgument(_) => Kind::Fail,
        _ => Kind::Info,
    }
}

/// What the workload shares between its processes.
#[derive(Default)]
pub struct Shared {
    /// Workflows whose start was acknowledged, with the run id, by the process that started them.
    pub started: BTreeMap<String, (u64, String)>,
    /// Workflows whose start is indeterminate.
    pub maybe: BTreeMap<String, u64>,
    /// Next sequence number per workflow.
    pub next_seq: BTreeMap<String, i64>,
    /// Next register value per workflow.
    pub next_value: BTreeMap<String, i64>,
}

/// One logical client: operations against node `node` until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn process(
    p: u64,
    node: u64,
    addr: String,
    rec: Recorder,
    shared: Arc<tokio::sync::Mutex<Shared>>,
    stop: tokio::sync::watch::Receiver<bool>,
    seed: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed ^ p.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let Ok(c) = client(&addr).await else { return };
    let mut k = 0u64;
    while !*stop.borrow() {
        k += 1;
        let roll: u32 = rng.gen_range(0..100);
        if roll < 8 {
            let wf = format!("w-{p}-{k}");
            start(&c, &rec, &shared, p, node, &wf, "start").await;
        } else if roll < 12 {
            // Two processes race for the same id.
            let wf = format!("c-{}", k / 4 % 50 + 1000 * (p % 2));
            start(&c, &rec, &shared, p, node, &wf, "start-collide").await;
        } else if roll < 14 {
            // A workflow this process will cancel.
            let wf = format!("x-{p}-{k}");
            start(&c, &rec, &shared, p, node, &wf, "start").await;
        } else if roll < 17 {
            let target = {
                let s = shared.lock().await;
                let mine: Vec<(&String, &String)> = s
                    .started
                    .iter()
                    .filter(|(w, (q, _))| *q == p && w.starts_with("x-"))
                    .map(|(w, (_, r))| (w, r))
                    .collect();
                (!mine.is_empty()).then(|| {
                    let (w, r) = mine[rng.gen_range(0..mine.len())];
                    (w.clone(), r.clone())
                })
            };
            let Some((wf, run)) = target else { continue };
            rec.push(p, Kind::Invoke, "cancel", &wf, node, json!(null));
            match c.cancel(&wf, Some(&run), "jepsen").await {
                Ok(()) => rec.push(p, Kind::Ok, "cancel", &wf, node, json!(null)),
                // NotFound: the run is closed, perhaps by an earlier attempt of this very call
                // (the SDK retries), so it may have happened.
                Err(e @ Error::NotFound(_)) => rec.push(p, Kind::Info, "cancel", &wf, node, json!(e.to_string())),
                Err(e) => rec.push(p, outcome(&e), "cancel", &wf, node, json!(e.to_string())),
            }
        } else if roll < 60 {
            // A signal with the next sequence number to a workflow this process started (not one
            // it may cancel).
            let target = {
                let s = shared.lock().await;
                let mine: Vec<&String> =
                    s.started.iter().filter(|(w, (q, _))| *q == p && !w.starts_with("x-")).map(|(w, _)| w).collect();
                if mine.is_empty() {
                    None
                } else {
                    Some(mine[rng.gen_range(0..mine.len())].clone())
                }
            };
            let Some(wf) = target else { continue };
            let seq = {
                let mut s = shared.lock().await;
                let n = s.next_seq.entry(wf.clone()).or_insert(0);
                *n += 1;
                *n
            };
            rec.push(p, Kind::Invoke, "signal", &wf, node, json!(seq));
            let rid = format!("sig-{wf}-{seq}");
            match c.signal_with_request_id(&wf, None, "op", &seq, &rid).await {
                Ok(()) => rec.push(p, Kind::Ok, "signal", &wf, node, json!(seq)),
                Err(e) => rec.push(p, outcome(&e), "signal", &wf, node, json!({"seq": seq, "error": e.to_string()})),
            }
        } else {
            let target = {
                let s = shared.lock().await;
                if s.started.is_empty() {
                    None
                } else {
                    let i = rng.gen_range(0..s.started.len());
                    s.started.iter().nth(i).map(|(w, (_, r))| (w.clone(), r.clone()))
                }
            };
            let Some((wf, run)) = target else { continue };
            if roll < 68 {
                // Write the workflow's register: an update with a value never written before.
                let value = {
                    let mut s = shared.lock().await;
                    let n = s.next_value.entry(wf.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                rec.push(p, Kind::Invoke, "write", &wf, node, json!(value));
                let id = format!("set-{wf}-{value}");
                let r = match c.start_update(&wf, Some(&run), "set", &value, UpdateWait::Completed, Some(id)).await {
                    Ok(u) => u.result::<()>().await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(()) => rec.push(p, Kind::Ok, "write", &wf, node, json!(value)),
                    Err(e) => {
                        rec.push(p, outcome(&e), "write", &wf, node, json!({"value": value, "error": e.to_string()}))
                    }
                }
            } else if roll < 72 {
                // Read it: a query.
                rec.push(p, Kind::Invoke, "read", &wf, node, json!(null));
                match c.workflow_handle(wf.clone(), Some(run.clone())).query::<_, Option<i64>>("get", &()).await {
                    Ok(v) => rec.push(p, Kind::Ok, "read", &wf, node, json!(v)),
                    Err(e) => rec.push(p, outcome(&e), "read", &wf, node, json!(e.to_string())),
                }
            } else if roll < 84 {
                rec.push(p, Kind::Invoke, "describe", &wf, node, json!(null));
                match c.describe(&wf, Some(&run)).await {
                    Ok(d) => rec.push(
                        p,
                        Kind::Ok,
                        "describe",
                        &wf,
                        node,
                        json!({"status": d.status().as_str_name(), "length": d.info.history_length}),
                    ),
                    Err(e) => rec.push(p, outcome(&e), "describe", &wf, node, json!(e.to_string())),
                }
            } else {
                rec.push(p, Kind::Invoke, "read-history", &wf, node, json!(null));
                match c.fetch_history(&wf, Some(&run)).await {
                    Ok(events) => {
                        let digest: Vec<(i64, u32)> =
                            events.iter().map(|e| (e.event_id, crc(&prost::Message::encode_to_vec(e)))).collect();
                        rec.push(p, Kind::Ok, "read-history", &wf, node, json!(digest));
                    }
                    Err(e) => rec.push(p, outcome(&e), "read-history", &wf, node, json!(e.to_string())),
                }
            }
        }
    }
}

async fn start(
    c: &Client,
    rec: &Recorder,
    shared: &Arc<tokio::sync::Mutex<Shared>>,
    p: u64,
    node: u64,
    wf: &str,
    f: &str,
) {
    rec.push(p, Kind::Invoke, f, wf, node, json!(null));
    let mut o = StartOptions::new(wf.to_string(), QUEUE.to_string());
    // Retries of this start (inside the SDK) are the same start.
    o.request_id = Some(format!("start-{wf}-{p}"));
    match c.start_workflow("jepsen", &(), o).await {
        Ok(h) => {
            let run = h.run_id().unwrap_or_default().to_string();
            rec.push(p, Kind::Ok, f, wf, node, json!(run));
            shared.lock().await.started.insert(wf.to_string(), (p, run));
        }
        Err(e) => {
            let kind = outcome(&e);
            rec.push(p, kind, f, wf, node, json!(e.to_string()));
            if kind == Kind::Info {
                shared.lock().await.maybe.insert(wf.to_string(), p);
            }
        }
    }
}

/// CRC32 (IEEE) of bytes: event digests in the history.
pub fn crc(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
        }
    }
    !c
}
