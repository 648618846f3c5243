//! One group's Raft log in the node's shared store: entries in `raft_log`, vote, committed and
//! purged markers in `raft_meta`. Appends are made durable by [`GroupCommit`].

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use norn_storage::{Cf, Engine, WriteBatch};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, StorageIOError};

use crate::codec;
use crate::group_commit::GroupCommit;
use crate::keys;
use crate::state_machine::ApplyProgress;
use crate::types::{Entry, GroupId, LogId, StorageError, TypeConfig, Vote};

/// Entries read per scan when openraft asks for a range.
const READ_ENTRIES_MAX: usize = 4096;

/// A group's log. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    engine: Arc<dyn Engine>,
    commit: GroupCommit,
    progress: Arc<ApplyProgress>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    pub(crate) fn new(
        group: GroupId,
        engine: Arc<dyn Engine>,
        commit: GroupCommit,
        progress: Arc<ApplyProgress>,
    ) -> Self {
        Self { group, engine, commit, progress }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        tag: u8,
        what: &'static str,
    ) -> Result<Option<T>, StorageError> {
        match self.engine.get(Cf::RaftMeta, &keys::meta_key(self.group, tag)).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => codec::decode(what, &bytes).map(Some).map_err(read_err),
        }
    }

    async fn write_durable(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.engine.write(batch, false).map_err(write_err)?;
        self.commit.flush().await.map_err(write_err)
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let start = keys::log_key(self.group, 0);
        let end = keys::log_key(self.group, u64::MAX);
        let last =
            self.engine.scan_rev(Cf::RaftLog, Bound::Included(&start), Bound::Included(&end), 1).map_err(read_err)?;
        match last.first() {
            None => Ok(None),
            Some((_, v)) => {
                let e: Entry = codec::decode("raft log entry", v).map_err(read_err)?;
                Ok(Some(e.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(keys::log_key(self.group, *i)),
            Bound::Excluded(i) => Bound::Excluded(keys::log_key(self.group, *i)),
            Bound::Unbounded => Bound::Included(keys::log_key(self.group, u64::MAX)),
        };
        let start = keys::log_key(self.group, start);
        let end_ref = match &end {
            Bound::Included(k) => Bound::Included(&k[..]),
            Bound::Excluded(k) => Bound::Excluded(&k[..]),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut from = start.to_vec();
        loop {
            let kvs =
                self.engine.scan(Cf::RaftLog, Bound::Included(&from), end_ref, READ_ENTRIES_MAX).map_err(read_err)?;
            let n = kvs.len();
            for (k, v) in kvs {
                let entry: Entry = codec::decode("raft log entry", &v).map_err(read_err)?;
                if keys::log_index(&k) != Some(entry.log_id.index) {
                    return Err(read_err(codec::CodecError::Truncated {
                        what: "raft log key/index mismatch",
                        len: k.len(),
                    }));
                }
                from = keys::log_key(self.group, entry.log_id.index.saturating_add(1)).to_vec();
                out.push(entry);
            }
            if n < READ_ENTRIES_MAX {
                return Ok(out);
            }
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(keys::PURGED, "purged log id")?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut b = WriteBatch::new();
        let bytes = codec::encode("vote", vote).map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        b.put(Cf::RaftMeta, keys::meta_key(self.group, keys::VOTE), bytes);
        self.write_durable(b).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(keys::VOTE, "vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Kept in memory and written with the state machine's next apply batch (unsynced, like
        // it): the stored marker only lags, and a lagging marker is re-learned from the leader.
        // A marker ahead of what was committed is never stored.
        self.progress.set_committed(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(keys::COMMITTED, "committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut b = WriteBatch::new();
        for e in entries {
            let bytes = codec::encode("raft log entry", &e).map_err(write_err)?;
            b.put(Cf::RaftLog, keys::log_key(self.group, e.log_id.index), bytes);
        }
        self.engine.write(b, false).map_err(write_err)?;
        self.commit.flush_then(callback).await;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Removes entries at and after `log_id.index`. Durable before returning, so a restart
        // cannot resurrect conflicting entries.
        let mut b = WriteBatch::new();
        b.delete_range(
            Cf::RaftLog,
            keys::log_key(self.group, log_id.index).to_vec(),
            keys::log_key(self.group, u64::MAX).to_vec(),
        );
        b.delete(Cf::RaftLog, keys::log_key(self.group, u64::MAX).to_vec());
        self.write_durable(b).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Removes entries up to and including `log_id.index`. The marker and the deletion land
        // in one batch; losing both to a crash only leaves extra entries behind.
        let mut b = WriteBatch::new();
        b.put(
            Cf::RaftMeta,
            keys::meta_key(self.group, keys::PURGED),
            codec::encode("purged log id", &log_id).map_err(write_err)?,
        );
        b.delete_range(
            Cf::RaftLog,
            keys::log_key(self.group, 0).to_vec(),
            keys::log_key(self.group, log_id.index.saturating_add(1)).to_vec(),
        );
        self.engine.write(b, false).map_err(write_err)
    }
}
