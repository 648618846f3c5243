//! The `node` fuzz target: arbitrary bytes sent as WorkflowService requests, over gRPC on
//! loopback TCP, to a whole in-process node on the in-memory engine (frontend, history engine,
//! matching, Raft and duties all run). After each input the node must still answer, and no task
//! of the node may have panicked.
//!
//! An input is a sequence of calls: one byte picking the method (every WorkflowService method,
//! from the protocol's own descriptor), two bytes of body length (little endian), the body. Each
//! call gets a short deadline, so long polls are cut off and cancelled as a client would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use norn_proto::protos::temporal::api::common::v1::{Payload, Payloads, WorkflowExecution, WorkflowType};
use norn_proto::protos::temporal::api::taskqueue::v1::TaskQueue;
use norn_proto::protos::temporal::api::workflowservice::v1::*;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::Status;

/// Panics on the node's threads, seen by the process's panic hook (the fuzzing harness's, or the
/// one this target adds): a panic in one of the node's own tasks shows only here.
static PANICS: AtomicU64 = AtomicU64::new(0);
/// The name of every thread of the node under test.
const THREAD: &str = "fuzz-node";

/// Called from a panic hook: counts the panic if it happened on one of the node's threads.
pub(crate) fn note_panic() {
    if std::thread::current().name().is_some_and(|n| n.starts_with(THREAD)) {
        PANICS.fetch_add(1, Ordering::Relaxed);
    }
}
static CALLS: AtomicU64 = AtomicU64::new(0);
static CALLS_OK: AtomicU64 = AtomicU64::new(0);

/// gRPC calls the target made, and how many were answered OK.
pub fn calls() -> (u64, u64) {
    (CALLS.load(Ordering::Relaxed), CALLS_OK.load(Ordering::Relaxed))
}

/// Calls one input may make.
const CALLS_MAX: usize = 8;
/// Deadline of one call (long polls are cut off there).
const CALL_DEADLINE: Duration = Duration::from_millis(100);
/// How long the node may take to answer the liveness check after an input.
const ALIVE_DEADLINE: Duration = Duration::from_secs(10);
/// Inputs one node takes before it is replaced by a fresh one (its in-memory store grows).
const INPUTS_PER_NODE: u64 = 20_000;

const SERVICE: &str = "temporal.api.workflowservice.v1.WorkflowService";

/// The paths of every WorkflowService method, in the protocol's order.
pub fn methods() -> &'static [String] {
    static METHODS: OnceLock<Vec<String>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let fds = prost_types::FileDescriptorSet::decode(norn_proto::TEMPORAL_DESCRIPTORS).unwrap_or_default();
        fds.file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| (f, s)))
            .filter(|(f, s)| format!("{}.{}", f.package(), s.name()) == SERVICE)
            .flat_map(|(_, s)| s.method.iter().map(|m| format!("/{SERVICE}/{}", m.name())))
            .collect()
    })
}

/// Raw protobuf bytes in both directions.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use bytes::Buf;
        let mut out = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

type Reply = mpsc::Sender<Result<(), String>>;
type Inputs = mpsc::Sender<(Vec<u8>, Reply)>;

/// The thread that owns the node and its runtime (a harness may itself run inside a runtime).
fn worker() -> &'static Mutex<Inputs> {
    static WORKER: OnceLock<Mutex<Inputs>> = OnceLock::new();
    WORKER.get_or_init(|| {
        // Count panics of the node's own tasks even where no harness hook is installed.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            note_panic();
            previous(info)
        }));
        let (tx, rx) = mpsc::channel::<(Vec<u8>, Reply)>();
        std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || serve_inputs(rx))
            .unwrap_or_else(|e| panic!("cannot start the fuzz node thread: {e}"));
        Mutex::new(tx)
    })
}

fn serve_inputs(rx: mpsc::Receiver<(Vec<u8>, Reply)>) {
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name(THREAD).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                for (_, reply) in rx {
                    let _ = reply.send(Err(format!("no runtime: {e}")));
                }
                return;
            }
        };
    let mut node: Option<(crate::server::RunningNode, tonic::transport::Channel, tempfile::TempDir)> = None;
    let mut served = 0u64;
    for (input, reply) in rx {
        let result = rt.block_on(async {
            if served.is_multiple_of(INPUTS_PER_NODE) {
                if let Some((n, _, _)) = node.take() {
                    n.stop().await;
                }
            }
            if node.is_none() {
                node = Some(start_node().await?);
            }
            served += 1;
            let Some((_, channel, _)) = node.as_ref() else { return Err("no node".to_string()) };
            run_input(channel.clone(), &input).await
        });
        let _ = reply.send(result);
    }
}

