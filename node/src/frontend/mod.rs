//! Temporal's `WorkflowService` on the client port. Every RPC not implemented here answers
//! `Unimplemented` (the generated default), so the SDKs see exactly what Norn honours; see
//! `docs/compatibility.md`.

mod children;
mod duties;
mod info;
mod namespaces;
mod queries;
mod updates;
mod visibility;
mod workflows;

pub use namespaces::{describe_response, ensure_default, lookup};

use norn_proto::protos::temporal::api::workflowservice::v1::get_system_info_response::Capabilities;
use norn_proto::protos::temporal::api::workflowservice::v1::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use norn_proto::{WorkflowService, WorkflowServiceClient};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::routing::Router;

/// The Temporal frontend of one node.
#[derive(Clone)]
pub struct Frontend {
    router: Router,
    /// Namespace name to id. Ids never change and namespaces are never deleted.
    ns_cache: Arc<Mutex<BTreeMap<String, String>>>,
    clients: Arc<Mutex<BTreeMap<String, WorkflowServiceClient<Channel>>>>,
    due: crate::history::watch::DueWatch,
    queries: queries::QueryWaiters,
    watch: crate::history::watch::RunWatch,
}

impl Frontend {
    /// A frontend that routes through `router`.
    pub fn new(router: Router, watch: crate::history::watch::RunWatch, due: crate::history::watch::DueWatch) -> Self {
        Self { router, ns_cache: Arc::default(), clients: Arc::default(), due, queries: Default::default(), watch }
    }

    fn workflow_client(&self, addr: &str) -> Result<WorkflowServiceClient<Channel>, Status> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let c = WorkflowServiceClient::new(self.router.channel(addr)?).max_decoding_message_size(128 << 20);
        clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// The version Norn reports as its server version.
pub const SERVER_VERSION: &str = concat!("norn-", env!("CARGO_PKG_VERSION"));

#[tonic::async_trait]
impl WorkflowService for Frontend {
    async fn get_system_info(
        &self,
        _request: Request<GetSystemInfoRequest>,
    ) -> Result<Response<GetSystemInfoResponse>, Status> {
        // Only what Norn really honours is advertised; everything else stays false.
        let capabilities = Capabilities {
            // Errors carry distinct codes (InvalidArgument, NotFound, ...) rather than Internal.
            internal_error_differentiation: true,
            // Headers of signals and queries reach the workflow.
            signal_and_query_header: true,
            // Failures are stored as sent, so encoded attributes survive.
            encoded_failure_attributes: true,
            // WorkflowTaskCompleted keeps the SDK's metadata (flags used on replay).
            sdk_metadata: true,
            count_group_by_execution_status: true,
            // RespondActivityTaskFailed's last heartbeat details reach the next attempt.
            activity_failure_include_heartbeat: true,
            upsert_memo: true,
            ..Default::default()
        };
        Ok(Response::new(GetSystemInfoResponse {
            server_version: SERVER_VERSION.into(),
            capabilities: Some(capabilities),
        }))
    }

    async fn register_namespace(
        &self,
        request: Request<RegisterNamespaceRequest>,
    ) -> Result<Response<RegisterNamespaceResponse>, Status> {
        namespaces::register(&self.router, request.into_inner()).await.map(Response::new)
    }

    async fn describe_namespace(
        &self,
        request: Request<DescribeNamespaceRequest>,
    ) -> Result<Response<DescribeNamespaceResponse>, Status> {
        namespaces::describe(&self.router, request.into_inner()).await.map(Response::new)
    }

    async fn list_namespaces(
        &self,
        request: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        namespaces::list(&self.router, request.into_inner()).await.map(Response::new)
    }

    async fn update_namespace(
        &self,
        request: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        namespaces::update(&self.router, request.into_inner()).await.map(Response::new)
    }

    async fn start_workflow_execution(
        &self,
        request: Request<StartWorkflowExecutionRequest>,
    ) -> Result<Response<StartWorkflowExecutionResponse>, Status> {
        self.start_workflow(request.into_inner()).await.map(Response::new)
    }

    async fn poll_workflow_task_queue(
        &self,
        request: Request<PollWorkflowTaskQueueRequest>,
    ) -> Result<Response<PollWorkflowTaskQueueResponse>, Status> {
        self.poll_workflow_task(request).await.map(Response::new)
    }

    async fn respond_workflow_task_completed(
        &self,
        request: Request<RespondWorkflowTaskCompletedRequest>,
    ) -> Result<Response<RespondWorkflowTaskCompletedResponse>, Status> {
        Frontend::respond_workflow_task_completed(self, request.into_inner()).await.map(Response::new)
    }

    async fn respond_workflow_task_failed(
        &self,
        request: Request<RespondWorkflowTaskFailedRequest>,
    ) -> Result<Response<RespondWorkflowTaskFailedResponse>, Status> {
        Frontend::respond_workflow_task_failed(self, request.into_inner()).await.map(Response::new)
    }

    async fn poll_activity_task_queue(
        &self,
        request: Request<PollActivityTaskQueueRequest>,
    ) -> Result<Response<PollActivityTaskQueueResponse>, Status> {
        self.poll_activity_task(request).await.map(Response::new)
    }

