//! Child workflows across shards. The parent's shard records the initiation; the node that
//! proposed it starts the child in the child's shard (idempotent: the start request id is derived
//! from the parent run and the initiation) and records the start back in the parent. When a child
//! closes, its shard keeps a `tell/` entry until the parent has recorded the close. Leader sweeps
//! retry both, so a crash between the steps delays them but loses nothing.

use norn_proto::protos::temporal::api::enums::v1::{EventType, ParentClosePolicy};
use norn_proto::protos::temporal::api::history::v1::history_event::Attributes as Ev;

use norn_proto::protos::temporal::api::workflowservice::v1::StartWorkflowExecutionRequest;
use prost::Message;
use tonic::Status;

use super::Frontend;
use crate::history::engine::EngineError;
use crate::history::state::{ChildOutcome, ParentRef, RunStatus};
use crate::history::store::{RunKey, WorkflowCommand, WorkflowResult};

impl Frontend {
    /// Starts the child initiated at `initiated_id` by `parent` and records the outcome there.
    pub(super) async fn start_child(&self, shard: u32, parent: RunKey, initiated_id: i64) {
        if let Err(e) = self.try_start_child(shard, &parent, initiated_id).await {
            tracing::debug!(shard, run = %parent.run_id, initiated_id, error = %e, "child start not done; the sweep retries");
        }
    }

    async fn try_start_child(&self, shard: u32, parent: &RunKey, initiated_id: i64) -> Result<(), Status> {
        let run = self.read_run(shard, parent).await?;
        let Some(child) = run.children.get(&initiated_id).filter(|c| c.run_id.is_none() && !c.closed) else {
            return Ok(());
        };
        let req = StartWorkflowExecutionRequest::decode(child.request.as_slice())
            .map_err(|e| Status::internal(format!("corrupt child request: {e}")))?;
        let child_shard = self.run_shard(&parent.namespace_id, &child.workflow_id);
        let cmd = WorkflowCommand::StartChild {
            namespace_id: parent.namespace_id.clone(),
            run_id: super::workflows::new_uuid(),
            request: child.request.clone(),
            parent: ParentRef {
                namespace_id: parent.namespace_id.clone(),
                namespace: req.namespace.clone(),
                workflow_id: parent.workflow_id.clone(),
                run_id: parent.run_id.clone(),
                initiated_id,
            },
        };
        let started = match self.propose(child_shard, cmd).await? {
            WorkflowResult::Applied { run, effects, .. } => {
                self.run_effects(child_shard, &run, effects);
                Some(run.run_id)
            }
            WorkflowResult::Deduplicated { run_id } => Some(run_id),
            WorkflowResult::AlreadyStarted { .. } => None,
            WorkflowResult::Rejected(e) => {
                tracing::warn!(child = %child.workflow_id, error = %e, "child start refused; the parent records a failed start");
                None
            }
            other => return Err(Status::internal(format!("unexpected result {other:?}"))),
        };
        let cmd = match started {
            Some(child_run_id) => WorkflowCommand::ChildStarted { run: parent.clone(), initiated_id, child_run_id },
            None => WorkflowCommand::ChildStartFailed { run: parent.clone(), initiated_id },
        };
        self.apply(shard, cmd).await.map(|_| ())
    }

    /// Delivers the signal or cancel request initiated at `initiated_id` by `source` and records
    /// the outcome there.
    pub(super) async fn deliver_external(&self, shard: u32, source: RunKey, initiated_id: i64) {
        if let Err(e) = self.try_deliver_external(shard, &source, initiated_id).await {
            tracing::debug!(shard, run = %source.run_id, initiated_id, error = %e, "external request not delivered yet; the sweep retries");
        }
    }

