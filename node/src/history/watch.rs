//! Wake-ups for history long polls. Every replica applies every command of its shards; after a
//! workflow command is applied, the node wakes the long polls waiting on that run, which then
//! re-read (linearizably). A poll on a node that hosts no replica of the run's shard is never
//! woken and falls back to a periodic re-read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A run's notifier and how many subscriptions share it.
type Entry = (Arc<Notify>, usize);

/// Per-run notifiers of one node.
#[derive(Clone, Default)]
pub struct RunWatch {
    runs: Arc<Mutex<BTreeMap<String, Entry>>>,
}

/// Interest in one run; dropping it forgets the run when nobody else waits on it.
pub struct Subscription {
    watch: RunWatch,
    run_id: String,
    notify: Arc<Notify>,
}

impl RunWatch {
    /// Registers interest in `run_id`.
    pub fn subscribe(&self, run_id: &str) -> Subscription {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let entry = runs.entry(run_id.to_string()).or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Subscription { watch: self.clone(), run_id: run_id.to_string(), notify: entry.0.clone() }
    }

    /// Wakes everyone waiting on `run_id`.
    pub fn notify(&self, run_id: &str) {
        if let Some((n, _)) = self.runs.lock().unwrap_or_else(|p| p.into_inner()).get(run_id) {
            n.notify_waiters();
        }
    }
}

/// The earliest new due time each shard's applies wrote into its due index, for the leader's
/// duties loop (a node-local side channel, like [`RunWatch`]): an earlier deadline than the one
/// the loop sleeps towards wakes it.
#[derive(Clone, Default)]
pub struct DueWatch {
    inner: Arc<(Mutex<BTreeMap<u32, u64>>, Notify)>,
}

impl DueWatch {
    /// Notes that `shard` has a run due at `due_ms`.
    pub fn note(&self, shard: u32, due_ms: u64) {
        let mut m = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(shard).or_insert(u64::MAX);
        if due_ms < *e {
            *e = due_ms;
            drop(m);
            self.inner.1.notify_one();
        }
    }

    /// Takes the noted due times.
    pub fn take(&self) -> BTreeMap<u32, u64> {
        std::mem::take(&mut *self.inner.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Resolves when a due time is noted.
    pub async fn changed(&self) {
        self.inner.1.notified().await;
    }
}

impl Subscription {
    /// The notifier to wait on (create the `notified()` future before re-reading).
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut runs = self.watch.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = runs.get_mut(&self.run_id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                runs.remove(&self.run_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn waiters_wake_on_their_run_only_and_entries_are_forgotten() {
        let w = RunWatch::default();
        let sub = w.subscribe("r1");
        {
            let notified = sub.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            w.notify("r2");
            assert!(tokio::time::timeout(Duration::from_millis(10), notified.as_mut()).await.is_err());
            w.notify("r1");
            assert!(tokio::time::timeout(Duration::from_millis(10), notified.as_mut()).await.is_ok());
        }
        drop(sub);
        assert!(w.runs.lock().unwrap().is_empty());
    }
}
