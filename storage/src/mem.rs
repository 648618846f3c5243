//! The in-memory engine used by the simulator. It models a disk with a volatile write cache:
//! writes are visible at once, but only writes covered by a sync survive [`MemDisk::crash`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Cf, Engine, Error, Kv, Op, Result, WriteBatch};

type Table = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
struct DiskState {
    /// What a crash leaves behind.
    durable: [Table; 4],
    /// What reads see.
    live: [Table; 4],
    /// Batches applied to `live` but not yet to `durable`, oldest first.
    unsynced: Vec<WriteBatch>,
    /// Bumped by every crash; engines opened before it stop working.
    generation: u64,
    /// Set after a failed sync (until the next crash, as a restarted process would clear it).
    poisoned: Option<String>,
    /// Fault injection: the next sync fails.
    fail_next_sync: bool,
    syncs: u64,
}

/// A simulated disk that outlives the engines opened on it, as a real disk outlives a process.
#[derive(Clone, Default)]
pub struct MemDisk {
    state: Arc<Mutex<DiskState>>,
}

impl MemDisk {
    /// A new, empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power loss or process kill: every write since the last sync is lost and every
    /// engine opened on this disk stops working.
    pub fn crash(&self) {
        let mut s = lock(&self.state);
        s.live = s.durable.clone();
        s.unsynced.clear();
        s.generation += 1;
        s.poisoned = None;
        s.fail_next_sync = false;
    }

    /// A crash in which the first `keep` unsynced batches had reached the disk anyway (a write
    /// cache that flushed part of its contents, in order): they survive, the rest is lost. A batch
    /// is kept whole or not at all, as a log's torn last record is dropped on recovery.
    pub fn crash_keeping(&self, keep: usize) {
        let mut s = lock(&self.state);
        let unsynced = std::mem::take(&mut s.unsynced);
        for batch in unsynced.iter().take(keep) {
            apply(&mut s.durable, batch);
        }
        drop(s);
        self.crash();
    }

    /// Writes since the last sync, in batches.
    pub fn unsynced_batches(&self) -> usize {
        lock(&self.state).unsynced.len()
    }

    /// Bit rot: flips bit `bit` of the value of the `pick`-th key (modulo their number) of `cf`
    /// among the synced data, in what reads see too. Returns the key, or `None` if `cf` is empty.
    pub fn flip_bit(&self, cf: Cf, pick: usize, bit: usize) -> Option<Vec<u8>> {
        let mut s = lock(&self.state);
        let n = s.durable[cf.index()].len();
        if n == 0 {
            return None;
        }
        let key = s.durable[cf.index()].keys().nth(pick % n)?.clone();
        let state = &mut *s;
        for table in [&mut state.durable[cf.index()], &mut state.live[cf.index()]] {
            if let Some(v) = table.get_mut(&key) {
                if !v.is_empty() {
                    let at = (bit / 8) % v.len();
                    v[at] ^= 1 << (bit % 8);
                }
            }
        }
        Some(key)
    }

    /// Makes the next sync fail, as a disk that returns EIO on fsync would.
    pub fn fail_next_sync(&self) {
        lock(&self.state).fail_next_sync = true;
    }

    /// Number of successful syncs so far.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }
}

/// An engine over a [`MemDisk`].
#[derive(Clone)]
pub struct MemEngine {
    disk: MemDisk,
    generation: u64,
}

impl MemEngine {
    /// Opens an engine on `disk`, as a process opening its data directory after a start.
    pub fn open(disk: &MemDisk) -> Self {
        let generation = lock(&disk.state).generation;
        Self { disk: disk.clone(), generation }
    }

    /// Opens a fresh disk holding the copy written by [`Engine::checkpoint`] into `dir`.
    pub fn open_checkpoint(dir: &Path) -> Result<(MemDisk, Self)> {
        let path = dir.join("mem-checkpoint");
        let bytes = std::fs::read(&path).map_err(|e| Error::Io(format!("read {}: {e}", path.display())))?;
        let tables = decode_tables(&bytes)?;
        let disk = MemDisk::new();
        {
            let mut s = lock(&disk.state);
            s.durable = tables.clone();
            s.live = tables;
        }
        let engine = Self::open(&disk);
        Ok((disk, engine))
    }

