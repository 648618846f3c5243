//! The engine's fault seam for chaos tests (`--enable-fault-injection` only): an [`Engine`]
//! wrapper that fails its next synced write or sync when told, as a disk whose fsync fails does.
//! The write itself reaches the store unsynced (it may or may not survive, as after a real failed
//! fsync), and from then on the store is poisoned like a real one: every write and sync fails
//! until the process restarts and recovers from what is on disk.

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use norn_storage::{Cf, Engine, Error, Kv, Result, WriteBatch};

/// The wrapper.
pub struct FaultSeam {
    inner: Arc<dyn Engine>,
    fail_next_sync: AtomicBool,
    poisoned: AtomicBool,
}

const WHY: &str = "fsync failure injected by fault injection";

impl FaultSeam {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Engine>) -> Arc<Self> {
        Arc::new(Self { inner, fail_next_sync: AtomicBool::new(false), poisoned: AtomicBool::new(false) })
    }

    /// Makes the next synced write or sync fail.
    pub fn fail_next_sync(&self) {
        tracing::warn!("fault injection: the next fsync fails");
        self.fail_next_sync.store(true, Ordering::SeqCst);
    }

    fn check(&self) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned(WHY.into()));
        }
        Ok(())
    }

    fn fail_now(&self) -> bool {
        let fail = self.fail_next_sync.swap(false, Ordering::SeqCst);
        if fail {
            self.poisoned.store(true, Ordering::SeqCst);
        }
        fail
    }
}

impl Engine for FaultSeam {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }

    fn scan(&self, cf: Cf, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Vec<Kv>> {
        self.inner.scan(cf, start, end, limit)
    }

    fn scan_rev(&self, cf: Cf, start: Bound<&[u8]>, end: Bound<&[u8]>, limit: usize) -> Result<Vec<Kv>> {
        self.inner.scan_rev(cf, start, end, limit)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        self.check()?;
        if sync && self.fail_now() {
            // Written, never synced: whether it survives is up to the page cache.
            self.inner.write(batch, false)?;
            return Err(Error::Io(WHY.into()));
        }
        self.inner.write(batch, sync)
    }

    fn sync(&self) -> Result<()> {
        self.check()?;
        if self.fail_now() {
            return Err(Error::Io(WHY.into()));
        }
        self.inner.sync()
    }

    fn checkpoint(&self, dir: &Path) -> Result<()> {
        self.inner.checkpoint(dir)
    }

    fn is_inline(&self) -> bool {
        self.inner.is_inline()
    }

    fn files_dir(&self) -> Option<std::path::PathBuf> {
        self.inner.files_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &[u8]) -> WriteBatch {
        let mut b = WriteBatch::default();
        b.put(Cf::State, k, b"v");
        b
    }

    #[test]
    fn an_injected_fsync_failure_poisons_the_store_until_restart() {
        let disk = norn_storage::MemDisk::new();
        let seam = FaultSeam::new(Arc::new(norn_storage::MemEngine::open(&disk)));
        seam.write(put(b"a"), true).unwrap();
        seam.fail_next_sync();
        assert!(matches!(seam.write(put(b"b"), true), Err(Error::Io(_))));
        assert!(matches!(seam.write(put(b"c"), false), Err(Error::Poisoned(_))), "poisoned after the failure");
        assert!(matches!(seam.sync(), Err(Error::Poisoned(_))));
        assert!(seam.get(Cf::State, b"a").unwrap().is_some(), "reads go on");
        // After a restart (a new engine on the same disk) what was synced is there.
        let again = FaultSeam::new(Arc::new(norn_storage::MemEngine::open(&disk)));
        assert!(again.get(Cf::State, b"a").unwrap().is_some());
        again.write(put(b"d"), true).unwrap();
    }
}
