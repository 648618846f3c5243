//! Temporal's `WorkflowService` on the client port. Every RPC not implemented here answers
//! `Unimplemented` (the generated default), so the SDKs see exactly what Norn honours; see
//! `docs/compatibility.md`.

mod namespaces;

pub use namespaces::{describe_response, ensure_default, lookup};

use norn_proto::protos::temporal::api::workflowservice::v1::get_system_info_response::Capabilities;
use norn_proto::protos::temporal::api::workflowservice::v1::*;
use norn_proto::WorkflowService;
use tonic::{Request, Response, Status};

use crate::admin::AdminService;

/// The Temporal frontend of one node.
#[derive(Clone)]
pub struct Frontend {
    admin: AdminService,
}

impl Frontend {
    /// A frontend that routes through `admin`.
    pub fn new(admin: AdminService) -> Self {
        Self { admin }
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
        namespaces::register(&self.admin, request.into_inner()).await.map(Response::new)
    }

    async fn describe_namespace(
        &self,
        request: Request<DescribeNamespaceRequest>,
    ) -> Result<Response<DescribeNamespaceResponse>, Status> {
        namespaces::describe(&self.admin, request.into_inner()).await.map(Response::new)
    }

    async fn list_namespaces(
        &self,
        request: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        namespaces::list(&self.admin, request.into_inner()).await.map(Response::new)
    }

    async fn update_namespace(
        &self,
        request: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        namespaces::update(&self.admin, request.into_inner()).await.map(Response::new)
    }
}
