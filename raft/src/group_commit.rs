//! Group commit: one task per node makes the Raft appends of every group durable with one WAL
//! sync for as many appends as arrived while the previous sync ran.
//!
//! An append writes its entries to the store unsynced (so they are readable at once, as openraft
//! requires) and then queues a waiter here. The task takes every queued waiter, runs one
//! `Engine::sync`, and completes them all. A waiter is queued only after its write returned, and
//! the sync starts only after the waiter was taken, so the sync covers the write. A failed sync
//! fails every waiter and the engine stays poisoned, so nothing after it is ever acknowledged.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use norn_storage::Engine;
use openraft::storage::LogFlushed;
use tokio::sync::{mpsc, oneshot};

use crate::types::TypeConfig;

/// The most waiters one sync completes; more wait for the next sync.
const WAITERS_PER_SYNC_MAX: usize = 8192;
/// Queue bound: appenders wait when this many are queued.
const QUEUE_MAX: usize = 65536;

enum Waiter {
    Log(LogFlushed<TypeConfig>),
    Oneshot(oneshot::Sender<io::Result<()>>),
}

/// Counters for the benchmark and `/metrics`.
#[derive(Debug, Default)]
pub struct SyncStats {
    /// WAL syncs performed.
    pub syncs: AtomicU64,
    /// Durable writes (log appends, votes) completed.
    pub writes: AtomicU64,
    /// Time spent in WAL syncs, in microseconds.
    pub sync_busy_us: AtomicU64,
}

/// Handle to the node's group-commit task.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Waiter>,
    stats: Arc<SyncStats>,
}

impl GroupCommit {
    /// Starts the task on the current tokio runtime.
    pub fn start(engine: Arc<dyn Engine>, planted_skip_sync: bool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let stats = Arc::new(SyncStats::default());
        tokio::spawn(run(engine, rx, stats.clone(), planted_skip_sync));
        Self { tx, stats }
    }

    /// Counters of syncs and writes.
    pub fn stats(&self) -> &Arc<SyncStats> {
        &self.stats
    }

    /// Completes `callback` once every write made before this call is durable.
    pub(crate) async fn flush_then(&self, callback: LogFlushed<TypeConfig>) {
        if let Err(mpsc::error::SendError(Waiter::Log(cb))) = self.tx.send(Waiter::Log(callback)).await {
            cb.log_io_completed(Err(stopped()));
        }
    }

    /// Returns once every write made before this call is durable.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Waiter::Oneshot(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> io::Error {
    io::Error::other("group commit stopped: the node is shutting down")
}

async fn run(engine: Arc<dyn Engine>, mut rx: mpsc::Receiver<Waiter>, stats: Arc<SyncStats>, planted_skip_sync: bool) {
    let mut waiters = Vec::new();
    while let Some(first) = rx.recv().await {
        waiters.push(first);
        while waiters.len() < WAITERS_PER_SYNC_MAX {
            match rx.try_recv() {
                Ok(w) => waiters.push(w),
                Err(_) => break,
            }
        }
        let started = tokio::time::Instant::now();
        let result = if planted_skip_sync {
            // The planted bug (simulator tests only): acknowledge without making anything durable.
            Ok(())
        } else if engine.is_inline() {
            engine.sync()
        } else {
            let engine = engine.clone();
            match tokio::task::spawn_blocking(move || engine.sync()).await {
                Ok(r) => r,
                Err(e) => Err(norn_storage::Error::Io(format!("sync task failed: {e}"))),
            }
        };
        stats.sync_busy_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats.writes.fetch_add(waiters.len() as u64, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, waiters = waiters.len(), "WAL sync failed; failing all pending appends");
        }
        for w in waiters.drain(..) {
            let r = result.as_ref().map(|_| ()).map_err(|e| io::Error::other(e.to_string()));
            match w {
                Waiter::Log(cb) => cb.log_io_completed(r),
                Waiter::Oneshot(tx) => {
                    let _ = tx.send(r);
                }
            }
        }
    }
}
