//! Prometheus metrics, served as text on `metrics_addr` (`GET /metrics`).

use std::time::Duration;

use norn_raft::{RaftNode, Role};
use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The node's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    propose_seconds: Histogram,
    /// Time a task waited in matching for a poller, by kind (workflow, sticky, activity).
    pub task_wait_seconds: HistogramVec,
    /// Time from a poll taking a task to its response, by kind (recording the start, reads).
    pub poll_answer_seconds: HistogramVec,
    /// Polls from workers being served by this node now (long polls waiting included), by kind.
    polls_in_flight: IntGaugeVec,
    eager_activities: prometheus::IntCounter,
    wal_syncs: IntGauge,
    durable_writes: IntGauge,
    shard_leader: IntGaugeVec,
    shard_term: IntGaugeVec,
    shard_applied: IntGaugeVec,
    shard_committed: IntGaugeVec,
    disk_free_bytes: IntGauge,
    disk_writes_refused: IntGauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new(node_id: u64) -> Result<Self, prometheus::Error> {
        let registry =
            Registry::new_custom(Some("norn".into()), Some([("node".to_string(), node_id.to_string())].into()))?;
        let propose_seconds = Histogram::with_opts(
            HistogramOpts::new("propose_seconds", "Time from proposal to applied response on the leader")
                .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
        )?;
        let task_wait_seconds = task_wait_histogram()?;
        let poll_answer_seconds = HistogramVec::new(
            HistogramOpts::new(
                "poll_answer_seconds",
                "Time from a poll taking a task to its answer (start recorded, task read)",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            &["kind"],
        )?;
        registry.register(Box::new(task_wait_seconds.clone()))?;
        registry.register(Box::new(poll_answer_seconds.clone()))?;
        let polls_in_flight = IntGaugeVec::new(
            Opts::new("polls_in_flight", "Worker polls this node is serving now (waiting long polls included)"),
            &["kind"],
        )?;
        registry.register(Box::new(polls_in_flight.clone()))?;
        let eager_activities = prometheus::IntCounter::new(
            "eager_activities_total",
            "Activity tasks started with their workflow task's completion and returned in its answer",
        )?;
        registry.register(Box::new(eager_activities.clone()))?;
        let wal_syncs = IntGauge::new("wal_syncs_total", "WAL syncs performed by group commit")?;
        let durable_writes = IntGauge::new("durable_writes_total", "Log appends and votes made durable")?;
        let shard = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["shard"]);
        let shard_leader = shard("shard_is_leader", "1 if this node leads the shard")?;
        let shard_term = shard("shard_term", "Current Raft term of the shard")?;
        let shard_applied = shard("shard_applied_index", "Last applied log index of the shard")?;
        let shard_committed = shard("shard_committed_index", "Last committed log index of the shard")?;
        let disk_free_bytes = IntGauge::new("disk_free_bytes", "Free bytes of the data directory's file system")?;
        let disk_writes_refused =
            IntGauge::new("disk_writes_refused", "1 while new writes are refused for lack of disk space")?;
        registry.register(Box::new(disk_free_bytes.clone()))?;
        registry.register(Box::new(disk_writes_refused.clone()))?;
        registry.register(Box::new(propose_seconds.clone()))?;
        registry.register(Box::new(wal_syncs.clone()))?;
        registry.register(Box::new(durable_writes.clone()))?;
        registry.register(Box::new(shard_leader.clone()))?;
        registry.register(Box::new(shard_term.clone()))?;
        registry.register(Box::new(shard_applied.clone()))?;
        registry.register(Box::new(shard_committed.clone()))?;
        Ok(Self {
            registry,
            propose_seconds,
            task_wait_seconds,
            poll_answer_seconds,
            polls_in_flight,
            eager_activities,
            wal_syncs,
            durable_writes,
            shard_leader,
            shard_term,
            shard_applied,
            shard_committed,
            disk_free_bytes,
            disk_writes_refused,
        })
    }

    /// Records the data directory's free space and whether writes are refused.
    pub fn set_disk(&self, free_bytes: u64, refused: bool) {
        self.disk_free_bytes.set(i64::try_from(free_bytes).unwrap_or(i64::MAX));
        self.disk_writes_refused.set(i64::from(refused));
    }

    /// Records how long answering a poll took once it had a task.
    pub fn observe_poll_answer(&self, kind: &str, d: Duration) {
        self.poll_answer_seconds.with_label_values(&[kind]).observe(d.as_secs_f64());
    }

    /// Counts activity tasks handed out eagerly with a workflow task's completion.
    pub fn eager_activities(&self, n: usize) {
        self.eager_activities.inc_by(n as u64);
    }

    /// Counts a poll in flight until the returned guard drops.
    pub fn poll_in_flight(&self, kind: &str) -> PollGuard {
        PollGuard::new(self.polls_in_flight.with_label_values(&[kind]))
    }

    /// Records one proposal's latency.
    pub fn observe_propose(&self, d: Duration) {
        self.propose_seconds.observe(d.as_secs_f64());
    }

    /// Renders every metric in the text format, refreshing the Raft gauges from `raft`.
    pub fn render(&self, raft: &RaftNode) -> String {
        let (syncs, writes) = raft.sync_counts();
        self.wal_syncs.set(syncs as i64);
        self.durable_writes.set(writes as i64);
        for s in raft.status() {
            let l = [s.group.to_string()];
            let l = [l[0].as_str()];
            self.shard_leader.with_label_values(&l).set(i64::from(s.role == Role::Leader));
            self.shard_term.with_label_values(&l).set(s.term as i64);
            self.shard_applied.with_label_values(&l).set(s.applied_index as i64);
            self.shard_committed.with_label_values(&l).set(s.committed_index as i64);
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Serves `GET /metrics` on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener, raft: RaftNode) {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let body = self.render(&raft);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                // One request per connection; the request line is all we look at.
                let n = match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let head = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if head.starts_with("GET /metrics") {
                    ("200 OK", body)
                } else {
                    ("404 Not Found", "try GET /metrics\n".to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    }
}

/// The histogram of task waits in matching (unregistered until [`Metrics::new`] registers it).
pub fn task_wait_histogram() -> Result<HistogramVec, prometheus::Error> {
    HistogramVec::new(
        HistogramOpts::new("task_wait_seconds", "Time a ready task waited in matching for a poller")
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 18)?),
        &["kind"],
    )
}

/// Decrements its gauge when dropped.
pub struct PollGuard(IntGauge);

impl PollGuard {
    fn new(g: IntGauge) -> Self {
        g.inc();
        PollGuard(g)
    }
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
