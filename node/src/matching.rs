//! Matching: an in-memory index of ready tasks and waiting pollers per task queue, held by the
//! leader of the task queue's home shard. It holds no truth: a task is durable only in its run's
//! shard, and handing it out first commits `...TaskStarted` there, so a task this index loses is
//! re-added from shard state and a task it hands out twice is refused by the shard.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::history::store::RunKey;

/// Workflow or activity tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    /// Workflow tasks.
    Workflow,
    /// Activity tasks.
    Activity,
}

/// A task queue: namespace id, name, kind, and for a worker's sticky queue the normal queue it
/// belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueKey {
    /// Namespace id.
    pub namespace_id: String,
    /// Task queue name.
    pub name: String,
    /// Kind.
    pub kind: TaskKind,
    /// For a sticky queue, its normal queue's name (empty otherwise). A sticky queue lives with
    /// its normal queue, so its worker's sticky polls also take the normal queue's tasks when
    /// their own queue is empty.
    pub normal: String,
}

impl QueueKey {
    /// A normal (not sticky) queue.
    pub fn normal(namespace_id: impl Into<String>, name: impl Into<String>, kind: TaskKind) -> QueueKey {
        QueueKey { namespace_id: namespace_id.into(), name: name.into(), kind, normal: String::new() }
    }

    /// The normal queue of a sticky queue.
    pub fn normal_queue(&self) -> Option<QueueKey> {
        (!self.normal.is_empty()).then(|| QueueKey::normal(self.namespace_id.clone(), self.normal.clone(), self.kind))
    }

    /// The shard whose leader holds this queue's matching (a sticky queue's is its normal
    /// queue's).
    pub fn home_shard(&self, shards: u32) -> u32 {
        let name = if self.normal.is_empty() { &self.name } else { &self.normal };
        let activity = self.kind == TaskKind::Activity;
        norn_proto::placement::task_queue_shard(&self.namespace_id, name, activity, shards) as norn_raft::GroupId
    }
}

/// A ready task: where it lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskRef {
    /// The run's shard.
    pub shard: u32,
    /// The run.
    pub run: RunKey,
    /// Event id of the task's scheduled event (0 for a query).
    pub scheduled_id: i64,
    /// Set for a query task: answered by the worker, never recorded in the run.
    pub query: Option<QueryTask>,
}

/// A query waiting for a worker. Queries are not durable: a lost one times out at its caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueryTask {
    /// Unique id; the answer is matched to the waiting caller by it.
    pub id: String,
    /// The node where the caller waits.
    pub origin: u64,
    /// Encoded `WorkflowQuery`.
    pub query: Vec<u8>,
}

impl TaskRef {
    /// Key under which the queue refuses duplicates.
    fn dedupe_key(&self) -> (String, i64) {
        match &self.query {
            Some(q) => (format!("query/{}", q.id), 0),
            None => (self.run.run_id.clone(), self.scheduled_id),
        }
    }
}

/// A waiting poll: handed at most one task, from whichever of its queues has one first.
struct Waiter {
    tx: Mutex<Option<oneshot::Sender<(TaskRef, QueueKey)>>>,
}

impl Waiter {
    fn new() -> (Arc<Waiter>, oneshot::Receiver<(TaskRef, QueueKey)>) {
        let (tx, rx) = oneshot::channel();
        (Arc::new(Waiter { tx: Mutex::new(Some(tx)) }), rx)
    }

    /// Hands `task` of `from` over (`None`), or gives it back if this poll was served or went
    /// away.
    fn offer(&self, task: TaskRef, from: &QueueKey) -> Option<TaskRef> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        match tx {
            Some(tx) => tx.send((task, from.clone())).err().map(|(t, _)| t),
            None => Some(task),
        }
    }

    fn is_closed(&self) -> bool {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_none_or(|tx| tx.is_closed())
    }
}

#[derive(Default)]
struct Queue {
    /// Ready tasks, with when each was queued.
    tasks: VecDeque<(TaskRef, tokio::time::Instant)>,
    queued: BTreeSet<(String, i64)>,
    pollers: VecDeque<Arc<Waiter>>,
    /// Sticky polls of this (normal) queue's workers, waiting on their own queues: served after
    /// the queue's own pollers.
    stealers: VecDeque<Arc<Waiter>>,
    /// Identities of recent pollers, for DescribeTaskQueue.
    last_pollers: VecDeque<String>,
    /// When a poll last came for this queue.
    last_poll: Option<tokio::time::Instant>,
}

