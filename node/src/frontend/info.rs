//! Cluster and task-queue information: DescribeTaskQueue, GetClusterInfo, GetSearchAttributes.

use std::collections::HashMap;

use norn_proto::protos::temporal::api::enums::v1::{IndexedValueType, TaskQueueType};
use norn_proto::protos::temporal::api::taskqueue::v1::PollerInfo;
use norn_proto::protos::temporal::api::workflowservice::v1::*;
use tonic::Status;

use super::Frontend;
use crate::matching::{QueueKey, TaskKind};
use crate::routing::Target;

/// The search attributes list filters accept (see `list_filter`), with their types.
pub const BUILT_IN_SEARCH_ATTRIBUTES: [(&str, IndexedValueType); 8] = [
    ("WorkflowId", IndexedValueType::Keyword),
    ("RunId", IndexedValueType::Keyword),
    ("WorkflowType", IndexedValueType::Keyword),
    ("TaskQueue", IndexedValueType::Keyword),
    ("ExecutionStatus", IndexedValueType::Keyword),
    ("StartTime", IndexedValueType::Datetime),
    ("CloseTime", IndexedValueType::Datetime),
    ("ExecutionTime", IndexedValueType::Datetime),
];

impl Frontend {
    #[allow(deprecated)] // task_queue_status: the CLI's legacy mode reads it
    pub(super) async fn describe_task_queue(
        &self,
        req: tonic::Request<DescribeTaskQueueRequest>,
    ) -> Result<DescribeTaskQueueResponse, Status> {
        let hops = super::workflows::hops(&req);
        let req = req.into_inner();
        let ns = self.namespace_id(&req.namespace).await?;
        let name = req.task_queue.as_ref().map(|t| t.name.clone()).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument("TaskQueue is not set on request."));
        }
        let kind = match TaskQueueType::try_from(req.task_queue_type).unwrap_or_default() {
            TaskQueueType::Activity => TaskKind::Activity,
            _ => TaskKind::Workflow,
        };
        let queue = QueueKey::normal(ns, name, kind);
        // Pollers are known where the queue's matching lives: the leader of its home shard.
        let home = queue.home_shard(self.router.config().shards);
        if let Target::Remote(addr) = self.router.leader_target(home).await? {
            if hops >= 2 {
                return Err(Status::unavailable("task queue home moved while forwarding; retry"));
            }
            let mut c = self.workflow_client(&addr)?;
            return c.describe_task_queue(super::workflows::forwarded(req, hops)).await.map(|r| r.into_inner());
        }
        let seen = super::workflows::timestamp(self.router.now_ms());
        let pollers = self
            .router
            .matching()
            .pollers(&queue)
            .into_iter()
            // Matching keeps the identities of recent pollers, not when each last polled.
            .map(|identity| PollerInfo { identity, last_access_time: Some(seen), ..Default::default() })
            .collect();
        Ok(DescribeTaskQueueResponse {
            pollers,
            task_queue_status: Some(norn_proto::protos::temporal::api::taskqueue::v1::TaskQueueStatus::default()),
            ..Default::default()
        })
    }

    pub(super) fn cluster_info(&self) -> GetClusterInfoResponse {
        GetClusterInfoResponse {
            server_version: super::SERVER_VERSION.into(),
            cluster_name: "norn".into(),
            history_shard_count: self.router.config().shards as i32,
            persistence_store: "norn-raft-rocksdb".into(),
            visibility_store: "norn-raft-rocksdb".into(),
            ..Default::default()
        }
    }

    pub(super) fn search_attributes(&self) -> GetSearchAttributesResponse {
        let keys: HashMap<String, i32> =
            BUILT_IN_SEARCH_ATTRIBUTES.iter().map(|(k, t)| (k.to_string(), *t as i32)).collect();
        GetSearchAttributesResponse { keys }
    }
}
