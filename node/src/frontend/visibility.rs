//! Visibility: `ListWorkflowExecutions` and `CountWorkflowExecutions`. Every shard keeps its runs
//! under `run/<namespace id>/...`, which is the per-shard index a list reads: the node asks every
//! shard's leader for the namespace's runs (linearizable reads, in parallel), filters them with
//! the list filter language ([`crate::list_filter`]), sorts and pages them.

use norn_proto::protos::temporal::api::common::v1::Payload;
use norn_proto::protos::temporal::api::workflowservice::v1::count_workflow_executions_response::AggregationGroup;
use norn_proto::protos::temporal::api::workflowservice::v1::*;
use tonic::Status;

use super::workflows::{execution_info, status_of};
use super::Frontend;
use crate::history::state::RunState;
use crate::history::store;
use crate::list_filter::{self, Field, ListQuery, Row, Value};

/// Most executions on one page, and the page size when the request gives none.
const PAGE_MAX: usize = 1000;

/// Temporal's name of a status in list filters.
fn status_name(s: &RunState) -> String {
    let n = status_of(s.status).as_str_name();
    let words = n.trim_start_matches("WORKFLOW_EXECUTION_STATUS_").split('_');
    words
        .map(|w| {
            let mut cs = w.chars();
            match cs.next() {
                Some(c) => c.to_ascii_uppercase().to_string() + &cs.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect()
}

struct RunRow<'a>(&'a RunState);

impl Row for RunRow<'_> {
    fn get(&self, f: Field) -> Option<Value> {
        let r = self.0;
        Some(match f {
            Field::WorkflowId => Value::Text(r.workflow_id.clone()),
            Field::RunId => Value::Text(r.run_id.clone()),
            Field::WorkflowType => Value::Text(r.workflow_type.clone()),
            Field::TaskQueue => Value::Text(r.task_queue.clone()),
            Field::ExecutionStatus => Value::Text(status_name(r)),
            Field::StartTime | Field::ExecutionTime => Value::Time(r.start_ms as i64),
            Field::CloseTime => Value::Time(r.close_ms? as i64),
        })
    }
}

fn parse_query(q: &str) -> Result<ListQuery, Status> {
    list_filter::parse(q).map_err(|e| Status::invalid_argument(format!("invalid query: {e}")))
}

impl Frontend {
    /// The runs of namespace `ns` that pass `q`, in its order.
    async fn matching_runs(&self, ns: &str, q: &ListQuery) -> Result<Vec<RunState>, Status> {
        let prefix = store::runs_prefix(ns);
        let reads = (0..self.router.config().shards).map(|shard| self.router.scan(shard, &prefix, usize::MAX));
        let mut runs = Vec::new();
        for pairs in futures::future::try_join_all(reads).await? {
            for (_, v) in pairs {
                let run: RunState =
                    postcard::from_bytes(&v).map_err(|e| Status::internal(format!("corrupt run state: {e}")))?;
                if q.matches(&RunRow(&run)) {
                    runs.push(run);
                }
            }
        }
        runs.sort_by(|a, b| q.compare(&RunRow(a), &RunRow(b)));
        Ok(runs)
    }

    pub(super) async fn list(
        &self,
        req: ListWorkflowExecutionsRequest,
    ) -> Result<ListWorkflowExecutionsResponse, Status> {
        let ns = self.namespace_id(&req.namespace).await?;
        let q = parse_query(&req.query)?;
        if !q.group_by.is_empty() {
            return Err(Status::invalid_argument("GROUP BY is only accepted by CountWorkflowExecutions"));
        }
        let offset = match req.next_page_token.as_slice() {
            [] => 0,
            t => <[u8; 8]>::try_from(t)
                .map(u64::from_be_bytes)
                .map_err(|_| Status::invalid_argument("malformed next_page_token"))? as usize,
        };
        let size = match req.page_size {
            n if n <= 0 => PAGE_MAX,
            n => (n as usize).min(PAGE_MAX),
        };
        let runs = self.matching_runs(&ns, &q).await?;
        let end = offset.saturating_add(size).min(runs.len());
        let page = runs.get(offset..end).unwrap_or_default();
        Ok(ListWorkflowExecutionsResponse {
            executions: page.iter().map(execution_info).collect(),
            next_page_token: if end < runs.len() { (end as u64).to_be_bytes().to_vec() } else { Vec::new() },
        })
    }

    pub(super) async fn count(
        &self,
        req: CountWorkflowExecutionsRequest,
    ) -> Result<CountWorkflowExecutionsResponse, Status> {
        let ns = self.namespace_id(&req.namespace).await?;
        let q = parse_query(&req.query)?;
        let runs = self.matching_runs(&ns, &q).await?;
        let mut groups: Vec<AggregationGroup> = Vec::new();
        if !q.group_by.is_empty() {
            let mut counts = std::collections::BTreeMap::<String, i64>::new();
            for r in &runs {
                *counts.entry(status_name(r)).or_default() += 1;
            }
            groups = counts
                .into_iter()
                .map(|(status, count)| AggregationGroup {
                    group_values: vec![Payload {
                        metadata: [("encoding".to_string(), b"json/plain".to_vec())].into(),
                        data: format!("\"{status}\"").into_bytes(),
                        ..Default::default()
                    }],
                    count,
                })
                .collect();
        }
        Ok(CountWorkflowExecutionsResponse { count: runs.len() as i64, groups })
    }
}
