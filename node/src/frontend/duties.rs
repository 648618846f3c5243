//! Leader duties: on every shard this node leads, once a second, look at the open runs and
//! re-offer ready tasks that matching may have lost (a leader change, a node restart, a dropped
//! offer), re-arm timers, and enforce workflow-task start-to-close and activity start-to-close and
//! heartbeat timeouts. The
//! commands it proposes are validated by the engine, so a duplicate or early one changes nothing.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use norn_raft::Role;

use super::Frontend;
use crate::history::store::{self, RunKey, WorkflowCommand};
use crate::matching::{QueueKey, TaskKind, TaskRef};

/// How often leaders sweep their open runs.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Ready tasks younger than this are left to the normal offer path.
const REOFFER_AFTER_MS: u64 = 2_000;
/// Retention runs every this many sweeps.
const RETENTION_EVERY_SWEEPS: u64 = 5;
/// Most closed runs one shard deletes per retention pass.
const RETENTION_BATCH: usize = 500;

/// Timers this node has armed, so a sweep does not arm them twice.
#[derive(Clone, Default)]
pub struct ArmedTimers(Arc<Mutex<BTreeSet<(String, String)>>>);

impl ArmedTimers {
    /// Records a timer; false if it was armed already.
    pub fn arm(&self, run_id: &str, timer_id: &str) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert((run_id.into(), timer_id.into()))
    }

    /// Forgets a timer (fired, or given up).
    pub fn disarm(&self, run_id: &str, timer_id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&(run_id.to_string(), timer_id.to_string()));
    }
}

impl Frontend {
    /// Runs the leader duties until the task is dropped.
    pub async fn run_duties(self) {
        let mut sweeps = 0u64;
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            sweeps += 1;
            let leading: Vec<u32> =
                self.admin.raft().status().into_iter().filter(|s| s.role == Role::Leader).map(|s| s.group).collect();
            for &shard in &leading {
                if let Err(e) = self.sweep(shard).await {
                    tracing::warn!(shard, error = %e, "leader sweep failed");
                }
            }
            if sweeps.is_multiple_of(RETENTION_EVERY_SWEEPS) && !leading.is_empty() {
                if let Err(e) = self.enforce_retention(&leading).await {
                    tracing::warn!(error = %e, "retention pass failed; the next pass retries");
                }
            }
        }
    }

    /// Deletes closed runs older than their namespace's retention, on the shards this node leads.
    async fn enforce_retention(&self, leading: &[u32]) -> Result<(), String> {
        let pairs = self
            .admin
            .read_keys(crate::namespace::SYSTEM_SHARD, b"ns/name/", true)
            .await
            .map_err(|s| s.message().to_string())?;
        let mut retention = std::collections::HashMap::new();
        for (_, v) in pairs {
            let rec: crate::namespace::NamespaceRecord =
                postcard::from_bytes(&v).map_err(|e| format!("corrupt namespace record: {e}"))?;
            retention.insert(rec.id, rec.retention_ms);
        }
        let Some(&shortest) = retention.values().min() else { return Ok(()) };
        let now = self.admin.now_ms();
        for &shard in leading {
            let closed =
                store::closed_runs(&self.admin.raft().view(shard), now.saturating_sub(shortest), RETENTION_BATCH)?;
            for (close_ms, run) in closed {
                let keep = retention.get(&run.namespace_id).copied().unwrap_or(u64::MAX);
                if now >= close_ms.saturating_add(keep) {
                    tracing::debug!(shard, workflow_id = %run.workflow_id, run_id = %run.run_id, "retention: deleting closed run");
                    self.propose_quietly(shard, WorkflowCommand::DeleteRun { run }).await;
                }
            }
        }
        Ok(())
    }

    async fn sweep(&self, shard: u32) -> Result<(), String> {
        for child in store::untold_children(&self.admin.raft().view(shard), 100)? {
            let this = self.clone();
            tokio::spawn(async move { this.tell_parent(shard, child).await });
        }
        let runs = store::open_runs(&self.admin.raft().view(shard))?;
        let now = self.admin.now_ms();
        for run in runs {
            let key = RunKey {
                namespace_id: run.namespace_id.clone(),
                workflow_id: run.workflow_id.clone(),
                run_id: run.run_id.clone(),
            };
            if run.run_deadline_ms.is_some_and(|d| now >= d) {
                self.propose_quietly(shard, WorkflowCommand::WorkflowTimedOut { run: key.clone() }).await;
                continue;
            }
            if let Some(t) = &run.workflow_task {
                match t.started_id {
                    None if now >= t.scheduled_ms + REOFFER_AFTER_MS => {
                        let q = QueueKey {
                            namespace_id: run.namespace_id.clone(),
                            name: run.task_queue.clone(),
                            kind: TaskKind::Workflow,
                        };
                        self.offer(q, TaskRef { shard, run: key.clone(), scheduled_id: t.scheduled_id, query: None });
                    }
                    Some(started_id) if now >= t.started_ms + run.workflow_task_timeout_ms => {
                        let cmd = WorkflowCommand::WorkflowTaskTimedOut {
                            run: key.clone(),
                            scheduled_id: t.scheduled_id,
                            started_id,
                        };
                        self.propose_quietly(shard, cmd).await;
                    }
                    _ => {}
                }
            }
            for a in run.activities.values() {
                if a.attempt_deadline().is_some_and(|(at, _)| now >= at) {
                    let cmd = WorkflowCommand::ActivityTimedOut {
                        run: key.clone(),
                        scheduled_id: a.scheduled_id,
                        attempt: a.attempt,
                    };
                    self.propose_quietly(shard, cmd).await;
                } else if a.request_id.is_empty() && now >= a.scheduled_ms + REOFFER_AFTER_MS {
                    let q = QueueKey {
                        namespace_id: run.namespace_id.clone(),
                        name: a.task_queue.clone(),
                        kind: TaskKind::Activity,
                    };
                    self.offer(q, TaskRef { shard, run: key.clone(), scheduled_id: a.scheduled_id, query: None });
                }
            }
            for x in run.externals.values() {
                if !x.done && now >= x.initiated_ms + REOFFER_AFTER_MS {
                    let (this, k, id) = (self.clone(), key.clone(), x.initiated_id);
                    tokio::spawn(async move { this.deliver_external(shard, k, id).await });
                }
            }
            for c in run.children.values() {
                if c.run_id.is_none() && !c.closed && now >= c.initiated_ms + REOFFER_AFTER_MS {
                    let (this, k, id) = (self.clone(), key.clone(), c.initiated_id);
                    tokio::spawn(async move { this.start_child(shard, k, id).await });
                }
            }
            for t in run.timers.values() {
                if self.timers.arm(&run.run_id, &t.timer_id) {
                    let this = self.clone();
                    let (k, id, started, at) = (key.clone(), t.timer_id.clone(), t.started_id, t.fire_at_ms);
                    tokio::spawn(async move { this.fire_timer(shard, k, id, started, at).await });
                }
            }
        }
        Ok(())
    }

    fn offer(&self, queue: QueueKey, task: TaskRef) {
        let admin = self.admin.clone();
        tokio::spawn(async move {
            if let Err(e) = admin.add_task(&queue, &task, 0).await {
                tracing::debug!(queue = %queue.name, error = %e, "re-offer failed; next sweep retries");
            }
        });
    }

    async fn propose_quietly(&self, shard: u32, cmd: WorkflowCommand) {
        if let Err(e) = self.apply(shard, cmd).await {
            tracing::debug!(shard, error = %e, "timeout command not applied");
        }
    }
}
