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

/// Why a command did not apply.
#[derive(Debug)]
pub enum ApplyError {
    /// The command is refused, identically on every replica: every write it made is rolled back
    /// and the proposer gets this response.
    Rejected(Vec<u8>),
    /// This replica cannot apply the command (a storage error, corrupt state): nothing of the
    /// apply batch is written, the batch is not marked applied, and the group halts on this
    /// replica with this message (it is never "applied" with different state than its peers).
    Fatal(String),
}

/// A deterministic state machine for one group. `apply` must depend only on the group's state
/// (read through `txn`) and the command: no clock, no randomness, no I/O. Each command is all or
/// nothing: its writes land only if it returns `Ok`.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one committed command and returns the response for the proposer.
    fn apply(&mut self, txn: &mut Txn<'_>, cmd: Applied<'_>) -> Result<Vec<u8>, ApplyError>;

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

/// Checks a stored state value against its key (see [`codec::seal_value`]).
pub(crate) fn open_stored(group: GroupId, key: &[u8], stored: &[u8]) -> norn_storage::Result<Vec<u8>> {
    codec::open_value(key, stored).map(<[u8]>::to_vec).map_err(|e| norn_storage::Error::Corrupt {
        what: format!("shard {group} state key {:?}", String::from_utf8_lossy(key)),
        detail: e.to_string(),
    })
}

/// Stored pairs of a group (full keys) as the group's keys and checked values.
fn open_pairs(group: GroupId, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> norn_storage::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    pairs
        .into_iter()
        .map(|(k, v)| {
            let key = k.get(4..).unwrap_or_default().to_vec();
            let value = open_stored(group, &key, &v)?;
            Ok((key, value))
        })
        .collect()
}

impl StateView for GroupView {
    fn get(&self, key: &[u8]) -> norn_storage::Result<Option<Vec<u8>>> {
        match self.engine.get(Cf::State, &keys::state_key(self.group, key))? {
            None => Ok(None),
            Some(v) => open_stored(self.group, key, &v).map(Some),
        }
    }

    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> norn_storage::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        open_pairs(self.group, self.engine.scan_prefix(Cf::State, &keys::state_key(self.group, prefix), limit)?)
    }
}

/// One page of a scan: the pairs, and whether more follow.
pub type ScanPage = (Vec<(Vec<u8>, Vec<u8>)>, bool);

