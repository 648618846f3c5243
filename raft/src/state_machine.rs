//! The replicated state machine: the [`StateMachine`] trait that the layer above implements, and
//! the adapter that runs it under openraft, keeping its data in the `state` column family.
//!
//! Applied data and the applied log id land in one unsynced batch: the log is durable, so after a
//! crash that loses the batch the entries are applied again from the log. A snapshot is written
//! and synced before openraft may purge the log behind it.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use norn_storage::{Cf, Engine, WriteBatch};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::codec;
use crate::group_commit::GroupCommit;
use crate::keys;
use crate::types::{Entry, GroupId, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// One committed command as the state machine sees it.
#[derive(Clone, Copy, Debug)]
pub struct Applied<'a> {
    /// The group (shard) the command belongs to.
    pub group: GroupId,
    /// Log index of the entry that carries the command.
    pub index: u64,
    /// The command's place among the entry's commands (0 for the first).
    pub position: u32,
    /// Term in which the command was proposed.
    pub term: u64,
    /// The leader's timestamp, made monotonic per group: never below an earlier command's.
    pub timestamp_ms: u64,
    /// The command as proposed.
    pub payload: &'a [u8],
}

/// A deterministic state machine for one group. `apply` must depend only on the group's state
/// (read through `txn`) and the command: no clock, no randomness, no I/O.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one committed command and returns the response for the proposer.
    fn apply(&mut self, txn: &mut Txn<'_>, cmd: Applied<'_>) -> Vec<u8>;

    /// Called after the group's state was replaced by a snapshot; drop any cached state.
    fn reset(&mut self) {}
}

/// Read access to one group's state: inside apply ([`Txn`]) or on a node ([`GroupView`]).
pub trait StateView {
    /// Reads a key.
    fn get(&self, key: &[u8]) -> norn_storage::Result<Option<Vec<u8>>>;
    /// Pairs whose key starts with `prefix`, in key order, at most `limit`.
    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> norn_storage::Result<Vec<(Vec<u8>, Vec<u8>)>>;
}

/// A group's state as applied on this node (current after [`crate::RaftNode::read_index`]).
pub struct GroupView {
    pub(crate) group: GroupId,
    pub(crate) engine: Arc<dyn Engine>,
}

impl StateView for GroupView {
    fn get(&self, key: &[u8]) -> norn_storage::Result<Option<Vec<u8>>> {
        self.engine.get(Cf::State, &keys::state_key(self.group, key))
    }

    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> norn_storage::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .engine
            .scan_prefix(Cf::State, &keys::state_key(self.group, prefix), limit)?
            .into_iter()
            .map(|(k, v)| (k[4..].to_vec(), v))
            .collect())
    }
}

impl StateView for Txn<'_> {
    fn get(&self, key: &[u8]) -> norn_storage::Result<Option<Vec<u8>>> {
        Txn::get(self, key)
    }

    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> norn_storage::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Txn::scan_prefix(self, prefix, limit)
    }
}

/// Read-your-writes access to one group's state during an apply batch.
pub struct Txn<'a> {
    group: GroupId,
    engine: &'a dyn Engine,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    /// Reads a key.
    pub fn get(&self, key: &[u8]) -> norn_storage::Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        self.engine.get(Cf::State, &keys::state_key(self.group, key))
    }

    /// Sets a key.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.overlay.insert(key.into(), Some(value.into()));
    }

    /// Removes a key.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.overlay.insert(key.into(), None);
    }

    /// Pairs whose key starts with `prefix`, in key order, at most `limit`.
    pub fn scan_prefix(&self, prefix: &[u8], limit: usize) -> norn_storage::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let full = keys::state_key(self.group, prefix);
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .engine
            .scan_prefix(Cf::State, &full, limit.saturating_add(self.overlay.len()))?
            .into_iter()
            .map(|(k, v)| (k[4..].to_vec(), Some(v)))
            .collect();
        let end = norn_storage::prefix_end(prefix);
        let upper = match &end {
            Some(e) => Bound::Excluded(e.clone()),
            None => Bound::Unbounded,
        };
        for (k, v) in self.overlay.range((Bound::Included(prefix.to_vec()), upper)) {
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).take(limit).collect())
    }

    fn into_batch(self, batch: &mut WriteBatch) {
        for (k, v) in self.overlay {
            let key = keys::state_key(self.group, &k);
            match v {
                Some(v) => batch.put(Cf::State, key, v),
                None => batch.delete(Cf::State, key),
            }
        }
    }
}

/// What the store remembers about applied entries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    last_timestamp_ms: u64,
}

