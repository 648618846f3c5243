//! Hostile and careless input on real `norn` processes: nothing a client or a stranger sends
//! crashes, wedges or writes through a node.

mod common;

use std::time::Duration;

use common::{fast_raft, Cluster};
use norn_proto::internal::internal_client::InternalClient;
use norn_proto::internal::ProposeRequest;
use norn_proto::protos::temporal::api::common::v1::{WorkflowExecution, WorkflowType};
use norn_proto::protos::temporal::api::namespace::v1::UpdateNamespaceInfo;
use norn_proto::protos::temporal::api::taskqueue::v1::TaskQueue;
use norn_proto::protos::temporal::api::workflowservice::v1::{
    CountWorkflowExecutionsRequest, DescribeNamespaceRequest, GetWorkflowExecutionHistoryRequest,
    ListWorkflowExecutionsRequest, SignalWorkflowExecutionRequest, StartWorkflowExecutionRequest,
    TerminateWorkflowExecutionRequest, UpdateNamespaceRequest,
};

fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

async fn alive(addr: &str) {
    norn_proto::WorkflowServiceClient::new(channel(addr))
        .describe_namespace(DescribeNamespaceRequest { namespace: "default".into(), ..Default::default() })
        .await
        .expect("the node still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_surface_is_not_reachable_by_clients_or_strangers() {
    let c = Cluster::start(3, 4, fast_raft()).await;
    let payload = b"anything".to_vec();
    // The client port serves no node-to-node call.
    let r =
        InternalClient::new(channel(&c.addr(1))).propose(ProposeRequest { shard: 0, payload: payload.clone() }).await;
    assert_eq!(r.expect_err("propose on the client port").code(), tonic::Code::Unimplemented);
    // The peer port refuses a caller without this cluster's identity...
    let peer = c.file.nodes[0].raft_addr.clone();
    let r = InternalClient::new(channel(&peer)).propose(ProposeRequest { shard: 0, payload: payload.clone() }).await;
    assert_eq!(r.expect_err("propose without identity").code(), tonic::Code::Unauthenticated);
    // ...and one claiming another cluster.
    let mut req = tonic::Request::new(ProposeRequest { shard: 0, payload });
    req.metadata_mut().insert("norn-cluster", "00000000deadbeef".parse().unwrap());
    req.metadata_mut().insert("norn-node", "2".parse().unwrap());
    req.metadata_mut().insert("norn-incarnation", "99".parse().unwrap());
    let r = InternalClient::new(channel(&peer)).propose(req).await;
    let e = r.expect_err("propose from another cluster");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("another cluster"), "{e}");
    // Writes of the test map are refused unless the node allows them (cluster up does).
    c.put(1, "k", "v").await.expect("cluster up allows the test map");
    alive(&c.addr(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_deeply_nested_list_queries_are_refused_and_the_node_stays_up() {
    let c = Cluster::start(3, 4, fast_raft()).await;
    let addr = c.addr(1);
    let mut wf = norn_proto::WorkflowServiceClient::new(channel(&addr)).max_encoding_message_size(8 << 20);
    // A megabyte-long AND chain (it overflowed the stack of the recursive parser).
    let long = "WorkflowId = 'a' AND ".repeat(50_000) + "WorkflowId = 'b'";
    let r = wf
        .list_workflow_executions(ListWorkflowExecutionsRequest {
            namespace: "default".into(),
            query: long,
            ..Default::default()
        })
        .await;
    assert_eq!(r.expect_err("a 1 MB query").code(), tonic::Code::InvalidArgument);
    alive(&addr).await;
    // Parentheses nested far deeper than any real query.
    let deep = format!("{}WorkflowId = 'a'{}", "(".repeat(10_000), ")".repeat(10_000));
    let r =
        wf.count_workflow_executions(CountWorkflowExecutionsRequest { namespace: "default".into(), query: deep }).await;
    let e = r.expect_err("deep nesting");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("nest deeper"), "{e}");
    alive(&addr).await;
    // A long but legal chain works.
    let ok = "WorkflowId != 'a' AND ".repeat(500) + "WorkflowId != 'b'";
    wf.count_workflow_executions(CountWorkflowExecutionsRequest { namespace: "default".into(), query: ok })
        .await
        .expect("a long legal query");
}

fn payloads(bytes: usize) -> Option<norn_proto::protos::temporal::api::common::v1::Payloads> {
    use norn_proto::protos::temporal::api::common::v1::{Payload, Payloads};
    Some(Payloads { payloads: vec![Payload { data: vec![b'x'; bytes], ..Default::default() }] })
}

fn start(workflow_id: &str, input: usize) -> StartWorkflowExecutionRequest {
    StartWorkflowExecutionRequest {
        namespace: "default".into(),
        workflow_id: workflow_id.into(),
        workflow_type: Some(WorkflowType { name: "limits".into() }),
        task_queue: Some(TaskQueue { name: "limits-nobody-polls".into(), ..Default::default() }),
        input: payloads(input),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporals_limits_hold_with_temporals_errors_and_are_set_per_namespace() {
    let c = Cluster::start(3, 4, fast_raft()).await;
    let addr = c.addr(1);
    let mut wf = norn_proto::WorkflowServiceClient::new(channel(&addr))
        .max_encoding_message_size(16 << 20)
        .max_decoding_message_size(16 << 20);
    // A payload over 2 MiB.
    let e = wf.start_workflow_execution(start("big-input", (2 << 20) + 1)).await.expect_err("2 MiB + 1 input");
    assert_eq!((e.code(), e.message()), (tonic::Code::InvalidArgument, "Blob data size exceeds limit."));
    // A workflow id over 1,000 bytes.
    let e = wf.start_workflow_execution(start(&"w".repeat(1001), 1)).await.expect_err("long workflow id");
    assert_eq!((e.code(), e.message()), (tonic::Code::InvalidArgument, "WorkflowId exceeds length limit."));
    // A run id that is no UUID (it could reach into another run's keys).
    wf.start_workflow_execution(start("a", 1)).await.expect("start a");
    let e = wf
        .terminate_workflow_execution(TerminateWorkflowExecutionRequest {
            namespace: "default".into(),
            workflow_execution: Some(WorkflowExecution { workflow_id: "a".into(), run_id: "b/../c".into() }),
            ..Default::default()
        })
        .await
        .expect_err("run id with a slash");
    assert_eq!((e.code(), e.message()), (tonic::Code::InvalidArgument, "Invalid RunId."));
    // A request over the client port's 4 MiB.
    let e = wf.start_workflow_execution(start("huge", 5 << 20)).await.expect_err("5 MiB request");
    assert!(
        matches!(e.code(), tonic::Code::ResourceExhausted | tonic::Code::OutOfRange | tonic::Code::Internal),
        "{e}"
    );
    alive(&addr).await;
    // A namespace lowers its blob limit; DescribeNamespace shows the limits in effect.
    let e = wf
        .update_namespace(UpdateNamespaceRequest {
            namespace: "default".into(),
            update_info: Some(UpdateNamespaceInfo {
                data: [("norn.limits.blob_size_max_bytes".to_string(), "0".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("a zero limit");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    wf.update_namespace(UpdateNamespaceRequest {
        namespace: "default".into(),
        update_info: Some(UpdateNamespaceInfo {
            data: [("norn.limits.blob_size_max_bytes".to_string(), "1000".to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("lower the blob limit");
    let d = wf
        .describe_namespace(DescribeNamespaceRequest { namespace: "default".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let data = d.namespace_info.unwrap().data;
    assert_eq!(data.get("norn.limits.blob_size_max_bytes").map(String::as_str), Some("1000"));
    assert_eq!(data.get("norn.limits.pending_activities_max").map(String::as_str), Some("2000"));
    let e = wf.start_workflow_execution(start("small-input", 2000)).await.expect_err("2,000 bytes over 1,000");
    assert_eq!(e.message(), "Blob data size exceeds limit.");
    wf.start_workflow_execution(start("tiny-input", 10)).await.expect("within the lowered limit");
    // Signals per run (Temporal's default 10,000), lowered to 2 for this namespace: the third
    // is refused with Temporal's text and nothing of it is written; a retry of an accepted one
    // is still answered.
    wf.update_namespace(UpdateNamespaceRequest {
        namespace: "default".into(),
        update_info: Some(UpdateNamespaceInfo {
            data: [("norn.limits.signals_per_run_max".to_string(), "2".to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("lower the signal limit");
    // Limits are re-read at most every 10 s: wait for every node to have the new one.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    let signal = |request_id: &str| SignalWorkflowExecutionRequest {
        namespace: "default".into(),
        workflow_execution: Some(WorkflowExecution { workflow_id: "tiny-input".into(), run_id: String::new() }),
        signal_name: "s".into(),
        request_id: request_id.into(),
        ..Default::default()
    };
    wf.signal_workflow_execution(signal("one")).await.expect("signal 1");
    wf.signal_workflow_execution(signal("two")).await.expect("signal 2");
    let e = wf.signal_workflow_execution(signal("three")).await.expect_err("signal 3 over the limit");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().starts_with("exceeded workflow execution limit for signal events"), "{e}");
    wf.signal_workflow_execution(signal("two")).await.expect("a retry of an accepted signal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_six_mib_history_is_read_whole_through_every_node_in_pages() {
    // Default Raft timing: an append of one large entry has a heartbeat interval (250 ms) to
    // reach a follower's disk, which a debug build needs.
    let c = Cluster::start(3, 1, norn_raft::RaftOptions::default()).await;
    let mut wf = norn_proto::WorkflowServiceClient::new(channel(&c.addr(1))).max_encoding_message_size(8 << 20);
    let run_id = wf.start_workflow_execution(start("big-history", 16)).await.expect("start").into_inner().run_id;
    // Four signals of 1.6 MiB: a history of about 6.4 MiB, over gRPC's 4 MiB default.
    for i in 0..4 {
        wf.signal_workflow_execution(SignalWorkflowExecutionRequest {
            namespace: "default".into(),
            workflow_execution: Some(WorkflowExecution { workflow_id: "big-history".into(), run_id: run_id.clone() }),
            signal_name: format!("s{i}"),
            input: payloads(1_600_000 + i),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("signal {i}: {e}\n{}", c.logs()));
    }
    for node in 1..=3 {
        // A client with gRPC's default 4 MiB receive limit, as the SDKs have.
        let mut client = norn_proto::WorkflowServiceClient::new(channel(&c.addr(node)));
        let (mut events, mut token, mut pages) = (Vec::new(), Vec::new(), 0);
        loop {
            let r = client
                .get_workflow_execution_history(GetWorkflowExecutionHistoryRequest {
                    namespace: "default".into(),
                    execution: Some(WorkflowExecution { workflow_id: "big-history".into(), run_id: run_id.clone() }),
                    next_page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("history page {pages} through node {node}: {e}"))
                .into_inner();
            pages += 1;
            events.extend(r.history.unwrap_or_default().events);
            token = r.next_page_token;
            if token.is_empty() {
                break;
            }
        }
        let ids: Vec<i64> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, (1..=6).collect::<Vec<i64>>(), "node {node}");
        let bytes: usize = events.iter().map(prost::Message::encoded_len).sum();
        assert!(bytes > 6 << 20, "{bytes}");
        assert!(pages >= 4, "node {node}: {pages} pages");
    }
}
