//! Cluster correctness on real `norn` processes: cluster identity, routing to the live leader
//! from any node, all-or-nothing apply.

mod common;

use std::time::Duration;

use common::{fast_raft, Cluster};
use norn_client::workflow::{ActivityOptions, WfContext, WfResult};
use norn_client::{Client, ClientOptions, StartOptions, Worker, WorkerOptions};
use norn_node::local_cluster::{self, ClusterSpec, Ports};
use norn_node::pb::NodeStatusRequest;

fn bin() -> &'static std::path::Path {
    env!("CARGO_BIN_EXE_norn").as_ref()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_node_of_an_earlier_cluster_is_refused_and_cluster_up_names_it() {
    // Cluster A, with a key only it holds.
    let mut a = Cluster::start(3, 4, fast_raft()).await;
    a.put(1, "old-key", "from-cluster-a").await.expect("put in A");
    // A `cluster down` that missed node 3: nodes 1 and 2 stop, node 3 of A keeps running.
    a.kill(1);
    a.kill(2);

    // Cluster B laid out on A's addresses: its node 3 cannot bind, because A's node 3 holds the
    // address. `up` must fail and name node 3, not report success.
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<_> =
        a.file.nodes.iter().map(|n| (n.client_addr.clone(), n.raft_addr.clone(), n.metrics_addr.clone())).collect();
    let spec = ClusterSpec {
        nodes: 3,
        data_dir: dir.path().to_path_buf(),
        ports: Ports::Explicit(addrs),
        shards: 4,
        raft: fast_raft(),
        fault_injection: true,
        cluster_id: String::new(),
    };
    let mut b = local_cluster::lay_out(&spec).unwrap();
    assert_ne!(b.cluster_id, a.file.cluster_id, "each new cluster gets its own id");
    let err = local_cluster::up(bin(), &mut b, Duration::from_secs(30)).await.expect_err("cluster up must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("node 3"), "the failure names node 3: {msg}");

    // B's nodes 1 and 2 run beside A's stale node 3 and form B's quorum. The stale node, holding
    // A's data at higher terms, must never lead a shard of B or replicate into it.
    let mut b_nodes = Procs(Vec::new());
    for n in &b.nodes[..2] {
        b_nodes.0.push(local_cluster::spawn(bin(), n).unwrap());
    }
    let client = |addr: &str| {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        norn_node::pb::admin_client::AdminClient::new(ch)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut led = std::collections::BTreeSet::new();
        for n in &b.nodes[..2] {
            if let Ok(s) = client(&n.client_addr).node_status(NodeStatusRequest {}).await {
                let s = s.into_inner();
                assert_eq!(s.cluster_id, b.cluster_id);
                for sh in s.shards {
                    assert_ne!(sh.leader, 3, "A's stale node 3 leads shard {} of B", sh.shard);
                    if sh.role == "leader" {
                        led.insert(sh.shard);
                    }
                }
            }
        }
        // Shard 2 is bootstrapped by its first replica, B's node 3, which never started: it has
        // no leader in B, and must not get one from A's node 3.
        if led == std::collections::BTreeSet::from([0, 1, 3]) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "B's nodes 1 and 2 never led shards 0, 1 and 3: {led:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut b1 = client(&b.nodes[0].client_addr);
    let new_key = (0..).map(|i| format!("new-key-{i}")).find(|k| common::shard_of(k, 4) != 2).unwrap();
    b1.put(norn_node::pb::PutRequest { key: new_key.into_bytes(), value: b"b".to_vec(), hops: 0 })
        .await
        .expect("B accepts writes with nodes 1 and 2");
    // Give the stale node time to try; nothing of A ever shows up in B.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in &b.nodes[..2] {
        let r = client(&n.client_addr)
            .get(norn_node::pb::GetRequest { key: b"old-key".to_vec(), consistency: 1, hops: 0 })
            .await
            .expect("local get")
            .into_inner();
        assert!(!r.found, "A's entry reached B's node {}", n.id);
        let s = client(&n.client_addr).node_status(NodeStatusRequest {}).await.unwrap().into_inner();
        for sh in s.shards {
            assert_ne!(sh.leader, 3, "A's stale node 3 leads shard {} of B", sh.shard);
        }
    }
    // B's cluster status reports node 3's address as held by another cluster.
    let st = b1.cluster_status(norn_node::pb::ClusterStatusRequest {}).await.unwrap().into_inner();
    let n3 = st.nodes.iter().find(|n| n.node_id == 3).unwrap();
    assert!(!n3.reachable && n3.error.contains("another cluster"), "node 3 seen as {n3:?}");
    // The stale node logged the refusals.
    let log = std::fs::read_to_string(&a.file.nodes[2].log).unwrap_or_default();
    assert!(log.contains("refused a peer"), "A's node 3 did not log a refusal:\n{}", a.logs());
    drop(b_nodes);
}

/// Processes killed when dropped (also when a test fails).
struct Procs(Vec<std::process::Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn one_activity(ctx: WfContext, n: u32) -> WfResult<u32> {
    let r: u32 = ctx.activity("inc", &n, ActivityOptions::start_to_close(Duration::from_secs(10))).await?;
    Ok(r)
}

/// A task queue name for each of the cluster's shards, as the home of its workflow tasks.
async fn queue_per_home_shard(addr: &str, shards: u32) -> Vec<String> {
    use norn_proto::protos::temporal::api::workflowservice::v1::DescribeNamespaceRequest;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let ns = norn_proto::WorkflowServiceClient::new(ch)
        .describe_namespace(DescribeNamespaceRequest { namespace: "default".into(), ..Default::default() })
        .await
        .expect("describe default")
        .into_inner()
        .namespace_info
        .unwrap()
        .id;
    let mut by_home = std::collections::BTreeMap::new();
    for i in 0.. {
        let name = format!("tq-{i}");
        let q =
            norn_node::matching::QueueKey::normal(ns.clone(), name.clone(), norn_node::matching::TaskKind::Workflow);
        by_home.entry(q.home_shard(shards)).or_insert(name);
        if by_home.len() == shards as usize {
            break;
        }
    }
    by_home.into_values().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_with_one_dead_serve_every_task_queue_through_every_survivor() {
    let shards = 16;
    let mut c = Cluster::start(5, shards, fast_raft()).await;
    let queues = queue_per_home_shard(&c.addr(1), shards).await;
    c.kill(4);
    c.wait_leaders().await;
    for via in [1u64, 2, 3, 5] {
        // Everything through one surviving node: no client-side routing.
        let opts = ClientOptions { shard_routing: false, ..Default::default() };
        let client = Client::connect(&[c.addr(via)], opts).await.expect("connect");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut runs = Vec::new();
        for q in &queues {
            let mut w = Worker::new(client.clone(), WorkerOptions::new(q.clone()));
            w.register_workflow("one_activity", one_activity)
                .register_activity("inc", |_c, n: u32| async move { Ok(n + 1) });
            let mut stop = stop_rx.clone();
            runs.push(tokio::spawn(async move {
                w.run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
            }));
        }
        let mut handles = Vec::new();
        for (i, q) in queues.iter().enumerate() {
            let id = format!("via-{via}-{q}");
            let h = client
                .start_workflow("one_activity", &(i as u32), StartOptions::new(id.clone(), q.clone()))
                .await
                .unwrap_or_else(|e| panic!("start {id} through node {via}: {e}\n{}", c.logs()));
            handles.push((i as u32, id, h));
        }
        for (i, id, h) in handles {
            let r: u32 = tokio::time::timeout(Duration::from_secs(60), h.result())
                .await
                .unwrap_or_else(|_| panic!("{id} through node {via} did not finish\n{}", c.logs()))
                .unwrap_or_else(|e| panic!("{id} through node {via}: {e}"));
            assert_eq!(r, i + 1);
        }
        let _ = stop_tx.send(true);
        for r in runs {
            let _ = r.await;
        }
        // The test map's every shard, through the same node.
        for k in 0..40 {
            let key = format!("k-{via}-{k}");
            c.put(via, &key, "v").await.unwrap_or_else(|e| panic!("put {key} through node {via}: {e}"));
            assert_eq!(c.get(via, &key, false).await.as_deref(), Some("v"));
        }
    }
}

/// A home shard's leader killed and restarted before anyone else is elected leads again in the
/// same term, with an empty matching: the tasks other shards' leaders had offered to its previous
/// process must be offered again (found by norn-jepsen: a workflow task never started after the
/// home leader's SIGKILL). Single-replica shards make every restart keep its term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_leader_restarted_in_its_own_term_is_offered_its_tasks_again() {
    use norn_proto::protos::temporal::api::workflowservice::v1::PollWorkflowTaskQueueRequest;
    let shards = 4;
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec {
        nodes: 2,
        data_dir: dir.path().to_path_buf(),
        ports: Ports::Free,
        shards,
        raft: fast_raft(),
        fault_injection: true,
        cluster_id: String::new(),
    };
    let mut c = Cluster::start_edited(dir, spec, |t| *t = t.replace("replicas = 3", "replicas = 1")).await;
    let queues = queue_per_home_shard(&c.addr(1), shards).await;
    let ns = namespace_id(&c.addr(1)).await;
    // A task queue homed on a shard of one node, and a workflow whose run lives on the other's.
    let mut leaders = Vec::new();
    for s in 0..shards {
        leaders.push(c.leader_of(s).await);
    }
    let (home_node, run_node) = (leaders[0], 3 - leaders[0]);
    assert!(leaders.contains(&run_node), "both nodes lead shards: {leaders:?}");
    let home = 0;
    let wid = (0..)
        .map(|i| format!("restart-{i}"))
        .find(|id| {
            let s = norn_node::placement::shard_of(&[ns.as_bytes(), id.as_bytes()], shards);
            leaders[s as usize] == run_node
        })
        .unwrap();
    let term_before = shard_term(&c, home_node, home).await;
    let mut req = start_request(&wid, "wf");
    req.task_queue = Some(TaskQueue { name: queues[home as usize].clone(), ..Default::default() });
    wf_client(&c.addr(run_node)).start_workflow_execution(req).await.expect("start");
    // Let the offer reach the home's matching and the run shard's leader record the home's epoch
    // (its duties check every second), then restart the home's node.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    c.kill(home_node);
    c.restart(home_node);
    c.wait_leaders().await;
    assert_eq!(shard_term(&c, home_node, home).await, term_before, "the restarted node leads in its own term");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let poll = PollWorkflowTaskQueueRequest {
            namespace: "default".into(),
            task_queue: Some(TaskQueue { name: queues[home as usize].clone(), ..Default::default() }),
            identity: "test".into(),
            ..Default::default()
        };
        if let Ok(r) = wf_client(&c.addr(home_node)).poll_workflow_task_queue(poll).await {
            let r = r.into_inner();
            if r.workflow_execution.as_ref().is_some_and(|e| e.workflow_id == wid) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workflow task of {wid} was never offered to the restarted home leader\n{}",
            c.logs()
        );
    }
}

/// A command whose caller went away mid-proposal (the client's connection broke, dropping the
/// request on the node) may still commit; what it sets off must still happen. Found by
/// norn-jepsen: a signal sent as a partition began scheduled a workflow task nobody offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_whose_caller_went_away_mid_proposal_still_has_its_task_offered() {
    use norn_proto::protos::temporal::api::workflowservice::v1::{
        PollWorkflowTaskQueueRequest, RespondWorkflowTaskCompletedRequest,
    };
    // Elections slow enough that a 1 s cut does not depose the leader: its entry then commits.
    let raft = norn_raft::RaftOptions {
        election_timeout_ms_min: 4_000,
        election_timeout_ms_max: 5_000,
        heartbeat_interval_ms: 100,
        propose_timeout_ms: 10_000,
        ..Default::default()
    };
    let c = Cluster::start(3, 1, raft).await;
    let leader = c.leader_of(0).await;
    let others: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    let addr = c.addr(leader);
    let mut req = start_request("gone", "wf");
    req.task_queue = Some(TaskQueue { name: "q-gone".into(), ..Default::default() });
    wf_client(&addr).start_workflow_execution(req).await.expect("start");
    let poll = || PollWorkflowTaskQueueRequest {
        namespace: "default".into(),
        task_queue: Some(TaskQueue { name: "q-gone".into(), ..Default::default() }),
        identity: "test".into(),
        ..Default::default()
    };
    // The first workflow task, completed with no commands: the run waits, no task pending.
    let first = wf_client(&addr).poll_workflow_task_queue(poll()).await.expect("poll").into_inner();
    assert!(!first.task_token.is_empty(), "no first workflow task");
    wf_client(&addr)
        .respond_workflow_task_completed(RespondWorkflowTaskCompletedRequest {
            namespace: "default".into(),
            task_token: first.task_token,
            identity: "test".into(),
            ..Default::default()
        })
        .await
        .expect("complete the first task");
    // The leader cut off from its followers: the signal's entry cannot commit yet, and its
    // caller gives up after 300 ms (the stream is reset, the node drops the request).
    c.partition(leader, others.clone()).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_millis(300))
        .connect_lazy();
    let signal = SignalWorkflowExecutionRequest {
        namespace: "default".into(),
        workflow_execution: Some(WorkflowExecution { workflow_id: "gone".into(), run_id: String::new() }),
        signal_name: "s".into(),
        request_id: "gone-signal".into(),
        ..Default::default()
    };
    let r = norn_proto::WorkflowServiceClient::new(ch).signal_workflow_execution(signal).await;
    assert!(r.is_err(), "the signal was answered while its shard's leader was cut off: {r:?}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.partition(leader, vec![]).await;
    // The entry commits; the workflow task it scheduled must reach a poller.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let t = wf_client(&addr).poll_workflow_task_queue(poll()).await.map(|r| r.into_inner());
        if let Ok(t) = t {
            if t.workflow_execution.as_ref().is_some_and(|e| e.workflow_id == "gone") {
                assert_eq!(c.leader_of(0).await, leader, "the leader changed: the test proves nothing");
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the workflow task the signal scheduled was never offered\n{}",
            c.logs()
        );
    }
}

