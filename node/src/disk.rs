//! The free-space reserve: a node stops taking new writes while the file system of its data
//! directory has less free space than `disk_reserve_bytes`, so that a full disk stops writes with a
//! clear answer instead of failing a RocksDB write (which poisons the store until a restart).
//! Reads go on; writes resume by themselves once space is freed (with a tenth of the reserve as
//! hysteresis). Raft replication into this node goes on (its peers decide), and RocksDB's own
//! out-of-space error stays the backstop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

/// How often free space is measured.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Where free space comes from (the file system, or a test's numbers).
pub type FreeBytes = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// Free space of the file system holding `dir`.
pub fn statvfs_free(dir: PathBuf) -> FreeBytes {
    // The field types differ between platforms.
    #[allow(clippy::useless_conversion)]
    Box::new(move || {
        let s = nix::sys::statvfs::statvfs(&dir).ok()?;
        Some(u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
    })
}

/// The node's free-space guard.
pub struct DiskGuard {
    node: u64,
    dir: PathBuf,
    reserve: u64,
    free: FreeBytes,
    low: AtomicBool,
    last_free: AtomicU64,
    /// Fault injection: report the disk full whatever the file system says.
    forced_full: AtomicBool,
}

impl DiskGuard {
    /// A guard for `dir` (the data directory of node `node`) keeping `reserve` bytes free.
    pub fn new(node: u64, dir: PathBuf, reserve: u64, free: FreeBytes) -> Arc<Self> {
        let g = Arc::new(Self {
            node,
            dir,
            reserve,
            free,
            low: AtomicBool::new(false),
            last_free: AtomicU64::new(u64::MAX),
            forced_full: AtomicBool::new(false),
        });
        g.check();
        g
    }

    /// Measures free space now and updates the state; returns whether writes are refused.
    pub fn check(&self) -> bool {
        let free = if self.forced_full.load(Ordering::Relaxed) { Some(0) } else { (self.free)() };
        let Some(free) = free else { return self.low.load(Ordering::Relaxed) };
        self.last_free.store(free, Ordering::Relaxed);
        let was_low = self.low.load(Ordering::Relaxed);
        let low = if was_low { free < self.reserve.saturating_add(self.reserve / 10) } else { free < self.reserve };
        if low != was_low {
            self.low.store(low, Ordering::Relaxed);
            if low {
                tracing::error!(node = self.node, dir = %self.dir.display(), free_bytes = free, reserve_bytes = self.reserve,
                    "disk nearly full: refusing new writes until space is freed; reads go on");
            } else {
                tracing::warn!(node = self.node, dir = %self.dir.display(), free_bytes = free, "disk space back above the reserve: accepting writes again");
            }
        }
        low
    }

    /// Fault injection (`--enable-fault-injection` only): with `on`, the disk reads as full until
    /// this is called again with `on` false. Takes effect at once.
    pub fn force_full(&self, on: bool) {
        self.forced_full.store(on, Ordering::Relaxed);
        self.check();
    }

    /// Free bytes at the last check.
    pub fn free_bytes(&self) -> u64 {
        self.last_free.load(Ordering::Relaxed)
    }

    /// Whether new writes are refused now.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// The answer to a write while the disk is below its reserve, if it is.
    pub fn refusal(&self) -> Option<Status> {
        self.is_low().then(|| {
            Status::resource_exhausted(format!(
                "node {} is refusing writes: its disk has {} MiB free in {}, below its {} MiB reserve \
                 (disk_reserve_bytes); free space there and writes resume by themselves; reads go on",
                self.node,
                self.free_bytes() >> 20,
                self.dir.display(),
                self.reserve >> 20
            ))
        })
    }

    /// Measures free space every second until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            self.check();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn refuses_below_the_reserve_and_resumes_above_it_with_hysteresis() {
        let free = Arc::new(AtomicU64::new(1000));
        let f = free.clone();
        let g = DiskGuard::new(1, "d".into(), 100, Box::new(move || Some(f.load(Ordering::Relaxed))));
        assert!(g.refusal().is_none());
        free.store(99, Ordering::Relaxed);
        assert!(g.check());
        let s = g.refusal().expect("refused below the reserve");
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("reads go on"), "{}", s.message());
        free.store(105, Ordering::Relaxed);
        assert!(g.check(), "still refused inside the hysteresis band");
        free.store(111, Ordering::Relaxed);
        assert!(!g.check(), "resumes once space is back");
        assert!(g.refusal().is_none());
        g.force_full(true);
        assert!(g.refusal().is_some(), "an injected full disk refuses at once");
        assert_eq!(g.free_bytes(), 0);
        g.force_full(false);
        assert!(g.refusal().is_none(), "and writes resume once it is lifted");
    }
}
