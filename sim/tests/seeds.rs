//! A fixed set of simulator seeds runs clean, and a seed replays to the same trace.

use std::sync::Mutex;

use norn_sim::{run, SimConfig};

/// One simulation at a time: a run owns the thread's seeded random source and clocks.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn fixed_seeds_on_three_nodes_have_no_violations() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for seed in 1..=3 {
        let r = run(&SimConfig::new(seed));
        assert!(r.violations.is_empty(), "seed {seed}: {:#?}\nfaults: {:#?}", r.violations, r.faults);
        assert!(!r.faults.is_empty(), "seed {seed} injected no fault");
        assert_eq!(r.completed, 8);
    }
}

#[test]
fn a_five_node_seed_has_no_violations() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let r = run(&SimConfig { nodes: 5, ..SimConfig::new(11) });
    assert!(r.violations.is_empty(), "{:#?}\nfaults: {:#?}", r.violations, r.faults);
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let a = run(&SimConfig::new(7));
    let b = run(&SimConfig::new(7));
    assert_eq!(a.faults, b.faults);
    assert_eq!(a.trace_hash, b.trace_hash, "traces differ:\n{:#?}\n{:#?}", a.trace, b.trace);
    let c = run(&SimConfig::new(8));
    assert_ne!(a.trace_hash, c.trace_hash, "another seed must give another run");
}
