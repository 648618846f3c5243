//! `norn-jepsen`: a chaos harness against real `norn` processes. It starts a local cluster whose
//! every link goes through proxies it owns ([`proxy`]), drives a workload through Norn's Rust SDK
//! ([`workload`]) while nemeses kill, pause, partition, delay and impersonate nodes
//! ([`nemesis`]), heals everything, finishes every workflow, reads every history through every
//! node and from every replica, checks the history ([`checker`]) and writes a report
//! ([`report`]). See `docs/jepsen.md`.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod linearizable;
pub mod nemesis;
pub mod plot;
pub mod proxy;
pub mod python;
pub mod report;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use norn_client::Client;
use norn_node::pb::admin_client::AdminClient;
use norn_node::pb::ReadHistoryRequest;
use norn_proto::protos::temporal::api::history::v1::history_event::Attributes;
use norn_proto::protos::temporal::api::history::v1::HistoryEvent;
use prost::Message;

use crate::checker::Final;
use crate::history::Recorder;
use crate::workload::crc;

/// A run's settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Nodes (3 or 5).
    pub nodes: usize,
    /// Shards.
    pub shards: u32,
    /// Seconds of workload under faults.
    pub time_limit: Duration,
    /// Nemeses to mix.
    pub nemesis: Vec<String>,
    /// The `norn` binary.
    pub binary: PathBuf,
    /// The report folder.
    pub out: PathBuf,
    /// Seed of the workload's and the nemeses' choices.
    pub seed: u64,
    /// Logical clients.
    pub processes: u64,
    /// A bug to plant in every node (`stale-follower-read`, `accept-any-cluster`, ...).
    pub planted_bug: Option<String>,
    /// Also run the workload through Temporal's Python SDK (`python/workload.py`; needs
    /// `python3` with `temporalio`).
    pub python: bool,
    /// At most this many faults at once (see `nemesis::run`).
    pub mix: usize,
}

/// Runs the harness; returns the summary (also written to `out`).
pub async fn run(o: &Options) -> anyhow::Result<report::Summary> {
    std::fs::create_dir_all(&o.out)?;
    let cluster =
        cluster::Cluster::start(&o.binary, &o.out.join("cluster"), o.nodes, o.shards, o.planted_bug.clone()).await?;
    let n = o.nodes as u64;
    let addrs: Vec<String> = (1..=n).map(|i| cluster.client_addr(i)).collect();
    let direct: Vec<String> = cluster.nodes.iter().map(|x| x.entry.client_addr.clone()).collect();
    let logs = cluster::logs(&cluster);
    let shared_cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let rec = Recorder::new();
    let shared = Arc::new(tokio::sync::Mutex::new(workload::Shared::default()));
    let (wstop_tx, wstop_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for a in &addrs {
        workers.push(tokio::spawn(workload::worker(a.clone(), wstop_rx.clone())));
    }
    let mut procs = Vec::new();
    for p in 0..o.processes {
        let node = p % n + 1;
        procs.push(tokio::spawn(workload::process(
            p + 1,
            node,
            addrs[(node - 1) as usize].clone(),
            rec.clone(),
            shared.clone(),
            stop_rx.clone(),
            o.seed,
        )));
    }
    let mut python = if o.python { Some(python::start(o, &addrs, rec.now_ns())?) } else { None };
    let nemesis =
        tokio::spawn(nemesis::run(shared_cluster.clone(), o.nemesis.clone(), rec.clone(), o.time_limit, o.seed, o.mix));
    tokio::time::sleep(o.time_limit).await;
    let _ = stop_tx.send(true);
    for p in procs {
        let _ = tokio::time::timeout(Duration::from_secs(30), p).await;
    }
    if let Some(py) = python.as_mut() {
        py.collect(&rec, &shared).await?;
    }
    let windows = nemesis.await??;
    nemesis::heal(&shared_cluster).await?;
    let ready = shared_cluster.lock().await.wait_ready(Duration::from_secs(120)).await;
    let fin = match ready {
        Ok(()) => finish(&shared_cluster, &shared, &direct, o.shards).await?,
        Err(e) => {
            eprintln!("norn-jepsen: the cluster did not recover after the final heal: {e}");
            Final::default()
        }
    };
    if let Some(py) = python.take() {
        py.stop().await;
    }
    let _ = wstop_tx.send(true);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }
    shared_cluster.lock().await.stop_all();
    let ops = rec.ops();
    let mut violations = checker::check(&ops, &fin);
    violations.extend(checker::panics(&logs));
    if ready_failed(&fin, &shared).await {
        violations.push(checker::Violation {
            checker: "every-workflow-finishes".into(),
            wf: String::new(),
            detail: "the cluster did not become ready after the final heal".into(),
            ops: vec![],
        });
    }
    let workflows = shared.lock().await.started.len();
    let mut summary = report::summarize(o.nodes, &ops, &windows, violations, workflows);
    summary.finished = fin.runs.values().filter(|r| r.1 == "WORKFLOW_EXECUTION_STATUS_COMPLETED").count();
    summary.histories_read = fin.reads.values().map(|m| m.len()).sum();
    summary.replicas_compared = fin.replicas.values().map(|m| m.len()).sum();
    report::write(&o.out, &ops, &windows, &summary, &logs)?;
    // The nodes' data is kept for a run that found something, and dropped otherwise.
    if summary.valid {
        let _ = std::fs::remove_dir_all(o.out.join("cluster"));
    }
    Ok(summary)
}

