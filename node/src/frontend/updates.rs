//! Workflow updates: `UpdateWorkflowExecution` admits the update on the run's shard (no event)
//! and waits for the stage the caller asked for; `PollWorkflowExecutionUpdate` waits for an
//! admitted update's outcome. The request reaches the worker as a protocol message on the next
//! workflow task (see `history::engine::update`).

use std::time::Duration;

use norn_proto::protos::temporal::api::common::v1::WorkflowExecution;
use norn_proto::protos::temporal::api::enums::v1::UpdateWorkflowExecutionLifecycleStage as Stage;
use norn_proto::protos::temporal::api::update::v1::{Meta, Outcome as UpdateOutcome, UpdateRef};
use norn_proto::protos::temporal::api::workflowservice::v1::*;
use prost::Message;
use tonic::Status;
use tracing::Instrument;

use super::workflows::new_uuid;
use super::Frontend;
use crate::history::state::{RunState, UpdateStage};
use crate::history::store::{RunKey, WorkflowCommand};

/// Longest wait of one call; a caller that wants a later stage calls again (SDKs do).
const UPDATE_WAIT: Duration = Duration::from_secs(20);

fn stage_of(s: &UpdateStage) -> Stage {
    match s {
        UpdateStage::Admitted => Stage::Admitted,
        UpdateStage::Accepted { .. } => Stage::Accepted,
        UpdateStage::Completed { .. } => Stage::Completed,
    }
}

/// The stage a caller waits for: accepted unless it asks for completed.
fn wanted(policy: Option<&norn_proto::protos::temporal::api::update::v1::WaitPolicy>) -> Stage {
    match policy.map(|p| Stage::try_from(p.lifecycle_stage).unwrap_or(Stage::Unspecified)) {
        Some(Stage::Completed) => Stage::Completed,
        _ => Stage::Accepted,
    }
}

impl Frontend {
    pub(super) async fn update_workflow(
        &self,
        req: UpdateWorkflowExecutionRequest,
    ) -> Result<UpdateWorkflowExecutionResponse, Status> {
        let (ns, limits) = self.namespace(&req.namespace).await?;
        let mut request =
            req.request.clone().ok_or_else(|| Status::invalid_argument("Request is not set on request."))?;
        let meta = request.meta.get_or_insert_with(Meta::default);
        if meta.update_id.is_empty() {
            meta.update_id = new_uuid();
        }
        let update_id = meta.update_id.clone();
        if request.input.as_ref().is_none_or(|i| i.name.is_empty()) {
            return Err(Status::invalid_argument("Update name is not set on request."));
        }
        let (shard, run) = self.resolve(&ns, req.workflow_execution.as_ref()).await?;
        // Instrumented, never entered across an await (a guard held over awaits corrupts the
        // span stack of other tasks on the thread; tracing-subscriber then panics).
        let span = tracing::info_span!("update", namespace = %req.namespace, workflow_id = %run.workflow_id, shard, update_id = %update_id);
        let cmd = WorkflowCommand::AdmitUpdate {
            run: run.clone(),
            request: request.encode_to_vec(),
            limits: limits.engine(),
        };
        let (stage, outcome) = async {
            self.apply(shard, cmd).await?;
            self.wait_update(shard, &run, &update_id, wanted(req.wait_policy.as_ref())).await
        }
        .instrument(span)
        .await?;
        Ok(UpdateWorkflowExecutionResponse {
            update_ref: Some(update_ref(&run, &update_id)),
            outcome,
            stage: stage as i32,
            ..Default::default()
        })
    }

    pub(super) async fn poll_update(
        &self,
        req: PollWorkflowExecutionUpdateRequest,
    ) -> Result<PollWorkflowExecutionUpdateResponse, Status> {
        let ns = self.namespace_id(&req.namespace).await?;
        let r = req.update_ref.clone().ok_or_else(|| Status::invalid_argument("UpdateRef is not set on request."))?;
        if r.update_id.is_empty() {
            return Err(Status::invalid_argument("Update id is not set on request."));
        }
        let (shard, run) = self.resolve(&ns, r.workflow_execution.as_ref()).await?;
        let want =
            match req.wait_policy.as_ref().map(|p| Stage::try_from(p.lifecycle_stage).unwrap_or(Stage::Unspecified)) {
                Some(Stage::Accepted) => Stage::Accepted,
                Some(Stage::Admitted) => Stage::Admitted,
                _ => Stage::Completed,
            };
        let (stage, outcome) = self.wait_update(shard, &run, &r.update_id, want).await?;
        Ok(PollWorkflowExecutionUpdateResponse {
            outcome,
            stage: stage as i32,
            update_ref: Some(update_ref(&run, &r.update_id)),
        })
    }

    /// Waits until the update reaches `want` (or the wait ends); returns its stage and outcome.
    async fn wait_update(
        &self,
        shard: u32,
        run: &RunKey,
        update_id: &str,
        want: Stage,
    ) -> Result<(Stage, Option<UpdateOutcome>), Status> {
        let deadline = tokio::time::Instant::now() + UPDATE_WAIT;
        let sub = self.watch.subscribe(&run.run_id);
        let reread = self.reread_every(shard);
        loop {
            let woken = sub.notify().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let state: RunState = self.read_run(shard, run).await?;
            let Some(u) = state.updates.get(update_id) else {
                return Err(Status::not_found(format!(
                    "update {update_id} not found on workflow {}/{}",
                    run.workflow_id, run.run_id
                )));
            };
            let stage = stage_of(&u.stage);
            if let UpdateStage::Completed { outcome } = &u.stage {
                let o = UpdateOutcome::decode(outcome.as_slice())
                    .map_err(|e| Status::internal(format!("corrupt update outcome: {e}")))?;
                return Ok((stage, Some(o)));
            }
            if stage as i32 >= want as i32 {
                return Ok((stage, None));
            }
            if !state.is_open() {
                return Err(Status::not_found(format!(
                    "workflow execution already completed: update {update_id} did not complete before the run closed"
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok((stage, None));
            }
            let _ = tokio::time::timeout(reread, woken).await;
        }
    }
}

fn update_ref(run: &RunKey, update_id: &str) -> UpdateRef {
    UpdateRef {
        workflow_execution: Some(WorkflowExecution {
            workflow_id: run.workflow_id.clone(),
            run_id: run.run_id.clone(),
        }),
        update_id: update_id.into(),
    }
}
