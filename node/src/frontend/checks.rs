//! What the frontend checks in a request before anything is proposed: ids and names within the
//! namespace's length limit, run ids that are UUIDs, payloads within the blob limit, with
//! Temporal's error texts. The history engine checks the commands of a workflow task completion
//! itself, under the limits carried in the replicated command.

use norn_proto::protos::temporal::api::common::v1::WorkflowExecution;
use norn_proto::protos::temporal::api::workflowservice::v1::*;
use prost::Message;
use tonic::Status;

use crate::limits::{check_run_id, Limits};

/// A request the frontend checks against its namespace's limits.
pub(super) trait Check {
    /// The namespace name the request names.
    fn namespace(&self) -> &str;
    /// Refuses what breaks a limit.
    fn check(&self, l: &Limits) -> Result<(), Status>;
}

fn size<M: Message>(m: &Option<M>) -> usize {
    m.as_ref().map(|m| m.encoded_len()).unwrap_or(0)
}

fn execution(l: &Limits, e: &Option<WorkflowExecution>) -> Result<(), Status> {
    if let Some(e) = e {
        l.check_id("WorkflowId", &e.workflow_id)?;
        check_run_id(&e.run_id)?;
    }
    Ok(())
}

fn queue(l: &Limits, q: &Option<norn_proto::protos::temporal::api::taskqueue::v1::TaskQueue>) -> Result<(), Status> {
    l.check_id("TaskQueue", q.as_ref().map(|q| q.name.as_str()).unwrap_or(""))
}

macro_rules! check {
    ($t:ty, |$r:ident, $l:ident| $body:block) => {
        impl Check for $t {
            fn namespace(&self) -> &str {
                &self.namespace
            }
            fn check(&self, $l: &Limits) -> Result<(), Status> {
                let $r = self;
                $body
                Ok(())
            }
        }
    };
}

check!(StartWorkflowExecutionRequest, |r, l| {
    l.check_id("WorkflowId", &r.workflow_id)?;
    l.check_id("WorkflowType", r.workflow_type.as_ref().map(|t| t.name.as_str()).unwrap_or(""))?;
    queue(l, &r.task_queue)?;
    l.check_id("RequestId", &r.request_id)?;
    l.check_id("Identity", &r.identity)?;
    l.check_id("CronSchedule", &r.cron_schedule)?;
    l.check_blob("input", size(&r.input) + size(&r.header))?;
    if size(&r.memo) as u64 > l.blob_size_max_bytes {
        return Err(Status::invalid_argument("Memo size exceeds limit."));
    }
    if size(&r.search_attributes) as u64 > l.blob_size_max_bytes {
        return Err(Status::invalid_argument("Search attributes size exceeds limit."));
    }
});

check!(SignalWithStartWorkflowExecutionRequest, |r, l| {
    l.check_id("WorkflowId", &r.workflow_id)?;
    l.check_id("WorkflowType", r.workflow_type.as_ref().map(|t| t.name.as_str()).unwrap_or(""))?;
    queue(l, &r.task_queue)?;
    l.check_id("SignalName", &r.signal_name)?;
    l.check_id("RequestId", &r.request_id)?;
    l.check_id("Identity", &r.identity)?;
    l.check_blob("input", size(&r.input) + size(&r.header))?;
    l.check_blob("signal input", size(&r.signal_input))?;
    if size(&r.memo) as u64 > l.blob_size_max_bytes {
        return Err(Status::invalid_argument("Memo size exceeds limit."));
    }
});

check!(SignalWorkflowExecutionRequest, |r, l| {
    execution(l, &r.workflow_execution)?;
    l.check_id("SignalName", &r.signal_name)?;
    l.check_id("RequestId", &r.request_id)?;
    l.check_id("Identity", &r.identity)?;
    l.check_blob("signal input", size(&r.input) + size(&r.header))?;
});

check!(RequestCancelWorkflowExecutionRequest, |r, l| {
    execution(l, &r.workflow_execution)?;
    check_run_id(&r.first_execution_run_id)?;
    l.check_id("RequestId", &r.request_id)?;
    l.check_id("Identity", &r.identity)?;
    l.check_id("Reason", &r.reason)?;
});