async fn namespace_id(addr: &str) -> String {
    use norn_proto::protos::temporal::api::workflowservice::v1::DescribeNamespaceRequest;
    wf_client(addr)
        .describe_namespace(DescribeNamespaceRequest { namespace: "default".into(), ..Default::default() })
        .await
        .expect("describe default")
        .into_inner()
        .namespace_info
        .unwrap()
        .id
}

async fn shard_term(c: &Cluster, node: u64, shard: u32) -> u64 {
    c.status(node).await.shards.iter().find(|s| s.shard == shard).map(|s| s.term).expect("shard hosted")
}

fn wf_client(addr: &str) -> norn_proto::WorkflowServiceClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(20))
        .connect_lazy();
    norn_proto::WorkflowServiceClient::new(ch)
}

fn start_request(workflow_id: &str, workflow_type: &str) -> StartWorkflowExecutionRequest {
    StartWorkflowExecutionRequest {
        namespace: "default".into(),
        workflow_id: workflow_id.into(),
        workflow_type: Some(WorkflowType { name: workflow_type.into() }),
        task_queue: Some(TaskQueue { name: "nobody-polls".into(), ..Default::default() }),
        request_id: format!("{workflow_id}-{workflow_type}"),
        ..Default::default()
    }
}

use norn_proto::protos::temporal::api::common::v1::{WorkflowExecution, WorkflowType};
use norn_proto::protos::temporal::api::enums::v1::{WorkflowExecutionStatus, WorkflowIdConflictPolicy};
use norn_proto::protos::temporal::api::taskqueue::v1::TaskQueue;
use norn_proto::protos::temporal::api::workflowservice::v1::{
    DescribeWorkflowExecutionRequest, SignalWorkflowExecutionRequest, StartWorkflowExecutionRequest,
};

