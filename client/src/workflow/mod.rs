//! Workflows as `async fn`: the context they run with, and the deterministic machine that runs
//! them from history.
//!
//! A workflow is an `async fn(WfContext, Input) -> WfResult<Output>`. It must be deterministic:
//! everything it does that touches the outside world goes through the context (activities,
//! timers, child workflows, signals, `now()`, random numbers, side effects), because on every
//! workflow task the worker runs it again from the start against the recorded history and checks
//! that it issues the same commands. A mismatch is a non-determinism error naming the event and
//! the command that disagree.

mod context;
pub(crate) mod machine;

pub use context::{
    ActivityFuture, ActivityOptions, CancelToken, ChildFuture, ChildOptions, ErrGroup, JoinHandle, SignalChannel,
    TimerFuture, WaitGroup, WfContext, WorkflowInfo,
};
pub use machine::{Nondeterminism, RunOutcome, WorkflowMachine};

use crate::failure::{ApplicationError, Failure};
use crate::payload::PayloadError;
use temporalio_protos::temporal::api::command::v1::ContinueAsNewWorkflowExecutionCommandAttributes;

/// What a workflow (or an await inside one) ends with when it does not succeed.
#[derive(Clone, Debug)]
pub enum WfError {
    /// Fail with this failure (an application error, or an activity's or child's failure).
    Failure(Box<Failure>),
    /// Canceled: the workflow was asked to cancel, or a scope was canceled.
    Canceled,
    /// End this run and start a new one (made by [`WfContext::continue_as_new`]).
    ContinueAsNew(Box<ContinueAsNewWorkflowExecutionCommandAttributes>),
}

impl WfError {
    /// The failure, when it is one.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            WfError::Failure(f) => Some(f),
            _ => None,
        }
    }

    /// Whether this is a cancellation (directly or as the cause of a failure).
    pub fn is_canceled(&self) -> bool {
        match self {
            WfError::Canceled => true,
            WfError::Failure(f) => f.is_canceled(),
            WfError::ContinueAsNew(_) => false,
        }
    }
}

impl std::fmt::Display for WfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WfError::Failure(x) => x.fmt(f),
            WfError::Canceled => f.write_str("canceled"),
            WfError::ContinueAsNew(_) => f.write_str("continue as new"),
        }
    }
}

impl From<ApplicationError> for WfError {
    fn from(e: ApplicationError) -> WfError {
        WfError::Failure(e.0)
    }
}

impl From<Failure> for WfError {
    fn from(f: Failure) -> WfError {
        WfError::Failure(Box::new(f))
    }
}

impl From<PayloadError> for WfError {
    fn from(e: PayloadError) -> WfError {
        WfError::Failure(Box::new(Failure::application(e.to_string(), "PayloadError")))
    }
}

/// The result of a workflow or of an await inside one.
pub type WfResult<T> = Result<T, WfError>;
