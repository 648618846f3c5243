//! The replicated state machine: the [`StateMachine`] trait that the layer above implements, and
//! the adapter that runs it under openraft, keeping its data in the `state` column family.
//!
//! Applied data and the applied log id land in one unsynced batch: the log is durable, so after a
//! crash that loses the batch the entries are applied again from the log. A snapshot is written
//! and synced before openraft may purge the log behind it. Snapshots are streamed to and from
//! files (see [`crate::snapshot`]) in bounded pieces, and installed into a fresh generation of the
//! group's keys that one synced write switches to.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use norn_storage::{Cf, Engine, WriteBatch};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::codec;
use crate::group_commit::GroupCommit;
use crate::keys;
use crate::snapshot::{SnapData, SnapError, SnapReader, SnapWriter};
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
    pub(crate) gen: Arc<AtomicU32>,
    pub(crate) engine: Arc<dyn Engine>,
}

impl GroupView {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        keys::state_key(self.group, self.gen.load(Ordering::Acquire), key)
    }
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
            let key = k.get(keys::STATE_PREFIX_BYTES..).unwrap_or_default().to_vec();
            let value = open_stored(group, &key, &v)?;
            Ok((key, value))
        })
        .collect()
}

impl StateView for GroupView {
    fn get(&self, key: &[u8]) -> norn_storage::Result<Option<Vec<u8>>> {
        match self.engine.get(Cf::State, &self.key(key))? {
            None => Ok(None),
            Some(v) => open_stored(self.group, key, &v).map(Some),
        }
    }

