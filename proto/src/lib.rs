//! Temporal's `temporal.api.workflowservice.v1.WorkflowService`, generated at build time from the
//! descriptor set of the `temporalio-protos` crate, over that crate's message types.
//!
//! Why a crate of its own: the generated code is large and changes only with the
//! `temporalio-protos` version, so keeping it apart keeps `norn-node` rebuilds fast, and the
//! build script needs a direct dependency on `temporalio-protos` to see its descriptor path.
//!
//! Every RPC has a default implementation answering `Unimplemented`, so the server implements
//! only what Norn honours.

/// The generated service (server trait and client).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod workflowservice {
    tonic::include_proto!("temporal.api.workflowservice.v1");
}

pub use temporalio_protos as protos;
pub use workflowservice::workflow_service_client::WorkflowServiceClient;
pub use workflowservice::workflow_service_server::{WorkflowService, WorkflowServiceServer};