    fn state(&self) -> Result<MutexGuard<'_, DiskState>> {
        let s = lock(&self.disk.state);
        if s.generation != self.generation {
            return Err(Error::Io("the simulated node crashed; this engine handle is dead".into()));
        }
        Ok(s)
    }
}

fn lock(state: &Mutex<DiskState>) -> MutexGuard<'_, DiskState> {
    // A panic while holding this lock can only come from a bug in this file; the data is still
    // a valid map, so keep going rather than cascade the panic.
    state.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn apply(tables: &mut [Table; 4], batch: &WriteBatch) {
    for op in batch.ops() {
        match op {
            Op::Put { cf, key, value } => {
                tables[cf.index()].insert(key.clone(), value.clone());
            }
            Op::Delete { cf, key } => {
                tables[cf.index()].remove(key);
            }
            Op::DeleteRange { cf, start, end } => {
                if start < end {
                    let t = &mut tables[cf.index()];
                    let doomed: Vec<Vec<u8>> = t.range(start.clone()..end.clone()).map(|(k, _)| k.clone()).collect();
                    for k in doomed {
                        t.remove(&k);
                    }
                }
            }
        }
    }
}

fn owned(b: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn valid_range(start: &Bound<Vec<u8>>, end: &Bound<Vec<u8>>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s <= e,
        (Bound::Included(s), Bound::Excluded(e)) | (Bound::Excluded(s), Bound::Included(e)) => s < e,
        (Bound::Excluded(s), Bound::Excluded(e)) => s < e,
        _ => true,
    }
}

impl Engine for MemEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.state()?.live[cf.index()].get(key).cloned())
    }

    fn scan(&self, cf: Cf, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Vec<Kv>> {
        let s = self.state()?;
        let (start, end) = (owned(start), owned(end));
        if !valid_range(&start, &end) {
            return Ok(Vec::new());
        }
        Ok(s.live[cf.index()].range((start, end)).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn scan_rev(&self, cf: Cf, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Vec<Kv>> {
        let s = self.state()?;
        let (start, end) = (owned(start), owned(end));
        if !valid_range(&start, &end) {
            return Ok(Vec::new());
        }
        Ok(s.live[cf.index()].range((start, end)).rev().take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut s = self.state()?;
        if let Some(why) = &s.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        apply(&mut s.live, &batch);
        s.unsynced.push(batch);
        drop(s);
        if sync {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        let mut s = self.state()?;
        if let Some(why) = &s.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        if s.fail_next_sync {
            s.fail_next_sync = false;
            let why = "injected fsync failure".to_string();
            s.poisoned = Some(why.clone());
            return Err(Error::Io(why));
        }
        let pending = std::mem::take(&mut s.unsynced);
        for batch in &pending {
            apply(&mut s.durable, batch);
        }
        s.syncs += 1;
        Ok(())
    }

    fn checkpoint(&self, dir: &Path) -> Result<()> {
        let bytes = encode_tables(&self.state()?.live);
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("create {}: {e}", dir.display())))?;
        let path = dir.join("mem-checkpoint");
        std::fs::write(&path, bytes).map_err(|e| Error::Io(format!("write {}: {e}", path.display())))
    }

    fn is_inline(&self) -> bool {
        true
    }
}

fn encode_tables(tables: &[Table; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        for (k, v) in t {
            out.push(i as u8);
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
    }
    out
}

fn decode_tables(mut bytes: &[u8]) -> Result<[Table; 4]> {
    let corrupt = |detail: &str| Error::Corrupt { what: "memory-engine checkpoint".into(), detail: detail.into() };
    let mut tables: [Table; 4] = Default::default();
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Some(head)
    }
    fn take_len(bytes: &mut &[u8]) -> Option<usize> {
        let b = take(bytes, 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    while !bytes.is_empty() {
        let cf = take(&mut bytes, 1).ok_or_else(|| corrupt("truncated"))?[0] as usize;
        let table = tables.get_mut(cf).ok_or_else(|| corrupt("unknown column family"))?;
        let klen = take_len(&mut bytes).ok_or_else(|| corrupt("truncated key length"))?;
        let key = take(&mut bytes, klen).ok_or_else(|| corrupt("truncated key"))?.to_vec();
        let vlen = take_len(&mut bytes).ok_or_else(|| corrupt("truncated value length"))?;
        let value = take(&mut bytes, vlen).ok_or_else(|| corrupt("truncated value"))?.to_vec();
        table.insert(key, value);
    }
    Ok(tables)
}