    async fn try_deliver_external(&self, shard: u32, source: &RunKey, initiated_id: i64) -> Result<(), Status> {
        let run = self.read_run(shard, source).await?;
        let Some(x) = run.externals.get(&initiated_id).filter(|x| !x.done).cloned() else { return Ok(()) };
        let target = RunKey {
            namespace_id: source.namespace_id.clone(),
            workflow_id: x.workflow_id.clone(),
            run_id: x.run_id.clone(),
        };
        let target_shard = self.run_shard(&target.namespace_id, &target.workflow_id);
        let cmd = if x.signal.is_empty() {
            WorkflowCommand::RequestCancel {
                run: target,
                reason: format!("requested by workflow {}", source.workflow_id),
                identity: String::new(),
            }
        } else {
            let signals_max = self.cached_limits(&source.namespace_id).signals_per_run_max;
            WorkflowCommand::Signal { run: target, attributes: x.signal.clone(), signals_max }
        };
        let delivered = match self.apply(target_shard, cmd).await {
            Ok(_) => true,
            // Not there, or over its signal limit: the signal fails (as on Temporal).
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::FailedPrecondition) => false,
            Err(s) => return Err(s),
        };
        self.apply(shard, WorkflowCommand::ExternalDone { run: source.clone(), initiated_id, delivered })
            .await
            .map(|_| ())
    }

    /// Records the close of the child run `child` in its parent, then drops the reminder.
    pub(super) async fn tell_parent(&self, shard: u32, child: RunKey) {
        if let Err(e) = self.try_tell_parent(shard, &child).await {
            tracing::debug!(shard, run = %child.run_id, error = %e, "parent not told yet; the sweep retries");
        }
    }

    async fn try_tell_parent(&self, shard: u32, child: &RunKey) -> Result<(), Status> {
        let run = match self.read_run(shard, child).await {
            Ok(r) => r,
            Err(s) if s.code() == tonic::Code::NotFound => {
                return self.drop_reminder(shard, child).await;
            }
            Err(s) => return Err(s),
        };
        let Some(parent) = run.parent.clone() else { return self.drop_reminder(shard, child).await };
        let event = self
            .router
            .read_event(shard, &run.run_id, run.next_event_id - 1)
            .await?
            .ok_or_else(|| Status::internal("the child's close event is missing"))?;
        let outcome = match (run.status, event.attributes) {
            (RunStatus::Completed, Some(Ev::WorkflowExecutionCompletedEventAttributes(a))) => {
                ChildOutcome::Completed(a.result.map(|r| r.encode_to_vec()).unwrap_or_default())
            }
            (RunStatus::Failed, Some(Ev::WorkflowExecutionFailedEventAttributes(a))) => {
                ChildOutcome::Failed(a.failure.map(|f| f.encode_to_vec()).unwrap_or_default())
            }
            (RunStatus::Canceled, Some(Ev::WorkflowExecutionCanceledEventAttributes(a))) => {
                ChildOutcome::Canceled(a.details.map(|d| d.encode_to_vec()).unwrap_or_default())
            }
            (RunStatus::Terminated, _) => ChildOutcome::Terminated,
            (RunStatus::TimedOut, _) => ChildOutcome::TimedOut,
            (status, _) => {
                return Err(Status::internal(format!(
                    "child run {} is {status:?} with last event {:?}",
                    run.run_id,
                    EventType::try_from(event.event_type)
                )))
            }
        };
        let parent_key = RunKey {
            namespace_id: parent.namespace_id.clone(),
            workflow_id: parent.workflow_id.clone(),
            run_id: parent.run_id.clone(),
        };
        let parent_shard = self.run_shard(&parent.namespace_id, &parent.workflow_id);
        let cmd = WorkflowCommand::ChildClosed {
            run: parent_key,
            initiated_id: parent.initiated_id,
            child_run_id: run.first_run_id.clone(),
            outcome,
        };
        match self.propose(parent_shard, cmd).await? {
            WorkflowResult::Applied { run: p, effects, .. } => self.run_effects(parent_shard, &p, effects),
            // The parent closed, or recorded this already: nothing more to tell.
            WorkflowResult::Rejected(EngineError::NotFound(_)) => {}
            WorkflowResult::Rejected(e) => return Err(Status::failed_precondition(e.to_string())),
            other => return Err(Status::internal(format!("unexpected result {other:?}"))),
        }
        self.drop_reminder(shard, child).await
    }

    async fn drop_reminder(&self, shard: u32, child: &RunKey) -> Result<(), Status> {
        self.propose(shard, WorkflowCommand::ParentTold { run: child.clone() }).await.map(|_| ())
    }

    /// Applies a closed parent's close policy to one of its open children (best effort).
    pub(super) async fn close_child(&self, namespace_id: &str, workflow_id: String, run_id: String, policy: i32) {
        let shard = self.run_shard(namespace_id, &workflow_id);
        let run = RunKey { namespace_id: namespace_id.to_string(), workflow_id, run_id };
        let cmd = match ParentClosePolicy::try_from(policy).unwrap_or_default() {
            ParentClosePolicy::Abandon => return,
            ParentClosePolicy::RequestCancel => WorkflowCommand::RequestCancel {
                run,
                reason: "the parent workflow closed (ParentClosePolicy RequestCancel)".into(),
                identity: String::new(),
            },
            _ => WorkflowCommand::Terminate {
                run,
                reason: "the parent workflow closed (ParentClosePolicy Terminate)".into(),
                details: Vec::new(),
                identity: String::new(),
            },
        };
        if let Err(e) = self.apply(shard, cmd).await {
            tracing::debug!(error = %e, "parent close policy not applied (the child may have closed)");
        }
    }
}
