//! Temporal's failure format (`temporal.api.failure.v1.Failure`) as a Rust value.
//!
//! Failures cross languages: a Python activity's `ApplicationError("boom", type="Bad")` arrives
//! here as [`FailureKind::Application`] with `error_type == "Bad"`, and an
//! [`ApplicationError`] returned by a Rust activity reaches a Python workflow as an
//! `ApplicationError` with the same type, message, details and `non_retryable` flag.

use serde::Serialize;
use temporalio_protos::temporal::api::common::v1::{ActivityType, Payloads, WorkflowExecution, WorkflowType};
use temporalio_protos::temporal::api::enums::v1::{RetryState, TimeoutType};
use temporalio_protos::temporal::api::failure::v1 as pf;
use temporalio_protos::temporal::api::failure::v1::failure::FailureInfo;

use crate::payload::{to_payloads, PayloadError};

/// The `source` this SDK writes into failures it creates.
pub const SOURCE: &str = "NornRustSDK";

/// A failure, with its cause chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// Human-readable message.
    pub message: String,
    /// What failed.
    pub kind: FailureKind,
    /// The stack trace or backtrace, if the source recorded one.
    pub stack_trace: String,
    /// The SDK that created it (`"PythonSDK"`, `"NornRustSDK"`, ...).
    pub source: String,
    /// The failure that caused this one.
    pub cause: Option<Box<Failure>>,
}

/// The kinds of failure Temporal distinguishes.
#[derive(Clone, Debug, PartialEq)]
pub enum FailureKind {
    /// Raised by user code.
    Application {
        /// The error type (a class name in Python, any string here).
        error_type: String,
        /// The server does not retry it.
        non_retryable: bool,
        /// Extra values.
        details: Option<Payloads>,
    },
    /// A timeout fired.
    Timeout {
        /// Which one (start-to-close, heartbeat, ...).
        timeout_type: TimeoutType,
        /// Details of the last heartbeat, for activities.
        last_heartbeat_details: Option<Payloads>,
    },
    /// Canceled on request.
    Canceled {
        /// Extra values.
        details: Option<Payloads>,
    },
    /// Terminated by an operator.
    Terminated,
    /// Made by the server.
    Server {
        /// Not to be retried.
        non_retryable: bool,
    },
    /// An activity failed; `cause` says how.
    Activity {
        /// The activity's type.
        activity_type: String,
        /// The activity's id.
        activity_id: String,
        /// Why retries stopped.
        retry_state: RetryState,
    },
    /// A child workflow failed; `cause` says how.
    ChildWorkflow {
        /// The child's workflow id.
        workflow_id: String,
        /// The child's run id.
        run_id: String,
        /// The child's workflow type.
        workflow_type: String,
        /// Why retries stopped.
        retry_state: RetryState,
    },
    /// A kind this SDK does not model (Nexus, reset).
    Other,
}

