//! Queries. A query is not recorded in history: the node that receives `QueryWorkflow` parks the
//! caller, puts a query task into the matching of the run's workflow task queue, and a worker
//! answers it with `RespondQueryTaskCompleted` (the "legacy query" path every SDK supports: the
//! task carries the full history and the query). The answer can reach any node; the task token
//! names the node where the caller waits, and the answer is forwarded there.
//!
//! A query on a run with a workflow task scheduled or in flight waits until that task completes,
//! so the answer reflects every event written before the query (Temporal attaches such a query
//! to the next task, with the same result).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use norn_proto::protos::google::rpc::Status as RpcStatus;
use norn_proto::protos::temporal::api::enums::v1::{QueryRejectCondition, QueryResultType};
use norn_proto::protos::temporal::api::errordetails::v1::QueryFailedFailure;
use norn_proto::protos::temporal::api::query::v1::{QueryRejected, WorkflowQuery};
use norn_proto::protos::temporal::api::workflowservice::v1::*;
use prost::Message;
use tokio::sync::oneshot;
use tonic::Status;

use super::workflows::status_of;
use super::Frontend;
use crate::history::state::RunStatus;
use crate::matching::{QueryTask, QueueKey, TaskKind, TaskRef};

/// How long a query waits for a worker's answer.
const QUERY_WAIT: Duration = Duration::from_secs(30);

/// Callers waiting for query answers on this node, by query id.
#[derive(Clone, Default)]
pub struct QueryWaiters(Arc<Mutex<BTreeMap<String, oneshot::Sender<RespondQueryTaskCompletedRequest>>>>);

impl QueryWaiters {
    fn park(&self, id: &str) -> oneshot::Receiver<RespondQueryTaskCompletedRequest> {
        let (tx, rx) = oneshot::channel();
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), tx);
        rx
    }

    fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    fn deliver(&self, id: &str, answer: RespondQueryTaskCompletedRequest) -> bool {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id) {
            Some(tx) => tx.send(answer).is_ok(),
            None => false,
        }
    }
}

fn query_failed(message: String) -> Status {
    let details = RpcStatus {
        code: tonic::Code::InvalidArgument as i32,
        message: message.clone(),
        details: vec![prost_wkt_types::Any {
            type_url: "type.googleapis.com/temporal.api.errordetails.v1.QueryFailedFailure".into(),
            value: QueryFailedFailure::default().encode_to_vec(),
        }],
    };
    Status::with_details(tonic::Code::InvalidArgument, message, details.encode_to_vec().into())
}

impl Frontend {
    pub(super) async fn query(&self, req: QueryWorkflowRequest) -> Result<QueryWorkflowResponse, Status> {
        let ns = self.namespace_id(&req.namespace).await?;
        let query = req.query.clone().ok_or_else(|| Status::invalid_argument("Query is not set on request."))?;
        if query.query_type.is_empty() {
            return Err(Status::invalid_argument("QueryType is not set on request."));
        }
        let (shard, run_key) = self.resolve(&ns, req.execution.as_ref()).await?;
        let deadline = tokio::time::Instant::now() + QUERY_WAIT;
        let sub = self.watch.subscribe(&run_key.run_id);
        let reread = self.reread_every(shard);
        let run = loop {
            // Armed before the read: the apply that completes the task wakes this wait.
            let woken = sub.notify().notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let run = self.read_run(shard, &run_key).await?;
            let rejected = match QueryRejectCondition::try_from(req.query_reject_condition) {
                Ok(QueryRejectCondition::NotOpen) => !run.is_open(),
                Ok(QueryRejectCondition::NotCompletedCleanly) => !run.is_open() && run.status != RunStatus::Completed,
                _ => false,
            };
            if rejected {
                return Ok(QueryWorkflowResponse {
                    query_rejected: Some(QueryRejected { status: status_of(run.status) as i32 }),
                    ..Default::default()
                });
            }
            // A scheduled task is waited for too: its events (a signal, say) must be handled first.
            let busy = run.workflow_task.is_some();
            let not_ready = run.is_open() && run.last_completed_started_id == 0;
            if !busy && !not_ready {
                break run;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(
                    "query timed out: the workflow's first or current workflow task did not complete; \
                     check that a worker polls its task queue",
                ));
            }
            let _ = tokio::time::timeout(reread, woken).await;
        };
        drop(sub);
        let id = super::workflows::new_uuid();
        let origin = self.router.config().node_id;
        let rx = self.queries.park(&id);
        let queue = QueueKey::normal(ns, run.task_queue.clone(), TaskKind::Workflow);
        let task = TaskRef {
            shard,
            run: run_key.clone(),
            scheduled_id: 0,
            query: Some(QueryTask { id: id.clone(), origin, query: query.encode_to_vec() }),
        };
        if let Err(e) = self.router.add_task(&queue, &task).await {
            self.queries.forget(&id);
            return Err(e);
        }
        let answer = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(a)) => a,
            _ => {
                self.queries.forget(&id);
                return Err(Status::deadline_exceeded(format!(
                    "query timed out after {}s: no worker answered; check that a worker polls task queue {}",
                    QUERY_WAIT.as_secs(),
                    run.task_queue
                )));
            }
        };
        match QueryResultType::try_from(answer.completed_type) {
            Ok(QueryResultType::Answered) => {
                Ok(QueryWorkflowResponse { query_result: answer.query_result, ..Default::default() })
            }
            _ => {
                let msg = answer
                    .failure
                    .as_ref()
                    .map(|f| f.message.clone())
                    .filter(|m| !m.is_empty())
                    .unwrap_or(answer.error_message);
                Err(query_failed(msg))
            }
        }
    }

    pub(super) async fn respond_query_completed(
        &self,
        req: RespondQueryTaskCompletedRequest,
    ) -> Result<RespondQueryTaskCompletedResponse, Status> {
        let (id, origin) = super::workflows::query_of_token(&req.task_token)?;
        if origin == self.router.config().node_id {
            if !self.queries.deliver(&id, req) {
                return Err(Status::not_found("query not found: it timed out or was answered already"));
            }
            return Ok(RespondQueryTaskCompletedResponse::default());
        }
        let addr = self
            .router
            .member_addr(origin)
            .ok_or_else(|| Status::invalid_argument(format!("query token names unknown node {origin}")))?;
        let mut c = self.workflow_client(&addr)?;
        c.respond_query_task_completed(req).await.map(|r| r.into_inner())
    }
}

/// The query of a query task, decoded for the poll response.
pub(super) fn decode_query(bytes: &[u8]) -> Result<WorkflowQuery, Status> {
    WorkflowQuery::decode(bytes).map_err(|e| Status::internal(format!("corrupt query task: {e}")))
}