/// A sticky queue whose worker has not polled for this long is taken for gone: its tasks go to
/// the normal queue at once instead of waiting out the sticky timeout (as Temporal's matching
/// answers "sticky worker unavailable").
pub const STICKY_POLLER_GONE_AFTER: Duration = Duration::from_secs(10);

/// Bound on tasks indexed per queue; beyond it the oldest are dropped (they are re-added from
/// shard state when a leader rebuilds).
const TASKS_PER_QUEUE_MAX: usize = 100_000;

/// Puts back a task handed to a poll that was dropped before taking it.
struct PollGuard<'a> {
    matching: &'a Matching,
    key: &'a QueueKey,
    rx: Option<oneshot::Receiver<(TaskRef, QueueKey)>>,
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok((task, from)) = rx.try_recv() {
                self.matching.add(from, task);
            }
            self.matching.sweep(self.key);
            // The poller went away mid-poll (a worker shutting down cancels its polls): if no
            // other poll waits, a sticky task for this queue goes to the normal queue at once.
            if let Some(q) = self.matching.lock().get_mut(self.key) {
                if q.pollers.is_empty() {
                    q.last_poll = None;
                }
            }
        }
    }
}

/// A task taken from matching by a poll that has not yet recorded its start: if the poll is
/// dropped (the worker's connection went away) before the start is recorded, the task goes back
/// to its queue. Found by norn-jepsen: workflows stuck with a scheduled workflow task after
/// partitions cut their pollers.
pub struct Taken {
    matching: Matching,
    key: QueueKey,
    task: TaskRef,
    armed: bool,
}

impl Taken {
    /// Holds `task` taken from `key`.
    pub fn new(matching: &Matching, key: &QueueKey, task: TaskRef) -> Taken {
        Taken { matching: matching.clone(), key: key.clone(), task, armed: true }
    }

    /// The task.
    pub fn task(&self) -> &TaskRef {
        &self.task
    }

    /// The start is recorded (or the task is stale): nothing to put back.
    pub fn done(mut self) {
        self.armed = false;
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if self.armed {
            self.matching.add(self.key.clone(), self.task.clone());
        }
    }
}

/// The matching index of one node.
#[derive(Clone, Default)]
pub struct Matching {
    queues: Arc<Mutex<BTreeMap<QueueKey, Queue>>>,
    /// How long tasks wait for a poller, by kind.
    wait: Option<prometheus::HistogramVec>,
}

impl Matching {
    /// A matching index that records task waits in `wait`.
    pub fn with_metrics(wait: prometheus::HistogramVec) -> Matching {
        Matching { queues: Arc::default(), wait: Some(wait) }
    }