impl Failure {
    /// An application failure with this message and error type.
    pub fn application(message: impl Into<String>, error_type: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            kind: FailureKind::Application { error_type: error_type.into(), non_retryable: false, details: None },
            stack_trace: String::new(),
            source: SOURCE.into(),
            cause: None,
        }
    }

    /// A cancellation failure.
    pub fn canceled(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            kind: FailureKind::Canceled { details: None },
            stack_trace: String::new(),
            source: SOURCE.into(),
            cause: None,
        }
    }

    /// The deepest cause (this failure when it has none).
    pub fn root_cause(&self) -> &Failure {
        let mut f = self;
        while let Some(c) = &f.cause {
            f = c;
        }
        f
    }

    /// The application error type of this failure or of the first cause that has one.
    pub fn application_type(&self) -> Option<&str> {
        let mut f = Some(self);
        while let Some(x) = f {
            if let FailureKind::Application { error_type, .. } = &x.kind {
                return Some(error_type);
            }
            f = x.cause.as_deref();
        }
        None
    }

    /// Whether this failure or one of its causes is a cancellation.
    pub fn is_canceled(&self) -> bool {
        let mut f = Some(self);
        while let Some(x) = f {
            if matches!(x.kind, FailureKind::Canceled { .. }) {
                return true;
            }
            f = x.cause.as_deref();
        }
        false
    }

    /// Converts from the wire form.
    pub fn from_proto(p: &pf::Failure) -> Failure {
        let kind = match &p.failure_info {
            Some(FailureInfo::ApplicationFailureInfo(a)) => FailureKind::Application {
                error_type: a.r#type.clone(),
                non_retryable: a.non_retryable,
                details: a.details.clone(),
            },
            Some(FailureInfo::TimeoutFailureInfo(t)) => FailureKind::Timeout {
                timeout_type: TimeoutType::try_from(t.timeout_type).unwrap_or(TimeoutType::Unspecified),
                last_heartbeat_details: t.last_heartbeat_details.clone(),
            },
            Some(FailureInfo::CanceledFailureInfo(c)) => FailureKind::Canceled { details: c.details.clone() },
            Some(FailureInfo::TerminatedFailureInfo(_)) => FailureKind::Terminated,
            Some(FailureInfo::ServerFailureInfo(s)) => FailureKind::Server { non_retryable: s.non_retryable },
            Some(FailureInfo::ActivityFailureInfo(a)) => FailureKind::Activity {
                activity_type: a.activity_type.as_ref().map(|t| t.name.clone()).unwrap_or_default(),
                activity_id: a.activity_id.clone(),
                retry_state: RetryState::try_from(a.retry_state).unwrap_or(RetryState::Unspecified),
            },
            Some(FailureInfo::ChildWorkflowExecutionFailureInfo(c)) => FailureKind::ChildWorkflow {
                workflow_id: c.workflow_execution.as_ref().map(|e| e.workflow_id.clone()).unwrap_or_default(),
                run_id: c.workflow_execution.as_ref().map(|e| e.run_id.clone()).unwrap_or_default(),
                workflow_type: c.workflow_type.as_ref().map(|t| t.name.clone()).unwrap_or_default(),
                retry_state: RetryState::try_from(c.retry_state).unwrap_or(RetryState::Unspecified),
            },
            _ => FailureKind::Other,
        };
        Failure {
            message: p.message.clone(),
            kind,
            stack_trace: p.stack_trace.clone(),
            source: p.source.clone(),
            cause: p.cause.as_deref().map(|c| Box::new(Failure::from_proto(c))),
        }
    }

    /// Converts to the wire form.
    pub fn to_proto(&self) -> pf::Failure {
        let info = match &self.kind {
            FailureKind::Application { error_type, non_retryable, details } => {
                Some(FailureInfo::ApplicationFailureInfo(pf::ApplicationFailureInfo {
                    r#type: error_type.clone(),
                    non_retryable: *non_retryable,
                    details: details.clone(),
                    ..Default::default()
                }))
            }
            FailureKind::Timeout { timeout_type, last_heartbeat_details } => {
                Some(FailureInfo::TimeoutFailureInfo(pf::TimeoutFailureInfo {
                    timeout_type: *timeout_type as i32,
                    last_heartbeat_details: last_heartbeat_details.clone(),
                }))
            }
            FailureKind::Canceled { details } => Some(FailureInfo::CanceledFailureInfo(pf::CanceledFailureInfo {
                details: details.clone(),
                ..Default::default()
            })),
            FailureKind::Terminated => Some(FailureInfo::TerminatedFailureInfo(pf::TerminatedFailureInfo::default())),
            FailureKind::Server { non_retryable } => {
                Some(FailureInfo::ServerFailureInfo(pf::ServerFailureInfo { non_retryable: *non_retryable }))
            }
            FailureKind::Activity { activity_type, activity_id, retry_state } => {
                Some(FailureInfo::ActivityFailureInfo(pf::ActivityFailureInfo {
                    activity_type: Some(ActivityType { name: activity_type.clone() }),
                    activity_id: activity_id.clone(),
                    retry_state: *retry_state as i32,
                    ..Default::default()
                }))
            }
            FailureKind::ChildWorkflow { workflow_id, run_id, workflow_type, retry_state } => {
                Some(FailureInfo::ChildWorkflowExecutionFailureInfo(pf::ChildWorkflowExecutionFailureInfo {
                    workflow_execution: Some(WorkflowExecution {
                        workflow_id: workflow_id.clone(),
                        run_id: run_id.clone(),
                    }),
                    workflow_type: Some(WorkflowType { name: workflow_type.clone() }),
                    retry_state: *retry_state as i32,
                    ..Default::default()
                }))
            }
            FailureKind::Other => None,
        };
        pf::Failure {
            message: self.message.clone(),
            source: if self.source.is_empty() { SOURCE.into() } else { self.source.clone() },
            stack_trace: self.stack_trace.clone(),
            cause: self.cause.as_ref().map(|c| Box::new(c.to_proto())),
            failure_info: info,
            ..Default::default()
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            FailureKind::Application { error_type, .. } if !error_type.is_empty() => {
                write!(f, "{error_type}: {}", self.message)?
            }
            FailureKind::Timeout { timeout_type, .. } => {
                write!(f, "timeout ({}): {}", timeout_type.as_str_name(), self.message)?
            }
            FailureKind::Canceled { .. } => write!(f, "canceled: {}", self.message)?,
            FailureKind::Terminated => write!(f, "terminated: {}", self.message)?,
            FailureKind::Activity { activity_type, activity_id, .. } => {
                write!(f, "activity {activity_type} ({activity_id}) failed: {}", self.message)?
            }
            FailureKind::ChildWorkflow { workflow_id, workflow_type, .. } => {
                write!(f, "child workflow {workflow_type} ({workflow_id}) failed: {}", self.message)?
            }
            _ => write!(f, "{}", self.message)?,
        }
        if let Some(c) = &self.cause {
            write!(f, "; caused by {c}")?;
        }
        Ok(())
    }
}

