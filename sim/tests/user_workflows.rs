//! The public API: a user's own workflows and scenario run under the simulator's faults and
//! checks (the `chaos_transfer` example), and a wrong result in the scenario is reported.

#[path = "../examples/chaos_transfer.rs"]
#[allow(dead_code)]
mod chaos_transfer;

use std::sync::Mutex;

use norn_sim::{SimConfig, Simulation, TASK_QUEUE};

/// One simulation at a time: a run owns the thread's seeded random source and clocks.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn users_workflows_run_clean_under_faults() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let r = chaos_transfer::simulation(2).run();
    assert!(r.violations.is_empty(), "{:#?}\nfaults: {:#?}", r.violations, r.faults);
    assert_eq!(r.completed, 5);
    assert!(!r.faults.is_empty());
}

#[test]
fn a_scenario_that_finds_a_wrong_result_is_a_violation() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    async fn echo(_ctx: norn_client::workflow::WfContext, n: u64) -> norn_client::workflow::WfResult<u64> {
        Ok(n + 1) // the bug the scenario must catch
    }
    let r = Simulation::new(SimConfig::new(1).with_faults(&[]))
        .workflow("echo", echo)
        .scenario(|s| async move {
            let h = s.start("echo", "echo-1", &41u64, norn_client::StartOptions::new("echo-1", TASK_QUEUE)).await;
            match s.result::<u64>(&h).await {
                Ok(41) => Ok(()),
                other => Err(format!("echo-1 returned {other:?}, expected 41")),
            }
        })
        .run();
    assert!(r.violations.iter().any(|v| v.contains("expected 41")), "{:#?}", r.violations);
}
