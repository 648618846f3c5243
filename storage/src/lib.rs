//! Norn's storage layer: one trait for an ordered key-value store with column families, and two
//! engines behind it.
//!
//! - [`Engine`] is the trait. It names no RocksDB type, so code above it (`norn-raft`, `norn-node`)
//!   runs unchanged on either engine.
//! - [`RocksEngine`] (feature `rocksdb`, on by default) is the production engine: one RocksDB per
//!   node, one column family per [`Cf`].
//! - [`MemEngine`] is the simulation engine. It models durability: writes made since the last
//!   [`Engine::sync`] are lost when the simulator calls [`MemDisk::crash`].
//! - [`testing`] holds the conformance suite that both engines must pass.
//!
//! Durability contract: a write made with `sync = true`, or followed by a successful `sync()`,
//! survives a crash. Once a sync fails, the engine is *poisoned*: every later write and sync fails
//! too, so nothing written after an unknown-durability point is ever acknowledged.

mod batch;
mod error;
mod mem;
#[cfg(feature = "rocksdb")]
mod rocks;
pub mod testing;

use std::ops::Bound;
use std::path::Path;

pub use batch::{Op, WriteBatch};
pub use error::{Error, Result};
pub use mem::{MemDisk, MemEngine};
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksEngine, RocksOptions};

/// The column families every engine holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// Raft log entries: key = group id (u32 BE) ++ log index (u64 BE).
    RaftLog,
    /// Raft metadata per group: vote, committed, purged, applied, snapshot.
    RaftMeta,
    /// Replicated state-machine data, prefixed by group id.
    State,
    /// Node-local bookkeeping that is not replicated (cluster identity, config fingerprint).
    Local,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 4] = [Cf::RaftLog, Cf::RaftMeta, Cf::State, Cf::Local];

    /// The column family's on-disk name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => "raft_log",
            Cf::RaftMeta => "raft_meta",
            Cf::State => "state",
            Cf::Local => "local",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Cf::RaftLog => 0,
            Cf::RaftMeta => 1,
            Cf::State => 2,
            Cf::Local => 3,
        }
    }
}

/// A key-value pair as returned by scans.
pub type Kv = (Vec<u8>, Vec<u8>);

/// An ordered key-value store with column families, atomic batches and explicit durability.
///
/// All methods are blocking; they are short (memtable writes, point reads, bounded scans) except
/// [`Engine::sync`] and synced writes, which wait for the disk. Callers that must not block an
/// async runtime ask [`Engine::is_inline`] first and move those calls to a blocking thread.
pub trait Engine: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Returns the pairs whose keys fall in `[start, end)` bounds, in key order, at most `limit`.
    fn scan(&self, cf: Cf, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Vec<Kv>>;

    /// Returns the pairs whose keys fall in the bounds, in descending key order, at most `limit`.
    fn scan_rev(&self, cf: Cf, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Vec<Kv>>;

    /// Applies a batch atomically. With `sync`, returns only once the batch is durable.
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()>;

    /// Makes every write that completed before this call durable.
    fn sync(&self) -> Result<()>;

    /// Writes a consistent copy of the whole store into `dir` (which must not exist), from which
    /// an engine of the same kind can be opened.
    fn checkpoint(&self, dir: &Path) -> Result<()>;

    /// True when the engine never blocks on the disk (the in-memory engine): callers may call it
    /// directly from async code, and must, to stay deterministic in the simulator.
    fn is_inline(&self) -> bool;

    /// A directory beside the store for large files that do not belong in it (snapshot files),
    /// or `None` when the engine keeps everything in memory (the simulator's engine).
    fn files_dir(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// Returns every pair with the given prefix, in key order.
    fn scan_prefix(&self, cf: Cf, prefix: &[u8], limit: usize) -> Result<Vec<Kv>> {
        match prefix_end(prefix) {
            Some(end) => self.scan(cf, Bound::Included(prefix), Bound::Excluded(&end), limit),
            None => self.scan(cf, Bound::Included(prefix), Bound::Unbounded, limit),
        }
    }
}

/// The smallest key greater than every key that starts with `prefix`, or `None` if there is none
/// (the prefix is empty or all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