/// The error an activity or workflow returns to fail with an application failure.
///
/// Any `std::error::Error` converts into it (its `Display` is the message, its type name the
/// error type), so `?` works in activity and workflow code.
#[derive(Clone, Debug, PartialEq)]
pub struct ApplicationError(pub Box<Failure>);

impl ApplicationError {
    /// A retryable application error.
    pub fn new(message: impl Into<String>, error_type: impl Into<String>) -> ApplicationError {
        ApplicationError(Box::new(Failure::application(message, error_type)))
    }

    /// A non-retryable application error: the server stops retrying at once.
    pub fn non_retryable(message: impl Into<String>, error_type: impl Into<String>) -> ApplicationError {
        let mut f = Failure::application(message, error_type);
        if let FailureKind::Application { non_retryable, .. } = &mut f.kind {
            *non_retryable = true;
        }
        ApplicationError(Box::new(f))
    }

    /// Attaches details (encoded with the default converter).
    pub fn with_details<T: Serialize + 'static>(mut self, details: &T) -> Result<ApplicationError, PayloadError> {
        let p = to_payloads(details)?;
        if let FailureKind::Application { details, .. } = &mut self.0.kind {
            *details = Some(p);
        }
        Ok(self)
    }

    /// The failure it carries.
    pub fn failure(&self) -> &Failure {
        &self.0
    }
}

impl<E: std::error::Error> From<E> for ApplicationError {
    fn from(e: E) -> ApplicationError {
        let full = std::any::type_name::<E>();
        let short = full.rsplit("::").next().unwrap_or(full);
        ApplicationError(Box::new(Failure::application(e.to_string(), short)))
    }
}

impl From<Failure> for ApplicationError {
    fn from(f: Failure) -> ApplicationError {
        ApplicationError(Box::new(f))
    }
}

impl std::fmt::Display for ApplicationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_wire_form_with_causes() {
        let mut outer = Failure {
            message: "activity failed".into(),
            kind: FailureKind::Activity {
                activity_type: "charge".into(),
                activity_id: "3".into(),
                retry_state: RetryState::MaximumAttemptsReached,
            },
            stack_trace: String::new(),
            source: SOURCE.into(),
            cause: None,
        };
        let inner = ApplicationError::non_retryable("card declined", "CardError").with_details(&"visa").unwrap();
        outer.cause = Some(inner.0.clone());
        let back = Failure::from_proto(&outer.to_proto());
        assert_eq!(back, outer);
        assert_eq!(back.application_type(), Some("CardError"));
        assert_eq!(back.root_cause().message, "card declined");
        assert_eq!(back.to_string(), "activity charge (3) failed: activity failed; caused by CardError: card declined");
    }

    #[test]
    fn std_errors_become_application_errors_named_by_type() {
        let e: ApplicationError = "x".parse::<u32>().unwrap_err().into();
        assert_eq!(e.0.application_type(), Some("ParseIntError"));
        assert!(!e.0.is_canceled());
        assert!(Failure::canceled("stop").is_canceled());
    }
}
