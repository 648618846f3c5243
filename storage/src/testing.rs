//! The conformance suite every [`Engine`] must pass, modelled on openraft's storage test suite:
//! one set of behavioural checks, run against each engine by a small [`Harness`].
//!
//! Each check panics with a message naming what broke; they are meant to be called from tests.

use std::ops::Bound;
use std::path::Path;

use crate::{Cf, Engine, WriteBatch};

/// How the suite opens, crashes and reopens one engine kind.
pub trait Harness {
    /// The engine under test.
    type E: Engine;
    /// Opens the engine on the harness's disk. Any engine opened before has been dropped.
    fn open(&mut self) -> Self::E;
    /// Simulates the process dying (the engine has been dropped). An engine that models
    /// durability drops unsynced writes here.
    fn crash(&mut self);
    /// True when [`Harness::crash`] loses writes that were not synced (the in-memory engine).
    fn loses_unsynced(&self) -> bool;
    /// Arranges for the next sync of the open engine to fail; false if the engine cannot.
    fn fail_next_sync(&mut self) -> bool;
    /// Opens a checkpoint written by [`Engine::checkpoint`].
    fn open_checkpoint(&mut self, dir: &Path) -> Box<dyn Engine>;
}

/// Runs every check, each on a fresh harness from `new`.
pub fn run_all<H: Harness>(mut new: impl FnMut() -> H) {
    put_get_delete(&mut new());
    batches_are_ordered_and_atomic(&mut new());
    column_families_are_isolated(&mut new());
    scan_bounds(&mut new());
    scan_rev_bounds(&mut new());
    scan_prefix_and_limit(&mut new());
    delete_range(&mut new());
    synced_writes_survive_crash(&mut new());
    unsynced_writes_are_lost_or_kept_whole(&mut new());
    failed_sync_poisons(&mut new());
    checkpoint_round_trip(&mut new());
}

fn put(e: &impl Engine, cf: Cf, k: &[u8], v: &[u8], sync: bool) {
    let mut b = WriteBatch::new();
    b.put(cf, k, v);
    e.write(b, sync).expect("write");
}