async fn status_of(addr: &str, workflow_id: &str) -> WorkflowExecutionStatus {
    let d = wf_client(addr)
        .describe_workflow_execution(DescribeWorkflowExecutionRequest {
            namespace: "default".into(),
            execution: Some(WorkflowExecution { workflow_id: workflow_id.into(), run_id: String::new() }),
        })
        .await
        .expect("describe")
        .into_inner();
    d.workflow_execution_info.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_terminate_existing_start_leaves_the_old_run_running() {
    let c = Cluster::start(3, 4, fast_raft()).await;
    let addr = c.addr(1);
    let first = wf_client(&addr).start_workflow_execution(start_request("idle-1", "waits")).await.unwrap().into_inner();
    // A second start that would terminate the first, but that the engine refuses (no type).
    let mut bad = start_request("idle-1", "");
    bad.workflow_type = None;
    bad.workflow_id_conflict_policy = WorkflowIdConflictPolicy::TerminateExisting as i32;
    let err = wf_client(&addr).start_workflow_execution(bad).await.expect_err("a start without a type is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // Nothing of the refused start happened: the first run still runs, on every node.
    for id in 1..=3 {
        assert_eq!(status_of(&c.addr(id), "idle-1").await, WorkflowExecutionStatus::Running, "via node {id}");
    }
    let events = |local_node: u64| {
        let addr = c.addr(local_node);
        let run_id = first.run_id.clone();
        async move {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
            norn_node::pb::admin_client::AdminClient::new(ch)
                .read_history(norn_node::pb::ReadHistoryRequest {
                    namespace: "default".into(),
                    workflow_id: "idle-1".into(),
                    run_id,
                    local: true,
                    after_event_id: 0,
                    page_size: 0,
                })
                .await
                .expect("local history")
                .into_inner()
                .events
        }
    };
    let reference = events(1).await;
    assert_eq!(reference.len(), 2, "started and workflow task scheduled only");
    for id in 2..=3 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while events(id).await != reference {
            assert!(tokio::time::Instant::now() < deadline, "node {id}'s replica differs");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_run_state_halts_its_shard_on_that_node_naming_the_key() {
    let mut c = Cluster::start(3, 4, fast_raft()).await;
    let addr = c.addr(1);
    let started =
        wf_client(&addr).start_workflow_execution(start_request("victim-1", "waits")).await.unwrap().into_inner();
    let ns = wf_client(&addr)
        .describe_namespace(norn_proto::protos::temporal::api::workflowservice::v1::DescribeNamespaceRequest {
            namespace: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .namespace_info
        .unwrap()
        .id;
    let shard = norn_node::placement::shard_of(&[ns.as_bytes(), b"victim-1"], 4);
    // Node 3 stops; one bit of its copy of the run's state flips on disk.
    let victim = 3;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kill(victim);
    let key = format!("run/{ns}/victim-1/{}", started.run_id);
    {
        use norn_storage::{Cf, Engine, RocksEngine, RocksOptions, WriteBatch};
        let db = c.dir.path().join(format!("node-{victim}/data/db"));
        let engine = RocksEngine::open(&db, &RocksOptions::default()).unwrap();
        // State keys: shard (u32 BE), generation (u32 BE, 0 until a snapshot is installed), key.
        let full = [&shard.to_be_bytes()[..], &0u32.to_be_bytes(), key.as_bytes()].concat();
        let mut v = engine.get(Cf::State, &full).unwrap().expect("node 3 holds the run state");
        let at = v.len() / 2;
        v[at] ^= 0x10;
        let mut b = WriteBatch::new();
        b.put(Cf::State, full, v);
        engine.write(b, true).unwrap();
    }
    c.restart(victim);
    c.wait_ready().await;
    // A signal makes every replica load the run state: node 3 cannot, and halts that shard.
    let signal = SignalWorkflowExecutionRequest {
        namespace: "default".into(),
        workflow_execution: Some(WorkflowExecution { workflow_id: "victim-1".into(), run_id: String::new() }),
        signal_name: "poke".into(),
        request_id: "poke-1".into(),
        ..Default::default()
    };
    wf_client(&c.addr(1)).signal_workflow_execution(signal).await.expect("the healthy majority applies the signal");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = c.status(victim).await;
        let s = st.shards.iter().find(|s| s.shard == shard).unwrap();
        if s.role == "failed" {
            assert!(s.fatal.contains(&key), "the halt does not name the key {key}: {}", s.fatal);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node 3 kept applying over a corrupt value: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(&c.file.nodes[2].log).unwrap_or_default();
    assert!(log.contains("halting this shard on this node"), "no loud error in node 3's log");
    // The other shards of node 3 go on.
    let st = c.status(victim).await;
    assert!(st.shards.iter().filter(|s| s.shard != shard).all(|s| s.role != "failed"));
}

/// A small tmpfs mounted for a test (root only), unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size_mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_refuses_writes_keeps_reads_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec {
        nodes: 3,
        data_dir: dir.path().to_path_buf(),
        ports: Ports::Free,
        shards: 4,
        raft: fast_raft(),
        fault_injection: true,
        cluster_id: String::new(),
    };
    let mut file = local_cluster::lay_out(&spec).unwrap();
    // Node 1's data directory on a 512 MiB file system; the default reserve is 256 MiB.
    let data = dir.path().join("node-1/data");
    let Some(fs) = Tmpfs::mount(&data, 512) else {
        eprintln!("skipped: mounting a tmpfs needs root (the engine-level test in disk.rs still runs)");
        return;
    };
    let (children, _) = local_cluster::up(bin(), &mut file, Duration::from_secs(60)).await.expect("up");
    let c = Cluster { dir, file, children: children.into_iter().map(Some).collect(), shards: 4 };
    let status = c.status(1).await;
    let led = status.shards.iter().find(|s| s.role == "leader").expect("node 1 leads a shard").shard;
    let key = (0..).map(|i| format!("full-{i}")).find(|k| common::shard_of(k, 4) == led).unwrap();
    c.put(1, &key, "before").await.expect("writes while there is space");

    // Fill the disk below the reserve: node 1 refuses new writes, from any node, and says why.
    let junk = fs.0.join("junk");
    std::fs::write(&junk, vec![0u8; 300 << 20]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last_acked = "before".to_string();
    let refused = loop {
        // The free space is measured every second: a write may still pass just after the fill.
        let value = format!("while-filling-{}", tokio::time::Instant::now().elapsed().as_nanos());
        match c.put(2, &key, &value).await {
            Err(s) if s.code() == tonic::Code::ResourceExhausted => break s,
            Ok(_) => last_acked = value,
            Err(e) => panic!("unexpected error while the disk fills: {e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "writes still accepted on a full disk");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(refused.message().contains("free space"), "unclear refusal: {}", refused.message());
    let metrics = reqwest_metrics(&c.file.nodes[0].metrics_addr).await;
    assert!(metrics.contains("norn_disk_writes_refused{node=\"1\"} 1"), "no metric:\n{metrics}");
    // Reads go on, and nothing refused was written.
    assert_eq!(c.get(1, &key, false).await.as_deref(), Some(last_acked.as_str()));

    // Space comes back: writes resume without a restart.
    std::fs::remove_file(&junk).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.put(2, &key, "after").await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "writes did not resume once space was freed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.get(3, &key, false).await.as_deref(), Some("after"));
    drop(c);
    drop(fs);
}

/// `GET /metrics` of a node.
async fn reqwest_metrics(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_through_a_streamed_snapshot_file() {
    // One shard, snapshots every 200 entries and short logs, so a node that was away catches up
    // from a snapshot of the whole shard.
    let raft = norn_raft::RaftOptions {
        snapshot_logs_since_last: 200,
        logs_kept_after_snapshot: 10,
        ..norn_raft::RaftOptions::default()
    };
    let mut c = Cluster::start(3, 1, raft).await;
    c.kill(3);
    c.wait_leaders().await;
    // 32 MiB of state: 512 values of 64 KiB (`norn bench snapshot` measures GiB-sized shards and
    // the memory they take).
    let value = "x".repeat(64 << 10);
    let keys = 512;
    for i in 0..keys {
        c.put(1, &format!("big-{i}"), &value).await.unwrap_or_else(|e| panic!("put big-{i}: {e}"));
    }
    c.restart(3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = match c.client(3).await.node_status(NodeStatusRequest {}).await {
            Ok(st) => st.into_inner().shards.iter().any(|s| s.snapshots_installed > 0),
            Err(_) => false,
        };
        if done && c.get(3, &format!("big-{}", keys - 1), true).await.is_some() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            for n in &c.file.nodes {
                let _ = std::fs::copy(&n.log, format!("/tmp/snaplog-{}.log", n.id));
            }
            panic!("node 3 never caught up\n{}", c.logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in (0..keys).step_by(97) {
        assert_eq!(c.get(3, &format!("big-{i}"), true).await.map(|v| v.len()), Some(value.len()), "big-{i} on node 3");
    }
    // The snapshot arrived as a file beside the store, and only the installed one is kept.
    let snaps = c.dir.path().join("node-3/data/snapshots/00000");
    let files: Vec<String> = std::fs::read_dir(&snaps)
        .unwrap_or_else(|e| panic!("{}: {e}", snaps.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 1, "snapshot files on node 3: {files:?}");
    assert!(files[0].starts_with("recv-") && files[0].ends_with(".snap"), "{files:?}");
    let peaks: Vec<u64> = c.pids().iter().map(|p| norn_node::bench_snapshot::peak_rss_mib(*p)).collect();
    eprintln!("peak RSS per node (MiB): {peaks:?}; state: {} MiB", keys * 64 / 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_wal_is_corrupt_in_the_middle_refuses_to_start_and_says_why() {
    let mut c = Cluster::start(3, 1, fast_raft()).await;
    for i in 0..300 {
        c.put(1, &format!("k{i}"), &"v".repeat(100)).await.unwrap_or_else(|e| panic!("put k{i}: {e}"));
    }
    // Node 3 stops (SIGKILL: nothing flushed beyond the WAL); one byte a third of the way into its
    // largest WAL file flips.
    c.kill(3);
    let db = c.dir.path().join("node-3/data/db");
    let wal = std::fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a WAL file");
    let mut bytes = std::fs::read(&wal).unwrap();
    assert!(bytes.len() > 16 << 10, "the writes are in the WAL ({} bytes)", bytes.len());
    let at = bytes.len() / 3;
    bytes[at] ^= 0x5a;
    std::fs::write(&wal, &bytes).unwrap();
    // Restarted, it exits instead of opening with the synced records after the damage dropped.
    let node = &c.file.nodes[2];
    let mut child = local_cluster::spawn(bin(), node).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("node 3 started over a corrupt WAL\n{}", c.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "node 3 exited cleanly over a corrupt WAL");
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    assert!(log.contains("refusing to start"), "the operator is not told why:\n{log}");
    // The other two go on serving.
    c.put(1, "after", "yes").await.expect("nodes 1 and 2 keep a quorum");
}
