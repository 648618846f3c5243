//! Temporal's `WorkflowService` on the client port. Every RPC not implemented here answers
//! `Unimplemented` (the generated default), so the SDKs see exactly what Norn honours; see
//! `docs/compatibility.md`.

mod checks;
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

/// A namespace's id and limits, and when they were read.
type CachedNamespace = (String, crate::limits::Limits, tokio::time::Instant);

/// The Temporal frontend of one node.
#[derive(Clone)]
pub struct Frontend {
    router: Router,
    /// Namespace name to id and limits, with when they were read.
    ns_cache: Arc<Mutex<BTreeMap<String, CachedNamespace>>>,
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

/// Decodes a task token as a node does (for the fuzzing harness).
pub fn check_task_token(bytes: &[u8]) -> Result<(), Status> {
    workflows::check_token(bytes)
}

/// A valid workflow task token (a seed for the fuzzing harness).
pub fn sample_task_token() -> Vec<u8> {
    workflows::sample_token()
}

/// Decodes `body` as one of the WorkflowService request types (chosen by `which`) and checks it
/// against `limits` as the frontend does before proposing (for the fuzzing harness).
pub fn check_request_bytes(which: u8, body: &[u8], limits: &crate::limits::Limits) {
    use checks::Check;
    use prost::Message;
    fn one<R: Message + Default + Check>(body: &[u8], limits: &crate::limits::Limits) {
        if let Ok(r) = R::decode(body) {
            let _ = r.namespace();
            let _ = r.check(limits);
        }
    }
    match which % 20 {
        0 => one::<StartWorkflowExecutionRequest>(body, limits),
        1 => one::<SignalWithStartWorkflowExecutionRequest>(body, limits),
        2 => one::<SignalWorkflowExecutionRequest>(body, limits),
        3 => one::<RequestCancelWorkflowExecutionRequest>(body, limits),
        4 => one::<TerminateWorkflowExecutionRequest>(body, limits),
        5 => one::<DeleteWorkflowExecutionRequest>(body, limits),
        6 => one::<DescribeWorkflowExecutionRequest>(body, limits),
        7 => one::<GetWorkflowExecutionHistoryRequest>(body, limits),
        8 => one::<QueryWorkflowRequest>(body, limits),
        9 => one::<UpdateWorkflowExecutionRequest>(body, limits),
        10 => one::<PollWorkflowExecutionUpdateRequest>(body, limits),
        11 => one::<PollWorkflowTaskQueueRequest>(body, limits),
        12 => one::<PollActivityTaskQueueRequest>(body, limits),
        13 => one::<RespondWorkflowTaskCompletedRequest>(body, limits),
        14 => one::<RespondWorkflowTaskFailedRequest>(body, limits),
        15 => one::<RespondActivityTaskFailedRequest>(body, limits),
        16 => one::<RespondActivityTaskCanceledRequest>(body, limits),
        17 => one::<RecordActivityTaskHeartbeatRequest>(body, limits),
        18 => one::<RespondQueryTaskCompletedRequest>(body, limits),
        _ => {
            if let Ok(r) = RespondActivityTaskCompletedRequest::decode(body) {
                let _ = checks::oversized_result(limits, &r);
            }
        }
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
        let req = request.into_inner();
        let name = req.namespace.clone();
        let out = namespaces::update(&self.router, req).await;
        // This node sees its own change at once; the others within their cache's refresh.
        self.ns_cache.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        out.map(Response::new)
    }

    async fn start_workflow_execution(
        &self,
        request: Request<StartWorkflowExecutionRequest>,
    ) -> Result<Response<StartWorkflowExecutionResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.start_workflow(req).await.map(Response::new)
        }
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
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            Frontend::respond_workflow_task_failed(self, req).await.map(Response::new)
        }
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
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.respond_activity_failed(req).await.map(Response::new)
        }
    }

    async fn get_workflow_execution_history(
        &self,
        request: Request<GetWorkflowExecutionHistoryRequest>,
    ) -> Result<Response<GetWorkflowExecutionHistoryResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.get_history(req).await.map(Response::new)
        }
    }

    async fn describe_workflow_execution(
        &self,
        request: Request<DescribeWorkflowExecutionRequest>,
    ) -> Result<Response<DescribeWorkflowExecutionResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.describe(req).await.map(Response::new)
        }
    }

    async fn update_workflow_execution(
        &self,
        request: Request<UpdateWorkflowExecutionRequest>,
    ) -> Result<Response<UpdateWorkflowExecutionResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.update_workflow(req).await.map(Response::new)
        }
    }

    async fn poll_workflow_execution_update(
        &self,
        request: Request<PollWorkflowExecutionUpdateRequest>,
    ) -> Result<Response<PollWorkflowExecutionUpdateResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.poll_update(req).await.map(Response::new)
        }
    }

    async fn signal_workflow_execution(
        &self,
        request: Request<SignalWorkflowExecutionRequest>,
    ) -> Result<Response<SignalWorkflowExecutionResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.signal(req).await.map(Response::new)
        }
    }

    async fn signal_with_start_workflow_execution(
        &self,
        request: Request<SignalWithStartWorkflowExecutionRequest>,
    ) -> Result<Response<SignalWithStartWorkflowExecutionResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.signal_with_start(req).await.map(Response::new)
        }
    }

    async fn request_cancel_workflow_execution(
        &self,
        request: Request<RequestCancelWorkflowExecutionRequest>,
    ) -> Result<Response<RequestCancelWorkflowExecutionResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.request_cancel(req).await.map(Response::new)
        }
    }

    async fn record_activity_task_heartbeat(
        &self,
        request: Request<RecordActivityTaskHeartbeatRequest>,
    ) -> Result<Response<RecordActivityTaskHeartbeatResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.record_heartbeat(req).await.map(Response::new)
        }
    }

    async fn respond_activity_task_canceled(
        &self,
        request: Request<RespondActivityTaskCanceledRequest>,
    ) -> Result<Response<RespondActivityTaskCanceledResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.respond_activity_canceled(req).await.map(Response::new)
        }
    }

    async fn delete_workflow_execution(
        &self,
        request: Request<DeleteWorkflowExecutionRequest>,
    ) -> Result<Response<DeleteWorkflowExecutionResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.delete_execution(req).await.map(Response::new)
        }
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
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.query(req).await.map(Response::new)
        }
    }

    async fn respond_query_task_completed(
        &self,
        request: Request<RespondQueryTaskCompletedRequest>,
    ) -> Result<Response<RespondQueryTaskCompletedResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.respond_query_completed(req).await.map(Response::new)
        }
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

    async fn reset_sticky_task_queue(
        &self,
        request: Request<ResetStickyTaskQueueRequest>,
    ) -> Result<Response<ResetStickyTaskQueueResponse>, Status> {
        let req = request.into_inner();
        self.checked(&req).await?;
        self.reset_sticky(req).await.map(Response::new)
    }

    async fn terminate_workflow_execution(
        &self,
        request: Request<TerminateWorkflowExecutionRequest>,
    ) -> Result<Response<TerminateWorkflowExecutionResponse>, Status> {
        {
            let req = request.into_inner();
            self.checked(&req).await?;
            self.terminate(req).await.map(Response::new)
        }
    }
}
