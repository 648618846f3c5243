//! The RocksDB engine: one database per node, one column family per [`Cf`].

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, ReadOptions, WriteOptions, DB};

use crate::{Cf, Engine, Error, Kv, Op, Result, WriteBatch};

/// Tuning knobs for [`RocksEngine`].
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// Memtable size per column family, in bytes.
    pub write_buffer_bytes: usize,
    /// Background compaction and flush threads.
    pub background_jobs: i32,
    /// Tests only: keep written but unsynced WAL records inside the process until the next
    /// sync (RocksDB's manual WAL flush), so a killed process loses them as a machine that loses
    /// power loses its page cache. Anything acknowledged before its sync then shows as lost.
    pub lose_unsynced_on_kill: bool,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self { write_buffer_bytes: 64 << 20, background_jobs: 2, lose_unsynced_on_kill: false }
    }
}

/// Production engine over RocksDB.
pub struct RocksEngine {
    db: DB,
    path: PathBuf,
    poisoned: Mutex<Option<String>>,
}

fn io(what: &str, path: &Path, e: rocksdb::Error) -> Error {
    Error::Io(format!("{what} {}: {e}", path.display()))
}

impl RocksEngine {
    /// Opens (creating if needed) the database in `path`.
    pub fn open(path: &Path, options: &RocksOptions) -> Result<Self> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(options.background_jobs);
        db_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Keep the WAL ours to sync: every durable write is an explicit sync. Unsynced records
        // go to the OS at once (a killed process keeps them), unless a test asks to lose them.
        db_opts.set_manual_wal_flush(options.lose_unsynced_on_kill);
        // Recovery tolerates only a torn last record of a log (a crash while writing it, never
        // synced, never acknowledged). Corruption anywhere else refuses to open: RocksDB's
        // default (point in time) would silently drop every synced record after it, votes and
        // acknowledged entries included.
        db_opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            o.set_write_buffer_size(options.write_buffer_bytes);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| match e.kind() {
            rocksdb::ErrorKind::Corruption => Error::Corrupt {
                what: format!("the RocksDB store at {}", path.display()),
                detail: format!(
                    "{e}; refusing to start rather than drop synced records. Restore this node's data directory \
                     from a backup, or move it away and let the node catch up from its peers"
                ),
            },
            _ => io("open RocksDB at", path, e),
        })?;
        Ok(Self { db, path: path.to_path_buf(), poisoned: Mutex::new(None) })
    }

    fn cf(&self, cf: Cf) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| Error::Io(format!("column family {} missing in {}", cf.name(), self.path.display())))
    }

    fn check_poisoned(&self) -> Result<()> {
        match &*self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison(&self, why: String) -> Error {
        tracing::error!(path = %self.path.display(), error = %why, "storage write or sync failed; refusing all further writes until the node restarts");
        *self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        Error::Io(why)
    }

    fn poison_full(&self, why: String) -> Error {
        tracing::error!(path = %self.path.display(), error = %why, "the disk is full; refusing all further writes until the node restarts with space free");
        *self.poisoned.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        Error::Full(why)
    }
}

fn is_no_space(e: &rocksdb::Error) -> bool {
    let m = e.to_string();
    m.contains("No space left") || m.contains("NoSpace")
}

fn within_end(key: &[u8], end: Bound<&[u8]>) -> bool {
    match end {
        Bound::Included(e) => key <= e,
        Bound::Excluded(e) => key < e,
        Bound::Unbounded => true,
    }
}

fn within_start(key: &[u8], start: Bound<&[u8]>) -> bool {
    match start {
        Bound::Included(s) => key >= s,
        Bound::Excluded(s) => key > s,
        Bound::Unbounded => true,
    }
}

impl Engine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf)?, key).map_err(|e| io("read from", &self.path, e))
    }

    fn scan(&self, cf: Cf, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Vec<Kv>> {
        let mut opts = ReadOptions::default();
        if let Bound::Excluded(e) = end {
            opts.set_iterate_upper_bound(e.to_vec());
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf)?, opts);
        match start {
            Bound::Included(s) | Bound::Excluded(s) => it.seek(s),
            Bound::Unbounded => it.seek_to_first(),
        }
        let mut out = Vec::new();
        while out.len() < limit && it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !within_end(k, end) {
                break;
            }
            if within_start(k, start) {
                out.push((k.to_vec(), v.to_vec()));
            }
            it.next();
        }
        it.status().map_err(|e| io("scan", &self.path, e))?;
        Ok(out)
    }

    fn scan_rev(&self, cf: Cf, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Vec<Kv>> {
        let mut opts = ReadOptions::default();
        if let Bound::Included(s) = start {
            opts.set_iterate_lower_bound(s.to_vec());
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf)?, opts);
        match end {
            Bound::Included(e) | Bound::Excluded(e) => it.seek_for_prev(e),
            Bound::Unbounded => it.seek_to_last(),
        }
        let mut out = Vec::new();
        while out.len() < limit && it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !within_start(k, start) {
                break;
            }
            if within_end(k, end) {
                out.push((k.to_vec(), v.to_vec()));
            }
            it.prev();
        }
        it.status().map_err(|e| io("scan", &self.path, e))?;
        Ok(out)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        self.check_poisoned()?;
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.into_ops() {
            match op {
                Op::Put { cf, key, value } => wb.put_cf(self.cf(cf)?, key, value),
                Op::Delete { cf, key } => wb.delete_cf(self.cf(cf)?, key),
                Op::DeleteRange { cf, start, end } => {
                    if start < end {
                        wb.delete_range_cf(self.cf(cf)?, start, end)
                    }
                }
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        match self.db.write_opt(wb, &wo) {
            Ok(()) => Ok(()),
            // Whether any of it reached the WAL is unknown: nothing written after this point may
            // be acknowledged, synced or not.
            Err(e) if is_no_space(&e) => Err(self.poison_full(format!("write to {}: {e}", self.path.display()))),
            Err(e) => Err(self.poison(format!("write to {}: {e}", self.path.display()))),
        }
    }

    fn sync(&self) -> Result<()> {
        self.check_poisoned()?;
        self.db.flush_wal(true).map_err(|e| {
            let why = format!("fsync of the WAL in {}: {e}", self.path.display());
            if is_no_space(&e) {
                self.poison_full(why)
            } else {
                self.poison(why)
            }
        })
    }

    fn checkpoint(&self, dir: &Path) -> Result<()> {
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(|e| io("checkpoint of", &self.path, e))?;
        cp.create_checkpoint(dir).map_err(|e| io("checkpoint into", dir, e))
    }

    fn is_inline(&self) -> bool {
        false
    }

    fn files_dir(&self) -> Option<PathBuf> {
        // Beside the database directory: `DATA_DIR/db` and `DATA_DIR/snapshots`.
        Some(self.path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.path.clone()))
    }
}
