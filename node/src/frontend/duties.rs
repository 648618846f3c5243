//! Leader duties: what a shard's leader does without being asked, at a cost that follows the
//! work due, never the number of idle runs (see [`crate::history::index`]).
//!
//! - **Due runs.** Each led shard's due index is read from the front up to now: timers fire,
//!   workflow-task, activity and run timeouts are proposed, activity retries whose backoff ended
//!   are re-checked (which offers them), and signals, cancels and child starts not yet recorded are
//!   delivered again. The loop then sleeps until the next due time, or until an apply on this node
//!   writes an earlier one. Work for a run that stays due (a delivery that keeps failing) is
//!   retried every [`RETRY_MS`].
//! - **Ready tasks follow their task queue's home.** Matching holds no truth, so ready tasks are
//!   offered again from the shard's ready index when this node starts leading the shard (all of
//!   them), and when the leader of a task queue's home shard changes (those bound for that home).
//!   A node that stops leading a home hands the tasks its matching still holds to the new leader.
//! - **Closed children** tell their parents; **retention** deletes each namespace's closed runs
//!   past its retention, from a per-namespace index ordered by close time.
//!
//! Everything proposed is validated by the engine, so a duplicate or early command changes
//! nothing; every scan is bounded; proposals run with bounded concurrency.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use norn_raft::Role;
use tokio::sync::Semaphore;

use super::Frontend;
use crate::history::store::{self, RunKey, StoreError, WorkflowCommand};
use crate::matching::{QueueKey, TaskRef};

/// Work for a run that stayed due is retried after this long.
pub const RETRY_MS: u64 = 2_000;
/// Due-index entries read per page.
const DUE_PAGE: usize = 256;
/// Due runs handled per shard before the loop looks at the other shards again.
const DUE_PER_ROUND: usize = 1024;
/// Ready tasks read per page when re-offering.
const READY_PAGE: usize = 512;
/// Longest sleep of the duties loop (it also watches leadership changes).
const TICK: Duration = Duration::from_millis(250);
/// How often the leaders of task queues' home shards are compared with what was offered to.
const EPOCH_CHECK_MS: u64 = 1_000;
/// How often closed children are told to their parents.
const TELL_EVERY_MS: u64 = 2_000;
/// How often retention runs.
const RETENTION_EVERY_MS: u64 = 5_000;
/// Closed runs one shard deletes per namespace per retention pass.
const RETENTION_BATCH: usize = 500;
/// Duty proposals in flight per node.
const DUTY_PROPOSALS_MAX: usize = 256;

/// Ready tasks offered while one epoch of a home shard held are lost to matching when the next
/// begins.
use crate::routing::Epoch;

/// The due-index reading position and retries of one led shard.
#[derive(Default)]
struct ShardDue {
    /// Read the due index again at this time (0: at once).
    next_wake_ms: u64,
    /// Where the last round stopped, when it stopped early.
    cursor: Option<Vec<u8>>,
    /// Due-index keys already handled, and when to try them again if they are still due.
    retry_at: BTreeMap<Vec<u8>, u64>,
}

/// The duties loop's state.
struct Duties {
    fe: Frontend,
    /// Shards this node leads, with their terms.
    led: BTreeMap<u32, u64>,
    due: BTreeMap<u32, ShardDue>,
    permits: Arc<Semaphore>,
    last_epoch_check_ms: u64,
    last_tell_ms: u64,
    last_retention_ms: u64,
}

impl Frontend {
    /// Runs the leader duties until the task is dropped.
    pub async fn run_duties(self) {
        let mut d = Duties {
            fe: self,
            led: BTreeMap::new(),
            due: BTreeMap::new(),
            permits: Arc::new(Semaphore::new(DUTY_PROPOSALS_MAX)),
            last_epoch_check_ms: 0,
            last_tell_ms: 0,
            last_retention_ms: 0,
        };
        loop {
            d.round().await;
            let now = d.fe.router.now_ms();
            let wake = d.due.values().map(|s| s.next_wake_ms).min().unwrap_or(u64::MAX);
            let sleep = Duration::from_millis(wake.saturating_sub(now)).min(TICK);
            if sleep.is_zero() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = d.fe.due.changed() => {}
            }
        }
    }
}