    async fn respond_activity_task_completed(
        &self,
        request: Request<RespondActivityTaskCompletedRequest>,
    ) -> Result<Response<RespondActivityTaskCompletedResponse>, Status> {
        self.respond_activity_completed(request.into_inner()).await.map(Response::new)
    }

    async fn respond_activity_task_failed(
        &self,
        request: Request<RespondActivityTaskFailedRequest>,
    ) -> Result<Response<RespondActivityTaskFailedResponse>, Status> {
        self.respond_activity_failed(request.into_inner()).await.map(Response::new)
    }

    async fn get_workflow_execution_history(
        &self,
        request: Request<GetWorkflowExecutionHistoryRequest>,
    ) -> Result<Response<GetWorkflowExecutionHistoryResponse>, Status> {
        self.get_history(request.into_inner()).await.map(Response::new)
    }

    async fn describe_workflow_execution(
        &self,
        request: Request<DescribeWorkflowExecutionRequest>,
    ) -> Result<Response<DescribeWorkflowExecutionResponse>, Status> {
        self.describe(request.into_inner()).await.map(Response::new)
    }

    async fn update_workflow_execution(
        &self,
        request: Request<UpdateWorkflowExecutionRequest>,
    ) -> Result<Response<UpdateWorkflowExecutionResponse>, Status> {
        self.update_workflow(request.into_inner()).await.map(Response::new)
    }

    async fn poll_workflow_execution_update(
        &self,
        request: Request<PollWorkflowExecutionUpdateRequest>,
    ) -> Result<Response<PollWorkflowExecutionUpdateResponse>, Status> {
        self.poll_update(request.into_inner()).await.map(Response::new)
    }

    async fn signal_workflow_execution(
        &self,
        request: Request<SignalWorkflowExecutionRequest>,
    ) -> Result<Response<SignalWorkflowExecutionResponse>, Status> {
        self.signal(request.into_inner()).await.map(Response::new)
    }

    async fn signal_with_start_workflow_execution(
        &self,
        request: Request<SignalWithStartWorkflowExecutionRequest>,
    ) -> Result<Response<SignalWithStartWorkflowExecutionResponse>, Status> {
        self.signal_with_start(request.into_inner()).await.map(Response::new)
    }

    async fn request_cancel_workflow_execution(
        &self,
        request: Request<RequestCancelWorkflowExecutionRequest>,
    ) -> Result<Response<RequestCancelWorkflowExecutionResponse>, Status> {
        self.request_cancel(request.into_inner()).await.map(Response::new)
    }

    async fn record_activity_task_heartbeat(
        &self,
        request: Request<RecordActivityTaskHeartbeatRequest>,
    ) -> Result<Response<RecordActivityTaskHeartbeatResponse>, Status> {
        self.record_heartbeat(request.into_inner()).await.map(Response::new)
    }

    async fn respond_activity_task_canceled(
        &self,
        request: Request<RespondActivityTaskCanceledRequest>,
    ) -> Result<Response<RespondActivityTaskCanceledResponse>, Status> {
        self.respond_activity_canceled(request.into_inner()).await.map(Response::new)
    }

    async fn delete_workflow_execution(
        &self,
        request: Request<DeleteWorkflowExecutionRequest>,
    ) -> Result<Response<DeleteWorkflowExecutionResponse>, Status> {
        self.delete_execution(request.into_inner()).await.map(Response::new)
    }

    async fn describe_task_queue(
        &self,
        request: Request<DescribeTaskQueueRequest>,
    ) -> Result<Response<DescribeTaskQueueResponse>, Status> {
        self.describe_task_queue(request).await.map(Response::new)
    }

    async fn get_cluster_info(
        &self,
        _request: Request<GetClusterInfoRequest>,
    ) -> Result<Response<GetClusterInfoResponse>, Status> {
        Ok(Response::new(self.cluster_info()))
    }

    async fn get_search_attributes(
        &self,
        _request: Request<GetSearchAttributesRequest>,
    ) -> Result<Response<GetSearchAttributesResponse>, Status> {
        Ok(Response::new(self.search_attributes()))
    }

    async fn query_workflow(
        &self,
        request: Request<QueryWorkflowRequest>,
    ) -> Result<Response<QueryWorkflowResponse>, Status> {
        self.query(request.into_inner()).await.map(Response::new)
    }

    async fn respond_query_task_completed(
        &self,
        request: Request<RespondQueryTaskCompletedRequest>,
    ) -> Result<Response<RespondQueryTaskCompletedResponse>, Status> {
        self.respond_query_completed(request.into_inner()).await.map(Response::new)
    }

    async fn list_workflow_executions(
        &self,
        request: Request<ListWorkflowExecutionsRequest>,
    ) -> Result<Response<ListWorkflowExecutionsResponse>, Status> {
        self.list(request.into_inner()).await.map(Response::new)
    }

    async fn count_workflow_executions(
        &self,
        request: Request<CountWorkflowExecutionsRequest>,
    ) -> Result<Response<CountWorkflowExecutionsResponse>, Status> {
        self.count(request.into_inner()).await.map(Response::new)
    }

    async fn terminate_workflow_execution(
        &self,
        request: Request<TerminateWorkflowExecutionRequest>,
    ) -> Result<Response<TerminateWorkflowExecutionResponse>, Status> {
        self.terminate(request.into_inner()).await.map(Response::new)
    }
}