async fn start_node() -> Result<(crate::server::RunningNode, tonic::transport::Channel, tempfile::TempDir), String> {
    use crate::config::{Member, NodeConfig};
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let raft = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let client_addr = client.local_addr().map_err(|e| e.to_string())?.to_string();
    let raft_addr = raft.local_addr().map_err(|e| e.to_string())?.to_string();
    let config = NodeConfig {
        cluster_id: String::new(),
        node_id: 1,
        data_dir: dir.path().to_path_buf(),
        client_addr: client_addr.clone(),
        raft_addr: raft_addr.clone(),
        metrics_addr: None,
        shards: 2,
        replicas: 1,
        members: vec![Member { id: 1, raft_addr, client_addr: client_addr.clone() }],
        enable_fault_injection: false,
        enable_test_map: false,
        worker_threads: 0,
        disk_reserve_bytes: 0,
        lose_unsynced_on_kill: false,
        raft: norn_raft::RaftOptions {
            election_timeout_ms_min: 150,
            election_timeout_ms_max: 300,
            heartbeat_interval_ms: 50,
            ..Default::default()
        },
    };
    let platform = crate::server::Platform {
        engine: Arc::new(norn_storage::MemEngine::open(&norn_storage::MemDisk::new())),
        connector: Arc::new(norn_raft::TcpConnector),
        clock: Arc::new(norn_raft::SystemClock),
        raft_incoming: crate::server::tcp_incoming(raft),
        client_incoming: crate::server::tcp_incoming(client),
        free_bytes: Box::new(|| None),
    };
    let node = crate::server::start_on(config, platform, None).await.map_err(|e| format!("{e:#}"))?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{client_addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    // Wait for the namespace `default`: until then every call would just be refused.
    for _ in 0..200 {
        if describe_default(&channel).await.is_ok() {
            return Ok((node, channel, dir));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the fuzz node never created namespace default".into())
}

async fn call(
    channel: &tonic::transport::Channel,
    path: &str,
    body: Vec<u8>,
    deadline: Duration,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let path = PathAndQuery::try_from(path.to_string()).map_err(|e| Status::internal(e.to_string()))?;
    let mut req = tonic::Request::new(body);
    req.set_timeout(deadline);
    tokio::time::timeout(deadline + Duration::from_millis(50), async {
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        grpc.unary(req, path, RawCodec).await.map(|r| r.into_inner())
    })
    .await
    .unwrap_or_else(|_| Err(Status::deadline_exceeded("cut off")))
}

async fn describe_default(channel: &tonic::transport::Channel) -> Result<(), Status> {
    let body = DescribeNamespaceRequest { namespace: "default".into(), ..Default::default() }.encode_to_vec();
    call(channel, &format!("/{SERVICE}/DescribeNamespace"), body, ALIVE_DEADLINE).await.map(|_| ())
}

async fn run_input(channel: tonic::transport::Channel, input: &[u8]) -> Result<(), String> {
    let methods = methods();
    if methods.is_empty() {
        return Err("no WorkflowService methods in the descriptor set".into());
    }
    let panics_before = PANICS.load(Ordering::Relaxed);
    let mut rest = input;
    let mut calls = 0;
    while rest.len() >= 3 && calls < CALLS_MAX {
        let method = &methods[rest[0] as usize % methods.len()];
        let len = (u16::from_le_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let body = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        calls += 1;
        // Any answer is fine; what matters is what the node does with the bytes.
        CALLS.fetch_add(1, Ordering::Relaxed);
        if call(&channel, method, body, CALL_DEADLINE).await.is_ok() {
            CALLS_OK.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Err(s) = describe_default(&channel).await {
        return Err(format!("the node stopped answering after the input: {s}"));
    }
    let panics = PANICS.load(Ordering::Relaxed) - panics_before;
    if panics > 0 {
        return Err(format!("{panics} panic(s) inside the node while it handled the input"));
    }
    Ok(())
}

/// Runs one input against the shared in-process node; a failure is a panic, as the harness expects.
pub fn target(data: &[u8]) {
    let (tx, rx) = mpsc::channel();
    let sent = worker().lock().unwrap_or_else(|p| p.into_inner()).send((data.to_vec(), tx));
    assert!(sent.is_ok(), "the fuzz node thread is gone");
    match rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(why)) => panic!("{why}"),
        Err(_) => panic!("the fuzz node thread is gone"),
    }
}

/// One call of an input.
fn encode_call(out: &mut Vec<u8>, method: &str, body: &[u8]) {
    let index = methods().iter().position(|m| m.rsplit('/').next() == Some(method)).unwrap_or(0);
    out.push(index as u8);
    let len = body.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&body[..len]);
}

/// Well-formed call sequences on namespace `default` to mutate from.
pub fn seeds() -> Vec<Vec<u8>> {
    let ns = || "default".to_string();
    let execution = || Some(WorkflowExecution { workflow_id: "w".into(), run_id: String::new() });
    let queue = || Some(TaskQueue { name: "q".into(), ..Default::default() });
    let start = StartWorkflowExecutionRequest {
        namespace: ns(),
        workflow_id: "w".into(),
        workflow_type: Some(WorkflowType { name: "t".into() }),
        task_queue: queue(),
        input: Some(Payloads { payloads: vec![Payload { data: b"1".to_vec(), ..Default::default() }] }),
        request_id: "r".into(),
        ..Default::default()
    };
    let signal = SignalWorkflowExecutionRequest {
        namespace: ns(),
        workflow_execution: execution(),
        signal_name: "s".into(),
        ..Default::default()
    };
    let poll_wf = PollWorkflowTaskQueueRequest { namespace: ns(), task_queue: queue(), ..Default::default() };
    let poll_act = PollActivityTaskQueueRequest { namespace: ns(), task_queue: queue(), ..Default::default() };
    let describe = DescribeWorkflowExecutionRequest { namespace: ns(), execution: execution() };
    let history = GetWorkflowExecutionHistoryRequest { namespace: ns(), execution: execution(), ..Default::default() };
    let list = ListWorkflowExecutionsRequest {
        namespace: ns(),
        query: "WorkflowId = 'w' AND ExecutionStatus = 'Running'".into(),
        ..Default::default()
    };
    let terminate =
        TerminateWorkflowExecutionRequest { namespace: ns(), workflow_execution: execution(), ..Default::default() };
    let update =
        UpdateWorkflowExecutionRequest { namespace: ns(), workflow_execution: execution(), ..Default::default() };
    let query = QueryWorkflowRequest { namespace: ns(), execution: execution(), ..Default::default() };
    let calls: Vec<Vec<(&str, Vec<u8>)>> = vec![
        vec![
            ("StartWorkflowExecution", start.encode_to_vec()),
            ("DescribeWorkflowExecution", describe.encode_to_vec()),
        ],
        vec![
            ("StartWorkflowExecution", start.encode_to_vec()),
            ("SignalWorkflowExecution", signal.encode_to_vec()),
            ("PollWorkflowTaskQueue", poll_wf.encode_to_vec()),
            ("GetWorkflowExecutionHistory", history.encode_to_vec()),
        ],
        vec![("PollActivityTaskQueue", poll_act.encode_to_vec()), ("ListWorkflowExecutions", list.encode_to_vec())],
        vec![("UpdateWorkflowExecution", update.encode_to_vec()), ("QueryWorkflow", query.encode_to_vec())],
        vec![
            ("TerminateWorkflowExecution", terminate.encode_to_vec()),
            ("CountWorkflowExecutions", list.encode_to_vec()),
        ],
    ];
    let mut seeds: Vec<Vec<u8>> = calls
        .into_iter()
        .map(|seq| {
            let mut out = Vec::new();
            for (m, b) in seq {
                encode_call(&mut out, m, &b);
            }
            out
        })
        .collect();
    // Every method once, with a body that at least names the namespace.
    let named = DescribeNamespaceRequest { namespace: ns(), ..Default::default() }.encode_to_vec();
    for i in 0..methods().len() {
        let mut out = vec![i as u8];
        out.extend_from_slice(&(named.len() as u16).to_le_bytes());
        out.extend_from_slice(&named);
        seeds.push(out);
    }
    seeds
}