impl Duties {
    async fn round(&mut self) {
        self.follow_leadership();
        for (shard, due_ms) in self.fe.due.take() {
            if let Some(s) = self.due.get_mut(&shard) {
                s.next_wake_ms = s.next_wake_ms.min(due_ms);
            }
        }
        let now = self.fe.router.now_ms();
        let shards: Vec<u32> = self.due.keys().copied().collect();
        for shard in shards {
            if self.due.get(&shard).is_some_and(|s| now >= s.next_wake_ms) {
                if let Err(e) = self.due_round(shard, now) {
                    self.fe.store_failed(shard, &e, "reading the due index");
                    if let Some(s) = self.due.get_mut(&shard) {
                        s.next_wake_ms = now.saturating_add(RETRY_MS);
                    }
                }
            }
        }
        if now >= self.last_epoch_check_ms.saturating_add(EPOCH_CHECK_MS) {
            self.last_epoch_check_ms = now;
            self.check_home_epochs().await;
        }
        if now >= self.last_tell_ms.saturating_add(TELL_EVERY_MS) {
            self.last_tell_ms = now;
            self.tell_parents();
        }
        if now >= self.last_retention_ms.saturating_add(RETENTION_EVERY_MS) && !self.led.is_empty() {
            self.last_retention_ms = now;
            if let Err(e) = self.enforce_retention(now).await {
                tracing::warn!(error = %e, "retention pass failed; the next pass retries");
            }
        }
    }

    /// Notices shards this node started or stopped leading.
    fn follow_leadership(&mut self) {
        let now: BTreeMap<u32, u64> = self
            .fe
            .router
            .raft()
            .status()
            .into_iter()
            .filter(|s| s.role == Role::Leader)
            .map(|s| (s.group, s.term))
            .collect();
        for (&shard, &term) in &now {
            if self.led.get(&shard) != Some(&term) {
                tracing::info!(shard, term, "leading shard: reading its due index and re-offering its ready tasks");
                self.due.insert(shard, ShardDue::default());
                self.fe.router.forget_offered(shard);
                self.spawn_reoffer(shard, None);
            }
        }
        let lost: Vec<u32> = self.led.keys().filter(|s| !now.contains_key(s)).copied().collect();
        for shard in lost {
            tracing::info!(shard, "no longer leading shard; handing its task queues to the new leader");
            self.due.remove(&shard);
            self.fe.router.forget_offered(shard);
            let tasks = self.fe.router.matching().drain_home(shard, self.fe.router.config().shards);
            if !tasks.is_empty() {
                let router = self.fe.router.clone();
                // Retried like any offer: the run's shard re-offers only when the home's epoch
                // it saw changes, and it may have seen the new leader's already, so a hand-over
                // that failed once (this node cut off by a partition) would lose the task.
                for (q, t) in tasks {
                    let router = router.clone();
                    tokio::spawn(async move { super::workflows::offer_retrying(&router, &q, &t).await });
                }
            }
        }
        self.led = now;
    }

    /// Handles what is due on `shard` up to `now`, one bounded round.
    fn due_round(&mut self, shard: u32, now: u64) -> Result<(), StoreError> {
        let view = self.fe.router.raft().view(shard);
        let mut handled = 0;
        let mut todo = Vec::new();
        let Some(state) = self.due.get_mut(&shard) else { return Ok(()) };
        loop {
            let page = store::due_runs(&view, now, state.cursor.as_deref(), DUE_PAGE)?;
            let full = page.len() == DUE_PAGE;
            for (key, _due, run) in page {
                state.cursor = Some(key.clone());
                if state.retry_at.get(&key).is_some_and(|t| *t > now) {
                    continue;
                }
                state.retry_at.insert(key, now.saturating_add(RETRY_MS));
                todo.push(run);
                handled += 1;
            }
            if !full {
                state.cursor = None;
                break;
            }
            if handled >= DUE_PER_ROUND {
                // More is due: the next round goes on from the cursor, after the other shards.
                state.next_wake_ms = now;
                break;
            }
        }
        if state.cursor.is_none() {
            // A full pass: what was not seen again left the index; retries wake the loop.
            state.retry_at.retain(|_, t| *t > now);
            let next = store::first_due_after(&view, now)?.unwrap_or(u64::MAX);
            let retry = state.retry_at.values().copied().min().unwrap_or(u64::MAX);
            state.next_wake_ms = next.min(retry);
        }
        for run in todo {
            self.handle_due(shard, run, now);
        }
        Ok(())
    }