/// A snapshot as stored and shipped: the group's data plus the applied state.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    applied: AppliedState,
    kvs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

fn sm_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}
fn sm_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}
fn snap_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_snapshot(None, &e).into()
}
fn snap_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

/// Progress of one group's state machine, readable without locks.
#[derive(Debug, Default)]
pub struct ApplyProgress {
    /// Index of the last applied entry (0 before any).
    pub applied_index: AtomicU64,
    /// Snapshots installed from a leader since start.
    pub snapshots_installed: AtomicU64,
    /// Snapshots built locally since start.
    pub snapshots_built: AtomicU64,
    /// The committed log id openraft last reported, not yet stored; written with the next
    /// apply batch.
    committed: std::sync::Mutex<Option<LogId>>,
    /// Index of the committed log id openraft last reported (0 before any).
    pub committed_index: AtomicU64,
}

impl ApplyProgress {
    pub(crate) fn set_committed(&self, committed: Option<LogId>) {
        self.committed_index.store(committed.map(|l| l.index).unwrap_or(0), Ordering::Release);
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = committed;
    }

    fn committed(&self) -> Option<LogId> {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// openraft's state-machine adapter over a [`StateMachine`].
pub struct SmStore {
    group: GroupId,
    engine: Arc<dyn Engine>,
    commit: GroupCommit,
    sm: Box<dyn StateMachine>,
    applied: AppliedState,
    progress: Arc<ApplyProgress>,
    applied_tx: watch::Sender<u64>,
    snapshot_seq: u64,
    observer: Option<Arc<dyn crate::node::ApplyObserver>>,
}

impl SmStore {
    pub(crate) fn open(
        group: GroupId,
        engine: Arc<dyn Engine>,
        commit: GroupCommit,
        sm: Box<dyn StateMachine>,
        progress: Arc<ApplyProgress>,
        applied_tx: watch::Sender<u64>,
        observer: Option<Arc<dyn crate::node::ApplyObserver>>,
    ) -> Result<Self, StorageError> {
        let applied = match engine.get(Cf::RaftMeta, &keys::meta_key(group, keys::APPLIED)).map_err(sm_read)? {
            Some(bytes) => codec::decode("applied state", &bytes).map_err(sm_read)?,
            None => AppliedState::default(),
        };
        let idx = applied.last_applied.map(|l| l.index).unwrap_or(0);
        progress.applied_index.store(idx, Ordering::Release);
        applied_tx.send_replace(idx);
        Ok(Self { group, engine, commit, sm, applied, progress, applied_tx, snapshot_seq: 0, observer })
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        match self.engine.get(Cf::RaftMeta, &keys::meta_key(self.group, keys::SNAPSHOT)).map_err(snap_read)? {
            None => Ok(None),
            Some(bytes) => codec::decode("stored snapshot", &bytes).map(Some).map_err(snap_read),
        }
    }

    fn set_applied_index(&self) {
        let idx = self.applied.last_applied.map(|l| l.index).unwrap_or(0);
        self.progress.applied_index.store(idx, Ordering::Release);
        self.applied_tx.send_replace(idx);
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Vec<u8>>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut txn = Txn { group: self.group, engine: &*self.engine, overlay: BTreeMap::new() };
        let mut responses = Vec::new();
        for entry in entries {
            let response = match &entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Vec::new()
                }
                EntryPayload::Normal(cmd) => {
                    let ts = cmd.timestamp_ms.max(self.applied.last_timestamp_ms);
                    self.applied.last_timestamp_ms = ts;
                    let mut answers = Vec::with_capacity(cmd.payloads.len());
                    for (position, payload) in cmd.payloads.iter().enumerate() {
                        let applied = Applied {
                            group: self.group,
                            index: entry.log_id.index,
                            position: position as u32,
                            term: entry.log_id.leader_id.term,
                            timestamp_ms: ts,
                            payload,
                        };
                        answers.push(self.sm.apply(&mut txn, applied));
                    }
                    answers
                }
            };
            if let Some(o) = &self.observer {
                o.applied(self.group, entry.log_id.index, entry.log_id.leader_id.term, entry_digest(&entry));
            }
            self.applied.last_applied = Some(entry.log_id);
            responses.push(response);
        }
        let mut batch = WriteBatch::new();
        txn.into_batch(&mut batch);
        batch.put(
            Cf::RaftMeta,
            keys::meta_key(self.group, keys::APPLIED),
            codec::encode("applied state", &self.applied).map_err(sm_write)?,
        );
        if let Some(committed) = self.progress.committed() {
            batch.put(
                Cf::RaftMeta,
                keys::meta_key(self.group, keys::COMMITTED),
                codec::encode("committed", &Some(committed)).map_err(sm_write)?,
            );
        }
        self.engine.write(batch, false).map_err(sm_write)?;
        self.set_applied_index();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Runs on the state machine's task, between applies: the copy taken here is consistent.
        self.snapshot_seq += 1;
        let kvs = self
            .engine
            .scan_prefix(Cf::State, &keys::group_prefix(self.group), usize::MAX)
            .map(|kvs| kvs.into_iter().map(|(k, v)| (k[4..].to_vec(), v)).collect());
        SnapshotBuilder {
            group: self.group,
            engine: self.engine.clone(),
            commit: self.commit.clone(),
            applied: self.applied.clone(),
            kvs,
            seq: self.snapshot_seq,
            progress: self.progress.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = codec::decode("received snapshot", &data).map_err(snap_read)?;
        let mut batch = WriteBatch::new();
        let prefix = keys::group_prefix(self.group);
        match norn_storage::prefix_end(&prefix) {
            Some(end) => batch.delete_range(Cf::State, prefix.to_vec(), end),
            None => {
                for (k, _) in self.engine.scan_prefix(Cf::State, &prefix, usize::MAX).map_err(snap_write)? {
                    batch.delete(Cf::State, k);
                }
            }
        }
        for (k, v) in &body.kvs {
            batch.put(Cf::State, keys::state_key(self.group, k), v.clone());
        }
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            last_timestamp_ms: body.applied.last_timestamp_ms,
        };
        batch.put(
            Cf::RaftMeta,
            keys::meta_key(self.group, keys::APPLIED),
            codec::encode("applied state", &applied).map_err(snap_write)?,
        );
        let stored = StoredSnapshot { meta: meta.clone(), data };
        batch.put(
            Cf::RaftMeta,
            keys::meta_key(self.group, keys::SNAPSHOT),
            codec::encode("stored snapshot", &stored).map_err(snap_write)?,
        );
        self.engine.write(batch, false).map_err(snap_write)?;
        self.commit.flush().await.map_err(snap_write)?;
        self.applied = applied;
        self.sm.reset();
        self.set_applied_index();
        self.progress.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(shard = self.group, last_log_id = ?meta.last_log_id, "installed snapshot from leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.stored_snapshot()?.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

/// FNV-1a of an entry's leader (openraft names a leader by term and node, so two leaders of one
/// term can write different entries at one index), kind, timestamp and payloads, for
/// [`crate::node::ApplyObserver`]. Computed only when an observer is set.
fn entry_digest(entry: &Entry) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&entry.log_id.leader_id.node_id.to_be_bytes());
    match &entry.payload {
        EntryPayload::Blank => eat(b"blank"),
        EntryPayload::Membership(m) => eat(format!("membership {m:?}").as_bytes()),
        EntryPayload::Normal(cmd) => {
            eat(&cmd.timestamp_ms.to_be_bytes());
            for p in &cmd.payloads {
                eat(&(p.len() as u64).to_be_bytes());
                eat(p);
            }
        }
    }
    h
}

/// Builds a snapshot from the copy taken by `get_snapshot_builder`.
pub struct SnapshotBuilder {
    group: GroupId,
    engine: Arc<dyn Engine>,
    commit: GroupCommit,
    applied: AppliedState,
    kvs: norn_storage::Result<Vec<(Vec<u8>, Vec<u8>)>>,
    seq: u64,
    progress: Arc<ApplyProgress>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let kvs = std::mem::replace(&mut self.kvs, Ok(Vec::new())).map_err(snap_read)?;
        let body = SnapshotBody { applied: self.applied.clone(), kvs };
        let data = codec::encode("snapshot", &body).map_err(snap_write)?;
        let last = self.applied.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.applied.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}-{}",
                self.group,
                last.map(|l| l.leader_id.term).unwrap_or(0),
                last.map(|l| l.index).unwrap_or(0),
                self.seq
            ),
        };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        let mut batch = WriteBatch::new();
        batch.put(
            Cf::RaftMeta,
            keys::meta_key(self.group, keys::SNAPSHOT),
            codec::encode("stored snapshot", &stored).map_err(snap_write)?,
        );
        self.engine.write(batch, false).map_err(snap_write)?;
        // The applied state up to `last` and the snapshot are durable before the log behind
        // them may be purged.
        self.commit.flush().await.map_err(snap_write)?;
        self.progress.snapshots_built.fetch_add(1, Ordering::Relaxed);
        tracing::info!(shard = self.group, snapshot = %meta.snapshot_id, bytes = data.len(), "built snapshot");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}
