//! Chaos-testing your own workflow code: a money transfer (two activities and a timer) runs on
//! a simulated 3-node Norn cluster while nodes crash, links break and workers die, and every
//! seed is held to Norn's invariants plus the scenario's own checks.
//!
//! ```sh
//! cargo run -p norn-sim --example chaos_transfer -- 5     # seeds 1..=5
//! ```

use std::time::Duration;

use norn_client::workflow::{ActivityOptions, WfContext, WfResult};
use norn_client::{ActivityContext, ApplicationError, RetryPolicy, StartOptions};
use norn_sim::{Fault, Scenario, SimConfig, Simulation, TASK_QUEUE};

fn options() -> ActivityOptions {
    ActivityOptions::start_to_close(Duration::from_secs(5))
        .retry(RetryPolicy { initial_interval: Duration::from_millis(200), ..Default::default() })
}

/// Debit, wait for the clearing window, credit; returns the amount credited.
async fn transfer(ctx: WfContext, amount: u64) -> WfResult<u64> {
    let debited: u64 = ctx.activity("debit", &amount, options()).await?;
    ctx.sleep(Duration::from_secs(2)).await?;
    let credited: u64 = ctx.activity("credit", &debited, options()).await?;
    Ok(credited)
}

async fn debit(ctx: ActivityContext, amount: u64) -> Result<u64, ApplicationError> {
    // The bank's API times out on the first try now and then; the retry policy handles it.
    if ctx.info().attempt == 1 && amount.is_multiple_of(300) {
        return Err(ApplicationError::new("bank timeout", "Timeout"));
    }
    Ok(amount)
}

async fn credit(_ctx: ActivityContext, amount: u64) -> Result<u64, ApplicationError> {
    Ok(amount)
}

/// Five transfers; each must credit exactly what it debited.
async fn scenario(s: Scenario) -> Result<(), String> {
    let mut handles = Vec::new();
    for i in 0..5u64 {
        let id = format!("transfer-{i}");
        handles.push((i * 100, s.start("transfer", &id, &(i * 100), StartOptions::new(id.clone(), TASK_QUEUE)).await));
        s.sleep(Duration::from_secs(3)).await;
    }
    for (amount, h) in handles {
        let credited: u64 = s.result(&h).await.map_err(|e| format!("{}: {e}", h.workflow_id()))?;
        if credited != amount {
            return Err(format!("{} credited {credited}, debited {amount}", h.workflow_id()));
        }
        s.completed();
    }
    Ok(())
}

/// The simulation of one seed.
pub fn simulation(seed: u64) -> Simulation {
    let config = SimConfig {
        fault_window: Duration::from_secs(30),
        ..SimConfig::new(seed).with_faults(&[Fault::Crash, Fault::Partition, Fault::WorkerCrash, Fault::Lossy])
    };
    Simulation::new(config)
        .workflow("transfer", transfer)
        .activity("debit", debit)
        .activity("credit", credit)
        .scenario(scenario)
}

fn main() {
    let seeds: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let mut failed = false;
    for seed in 1..=seeds {
        let r = simulation(seed).run();
        println!(
            "seed {seed}: {} transfers completed, {} faults, {} violations, {:.0} simulated s",
            r.completed,
            r.faults.len(),
            r.violations.len(),
            r.simulated.as_secs_f64()
        );
        for v in &r.violations {
            println!("  violation: {v}");
            failed = true;
        }
    }
    std::process::exit(i32::from(failed));
}
