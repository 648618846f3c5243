//! Typed reads of a shard's workflow state from any node: the run state, the current run of a
//! workflow id, and history events, routed to the shard's leader (see [`Router`]) and decoded
//! here, so callers never see raw keys or encodings. A value that does not decode is
//! `DataLoss` naming its key.

use norn_proto::protos::temporal::api::history::v1::HistoryEvent;
use prost::Message;
use tonic::Status;

use super::state::RunState;
use super::store::{self, CurrentRun, RunKey};
use crate::routing::{ReadPage, Router};

fn corrupt(shard: u32, what: &str, key: &[u8], e: impl std::fmt::Display) -> Status {
    Status::data_loss(format!(
        "shard {shard}: corrupt {what} at key {}: {e}; the node's data needs repair",
        String::from_utf8_lossy(key)
    ))
}

impl Router {
    /// A run's state, linearizably.
    pub async fn read_run(&self, shard: u32, run: &RunKey) -> Result<Option<RunState>, Status> {
        let key = store::run_state_key(run);
        match self.read_key(shard, &key).await? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(|e| corrupt(shard, "run state", &key, e)),
        }
    }

    /// A run's state as this node's replica has applied it (`None` if this node holds no replica
    /// of `shard` or not the run): possibly stale, so callers check it shows what they wrote.
    pub fn read_run_here(&self, shard: u32, run: &RunKey) -> Option<RunState> {
        if !self.hosts(shard) {
            return None;
        }
        let key = store::run_state_key(run);
        let page = ReadPage { key: key.clone(), prefix: false, after: None, limit: 1, local: true };
        let (pairs, _) = self.read_here(shard, &page).ok()?;
        pairs.into_iter().next().and_then(|(_, v)| postcard::from_bytes(&v).ok())
    }

    /// A run's events after `after` up to `upto` from this node's replica, if it has them all
    /// (events never change once written, so any replica that has them has the right ones).
    pub fn read_events_here(&self, shard: u32, run_id: &str, after: i64, upto: i64) -> Option<Vec<HistoryEvent>> {
        if !self.hosts(shard) {
            return None;
        }
        let prefix = store::events_prefix(run_id);
        let mut from = (after > 0).then(|| store::history_event_key(run_id, after));
        let mut out: Vec<HistoryEvent> = Vec::new();
        'pages: loop {
            let page = ReadPage { key: prefix.clone(), prefix: true, after: from.take(), limit: 0, local: true };
            let (pairs, more) = self.read_here(shard, &page).ok()?;
            from = pairs.last().map(|(k, _)| k.clone());
            for (_, v) in pairs {
                let e = HistoryEvent::decode(v.as_slice()).ok()?;
                if e.event_id > upto {
                    break 'pages;
                }
                out.push(e);
            }
            if !more || from.is_none() {
                break;
            }
        }
        // Whole and in order from `after + 1` to `upto`, or not good enough.
        let whole = out.last().map(|e| e.event_id) == Some(upto)
            && out.first().map(|e| e.event_id) == Some(after + 1)
            && out.windows(2).all(|w| w[1].event_id == w[0].event_id + 1);
        whole.then_some(out)
    }

    /// The current (latest) run of a workflow id, linearizably.
    pub async fn read_current(
        &self,
        shard: u32,
        namespace_id: &str,
        workflow_id: &str,
    ) -> Result<Option<CurrentRun>, Status> {
        let key = store::current_key(namespace_id, workflow_id);
        match self.read_key(shard, &key).await? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(|e| corrupt(shard, "current-run record", &key, e)),
        }
    }

    /// One event of a run, linearizably.
    pub async fn read_event(&self, shard: u32, run_id: &str, event_id: i64) -> Result<Option<HistoryEvent>, Status> {
        let key = store::history_event_key(run_id, event_id);
        match self.read_key(shard, &key).await? {
            None => Ok(None),
            Some(v) => HistoryEvent::decode(v.as_slice()).map(Some).map_err(|e| corrupt(shard, "event", &key, e)),
        }
    }

    /// A run's events in order, read page by page (each page linearizable and bounded in size),
    /// at most `max`.
    pub async fn read_events(&self, shard: u32, run_id: &str, max: usize) -> Result<Vec<HistoryEvent>, Status> {
        self.read_events_after(shard, run_id, 0, max).await
    }

    /// A run's events after event `after` (0: from the first), as [`Router::read_events`].
    pub async fn read_events_after(
        &self,
        shard: u32,
        run_id: &str,
        after: i64,
        max: usize,
    ) -> Result<Vec<HistoryEvent>, Status> {
        let from = (after > 0).then(|| store::history_event_key(run_id, after));
        self.scan_after(shard, &store::events_prefix(run_id), from, max)
            .await?
            .into_iter()
            .map(|(k, v)| HistoryEvent::decode(v.as_slice()).map_err(|e| corrupt(shard, "event", &k, e)))
            .collect()
    }
}
