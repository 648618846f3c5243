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

    /// A killed process keeps the writes it handed to the OS, synced or not (the page cache
    /// outlives it); with `lose_unsynced_on_kill` (chaos runs) the unsynced ones die with it, as
    /// with a power loss. The test runs itself as a child process that writes and aborts.
    #[test]
    fn a_killed_process_loses_unsynced_writes_only_with_lose_unsynced_on_kill() {
        use norn_storage::{Cf, WriteBatch};
        let put = |e: &RocksEngine, k: &[u8], sync: bool| {
            let mut b = WriteBatch::new();
            b.put(Cf::State, k.to_vec(), b"v".to_vec());
            e.write(b, sync).unwrap();
        };
        if let Ok(path) = std::env::var("NORN_STORAGE_TEST_CHILD_DB") {
            let lose_unsynced_on_kill = std::env::var("NORN_STORAGE_TEST_CHILD_LOSE").is_ok();
            let options = RocksOptions { lose_unsynced_on_kill, ..Default::default() };
            let e = RocksEngine::open(Path::new(&path), &options).unwrap();
            put(&e, b"synced", true);
            put(&e, b"unsynced", false);
            // Dies without running a destructor, as a SIGKILL would.
            std::process::abort();
        }
        for lose in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("db");
            let mut child = std::process::Command::new(std::env::current_exe().unwrap());
            child
                .args(["--exact", "rocks::a_killed_process_loses_unsynced_writes_only_with_lose_unsynced_on_kill"])
                .args(["--nocapture", "--test-threads=1"])
                .env("NORN_STORAGE_TEST_CHILD_DB", &path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            if lose {
                child.env("NORN_STORAGE_TEST_CHILD_LOSE", "1");
            }
            let status = child.status().unwrap();
            assert!(!status.success(), "the child must die in the middle");
            let e = RocksEngine::open(&path, &RocksOptions::default()).unwrap();
            assert!(e.get(Cf::State, b"synced").unwrap().is_some(), "a synced write is lost (lose={lose})");
            let unsynced = e.get(Cf::State, b"unsynced").unwrap().is_some();
            assert_eq!(unsynced, !lose, "unsynced write kept: {unsynced}, with lose_unsynced_on_kill = {lose}");
        }
    }

    #[test]
    fn rocksdb_reports_a_corrupt_directory_instead_of_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"not a directory").unwrap();
        assert!(RocksEngine::open(&path, &RocksOptions::default()).is_err());
    }

    /// The WAL files of a closed RocksDB directory.
    fn wal_files(path: &Path) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        logs
    }

    #[test]
    fn rocksdb_refuses_to_open_over_a_corrupt_record_in_the_middle_of_its_wal() {
        use norn_storage::{Cf, WriteBatch};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let e = RocksEngine::open(&path, &RocksOptions::default()).unwrap();
            for i in 0..200u32 {
                let mut b = WriteBatch::new();
                b.put(Cf::RaftMeta, i.to_be_bytes(), vec![i as u8; 64]);
                e.write(b, true).unwrap();
            }
        }
        let wal = wal_files(&path).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
        let mut bytes = std::fs::read(&wal).unwrap();
        assert!(bytes.len() > 4096, "the synced writes are in the WAL ({} bytes)", bytes.len());
        // One flipped byte a third of the way in: every synced record after it must not be
        // dropped silently.
        let at = bytes.len() / 3;
        bytes[at] ^= 0x5a;
        std::fs::write(&wal, &bytes).unwrap();
        match RocksEngine::open(&path, &RocksOptions::default()) {
            Ok(e) => {
                let last = e.get(Cf::RaftMeta, &199u32.to_be_bytes()).unwrap();
                panic!("opened over a corrupt WAL record (last synced record present: {})", last.is_some());
            }
            Err(err) => {
                assert!(matches!(err, norn_storage::Error::Corrupt { .. }), "not reported as corruption: {err}");
                assert!(err.to_string().contains("refusing to start"), "unclear for the operator: {err}");
            }
        }
    }

    #[test]
    fn rocksdb_opens_over_a_torn_last_record() {
        use norn_storage::{Cf, WriteBatch};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let e = RocksEngine::open(&path, &RocksOptions::default()).unwrap();
            for i in 0..50u32 {
                let mut b = WriteBatch::new();
                b.put(Cf::RaftMeta, i.to_be_bytes(), vec![i as u8; 64]);
                e.write(b, true).unwrap();
            }
        }
        // A crash mid-write leaves a partial last record: that one was never acknowledged.
        let wal = wal_files(&path).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
        let bytes = std::fs::read(&wal).unwrap();
        std::fs::write(&wal, &bytes[..bytes.len() - 20]).unwrap();
        let e = RocksEngine::open(&path, &RocksOptions::default()).expect("a torn tail is tolerated");
        assert!(e.get(Cf::RaftMeta, &48u32.to_be_bytes()).unwrap().is_some());
    }
}