check!(TerminateWorkflowExecutionRequest, |r, l| {
    execution(l, &r.workflow_execution)?;
    check_run_id(&r.first_execution_run_id)?;
    l.check_id("Identity", &r.identity)?;
    l.check_blob("details", size(&r.details) + r.reason.len())?;
});

check!(DeleteWorkflowExecutionRequest, |r, l| {
    execution(l, &r.workflow_execution)?;
});

check!(DescribeWorkflowExecutionRequest, |r, l| {
    execution(l, &r.execution)?;
});

check!(GetWorkflowExecutionHistoryRequest, |r, l| {
    execution(l, &r.execution)?;
});

check!(QueryWorkflowRequest, |r, l| {
    execution(l, &r.execution)?;
    if let Some(q) = &r.query {
        l.check_id("QueryType", &q.query_type)?;
        l.check_blob("query args", size(&q.query_args) + size(&q.header))?;
    }
});

check!(UpdateWorkflowExecutionRequest, |r, l| {
    execution(l, &r.workflow_execution)?;
    check_run_id(&r.first_execution_run_id)?;
    if let Some(req) = &r.request {
        if let Some(m) = &req.meta {
            l.check_id("UpdateId", &m.update_id)?;
            l.check_id("Identity", &m.identity)?;
        }
        if let Some(i) = &req.input {
            l.check_id("UpdateName", &i.name)?;
            l.check_blob("update args", size(&i.args) + size(&i.header))?;
        }
    }
});

check!(PollWorkflowExecutionUpdateRequest, |r, l| {
    if let Some(u) = &r.update_ref {
        execution(l, &u.workflow_execution)?;
        l.check_id("UpdateId", &u.update_id)?;
    }
});

check!(PollWorkflowTaskQueueRequest, |r, l| {
    queue(l, &r.task_queue)?;
    if let Some(q) = r.task_queue.as_ref().filter(|q| !q.normal_name.is_empty()) {
        l.check_id("TaskQueue", &q.normal_name)?;
    }
    l.check_id("Identity", &r.identity)?;
});

check!(PollActivityTaskQueueRequest, |r, l| {
    queue(l, &r.task_queue)?;
    l.check_id("Identity", &r.identity)?;
});

// The commands are checked by the history engine under the same limits.
check!(RespondWorkflowTaskCompletedRequest, |r, l| {
    l.check_id("Identity", &r.identity)?;
    if let Some(a) = &r.sticky_attributes {
        l.check_id("StickyTaskQueue", a.worker_task_queue.as_ref().map(|q| q.name.as_str()).unwrap_or("-"))?;
    }
});

check!(ResetStickyTaskQueueRequest, |r, l| {
    execution(l, &r.execution)?;
});

check!(RespondWorkflowTaskFailedRequest, |r, l| {
    l.check_id("Identity", &r.identity)?;
    l.check_blob("workflow task failure", size(&r.failure))?;
});

check!(RespondActivityTaskFailedRequest, |r, l| {
    l.check_id("Identity", &r.identity)?;
    l.check_blob("activity failure", size(&r.failure))?;
    l.check_blob("heartbeat details", size(&r.last_heartbeat_details))?;
});

check!(RespondActivityTaskCanceledRequest, |r, l| {
    l.check_id("Identity", &r.identity)?;
    l.check_blob("cancel details", size(&r.details))?;
});

check!(RecordActivityTaskHeartbeatRequest, |r, l| {
    l.check_id("Identity", &r.identity)?;
    l.check_blob("heartbeat details", size(&r.details))?;
});

check!(RespondQueryTaskCompletedRequest, |r, l| {
    l.check_blob("query result", size(&r.query_result) + r.error_message.len())?;
});

/// An activity result over the blob limit is not an error for the worker: the activity fails with
/// a non-retryable server failure instead, as in Temporal.
pub(super) fn oversized_result(l: &Limits, r: &RespondActivityTaskCompletedRequest) -> bool {
    let bytes = size(&r.result) as u64;
    if bytes > l.blob_size_warn_bytes && bytes <= l.blob_size_max_bytes {
        tracing::warn!(bytes, warn = l.blob_size_warn_bytes, "large activity result");
    }
    bytes > l.blob_size_max_bytes
}

/// Temporal's failure reason for an activity result over the blob limit.
pub(super) const RESULT_TOO_LARGE: &str = "Complete result exceeds size limit.";