fn keys(kvs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Vec<u8>> {
    kvs.into_iter().map(|(k, _)| k).collect()
}

/// Point reads see puts and deletes.
pub fn put_get_delete<H: Harness>(h: &mut H) {
    let e = h.open();
    assert_eq!(e.get(Cf::State, b"a").unwrap(), None, "fresh engine is empty");
    put(&e, Cf::State, b"a", b"1", false);
    assert_eq!(e.get(Cf::State, b"a").unwrap().as_deref(), Some(&b"1"[..]));
    put(&e, Cf::State, b"a", b"2", false);
    assert_eq!(e.get(Cf::State, b"a").unwrap().as_deref(), Some(&b"2"[..]), "put overwrites");
    let mut b = WriteBatch::new();
    b.delete(Cf::State, b"a");
    e.write(b, false).unwrap();
    assert_eq!(e.get(Cf::State, b"a").unwrap(), None, "delete removes");
}

/// Later operations in a batch win over earlier ones, and a batch lands whole.
pub fn batches_are_ordered_and_atomic<H: Harness>(h: &mut H) {
    let e = h.open();
    let mut b = WriteBatch::new();
    b.put(Cf::State, b"k", b"first");
    b.put(Cf::State, b"k", b"second");
    b.put(Cf::State, b"gone", b"x");
    b.delete(Cf::State, b"gone");
    b.put(Cf::RaftLog, b"other", b"y");
    assert_eq!(b.len(), 5);
    e.write(b, true).unwrap();
    assert_eq!(e.get(Cf::State, b"k").unwrap().as_deref(), Some(&b"second"[..]));
    assert_eq!(e.get(Cf::State, b"gone").unwrap(), None);
    assert_eq!(e.get(Cf::RaftLog, b"other").unwrap().as_deref(), Some(&b"y"[..]));
}

/// The same key in two column families holds two values.
pub fn column_families_are_isolated<H: Harness>(h: &mut H) {
    let e = h.open();
    for (i, cf) in Cf::ALL.iter().enumerate() {
        put(&e, *cf, b"same", &[i as u8], false);
    }
    for (i, cf) in Cf::ALL.iter().enumerate() {
        assert_eq!(e.get(*cf, b"same").unwrap(), Some(vec![i as u8]), "{cf:?} sees its own value");
        assert_eq!(e.scan(*cf, Bound::Unbounded, Bound::Unbounded, 100).unwrap().len(), 1);
    }
}

fn fill(e: &impl Engine) {
    let mut b = WriteBatch::new();
    for k in [&b"b"[..], b"c", b"d", b"e"] {
        b.put(Cf::RaftLog, k, k);
    }
    e.write(b, false).unwrap();
}

/// Forward scans honour every kind of bound.
pub fn scan_bounds<H: Harness>(h: &mut H) {
    let e = h.open();
    fill(&e);
    let s = |start, end| keys(e.scan(Cf::RaftLog, start, end, 100).unwrap());
    use Bound::*;
    let v = |xs: &[&[u8]]| xs.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
    assert_eq!(s(Unbounded, Unbounded), v(&[b"b", b"c", b"d", b"e"]));
    assert_eq!(s(Included(&b"c"[..]), Excluded(&b"e"[..])), v(&[b"c", b"d"]));
    assert_eq!(s(Excluded(&b"c"[..]), Included(&b"e"[..])), v(&[b"d", b"e"]));
    assert_eq!(s(Included(&b"a"[..]), Included(&b"bb"[..])), v(&[b"b"]));
    assert_eq!(s(Included(&b"d"[..]), Excluded(&b"d"[..])), v(&[]), "empty range");
    assert_eq!(s(Included(&b"e"[..]), Included(&b"b"[..])), v(&[]), "inverted range");
    assert_eq!(s(Excluded(&b"e"[..]), Unbounded), v(&[]));
}

/// Reverse scans honour every kind of bound and return descending keys.
pub fn scan_rev_bounds<H: Harness>(h: &mut H) {
    let e = h.open();
    fill(&e);
    let s = |start, end| keys(e.scan_rev(Cf::RaftLog, start, end, 100).unwrap());
    use Bound::*;
    let v = |xs: &[&[u8]]| xs.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
    assert_eq!(s(Unbounded, Unbounded), v(&[b"e", b"d", b"c", b"b"]));
    assert_eq!(s(Included(&b"c"[..]), Excluded(&b"e"[..])), v(&[b"d", b"c"]));
    assert_eq!(s(Excluded(&b"c"[..]), Included(&b"e"[..])), v(&[b"e", b"d"]));
    assert_eq!(s(Unbounded, Excluded(&b"b"[..])), v(&[]));
    assert_eq!(s(Unbounded, Included(&b"cc"[..])), v(&[b"c", b"b"]));
    assert_eq!(keys(e.scan_rev(Cf::RaftLog, Unbounded, Unbounded, 1).unwrap()), v(&[b"e"]), "limit");
}

/// Prefix scans stop at the prefix's end and limits cut results.
pub fn scan_prefix_and_limit<H: Harness>(h: &mut H) {
    let e = h.open();
    let mut b = WriteBatch::new();
    b.put(Cf::State, vec![1, 0xff], b"x".to_vec());
    b.put(Cf::State, vec![1, 0xff, 0xff], b"x".to_vec());
    b.put(Cf::State, vec![1], b"x".to_vec());
    b.put(Cf::State, vec![2], b"x".to_vec());
    b.put(Cf::State, vec![0xff, 0xff], b"x".to_vec());
    e.write(b, false).unwrap();
    assert_eq!(keys(e.scan_prefix(Cf::State, &[1], 100).unwrap()), vec![vec![1], vec![1, 0xff], vec![1, 0xff, 0xff]]);
    assert_eq!(keys(e.scan_prefix(Cf::State, &[1, 0xff], 100).unwrap()), vec![vec![1, 0xff], vec![1, 0xff, 0xff]]);
    assert_eq!(keys(e.scan_prefix(Cf::State, &[0xff], 100).unwrap()), vec![vec![0xff, 0xff]], "all-0xff prefix");
    assert_eq!(e.scan_prefix(Cf::State, &[], 100).unwrap().len(), 5, "empty prefix is everything");
    assert_eq!(e.scan_prefix(Cf::State, &[1], 2).unwrap().len(), 2, "limit");
}

/// Range deletes remove `[start, end)` and nothing else.
pub fn delete_range<H: Harness>(h: &mut H) {
    let e = h.open();
    fill(&e);
    let mut b = WriteBatch::new();
    b.delete_range(Cf::RaftLog, b"c".to_vec(), b"e".to_vec());
    b.delete_range(Cf::RaftLog, b"z".to_vec(), b"a".to_vec()); // inverted: a no-op
    e.write(b, false).unwrap();
    assert_eq!(
        keys(e.scan(Cf::RaftLog, Bound::Unbounded, Bound::Unbounded, 100).unwrap()),
        vec![b"b".to_vec(), b"e".to_vec()]
    );
}

/// Synced writes, and writes followed by a sync, survive a crash and reopen.
pub fn synced_writes_survive_crash<H: Harness>(h: &mut H) {
    {
        let e = h.open();
        put(&e, Cf::RaftLog, b"synced", b"1", true);
        put(&e, Cf::RaftMeta, b"later-synced", b"2", false);
        e.sync().unwrap();
    }
    h.crash();
    let e = h.open();
    assert_eq!(e.get(Cf::RaftLog, b"synced").unwrap().as_deref(), Some(&b"1"[..]), "synced write lost");
    assert_eq!(e.get(Cf::RaftMeta, b"later-synced").unwrap().as_deref(), Some(&b"2"[..]), "write before sync lost");
}

/// After a crash, unsynced writes are lost (engines that model it) or kept, but always as a
/// prefix of whole batches: never a later batch without an earlier one, never half a batch.
pub fn unsynced_writes_are_lost_or_kept_whole<H: Harness>(h: &mut H) {
    {
        let e = h.open();
        put(&e, Cf::State, b"base", b"1", true);
        for i in 0..10u8 {
            let mut b = WriteBatch::new();
            b.put(Cf::State, vec![b'x', i], vec![i]);
            b.put(Cf::State, vec![b'y', i], vec![i]);
            e.write(b, false).unwrap();
        }
    }
    h.crash();
    let e = h.open();
    assert!(e.get(Cf::State, b"base").unwrap().is_some());
    let xs = e.scan_prefix(Cf::State, b"x", 100).unwrap();
    let ys = e.scan_prefix(Cf::State, b"y", 100).unwrap();
    assert_eq!(xs.len(), ys.len(), "half a batch survived");
    for (i, (k, _)) in xs.iter().enumerate() {
        assert_eq!(k, &vec![b'x', i as u8], "surviving batches are not a prefix");
    }
    if h.loses_unsynced() {
        assert!(xs.is_empty(), "this engine models durability, so unsynced writes must be lost");
    }
}

/// Once a sync fails, no later write or sync succeeds, and the failed data is not trusted.
pub fn failed_sync_poisons<H: Harness>(h: &mut H) {
    let e = h.open();
    if !h.fail_next_sync() {
        return;
    }
    put(&e, Cf::State, b"a", b"1", false);
    assert!(e.sync().is_err(), "injected failure must surface");
    let mut b = WriteBatch::new();
    b.put(Cf::State, b"b", b"2");
    assert!(e.write(b, true).is_err(), "writes after a failed sync must fail");
    assert!(e.sync().is_err(), "syncs after a failed sync must fail");
    drop(e);
    h.crash();
    let e = h.open();
    assert_eq!(e.get(Cf::State, b"b").unwrap(), None);
    put(&e, Cf::State, b"c", b"3", true);
    assert!(e.get(Cf::State, b"c").unwrap().is_some(), "a restarted engine works again");
}

/// A checkpoint opens as an engine with the same contents, unaffected by later writes.
pub fn checkpoint_round_trip<H: Harness>(h: &mut H) {
    let dir = std::env::temp_dir().join(format!("norn-storage-cp-{}-{}", std::process::id(), nonce()));
    let e = h.open();
    fill(&e);
    put(&e, Cf::State, b"s", b"1", true);
    e.checkpoint(&dir).unwrap();
    put(&e, Cf::State, b"after", b"2", true);
    let cp = h.open_checkpoint(&dir);
    assert_eq!(cp.get(Cf::State, b"s").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(cp.get(Cf::State, b"after").unwrap(), None, "checkpoint saw a later write");
    assert_eq!(cp.scan(Cf::RaftLog, Bound::Unbounded, Bound::Unbounded, 100).unwrap().len(), 4);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}

fn nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
