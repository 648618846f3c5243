//! Replays the fuzzing corpus kept in the repository (`fuzz/corpus/<target>/`) through every
//! target, then a short run of mutated inputs: nothing may panic, and the history engine's
//! invariants must hold. The long runs are `norn debug fuzz` (docs/reliability.md).

use std::path::PathBuf;

fn corpus_root() -> PathBuf {
    // The directory cargo runs the test in, not the one it was built in: a test binary built in
    // another checkout sharing the target directory must read this checkout's corpus.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    PathBuf::from(manifest).join("../fuzz/corpus")
}

#[test]
fn the_corpus_replays_without_a_panic() {
    for t in norn_node::fuzz::TARGETS {
        let dir = corpus_root().join(t);
        let files = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert!(files > 0, "no corpus for {t} in {}", dir.display());
        let crashed = norn_node::fuzz::replay(t, &dir);
        assert!(crashed.is_empty(), "{t}: {crashed:?}");
    }
}

#[test]
fn a_short_mutation_run_finds_nothing() {
    let crashes = tempfile::tempdir().unwrap();
    for t in norn_node::fuzz::TARGETS {
        // The whole-node target makes real gRPC calls (long polls cut off at their deadline).
        let execs = if *t == "node" { 150 } else { 2_000 };
        let r = norn_node::fuzz::run(t, &corpus_root().join(t), &crashes.path().join(t), execs, 7).unwrap();
        assert!(r.crashes.is_empty(), "{t}: {:?}", r.crashes);
        assert!(r.execs >= execs);
    }
}

#[test]
fn the_harness_catches_and_saves_a_panicking_input() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("fine"), b"harmless").unwrap();
    assert!(norn_node::fuzz::replay("_selftest", &corpus).is_empty());
    std::fs::write(corpus.join("bad"), b"a boom here").unwrap();
    let crashed = norn_node::fuzz::replay("_selftest", &corpus);
    assert_eq!(crashed.len(), 1, "{crashed:?}");
    let r = norn_node::fuzz::run("_selftest", &corpus, &dir.path().join("crashes"), 10, 1).unwrap();
    assert!(!r.crashes.is_empty() && r.crashes[0].0.exists(), "{r:?}");
    assert!(norn_node::fuzz::run_one("no-such-target", b"").is_err());
}
