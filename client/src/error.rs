//! The one error type of the SDK.

use temporalio_protos::temporal::api::common::v1::Payloads;
use tonic::{Code, Status};

use crate::failure::Failure;
use crate::payload::PayloadError;

/// Everything a client call or a workflow result can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The workflow, run, namespace or task does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A workflow with this id is already running (or the reuse policy forbids a new run).
    #[error("workflow {workflow_id} already started (run {run_id})")]
    AlreadyStarted {
        /// The workflow id.
        workflow_id: String,
        /// The run that holds it.
        run_id: String,
    },
    /// The workflow ended with this failure.
    #[error("workflow failed: {0}")]
    WorkflowFailed(Box<Failure>),
    /// The workflow was canceled.
    #[error("workflow canceled")]
    WorkflowCanceled(Option<Payloads>),
    /// The workflow was terminated.
    #[error("workflow terminated: {0}")]
    WorkflowTerminated(String),
    /// The workflow hit its run or execution timeout.
    #[error("workflow timed out")]
    WorkflowTimedOut,
    /// A call's deadline passed before the server answered.
    #[error("timed out: {0}")]
    TimedOut(String),
    /// No node could serve the call, after retries. Safe to retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The server rejected the request as malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The workflow's state does not allow the call (for example a query on a closed workflow
    /// that the reject condition excludes, or a call the server has not enabled).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The update was rejected by the workflow's validator, or its handler failed.
    #[error("update failed: {0}")]
    UpdateFailed(Box<Failure>),
    /// The query handler failed or does not exist.
    #[error("query failed: {0}")]
    QueryFailed(String),
    /// A value did not convert to or from a payload.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// Any other gRPC status.
    #[error("rpc failed: {0}")]
    Rpc(Box<Status>),
}

impl Error {
    /// Whether a retry of the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::TimedOut(_))
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        match s.code() {
            Code::NotFound => Error::NotFound(s.message().to_string()),
            Code::AlreadyExists => already_started(&s).unwrap_or_else(|| Error::Rpc(Box::new(s))),
            Code::Unavailable => Error::Unavailable(s.message().to_string()),
            Code::DeadlineExceeded => Error::TimedOut(s.message().to_string()),
            _ if crate::client::client_timeout(&s) => Error::TimedOut(s.message().to_string()),
            _ if crate::client::connection_lost(&s) => Error::Unavailable(s.message().to_string()),
            Code::InvalidArgument => Error::InvalidArgument(s.message().to_string()),
            Code::FailedPrecondition => Error::FailedPrecondition(s.message().to_string()),
            _ => Error::Rpc(Box::new(s)),
        }
    }
}

/// Reads `WorkflowExecutionAlreadyStartedFailure` from a status's details.
fn already_started(s: &Status) -> Option<Error> {
    use prost::Message;
    use temporalio_protos::temporal::api::errordetails::v1::WorkflowExecutionAlreadyStartedFailure;
    let st = temporalio_protos::google::rpc::Status::decode(s.details()).ok()?;
    for d in st.details {
        if d.type_url.ends_with("WorkflowExecutionAlreadyStartedFailure") {
            let f = WorkflowExecutionAlreadyStartedFailure::decode(d.value.as_slice()).ok()?;
            return Some(Error::AlreadyStarted { workflow_id: String::new(), run_id: f.run_id });
        }
    }
    Some(Error::AlreadyStarted { workflow_id: String::new(), run_id: String::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_broke_under_a_call_is_retryable() {
        let broke = Error::from(Status::unknown("h2 protocol error: error reading a body from connection"));
        assert!(matches!(broke, Error::Unavailable(_)) && broke.is_retryable(), "{broke:?}");
        let other = Error::from(Status::unknown("the handler failed"));
        assert!(!other.is_retryable(), "{other:?}");
    }
}