    fn observe_wait(&self, kind: TaskKind, waited: Duration) {
        if let Some(h) = &self.wait {
            let label = match kind {
                TaskKind::Workflow => "workflow",
                TaskKind::Activity => "activity",
            };
            h.with_label_values(&[label]).observe(waited.as_secs_f64());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<QueueKey, Queue>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers a ready task: to a waiting poller (the queue's own first, then its workers' sticky
    /// polls), or into the queue.
    pub fn add(&self, key: QueueKey, mut task: TaskRef) {
        let kind = key.kind;
        let mut queues = self.lock();
        let q = queues.entry(key.clone()).or_default();
        while let Some(p) = q.pollers.pop_front().or_else(|| q.stealers.pop_front()) {
            match p.offer(task, &key) {
                None => {
                    drop(queues);
                    self.observe_wait(kind, Duration::ZERO);
                    return;
                }
                Some(t) => task = t,
            }
        }
        if q.queued.insert(task.dedupe_key()) {
            q.tasks.push_back((task, tokio::time::Instant::now()));
            if q.tasks.len() > TASKS_PER_QUEUE_MAX {
                if let Some((old, _)) = q.tasks.pop_front() {
                    q.queued.remove(&old.dedupe_key());
                }
            }
        }
    }

    /// Offers a task for a sticky queue: taken (true) only if a worker polls that queue now or
    /// did lately; otherwise (false) it belongs on the normal queue.
    pub fn add_sticky(&self, key: QueueKey, task: TaskRef) -> bool {
        {
            let queues = self.lock();
            let alive = queues.get(&key).is_some_and(|q| {
                q.pollers.iter().any(|p| !p.is_closed())
                    || q.last_poll.is_some_and(|t| t.elapsed() < STICKY_POLLER_GONE_AFTER)
            });
            if !alive {
                return false;
            }
        }
        self.add(key, task);
        true
    }

    /// Waits up to `wait` for a task of `key`.
    pub async fn poll(&self, key: &QueueKey, identity: &str, wait: Duration) -> Option<TaskRef> {
        self.poll_from(key, identity, wait).await.map(|(t, _)| t)
    }

    /// Waits up to `wait` for a task of `key`, or, for a sticky queue whose own queue is empty,
    /// of its normal queue; returns the task and the queue it came from.
    pub async fn poll_from(&self, key: &QueueKey, identity: &str, wait: Duration) -> Option<(TaskRef, QueueKey)> {
        let normal = key.normal_queue();
        let rx = {
            let mut queues = self.lock();
            let q = queues.entry(key.clone()).or_default();
            q.last_poll = Some(tokio::time::Instant::now());
            if !identity.is_empty() && !q.last_pollers.iter().any(|p| p == identity) {
                q.last_pollers.push_back(identity.to_string());
                if q.last_pollers.len() > 32 {
                    q.last_pollers.pop_front();
                }
            }
            let mut found = q.tasks.pop_front().map(|(t, at)| (t, at, key.clone()));
            if found.is_none() {
                if let Some(n) = &normal {
                    found = queues.get_mut(n).and_then(|nq| nq.tasks.pop_front()).map(|(t, at)| (t, at, n.clone()));
                }
            }
            if let Some((t, queued_at, from)) = found {
                if let Some(q) = queues.get_mut(&from) {
                    q.queued.remove(&t.dedupe_key());
                }
                drop(queues);
                self.observe_wait(key.kind, queued_at.elapsed());
                return Some((t, from));
            }
            let (waiter, rx) = Waiter::new();
            queues.entry(key.clone()).or_default().pollers.push_back(waiter.clone());
            if let Some(n) = &normal {
                queues.entry(n.clone()).or_default().stealers.push_back(waiter);
            }
            rx
        };
        // If this poll is dropped (its caller went away) after a task was handed to it, the task
        // goes back to its queue instead of being lost with the channel.
        let mut guard = PollGuard { matching: self, key, rx: Some(rx) };
        let rx = guard.rx.as_mut()?;
        let out = match tokio::time::timeout(wait, &mut *rx).await {
            Ok(Ok(t)) => Some(t),
            Ok(Err(_)) => None,
            Err(_) => {
                // A task sent just as the wait ended is still ours.
                rx.close();
                let task = rx.try_recv().ok();
                // The timed-out poll's waiter, and any other whose poll went away, leave now
                // rather than when the next task arrives.
                self.sweep(key);
                task
            }
        };
        guard.rx = None;
        out
    }

    /// Drops the waiters of polls that ended from `key` (and its normal queue's stealers).
    fn sweep(&self, key: &QueueKey) {
        let mut queues = self.lock();
        if let Some(q) = queues.get_mut(key) {
            q.pollers.retain(|p| !p.is_closed());
        }
        if let Some(n) = key.normal_queue() {
            if let Some(q) = queues.get_mut(&n) {
                q.stealers.retain(|p| !p.is_closed());
            }
        }
    }

    /// Polls waiting on `key` now.
    pub fn waiting_pollers(&self, key: &QueueKey) -> usize {
        self.lock().get(key).map(|q| q.pollers.iter().filter(|p| !p.is_closed()).count()).unwrap_or(0)
    }

    /// Poll waiters held for `key`, live or not (what a leak would grow).
    pub fn held_pollers(&self, key: &QueueKey) -> usize {
        self.lock().get(key).map(|q| q.pollers.len() + q.stealers.len()).unwrap_or(0)
    }

    /// Removes every queue whose home is shard `home` (this node stopped leading it) and returns
    /// their tasks, so they can be handed to the new home leader. Waiting pollers are let go
    /// empty-handed; their next poll finds the new home.
    pub fn drain_home(&self, home: u32, shards: u32) -> Vec<(QueueKey, TaskRef)> {
        let mut queues = self.lock();
        let keys: Vec<QueueKey> = queues.keys().filter(|k| k.home_shard(shards) == home).cloned().collect();
        let mut out = Vec::new();
        for k in keys {
            if let Some(q) = queues.remove(&k) {
                out.extend(q.tasks.into_iter().map(|(t, _)| (k.clone(), t)));
            }
        }
        out
    }

    /// Identities of recent pollers of `key`.
    pub fn pollers(&self, key: &QueueKey) -> Vec<String> {
        self.lock().get(key).map(|q| q.last_pollers.iter().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> QueueKey {
        QueueKey::normal("ns", "q", TaskKind::Workflow)
    }

    fn task(n: i64) -> TaskRef {
        TaskRef {
            shard: 0,
            run: RunKey { namespace_id: "ns".into(), workflow_id: "w".into(), run_id: "r".into() },
            scheduled_id: n,
            query: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_go_to_waiting_pollers_then_queue_in_order_without_duplicates() {
        let m = Matching::default();
        let waiting = tokio::spawn({
            let m = m.clone();
            async move { m.poll(&key(), "a", Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        m.add(key(), task(1));
        assert_eq!(waiting.await.unwrap(), Some(task(1)));
        m.add(key(), task(2));
        m.add(key(), task(2));
        m.add(key(), task(3));
        assert_eq!(m.poll(&key(), "a", Duration::from_secs(1)).await, Some(task(2)));
        assert_eq!(m.poll(&key(), "a", Duration::from_secs(1)).await, Some(task(3)));
        assert_eq!(m.poll(&key(), "a", Duration::from_secs(1)).await, None, "empty after timeout");
        assert_eq!(m.pollers(&key()), vec!["a".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_out_poll_leaves_nothing_behind() {
        let m = Matching::default();
        for _ in 0..100 {
            assert_eq!(m.poll(&key(), "a", Duration::from_millis(10)).await, None);
        }
        assert_eq!(m.held_pollers(&key()), 0, "timed-out polls left their senders behind");
        // A poll dropped mid-wait (its caller went away) is swept by the next timeout.
        let dropped = tokio::spawn({
            let m = m.clone();
            async move { m.poll(&key(), "b", Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        dropped.abort();
        let _ = dropped.await;
        assert_eq!(m.poll(&key(), "c", Duration::from_millis(10)).await, None);
        assert_eq!(m.held_pollers(&key()), 0);
        assert_eq!(m.waiting_pollers(&key()), 0);
    }
}

#[cfg(test)]
mod requeue_tests {
    use super::*;

    fn key() -> QueueKey {
        QueueKey::normal("ns", "q", TaskKind::Workflow)
    }

    fn task(id: i64) -> TaskRef {
        TaskRef {
            shard: 0,
            run: crate::history::store::RunKey {
                namespace_id: "ns".into(),
                workflow_id: "w".into(),
                run_id: "r".into(),
            },
            scheduled_id: id,
            query: None,
        }
    }

    #[tokio::test]
    async fn a_task_handed_to_a_dropped_poll_or_an_unrecorded_start_goes_back_to_its_queue() {
        let m = Matching::default();
        // A poll waiting, handed a task, then dropped before it takes it.
        let waiting = {
            let m = m.clone();
            tokio::spawn(async move { m.poll(&key(), "w", Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        m.add(key(), task(2));
        let got = m.poll(&key(), "w", Duration::from_millis(100)).await;
        assert_eq!(got.map(|t| t.scheduled_id), Some(2), "the task was lost with the dropped poll");
        // A task taken but whose start was never recorded.
        m.add(key(), task(3));
        let t = m.poll(&key(), "w", Duration::from_millis(100)).await.unwrap();
        drop(Taken::new(&m, &key(), t));
        assert_eq!(m.poll(&key(), "w", Duration::from_millis(100)).await.map(|t| t.scheduled_id), Some(3));
        // A recorded start keeps it out.
        let t = m.poll(&key(), "w", Duration::from_millis(100)).await;
        assert!(t.is_none());
        m.add(key(), task(4));
        let t = m.poll(&key(), "w", Duration::from_millis(100)).await.unwrap();
        Taken::new(&m, &key(), t).done();
        assert!(m.poll(&key(), "w", Duration::from_millis(50)).await.is_none());
    }
}

#[cfg(test)]
mod sticky_tests {
    use super::*;

    fn key() -> QueueKey {
        QueueKey {
            namespace_id: "ns".into(),
            name: "worker-a-sticky".into(),
            kind: TaskKind::Workflow,
            normal: "q".into(),
        }
    }

    fn task(id: i64) -> TaskRef {
        TaskRef {
            shard: 0,
            run: RunKey { namespace_id: "ns".into(), workflow_id: "w".into(), run_id: "r".into() },
            scheduled_id: id,
            query: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_sticky_poll_takes_its_normal_queues_tasks_after_the_normal_polls() {
        let m = Matching::default();
        let normal = QueueKey::normal("ns", "q", TaskKind::Workflow);
        assert_eq!(key().home_shard(16), normal.home_shard(16), "a sticky queue lives with its normal queue");
        // A queued normal task: the sticky poll takes it, and says where from.
        m.add(normal.clone(), task(1));
        let (t, from) = m.poll_from(&key(), "a", Duration::from_secs(1)).await.unwrap();
        assert_eq!((t.scheduled_id, &from), (1, &normal));
        // Its own queue first.
        m.add(normal.clone(), task(2));
        assert!(m.add_sticky(key(), task(3)));
        assert_eq!(m.poll_from(&key(), "a", Duration::from_secs(1)).await.map(|(t, _)| t.scheduled_id), Some(3));
        assert_eq!(m.poll_from(&key(), "a", Duration::from_secs(1)).await.map(|(t, _)| t.scheduled_id), Some(2));
        // Waiting: a normal poll is served before a sticky one; the sticky one gets the next.
        let sticky = tokio::spawn({
            let m = m.clone();
            async move { m.poll_from(&key(), "a", Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        let plain = tokio::spawn({
            let (m, n) = (m.clone(), normal.clone());
            async move { m.poll(&n, "b", Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        m.add(normal.clone(), task(4));
        m.add(normal.clone(), task(5));
        assert_eq!(plain.await.unwrap().map(|t| t.scheduled_id), Some(4));
        let (t, from) = sticky.await.unwrap().unwrap();
        assert_eq!((t.scheduled_id, from), (5, normal.clone()));
        // A timed-out sticky poll leaves no waiter behind on either queue.
        assert_eq!(m.poll_from(&key(), "a", Duration::from_millis(10)).await, None);
        assert_eq!(m.held_pollers(&key()) + m.held_pollers(&normal), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sticky_queue_takes_tasks_only_while_its_worker_polls() {
        let m = Matching::default();
        assert!(!m.add_sticky(key(), task(1)), "no worker ever polled this sticky queue");
        // A poll that ends empty-handed keeps the queue alive for a while.
        assert_eq!(m.poll(&key(), "a", Duration::from_millis(10)).await, None);
        assert!(m.add_sticky(key(), task(2)));
        assert_eq!(m.poll(&key(), "a", Duration::from_millis(10)).await.map(|t| t.scheduled_id), Some(2));
        tokio::time::sleep(STICKY_POLLER_GONE_AFTER).await;
        assert!(!m.add_sticky(key(), task(3)), "the worker stopped polling long ago");
        // A waiting poll takes it at once; a poll cancelled mid-wait (the worker shut down)
        // leaves the queue dead at once.
        let waiting = tokio::spawn({
            let m = m.clone();
            async move { m.poll(&key(), "a", Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        assert!(m.add_sticky(key(), task(4)));
        assert_eq!(waiting.await.unwrap().map(|t| t.scheduled_id), Some(4));
        let cancelled = tokio::spawn({
            let m = m.clone();
            async move { m.poll(&key(), "a", Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        cancelled.abort();
        let _ = cancelled.await;
        assert!(!m.add_sticky(key(), task(5)), "the worker's last poll was cancelled");
    }
}