impl GroupView {
    /// One page of the pairs whose key starts with `prefix`, after `after` (exclusive), in key
    /// order: at most `limit` pairs and about `bytes_max` bytes of keys and values (the pair that
    /// crosses it ends the page). Returns the pairs and whether more follow.
    pub fn scan_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        bytes_max: usize,
    ) -> norn_storage::Result<ScanPage> {
        /// Pairs read from the engine at a time.
        const CHUNK: usize = 64;
        let full = keys::state_key(self.group, prefix);
        let end = norn_storage::prefix_end(&full);
        let mut start = match after {
            Some(a) if a > prefix => keys::state_key(self.group, a),
            _ => full.clone(),
        };
        let mut exclusive = after.is_some_and(|a| a > prefix);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        loop {
            let lower = if exclusive { Bound::Excluded(start.as_slice()) } else { Bound::Included(start.as_slice()) };
            let upper = match &end {
                Some(e) => Bound::Excluded(e.as_slice()),
                None => Bound::Unbounded,
            };
            let chunk = self.engine.scan(Cf::State, lower, upper, CHUNK)?;
            let done = chunk.len() < CHUNK;
            for (k, v) in chunk {
                if out.len() >= limit.max(1) || (bytes >= bytes_max && !out.is_empty()) {
                    return Ok((out, true));
                }
                bytes = bytes.saturating_add(k.len() + v.len());
                start.clone_from(&k);
                let key = k.get(4..).unwrap_or_default().to_vec();
                let value = open_stored(self.group, &key, &v)?;
                out.push((key, value));
            }
            if done {
                return Ok((out, false));
            }
            exclusive = true;
        }
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

/// Read-your-writes access to one group's state during an apply batch. Writes of the command
/// being applied stay apart until it succeeds (`commit_command`) or is rolled back
/// (`rollback_command`), so a refused command leaves nothing behind.
pub struct Txn<'a> {
    group: GroupId,
    engine: &'a dyn Engine,
    /// Writes of the commands of this batch that applied.
    batch: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Writes of the command being applied.
    command: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    fn new(group: GroupId, engine: &'a dyn Engine) -> Self {
        Self { group, engine, batch: BTreeMap::new(), command: BTreeMap::new() }
    }

    /// Reads a key.
    pub fn get(&self, key: &[u8]) -> norn_storage::Result<Option<Vec<u8>>> {
        if let Some(v) = self.command.get(key).or_else(|| self.batch.get(key)) {
            return Ok(v.clone());
        }
        match self.engine.get(Cf::State, &keys::state_key(self.group, key))? {
            None => Ok(None),
            Some(v) => open_stored(self.group, key, &v).map(Some),
        }
    }

    /// Sets a key.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.command.insert(key.into(), Some(value.into()));
    }

    /// Removes a key.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.command.insert(key.into(), None);
    }

    /// Pairs whose key starts with `prefix`, in key order, at most `limit`.
    pub fn scan_prefix(&self, prefix: &[u8], limit: usize) -> norn_storage::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let full = keys::state_key(self.group, prefix);
        let pending = self.batch.len().saturating_add(self.command.len());
        let stored = self.engine.scan_prefix(Cf::State, &full, limit.saturating_add(pending))?;
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            open_pairs(self.group, stored)?.into_iter().map(|(k, v)| (k, Some(v))).collect();
        let end = norn_storage::prefix_end(prefix);
        let upper = match &end {
            Some(e) => Bound::Excluded(e.clone()),
            None => Bound::Unbounded,
        };
        for layer in [&self.batch, &self.command] {
            for (k, v) in layer.range((Bound::Included(prefix.to_vec()), upper.clone())) {
                merged.insert(k.clone(), v.clone());
            }
        }
        Ok(merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).take(limit).collect())
    }

    /// Keeps the current command's writes.
    fn commit_command(&mut self) {
        let command = std::mem::take(&mut self.command);
        self.batch.extend(command);
    }

    /// Drops the current command's writes.
    fn rollback_command(&mut self) {
        self.command.clear();
    }

    fn into_batch(self, batch: &mut WriteBatch) {
        debug_assert!(self.command.is_empty(), "a command's writes were neither kept nor dropped");
        for (k, v) in self.batch {
            let key = keys::state_key(self.group, &k);
            match v {
                Some(v) => batch.put(Cf::State, key, codec::seal_value(&k, &v)),
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

/// A committed command that this replica cannot apply.
#[derive(Debug, thiserror::Error)]
#[error("apply failed: {0}")]
struct ApplyFailed(String);

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
        let mut txn = Txn::new(self.group, &*self.engine);
        let mut responses = Vec::new();
        let mut applied = self.applied.clone();
        for entry in entries {
            let response = match &entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Vec::new()
                }
                EntryPayload::Normal(cmd) => {
                    let ts = cmd.timestamp_ms.max(applied.last_timestamp_ms);
                    applied.last_timestamp_ms = ts;
                    let mut answers = Vec::with_capacity(cmd.payloads.len());
                    for (position, payload) in cmd.payloads.iter().enumerate() {
                        let cmd = Applied {
                            group: self.group,
                            index: entry.log_id.index,
                            position: position as u32,
                            term: entry.log_id.leader_id.term,
                            timestamp_ms: ts,
                            payload,
                        };
                        let answer = match self.sm.apply(&mut txn, cmd) {
                            Ok(answer) => {
                                txn.commit_command();
                                answer
                            }
                            Err(ApplyError::Rejected(answer)) => {
                                txn.rollback_command();
                                answer
                            }
                            Err(ApplyError::Fatal(why)) => {
                                // Nothing of this batch is written or marked applied: the group
                                // stops here on this replica, loudly, instead of diverging.
                                tracing::error!(
                                    shard = self.group,
                                    index = entry.log_id.index,
                                    position,
                                    error = %why,
                                    "cannot apply a committed command; halting this shard on this node (its \
                                     peers go on); repair or replace this node's data directory"
                                );
                                return Err(sm_write(ApplyFailed(format!(
                                    "shard {} entry {} command {position}: {why}",
                                    self.group, entry.log_id.index
                                ))));
                            }
                        };
                        answers.push(answer);
                    }
                    answers
                }
            };
            if let Some(o) = &self.observer {
                o.applied(self.group, entry.log_id.index, entry.log_id.leader_id.term, entry_digest(&entry));
            }
            // The applied index only moves forward, one entry at a time.
            if let Some(prev) = applied.last_applied {
                assert!(entry.log_id.index > prev.index, "applied index went back: {prev} then {}", entry.log_id);
            }
            applied.last_applied = Some(entry.log_id);
            responses.push(response);
        }
        let mut batch = WriteBatch::new();
        txn.into_batch(&mut batch);
        batch.put(
            Cf::RaftMeta,
            keys::meta_key(self.group, keys::APPLIED),
            codec::encode("applied state", &applied).map_err(sm_write)?,
        );
        if let Some(committed) = self.progress.committed() {
            batch.put(
                Cf::RaftMeta,
                keys::meta_key(self.group, keys::COMMITTED),
                codec::encode("committed", &Some(committed)).map_err(sm_write)?,
            );
        }
        self.engine.write(batch, false).map_err(sm_write)?;
        self.applied = applied;
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
            // Values travel sealed as stored; a damaged one refuses the whole snapshot.
            open_stored(self.group, k, v).map_err(snap_read)?;
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