    /// Proposes or starts what a due run needs.
    fn handle_due(&self, shard: u32, key: RunKey, now: u64) {
        let view = self.fe.router.raft().view(shard);
        let run = match store::load(&view, &key) {
            Ok(Some(r)) if r.is_open() => r,
            Ok(_) => return,
            Err(e) => {
                self.fe.store_failed(shard, &e, "reading a due run");
                return;
            }
        };
        let mut commands = Vec::new();
        if run.run_deadline_ms.is_some_and(|d| now >= d) {
            commands.push(WorkflowCommand::WorkflowTimedOut { run: key.clone() });
        } else {
            if let Some(t) = &run.workflow_task {
                if let Some(started_id) = t.started_id {
                    if now >= t.started_ms.saturating_add(run.workflow_task_timeout_ms) {
                        commands.push(WorkflowCommand::WorkflowTaskTimedOut {
                            run: key.clone(),
                            scheduled_id: t.scheduled_id,
                            started_id,
                        });
                    }
                }
                // Waited on its sticky queue too long: started id 0 moves it to the normal queue.
                if crate::history::engine::sticky_deadline(&run).is_some_and(|d| now >= d) {
                    commands.push(WorkflowCommand::WorkflowTaskTimedOut {
                        run: key.clone(),
                        scheduled_id: t.scheduled_id,
                        started_id: 0,
                    });
                }
            }
            for a in run.activities.values() {
                if a.attempt_deadline().is_some_and(|(at, _)| now >= at) {
                    commands.push(WorkflowCommand::ActivityTimedOut {
                        run: key.clone(),
                        scheduled_id: a.scheduled_id,
                        attempt: a.attempt,
                    });
                }
            }
            for t in run.timers.values().filter(|t| now >= t.fire_at_ms) {
                commands.push(WorkflowCommand::TimerFired {
                    run: key.clone(),
                    timer_id: t.timer_id.clone(),
                    started_id: t.started_id,
                });
            }
            let redeliver =
                |initiated_ms: u64| now >= initiated_ms.saturating_add(crate::history::index::REDELIVER_AFTER_MS);
            for x in run.externals.values().filter(|x| !x.done && redeliver(x.initiated_ms)) {
                let (fe, k, id) = (self.fe.clone(), key.clone(), x.initiated_id);
                tokio::spawn(async move { fe.deliver_external(shard, k, id).await });
            }
            for c in run.children.values().filter(|c| c.run_id.is_none() && !c.closed && redeliver(c.initiated_ms)) {
                let (fe, k, id) = (self.fe.clone(), key.clone(), c.initiated_id);
                tokio::spawn(async move { fe.start_child(shard, k, id).await });
            }
            let backoff_ended = run.activities.values().any(|a| a.request_id.is_empty() && a.scheduled_ms <= now);
            if commands.is_empty() && backoff_ended {
                // An activity retry's backoff ended: re-evaluating the run offers it.
                commands.push(WorkflowCommand::Recheck { run: key.clone() });
            }
        }
        for cmd in commands {
            let (fe, permits) = (self.fe.clone(), self.permits.clone());
            tokio::spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else { return };
                if let Err(e) = fe.apply(shard, cmd).await {
                    tracing::debug!(shard, error = %e, "due command not applied; retried while still due");
                }
            });
        }
    }

    /// Re-offers `shard`'s ready tasks (those bound for `home`, or all), recording the home
    /// epochs they were offered to.
    fn spawn_reoffer(&self, shard: u32, home: Option<u32>) {
        let fe = self.fe.clone();
        let shards = fe.router.config().shards;
        // The epochs before reading: a home that moves during the scan is offered again.
        for h in (0..shards).filter(|h| home.is_none_or(|x| x == *h)) {
            if let Some(e) = fe.router.local_epoch(h) {
                fe.router.set_offered_epoch(shard, h, Some(e));
            }
        }
        tokio::spawn(async move {
            // A new leader may not yet have applied what its predecessor committed (those entries
            // commit with its first entry): a task written by such an entry after the scan would
            // be offered by nobody (found by norn-jepsen: a workflow stuck at a task scheduled as
            // its shard's leader was killed). Scan once everything committed is applied here.
            if let Err(e) = fe.router.raft().read_index(shard).await {
                tracing::debug!(shard, error = %e, "cannot re-offer before reading the shard's commit; the epoch check retries");
                for h in (0..shards).filter(|h| home.is_none_or(|x| x == *h)) {
                    fe.router.set_offered_epoch(shard, h, None);
                }
                return;
            }
            let view = fe.router.raft().view(shard);
            let mut after: Option<Vec<u8>> = None;
            let mut offered_count = 0usize;
            loop {
                let (page, more) = match store::ready_page(&view, home, after.as_deref(), READY_PAGE) {
                    Ok(p) => p,
                    Err(e) => {
                        fe.store_failed(shard, &e, "reading the ready index");
                        return;
                    }
                };
                after = page.last().map(|(k, _, _)| k.clone());
                let mut by_home: BTreeMap<u32, Vec<(QueueKey, TaskRef)>> = BTreeMap::new();
                for (_, q, t) in page {
                    by_home.entry(q.home_shard(shards)).or_default().push((q, t));
                }
                for (h, tasks) in by_home {
                    offered_count += tasks.len();
                    if let Err(e) = fe.router.add_tasks(h, tasks).await {
                        tracing::debug!(shard, home = h, error = %e, "re-offer failed; the next epoch check retries");
                        fe.router.set_offered_epoch(shard, h, None);
                    }
                }
                if !more || after.is_none() {
                    break;
                }
            }
            if offered_count > 0 {
                tracing::debug!(shard, ?home, tasks = offered_count, "re-offered ready tasks");
            }
        });
    }

    /// Re-offers ready tasks bound for homes whose leader changed since they were offered.
    async fn check_home_epochs(&mut self) {
        let shards = self.fe.router.config().shards;
        let mut epochs: BTreeMap<u32, Epoch> = BTreeMap::new();
        for h in 0..shards {
            if let Some(e) = self.fe.router.home_epoch(h).await {
                epochs.insert(h, e);
            }
        }
        let led: Vec<u32> = self.led.keys().copied().collect();
        for shard in led {
            let view = self.fe.router.raft().view(shard);
            for (&h, &epoch) in &epochs {
                let known = self.fe.router.offered_epoch(shard, h);
                if known == Some(epoch) {
                    continue;
                }
                match store::ready_page(&view, Some(h), None, 1) {
                    Ok((page, _)) if page.is_empty() => {
                        self.fe.router.set_offered_epoch(shard, h, Some(epoch));
                    }
                    Ok(_) => {
                        tracing::debug!(shard, home = h, ?known, ?epoch, "task queue home moved: re-offering");
                        self.fe.router.set_offered_epoch(shard, h, Some(epoch));
                        self.spawn_reoffer(shard, Some(h));
                    }
                    Err(e) => self.fe.store_failed(shard, &e, "reading the ready index"),
                }
            }
        }
    }

    fn tell_parents(&self) {
        for &shard in self.led.keys() {
            match store::untold_children(&self.fe.router.raft().view(shard), 100) {
                Ok(children) => {
                    for child in children {
                        let fe = self.fe.clone();
                        tokio::spawn(async move { fe.tell_parent(shard, child).await });
                    }
                }
                Err(e) => self.fe.store_failed(shard, &e, "reading the closed-children index"),
            }
        }
    }

    /// Deletes closed runs older than their namespace's retention, on the shards this node leads.
    async fn enforce_retention(&self, now: u64) -> Result<(), String> {
        let pairs = self
            .fe
            .router
            .scan(crate::namespace::SYSTEM_SHARD, b"ns/name/", 100_000)
            .await
            .map_err(|s| s.message().to_string())?;
        let mut namespaces = BTreeSet::new();
        for (_, v) in pairs {
            let rec: crate::namespace::NamespaceRecord =
                postcard::from_bytes(&v).map_err(|e| format!("corrupt namespace record: {e}"))?;
            namespaces.insert((rec.id, rec.retention_ms));
        }
        for &shard in self.led.keys() {
            let view = self.fe.router.raft().view(shard);
            for (ns, retention_ms) in &namespaces {
                let closed = match store::closed_runs(&view, ns, now.saturating_sub(*retention_ms), RETENTION_BATCH) {
                    Ok(c) => c,
                    Err(e) => {
                        self.fe.store_failed(shard, &e, "reading the closed-run index");
                        continue;
                    }
                };
                for (_, run) in closed {
                    tracing::debug!(shard, workflow_id = %run.workflow_id, run_id = %run.run_id, "retention: deleting closed run");
                    let (fe, permits) = (self.fe.clone(), self.permits.clone());
                    tokio::spawn(async move {
                        let Ok(_permit) = permits.acquire_owned().await else { return };
                        if let Err(e) = fe.apply(shard, WorkflowCommand::DeleteRun { run }).await {
                            tracing::debug!(shard, error = %e, "retention delete not applied; the next pass retries");
                        }
                    });
                }
            }
        }
        Ok(())
    }
}

impl Frontend {
    /// A leader duty could not read its shard's state: damaged data here takes this replica out
    /// of the shard (another replica leads on); other errors are retried.
    fn store_failed(&self, shard: u32, e: &StoreError, doing: &str) {
        if e.is_corrupt() {
            let (raft, why) = (self.router.raft().clone(), format!("{doing}: {e}"));
            tokio::spawn(async move { raft.halt(shard, why).await });
        } else {
            tracing::warn!(shard, error = %e, "{doing} failed; retrying");
        }
    }
}
