//! Runs the storage conformance suite against both engines.

use std::path::{Path, PathBuf};

use norn_storage::testing::{run_all, Harness};
use norn_storage::{Engine, MemDisk, MemEngine};

struct Mem {
    disk: MemDisk,
    cps: Vec<MemDisk>,
}

impl Harness for Mem {
    type E = MemEngine;
    fn open(&mut self) -> MemEngine {
        MemEngine::open(&self.disk)
    }
    fn crash(&mut self) {
        self.disk.crash();
    }
    fn loses_unsynced(&self) -> bool {
        true
    }
    fn fail_next_sync(&mut self) -> bool {
        self.disk.fail_next_sync();
        true
    }
    fn open_checkpoint(&mut self, dir: &Path) -> Box<dyn Engine> {
        let (disk, engine) = MemEngine::open_checkpoint(dir).expect("open checkpoint");
        self.cps.push(disk);
        Box::new(engine)
    }
}

#[test]
fn memory_engine_conforms() {
    run_all(|| Mem { disk: MemDisk::new(), cps: Vec::new() });
}

#[cfg(feature = "rocksdb")]
mod rocks {
    use super::*;
    use norn_storage::{RocksEngine, RocksOptions};

    struct Rocks {
        dir: tempfile::TempDir,
    }

    impl Rocks {
        fn path(&self) -> PathBuf {
            self.dir.path().join("db")
        }
    }

    impl Harness for Rocks {
        type E = RocksEngine;
        fn open(&mut self) -> RocksEngine {
            RocksEngine::open(&self.path(), &RocksOptions::default()).expect("open rocksdb")
        }
        fn crash(&mut self) {}
        fn loses_unsynced(&self) -> bool {
            false
        }
        fn fail_next_sync(&mut self) -> bool {
            false
        }
        fn open_checkpoint(&mut self, dir: &Path) -> Box<dyn Engine> {
            Box::new(RocksEngine::open(dir, &RocksOptions::default()).expect("open checkpoint"))
        }
    }

    #[test]
    fn rocksdb_engine_conforms() {
        run_all(|| Rocks { dir: tempfile::tempdir().expect("tempdir") });
    }

    #[test]
    fn rocksdb_reports_a_corrupt_directory_instead_of_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"not a directory").unwrap();
        assert!(RocksEngine::open(&path, &RocksOptions::default()).is_err());
    }
}