    fn scan_prefix(&self, prefix: &[u8], limit: usize) -> norn_storage::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        open_pairs(self.group, self.engine.scan_prefix(Cf::State, &self.key(prefix), limit)?)
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
        let full = self.key(prefix);
        let end = norn_storage::prefix_end(&full);
        let mut start = match after {
            Some(a) if a > prefix => self.key(a),
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
                let key = k.get(keys::STATE_PREFIX_BYTES..).unwrap_or_default().to_vec();
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
    gen: u32,
    engine: &'a dyn Engine,
    /// Writes of the commands of this batch that applied.
    batch: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Writes of the command being applied.
    command: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    fn new(group: GroupId, gen: u32, engine: &'a dyn Engine) -> Self {
        Self { group, gen, engine, batch: BTreeMap::new(), command: BTreeMap::new() }
    }

    /// Reads a key.
    pub fn get(&self, key: &[u8]) -> norn_storage::Result<Option<Vec<u8>>> {
        if let Some(v) = self.command.get(key).or_else(|| self.batch.get(key)) {
            return Ok(v.clone());
        }
        match self.engine.get(Cf::State, &keys::state_key(self.group, self.gen, key))? {
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
        let full = keys::state_key(self.group, self.gen, prefix);
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
            let key = keys::state_key(self.group, self.gen, &k);
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
    /// The generation of the group's keys in `state`.
    gen: u32,
}

/// A committed command that this replica cannot apply.
#[derive(Debug, thiserror::Error)]
#[error("apply failed: {0}")]
struct ApplyFailed(String);

/// What a snapshot file's header holds.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    group: GroupId,
    last_timestamp_ms: u64,
}

/// Where a snapshot's bytes are: a file in the group's snapshot directory, or (on the in-memory
/// engine) the bytes themselves.
#[derive(Clone, Serialize, Deserialize)]
enum SnapshotBytes {
    File(String),
    Mem(Vec<u8>),
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    bytes: SnapshotBytes,
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
    /// The generation readers use (shared with [`GroupView`]s).
    gen: Arc<AtomicU32>,
    /// Where snapshot files go; `None` keeps snapshots in memory (the in-memory engine).
    snap_dir: Option<PathBuf>,
    progress: Arc<ApplyProgress>,
    applied_tx: watch::Sender<u64>,
    snapshot_seq: u64,
    observer: Option<Arc<dyn crate::node::ApplyObserver>>,
}

/// Writes of a snapshot install go to the store in batches of about this many bytes.
const INSTALL_BATCH_BYTES: usize = 4 << 20;
/// Pairs read from the store at a time while building a snapshot.
const BUILD_PAGE: usize = 256;

impl SmStore {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        group: GroupId,
        engine: Arc<dyn Engine>,
        commit: GroupCommit,
        sm: Box<dyn StateMachine>,
        gen: Arc<AtomicU32>,
        progress: Arc<ApplyProgress>,
        applied_tx: watch::Sender<u64>,
        observer: Option<Arc<dyn crate::node::ApplyObserver>>,
    ) -> Result<Self, StorageError> {
        let applied: AppliedState =
            match engine.get(Cf::RaftMeta, &keys::meta_key(group, keys::APPLIED)).map_err(sm_read)? {
                Some(bytes) => codec::decode("applied state", &bytes).map_err(sm_read)?,
                None => AppliedState::default(),
            };
        gen.store(applied.gen, Ordering::Release);
        // Generations other than the applied one are what a crash mid-install left: drop them.
        let (live_start, live_end) = keys::gen_range(group, applied.gen);
        let group_end = keys::gen_range(group, u32::MAX).1;
        let mut b = WriteBatch::new();
        b.delete_range(Cf::State, group.to_be_bytes().to_vec(), live_start);
        b.delete_range(Cf::State, live_end, group_end);
        engine.write(b, false).map_err(sm_write)?;
        let snap_dir = engine.files_dir().map(|root| crate::snapshot::group_dir(&root.join("snapshots"), group));
        let idx = applied.last_applied.map(|l| l.index).unwrap_or(0);
        progress.applied_index.store(idx, Ordering::Release);
        applied_tx.send_replace(idx);
        let store =
            Self { group, engine, commit, sm, applied, gen, snap_dir, progress, applied_tx, snapshot_seq: 0, observer };
        store.remove_stale_files();
        Ok(store)
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        match self.engine.get(Cf::RaftMeta, &keys::meta_key(self.group, keys::SNAPSHOT)).map_err(snap_read)? {
            None => Ok(None),
            Some(bytes) => codec::decode("stored snapshot", &bytes).map(Some).map_err(snap_read),
        }
    }

    /// Deletes snapshot files the stored snapshot does not name (older ones, partial receives).
    fn remove_stale_files(&self) {
        let Some(dir) = &self.snap_dir else { return };
        let keep = match self.stored_snapshot() {
            Ok(Some(StoredSnapshot { bytes: SnapshotBytes::File(name), .. })) => Some(name),
            _ => None,
        };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if Some(&name) != keep.as_ref() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn set_applied_index(&self) {
        let idx = self.applied.last_applied.map(|l| l.index).unwrap_or(0);
        self.progress.applied_index.store(idx, Ordering::Release);
        self.applied_tx.send_replace(idx);
    }

    /// Opens stored snapshot bytes for openraft to stream.
    async fn open_bytes(&self, bytes: &SnapshotBytes) -> Result<SnapData, StorageError> {
        match (bytes, &self.snap_dir) {
            (SnapshotBytes::Mem(data), _) => Ok(SnapData::Mem(Cursor::new(data.clone()))),
            (SnapshotBytes::File(name), Some(dir)) => {
                let path = dir.join(name);
                let file = tokio::fs::File::open(&path).await.map_err(snap_read)?;
                Ok(SnapData::File { file, path })
            }
            (SnapshotBytes::File(name), None) => {
                Err(snap_read(SnapError::Corrupt(format!("snapshot file {name} on an engine without files"))))
            }
        }
    }
}

/// Writes generation `gen` of `group` as a snapshot to `out`, page by page.
fn write_snapshot<W: std::io::Write>(
    engine: &dyn Engine,
    group: GroupId,
    gen: u32,
    header: &[u8],
    out: W,
) -> Result<(W, u64), SnapError> {
    let mut w = SnapWriter::new(out, header)?;
    let (start, end) = keys::gen_range(group, gen);
    let mut from = start;
    let mut first = true;
    let mut count = 0u64;
    loop {
        let lower = if first { Bound::Included(from.as_slice()) } else { Bound::Excluded(from.as_slice()) };
        let page = engine
            .scan(Cf::State, lower, Bound::Excluded(end.as_slice()), BUILD_PAGE)
            .map_err(|e| SnapError::Io(std::io::Error::other(e.to_string())))?;
        first = false;
        let full = page.len() == BUILD_PAGE;
        for (k, v) in page {
            // A damaged value is never passed on: the build fails (and this replica halts).
            open_stored(group, &k[keys::STATE_PREFIX_BYTES..], &v).map_err(|e| SnapError::Corrupt(e.to_string()))?;
            w.record(&k[keys::STATE_PREFIX_BYTES..], &v)?;
            count += 1;
            from = k;
        }
        if !full {
            return Ok((w.finish()?, count));
        }
    }
}

/// Checks a snapshot end to end, then writes its records under generation `gen` of `group`, in
/// bounded batches (unsynced: nothing points at this generation until the caller switches).
fn install_records<R: std::io::Read>(
    engine: &dyn Engine,
    group: GroupId,
    gen: u32,
    open: impl Fn() -> Result<R, SnapError>,
) -> Result<SnapshotHeader, SnapError> {
    let (reader, header) = SnapReader::open(open()?)?;
    let header: SnapshotHeader =
        codec::decode("snapshot header", &header).map_err(|e| SnapError::Corrupt(e.to_string()))?;
    if header.group != group {
        return Err(SnapError::Corrupt(format!("a snapshot of shard {} sent to shard {group}", header.group)));
    }
    reader.verify()?;
    let io = |e: norn_storage::Error| SnapError::Io(std::io::Error::other(e.to_string()));
    let (start, end) = keys::gen_range(group, gen);
    let mut batch = WriteBatch::new();
    batch.delete_range(Cf::State, start, end);
    let mut bytes = 0usize;
    let (mut reader, _) = SnapReader::open(open()?)?;
    while let Some((k, v)) = reader.next_record()? {
        // Values travel sealed as stored; a damaged one refuses the whole snapshot.
        open_stored(group, &k, &v).map_err(|e| SnapError::Corrupt(e.to_string()))?;
        bytes += k.len() + v.len();
        batch.put(Cf::State, keys::state_key(group, gen, &k), v);
        if bytes >= INSTALL_BATCH_BYTES {
            engine.write(std::mem::take(&mut batch), false).map_err(io)?;
            bytes = 0;
        }
    }
    engine.write(batch, false).map_err(io)?;
    Ok(header)
}

/// A new file in `dir` named `name`, created for reading and writing.
async fn create_file(dir: &Path, name: &str) -> std::io::Result<(tokio::fs::File, PathBuf)> {
    tokio::fs::create_dir_all(dir).await?;
    let path = dir.join(name);
    let file = tokio::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).await?;
    Ok((file, path))
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
        let mut txn = Txn::new(self.group, self.applied.gen, &*self.engine);
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
        // Runs on the state machine's task, between applies: the state written here is the state
        // at `applied`, streamed page by page (for a file, on a blocking thread).
        self.snapshot_seq += 1;
        let last = self.applied.last_applied;
        let snapshot_id = format!(
            "{}-{}-{}-{}",
            self.group,
            last.map(|l| l.leader_id.term).unwrap_or(0),
            last.map(|l| l.index).unwrap_or(0),
            self.snapshot_seq
        );
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.applied.membership.clone(),
            snapshot_id: snapshot_id.clone(),
        };
        let header = SnapshotHeader { group: self.group, last_timestamp_ms: self.applied.last_timestamp_ms };
        let built = match codec::encode("snapshot header", &header) {
            Err(e) => Err(snap_write(e)),
            Ok(header) => {
                let (engine, group, gen) = (self.engine.clone(), self.group, self.applied.gen);
                match &self.snap_dir {
                    None => write_snapshot(&*engine, group, gen, &header, Vec::new())
                        .map(|(data, count)| (SnapshotBytes::Mem(data), count))
                        .map_err(snap_write),
                    Some(dir) => {
                        let (dir, name) = (dir.clone(), format!("built-{snapshot_id}.snap"));
                        tokio::task::spawn_blocking(move || -> Result<(SnapshotBytes, u64), SnapError> {
                            std::fs::create_dir_all(&dir)?;
                            let tmp = dir.join(format!("{name}.tmp"));
                            let file = std::fs::File::create(&tmp)?;
                            let (w, count) =
                                write_snapshot(&*engine, group, gen, &header, std::io::BufWriter::new(file))?;
                            let file = w.into_inner().map_err(|e| SnapError::Io(e.into_error()))?;
                            file.sync_all()?;
                            std::fs::rename(&tmp, dir.join(&name))?;
                            crate::snapshot::sync_dir(&dir)?;
                            Ok((SnapshotBytes::File(name), count))
                        })
                        .await
                        .map_err(|e| snap_write(std::io::Error::other(e.to_string())))
                        .and_then(|r| r.map_err(snap_write))
                    }
                }
            }
        };
        SnapshotBuilder {
            group: self.group,
            engine: self.engine.clone(),
            commit: self.commit.clone(),
            meta,
            built: Some(built),
            snap_dir: self.snap_dir.clone(),
            progress: self.progress.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapData>, StorageError> {
        match &self.snap_dir {
            None => Ok(Box::new(SnapData::Mem(Cursor::new(Vec::new())))),
            Some(dir) => {
                self.snapshot_seq += 1;
                let name = format!("incoming-{}.part", self.snapshot_seq);
                let (file, path) = create_file(dir, &name).await.map_err(snap_write)?;
                Ok(Box::new(SnapData::File { file, path }))
            }
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<SnapData>) -> Result<(), StorageError> {
        let (group, engine) = (self.group, self.engine.clone());
        let old_gen = self.applied.gen;
        let gen = old_gen.wrapping_add(1);
        // Check the whole snapshot, then write it under a new generation; the old state stays
        // whole until the switch below.
        let (header, bytes) = match *snapshot {
            SnapData::Mem(c) => {
                let data = c.into_inner();
                let header = install_records(&*engine, group, gen, || Ok(data.as_slice())).map_err(snap_read)?;
                (header, SnapshotBytes::Mem(data))
            }
            SnapData::File { file, path } => {
                file.sync_all().await.map_err(snap_write)?;
                drop(file);
                let dir =
                    self.snap_dir.clone().ok_or_else(|| snap_write(std::io::Error::other("no snapshot directory")))?;
                let name = format!("recv-{}.snap", meta.snapshot_id);
                let target = dir.join(&name);
                let header = tokio::task::spawn_blocking(move || -> Result<SnapshotHeader, SnapError> {
                    std::fs::rename(&path, &target)?;
                    crate::snapshot::sync_dir(&dir)?;
                    install_records(&*engine, group, gen, || Ok(std::io::BufReader::new(std::fs::File::open(&target)?)))
                })
                .await
                .map_err(|e| snap_write(std::io::Error::other(e.to_string())))?
                .map_err(snap_read)?;
                (header, SnapshotBytes::File(name))
            }
        };
        // The switch: applied state (naming the new generation) and the stored snapshot, synced.
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            last_timestamp_ms: header.last_timestamp_ms,
            gen,
        };
        let mut batch = WriteBatch::new();
        batch.put(
            Cf::RaftMeta,
            keys::meta_key(self.group, keys::APPLIED),
            codec::encode("applied state", &applied).map_err(snap_write)?,
        );
        let stored = StoredSnapshot { meta: meta.clone(), bytes };
        batch.put(
            Cf::RaftMeta,
            keys::meta_key(self.group, keys::SNAPSHOT),
            codec::encode("stored snapshot", &stored).map_err(snap_write)?,
        );
        self.engine.write(batch, false).map_err(snap_write)?;
        self.commit.flush().await.map_err(snap_write)?;
        self.gen.store(gen, Ordering::Release);
        self.applied = applied;
        // The old generation is unreachable now.
        let (start, end) = keys::gen_range(self.group, old_gen);
        let mut b = WriteBatch::new();
        b.delete_range(Cf::State, start, end);
        if let Err(e) = self.engine.write(b, false) {
            tracing::warn!(shard = self.group, error = %e, "could not drop the replaced state; the next start does");
        }
        self.remove_stale_files();
        self.sm.reset();
        self.set_applied_index();
        self.progress.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(shard = self.group, last_log_id = ?meta.last_log_id, "installed snapshot from leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        match self.stored_snapshot()? {
            None => Ok(None),
            Some(s) => Ok(Some(Snapshot { meta: s.meta, snapshot: Box::new(self.open_bytes(&s.bytes).await?) })),
        }
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

/// Records the snapshot `get_snapshot_builder` wrote.
pub struct SnapshotBuilder {
    group: GroupId,
    engine: Arc<dyn Engine>,
    commit: GroupCommit,
    meta: SnapshotMeta,
    built: Option<Result<(SnapshotBytes, u64), StorageError>>,
    snap_dir: Option<PathBuf>,
    progress: Arc<ApplyProgress>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (bytes, count) =
            self.built.take().unwrap_or_else(|| Err(snap_write(std::io::Error::other("snapshot built twice"))))?;
        let stored = StoredSnapshot { meta: self.meta.clone(), bytes: bytes.clone() };
        let mut batch = WriteBatch::new();
        batch.put(
            Cf::RaftMeta,
            keys::meta_key(self.group, keys::SNAPSHOT),
            codec::encode("stored snapshot", &stored).map_err(snap_write)?,
        );
        self.engine.write(batch, false).map_err(snap_write)?;
        // The applied state up to the snapshot and the snapshot are durable before the log behind
        // them may be purged.
        self.commit.flush().await.map_err(snap_write)?;
        self.progress.snapshots_built.fetch_add(1, Ordering::Relaxed);
        let data = match (&bytes, &self.snap_dir) {
            (SnapshotBytes::Mem(d), _) => SnapData::Mem(Cursor::new(d.clone())),
            (SnapshotBytes::File(name), Some(dir)) => {
                // Older snapshot files of the group are not needed any more.
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for e in entries.flatten() {
                        let n = e.file_name().to_string_lossy().into_owned();
                        if n != *name && n.starts_with("built-") {
                            let _ = std::fs::remove_file(e.path());
                        }
                    }
                }
                let path = dir.join(name);
                SnapData::File { file: tokio::fs::File::open(&path).await.map_err(snap_read)?, path }
            }
            (SnapshotBytes::File(_), None) => return Err(snap_read(std::io::Error::other("no snapshot directory"))),
        };
        tracing::info!(shard = self.group, snapshot = %self.meta.snapshot_id, records = count, "built snapshot");
        Ok(Snapshot { meta: self.meta.clone(), snapshot: Box::new(data) })
    }
}

/// Every group's state as stored by a node (current generation; values still sealed, to be
/// checked with [`codec::open_value`] by the caller), for tools and the simulator's checks.
pub fn stored_state(engine: &dyn Engine) -> norn_storage::Result<BTreeMap<GroupId, Vec<crate::snapshot::Pair>>> {
    let mut out = BTreeMap::new();
    for (k, v) in engine.scan_prefix(Cf::RaftMeta, &[], usize::MAX)? {
        if k.len() != 5 || k[4] != keys::APPLIED {
            continue;
        }
        let group = u32::from_be_bytes([k[0], k[1], k[2], k[3]]);
        let applied: AppliedState = codec::decode("applied state", &v).map_err(|e| norn_storage::Error::Corrupt {
            what: format!("shard {group} applied state"),
            detail: e.to_string(),
        })?;
        let (start, end) = keys::gen_range(group, applied.gen);
        let pairs = engine.scan(Cf::State, Bound::Included(&start), Bound::Excluded(&end), usize::MAX)?;
        let pairs = pairs.into_iter().map(|(k, v)| (k[keys::STATE_PREFIX_BYTES..].to_vec(), v)).collect();
        out.insert(group, pairs);
    }
    Ok(out)
}
