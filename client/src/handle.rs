//! A handle to one workflow: its result (following continued runs), signals, queries, cancel.

use serde::de::DeserializeOwned;
use serde::Serialize;
use temporalio_protos::temporal::api::history::v1::history_event::Attributes;
use temporalio_protos::temporal::api::history::v1::HistoryEvent;

use crate::client::{Client, UpdateHandle, UpdateWait, WorkflowDescription};
use crate::error::Error;
use crate::failure::Failure;
use crate::payload::{from_payloads, to_payloads};

/// A workflow, by id and (optionally) run.
#[derive(Clone, Debug)]
pub struct WorkflowHandle {
    client: Client,
    workflow_id: String,
    run_id: Option<String>,
    first_execution_run_id: Option<String>,
}

impl WorkflowHandle {
    pub(crate) fn new(
        client: Client,
        workflow_id: String,
        run_id: Option<String>,
        first_execution_run_id: Option<String>,
    ) -> Self {
        WorkflowHandle { client, workflow_id, run_id: run_id.filter(|r| !r.is_empty()), first_execution_run_id }
    }

    /// The workflow id.
    pub fn workflow_id(&self) -> &str {
        &self.workflow_id
    }

    /// The run this handle started at (`None`: the latest run).
    pub fn run_id(&self) -> Option<&str> {
        self.run_id.as_deref()
    }

    /// The run that started the chain, when this handle started it.
    pub fn first_execution_run_id(&self) -> Option<&str> {
        self.first_execution_run_id.as_deref()
    }

    /// Waits for the workflow's result, following continue-as-new, retries and cron runs to the
    /// run that finally closes.
    pub async fn result<T: DeserializeOwned + 'static>(&self) -> Result<T, Error> {
        let mut run_id = match &self.run_id {
            Some(r) => r.clone(),
            None => self.client.describe(&self.workflow_id, None).await?.info.execution.unwrap_or_default().run_id,
        };
        loop {
            let ev = self.client.close_event(&self.workflow_id, &run_id).await?;
            match close_outcome(&ev) {
                Outcome::Next(next) => run_id = next,
                Outcome::Done(r) => return r.and_then(|p| Ok(from_payloads(p.as_ref())?)),
            }
        }
    }

    /// Sends a signal with one argument.
    pub async fn signal<A: Serialize + 'static>(&self, signal: &str, arg: &A) -> Result<(), Error> {
        self.client.signal(&self.workflow_id, self.run_id.as_deref(), signal, arg).await
    }

    /// Runs a query with one argument (`()` for none) and decodes its answer.
    pub async fn query<A: Serialize + 'static, T: DeserializeOwned + 'static>(
        &self,
        query: &str,
        arg: &A,
    ) -> Result<T, Error> {
        let args = to_payloads(arg)?;
        let r = self.client.query_raw(&self.workflow_id, self.run_id.as_deref(), query, Some(args)).await?;
        Ok(from_payloads(r.as_ref())?)
    }

    /// Sends an update with one argument and waits for the handler's result.
    pub async fn update<A: Serialize + 'static, R: DeserializeOwned + 'static>(
        &self,
        name: &str,
        arg: &A,
    ) -> Result<R, Error> {
        let u = self
            .client
            .start_update(&self.workflow_id, self.run_id.as_deref(), name, arg, UpdateWait::Completed, None)
            .await?;
        u.result().await
    }

    /// Sends an update and returns once the workflow accepted it; `result()` on the handle waits
    /// for the outcome.
    pub async fn start_update<A: Serialize + 'static>(&self, name: &str, arg: &A) -> Result<UpdateHandle, Error> {
        self.client.start_update(&self.workflow_id, self.run_id.as_deref(), name, arg, UpdateWait::Accepted, None).await
    }

    /// Requests cancellation.
    pub async fn cancel(&self, reason: &str) -> Result<(), Error> {
        self.client.cancel(&self.workflow_id, self.run_id.as_deref(), reason).await
    }

    /// Terminates the run.
    pub async fn terminate(&self, reason: &str) -> Result<(), Error> {
        self.client.terminate(&self.workflow_id, self.run_id.as_deref(), reason).await
    }

    /// Describes the run.
    pub async fn describe(&self) -> Result<WorkflowDescription, Error> {
        self.client.describe(&self.workflow_id, self.run_id.as_deref()).await
    }

    /// The run's whole history as it is now.
    pub async fn history(&self) -> Result<Vec<HistoryEvent>, Error> {
        self.client.fetch_history(&self.workflow_id, self.run_id.as_deref()).await
    }
}

enum Outcome {
    Next(String),
    Done(Result<Option<temporalio_protos::temporal::api::common::v1::Payloads>, Error>),
}

fn close_outcome(ev: &HistoryEvent) -> Outcome {
    let next = |r: &str| (!r.is_empty()).then(|| r.to_string());
    match &ev.attributes {
        Some(Attributes::WorkflowExecutionCompletedEventAttributes(a)) => match next(&a.new_execution_run_id) {
            Some(r) => Outcome::Next(r),
            None => Outcome::Done(Ok(a.result.clone())),
        },
        Some(Attributes::WorkflowExecutionFailedEventAttributes(a)) => match next(&a.new_execution_run_id) {
            Some(r) => Outcome::Next(r),
            None => Outcome::Done(Err(Error::WorkflowFailed(Box::new(
                a.failure.as_ref().map(Failure::from_proto).unwrap_or_else(|| Failure::application("", "")),
            )))),
        },
        Some(Attributes::WorkflowExecutionTimedOutEventAttributes(a)) => match next(&a.new_execution_run_id) {
            Some(r) => Outcome::Next(r),
            None => Outcome::Done(Err(Error::WorkflowTimedOut)),
        },
        Some(Attributes::WorkflowExecutionContinuedAsNewEventAttributes(a)) => {
            Outcome::Next(a.new_execution_run_id.clone())
        }
        Some(Attributes::WorkflowExecutionCanceledEventAttributes(a)) => {
            Outcome::Done(Err(Error::WorkflowCanceled(a.details.clone())))
        }
        Some(Attributes::WorkflowExecutionTerminatedEventAttributes(a)) => {
            Outcome::Done(Err(Error::WorkflowTerminated(a.reason.clone())))
        }
        _ => Outcome::Done(Err(Error::InvalidArgument(format!(
            "event {} is not a close event (type {})",
            ev.event_id, ev.event_type
        )))),
    }
}