async fn ready_failed(fin: &Final, shared: &Arc<tokio::sync::Mutex<workload::Shared>>) -> bool {
    fin.runs.is_empty() && !shared.lock().await.started.is_empty()
}

/// After the heal: every workflow gets its finish signal and must complete; then every history is
/// read through every node and from every replica.
async fn finish(
    cluster: &cluster::Shared,
    shared: &Arc<tokio::sync::Mutex<workload::Shared>>,
    direct: &[String],
    shards: u32,
) -> anyhow::Result<Final> {
    let ids: Vec<String> = {
        let s = shared.lock().await;
        let mut ids: Vec<String> = s.started.keys().cloned().collect();
        ids.extend(s.maybe.keys().filter(|k| !s.started.contains_key(*k)).cloned());
        ids
    };
    let c = workload::client(&direct[0]).await?;
    let mut fin = Final::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    // Finish every workflow (idempotent by request id; an indeterminate start that never happened
    // is NotFound) and wait for it to close, many at a time.
    let closed: Vec<(String, Option<(String, String)>)> = futures::stream::iter(ids.clone())
        .map(|wf| {
            let c = c.clone();
            async move {
                loop {
                    match c.signal_with_request_id(&wf, None, "op", &-1i64, &format!("finish-{wf}")).await {
                        // NotFound: never started, or already closed (canceled); describe says which.
                        Ok(()) | Err(norn_client::Error::NotFound(_)) => break,
                        Err(_) if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                        Err(_) => return (wf, Some((String::new(), "UNREACHABLE".into()))),
                    }
                }
                loop {
                    match c.describe(&wf, None).await {
                        Ok(d)
                            if d.status().as_str_name() != "WORKFLOW_EXECUTION_STATUS_RUNNING"
                                || tokio::time::Instant::now() >= deadline =>
                        {
                            let run = d.info.execution.as_ref().map(|e| e.run_id.clone()).unwrap_or_default();
                            return (wf, Some((run, d.status().as_str_name().to_string())));
                        }
                        Err(norn_client::Error::NotFound(_)) => return (wf, None),
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (wf, r) in closed {
        if let Some(r) = r {
            fin.runs.insert(wf, r);
        }
    }
    // Let every replica apply everything, then read every history through every node and from
    // every node's replica.
    settle(cluster, shards).await;
    let clients: Vec<Client> = {
        let mut v = Vec::new();
        for a in direct {
            v.push(workload::client(a).await?);
        }
        v
    };
    type Reads = (String, u64, Option<Vec<HistoryEvent>>, Option<Vec<(i64, u32)>>);
    let jobs: Vec<(String, String, u64)> = fin
        .runs
        .iter()
        .flat_map(|(wf, (run, _))| (1..=direct.len() as u64).map(move |n| (wf.clone(), run.clone(), n)))
        .collect();
    // Bounded: a cluster that cannot answer (a shard with no leader) must not hold the report
    // back for hours; what was not read in time is missing from the comparison, and the
    // workflows' own checkers already say they did not finish.
    let reads_deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let results: Vec<Reads> = futures::stream::iter(jobs)
        .map(|(wf, run, node)| {
            let cl = clients[(node - 1) as usize].clone();
            let addr = direct[(node - 1) as usize].clone();
            async move {
                let events = tokio::time::timeout_at(reads_deadline, cl.fetch_history(&wf, Some(&run)))
                    .await
                    .ok()
                    .and_then(|r| r.ok());
                let local =
                    tokio::time::timeout_at(reads_deadline, local_history(&addr, &wf, &run)).await.ok().flatten();
                (wf, node, events, local)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (wf, node, events, local) in results {
        if let Some(events) = events {
            if node == 1 {
                fin.signals.insert(wf.clone(), signals(&events));
                fin.updates.insert(wf.clone(), updates(&events));
                fin.activity_closes.insert(wf.clone(), activity_closes(&events));
                let types = events
                    .iter()
                    .map(|e| {
                        norn_proto::protos::temporal::api::enums::v1::EventType::try_from(e.event_type)
                            .map(|t| t.as_str_name().trim_start_matches("EVENT_TYPE_").to_string())
                            .unwrap_or_else(|_| e.event_type.to_string())
                    })
                    .collect();
                fin.event_types.insert(wf.clone(), types);
                let times = events
                    .iter()
                    .map(|e| {
                        e.event_time.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap_or(0)
                    })
                    .collect();
                fin.event_times.insert(wf.clone(), times);
            }
            let digest = events.iter().map(|e| (e.event_id, crc(&e.encode_to_vec()))).collect();
            fin.reads.entry(wf.clone()).or_default().insert(node, digest);
        }
        if let Some(local) = local {
            fin.replicas.entry(wf).or_default().insert(node, local);
        }
    }
    Ok(fin)
}

/// Waits (up to 60 s) until every running node has applied every shard's commit index.
async fn settle(cluster: &cluster::Shared, shards: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let c = cluster.lock().await;
        let mut commit: BTreeMap<u32, u64> = BTreeMap::new();
        let mut applied: Vec<BTreeMap<u32, u64>> = Vec::new();
        for n in &c.nodes {
            if let Ok(s) = c.status(n.id).await {
                let mut a = BTreeMap::new();
                for x in s.shards {
                    let e = commit.entry(x.shard).or_default();
                    *e = (*e).max(x.committed_index);
                    a.insert(x.shard, x.applied_index);
                }
                applied.push(a);
            }
        }
        drop(c);
        let done = applied.iter().all(|a| a.iter().all(|(s, i)| *i >= commit.get(s).copied().unwrap_or(0)));
        if done && commit.len() == shards as usize {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The signal values ("op" signals) of a history, in order.
fn signals(events: &[HistoryEvent]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| match &e.attributes {
            Some(Attributes::WorkflowExecutionSignaledEventAttributes(a)) if a.signal_name == "op" => a
                .input
                .as_ref()
                .and_then(|p| p.payloads.first())
                .and_then(|p| serde_json::from_slice::<i64>(&p.data).ok())
                .filter(|v| *v >= 0),
            _ => None,
        })
        .collect()
}

/// The scheduled event id of every event that closes an activity (completed, failed, timed out,
/// canceled), in history order.
fn activity_closes(events: &[HistoryEvent]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| match &e.attributes {
            Some(Attributes::ActivityTaskCompletedEventAttributes(a)) => Some(a.scheduled_event_id),
            Some(Attributes::ActivityTaskFailedEventAttributes(a)) => Some(a.scheduled_event_id),
            Some(Attributes::ActivityTaskTimedOutEventAttributes(a)) => Some(a.scheduled_event_id),
            Some(Attributes::ActivityTaskCanceledEventAttributes(a)) => Some(a.scheduled_event_id),
            _ => None,
        })
        .collect()
}

/// The values of the `set` updates a history accepted, in order.
fn updates(events: &[HistoryEvent]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| match &e.attributes {
            Some(Attributes::WorkflowExecutionUpdateAcceptedEventAttributes(a)) => a
                .accepted_request
                .as_ref()
                .and_then(|r| r.input.as_ref())
                .filter(|i| i.name == "set")
                .and_then(|i| i.args.as_ref())
                .and_then(|p| p.payloads.first())
                .and_then(|p| serde_json::from_slice::<i64>(&p.data).ok()),
            _ => None,
        })
        .collect()
}

/// A run's history as node `addr`'s own replica holds it (`norn debug history --local`), or
/// `None` when the node holds no replica of its shard.
async fn local_history(addr: &str, wf: &str, run: &str) -> Option<Vec<(i64, u32)>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    let mut admin = AdminClient::new(ch).max_decoding_message_size(64 << 20);
    let mut out = Vec::new();
    let mut after = 0i64;
    loop {
        let req = ReadHistoryRequest {
            namespace: "default".into(),
            workflow_id: wf.into(),
            run_id: run.into(),
            local: true,
            after_event_id: after,
            page_size: 1000,
        };
        let page = admin.read_history(req).await.ok()?.into_inner();
        if page.events.is_empty() {
            break;
        }
        for bytes in &page.events {
            let e = HistoryEvent::decode(bytes.as_slice()).ok()?;
            after = e.event_id;
            out.push((e.event_id, crc(&e.encode_to_vec())));
        }
        if page.events.len() < 1000 {
            break;
        }
    }
    Some(out)
}
