//! Hostile and careless input on real `norn` processes: nothing a client or a stranger sends
//! crashes, wedges or writes through a node.

mod common;

use std::time::Duration;

use common::{fast_raft, Cluster};
use norn_proto::internal::internal_client::InternalClient;
use norn_proto::internal::ProposeRequest;
use norn_proto::protos::temporal::api::workflowservice::v1::{
    CountWorkflowExecutionsRequest, DescribeNamespaceRequest, ListWorkflowExecutionsRequest,
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
