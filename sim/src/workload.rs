//! The built-in workload: five workflow shapes that together use activities that fail and
//! retry, durable timers, signals, queries, updates, cancellation, child workflows and
//! continue-as-new, started over the fault window, each checked for its exact result.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use norn_client::workflow::{ActivityOptions, ChildOptions, WfContext, WfResult};
use norn_client::{ActivityContext, ApplicationError, Error, RetryPolicy, StartOptions};

use crate::config::SimConfig;
use crate::scenario::Scenario;
use crate::simulation::{Simulation, TASK_QUEUE};

/// A task queue no worker polls.
const IDLE_TASK_QUEUE: &str = "sim-nobody-polls";

/// The built-in simulation for `cfg` (what `norn-sim` runs).
pub fn builtin(cfg: SimConfig) -> Simulation {
    let (workflows, window, idle) = (cfg.workflows, cfg.fault_window, cfg.idle_workflows);
    Simulation::new(cfg)
        .workflow("sim_order", sim_order)
        .workflow("sim_parent", sim_parent)
        .workflow("sim_child", sim_child)
        .workflow("sim_counter", sim_counter)
        .workflow("sim_approval", sim_approval)
        .workflow("sim_sleeper", sim_sleeper)
        .activity("charge", charge)
        .scenario(move |s| drive(s, workflows, window, idle))
}

fn charge_options() -> ActivityOptions {
    ActivityOptions::start_to_close(Duration::from_secs(10)).retry(RetryPolicy {
        initial_interval: Duration::from_millis(500),
        maximum_interval: Some(Duration::from_secs(5)),
        ..Default::default()
    })
}

/// Fails its first attempt for odd inputs (the server retries it), then charges `n * 10`.
async fn charge(ctx: ActivityContext, n: u64) -> Result<u64, ApplicationError> {
    if n % 2 == 1 && ctx.info().attempt == 1 {
        return Err(ApplicationError::new(format!("card {n} declined once"), "Declined"));
    }
    Ok(n * 10)
}

/// An activity, a durable timer, then a signal: `n * 10 + bonus`.
async fn sim_order(ctx: WfContext, n: u64) -> WfResult<u64> {
    let charged: u64 = ctx.activity("charge", &n, charge_options()).await?;
    ctx.sleep(Duration::from_secs(1 + n % 3)).await?;
    let bonus: u64 = ctx.signal_channel::<u64>("bonus").recv().await?;
    Ok(charged + bonus)
}

/// An activity and a timer: `n * 10`.
async fn sim_child(ctx: WfContext, n: u64) -> WfResult<u64> {
    let charged: u64 = ctx.activity("charge", &n, charge_options()).await?;
    ctx.sleep(Duration::from_secs(1)).await?;
    Ok(charged)
}

/// A child workflow (on its own shard, most likely): the child's result plus one.
async fn sim_parent(ctx: WfContext, n: u64) -> WfResult<u64> {
    let c: u64 = ctx.child_workflow("sim_child", &n, ChildOptions::default()).await?;
    Ok(c + 1)
}

/// Four runs chained by continue-as-new, each sleeping; answers the query `iteration`. The last
/// run returns `n + 0 + 1 + 2 + 3`.
async fn sim_counter(ctx: WfContext, (n, iteration, sum): (u64, u64, u64)) -> WfResult<u64> {
    ctx.query_handler("iteration", move |_: ()| iteration);
    ctx.sleep(Duration::from_millis(700)).await?;
    let sum = sum + iteration;
    if iteration < 3 {
        return Err(ctx.continue_as_new(&(n, iteration + 1, sum)));
    }
    Ok(n + sum)
}

/// Waits for the update `approve` (answered with twice its argument) and the signal `done`;
/// returns the approved amount plus 100.
async fn sim_approval(ctx: WfContext, _n: u64) -> WfResult<u64> {
    let approved = Rc::new(Cell::new(0u64));
    let a = approved.clone();
    ctx.update_handler("approve", move |_c: WfContext, v: u64| {
        let a = a.clone();
        async move {
            a.set(v);
            Ok(v * 2)
        }
    });
    let _: u64 = ctx.signal_channel::<u64>("done").recv().await?;
    Ok(approved.get() + 100)
}

/// Sleeps for an hour, unless canceled (the scenario cancels it).
async fn sim_sleeper(ctx: WfContext, n: u64) -> WfResult<u64> {
    ctx.sleep(Duration::from_secs(3600)).await?;
    Ok(n)
}

/// One workflow of the mix, driven to its end; `Err` names what went wrong.
async fn one(s: Scenario, i: u64) -> Result<(), String> {
    let id = format!("sim-{i}");
    let opts = StartOptions::new(id.clone(), TASK_QUEUE);
    let check = |what: &str, got: Result<u64, Error>, want: u64| match got {
        Ok(v) if v == want => Ok(()),
        other => Err(format!("{id} ({what}): got {other:?}, expected Ok({want})")),
    };
    match i % 5 {
        0 => {
            let h = s.start("sim_order", &id, &i, opts).await;
            s.read_history(&id).await;
            s.signal(&id, "bonus", &i).await.map_err(|e| format!("{id}: signal refused: {e}"))?;
            s.read_history(&id).await;
            check("order", s.result::<u64>(&h).await, i * 11)?;
        }
        1 => {
            let h = s.start("sim_parent", &id, &i, opts).await;
            s.read_history(&id).await;
            check("parent", s.result::<u64>(&h).await, i * 10 + 1)?;
        }
        2 => {
            let h = s.start("sim_counter", &id, &(i, 0u64, 0u64), opts).await;
            if let Some(it) = s.query::<(), u64>(&id, "iteration", &()).await {
                if it > 3 {
                    return Err(format!("{id}: query answered iteration {it} of at most 3"));
                }
            }
            check("counter", s.result::<u64>(&h).await, i + 6)?;
        }
        3 => {
            let h = s.start("sim_approval", &id, &i, opts).await;
            check("update", s.update::<u64, u64>(&id, "approve", &i).await, i * 2)?;
            s.signal(&id, "done", &i).await.map_err(|e| format!("{id}: signal refused: {e}"))?;
            s.read_history(&id).await;
            check("approval", s.result::<u64>(&h).await, i + 100)?;
        }
        _ => {
            let h = s.start("sim_sleeper", &id, &i, opts).await;
            s.sleep(Duration::from_secs(2)).await;
            s.cancel(&id).await;
            s.read_history(&id).await;
            match s.result::<u64>(&h).await {
                Err(Error::WorkflowCanceled(_)) => {}
                other => return Err(format!("{id} (cancel): got {other:?}, expected a cancellation")),
            }
        }
    }
    s.completed();
    Ok(())
}

/// Starts the workflows spread over the fault window (so faults hit them at every stage) and
/// waits for every one.
async fn drive(s: Scenario, workflows: usize, window: Duration, idle: usize) -> Result<(), String> {
    // Workflows no worker ever serves stay open the whole run: they must cost the leaders nothing
    // that slows the others, and every acknowledged start must survive every fault.
    let idle_starts: Vec<_> = (0..idle)
        .map(|i| {
            let s = s.clone();
            tokio::task::spawn_local(async move {
                let id = format!("idle-{i}");
                let _ = s.start("sim_sleeper", &id, &(i as u64), StartOptions::new(id.clone(), IDLE_TASK_QUEUE)).await;
            })
        })
        .collect();
    for t in idle_starts {
        let _ = t.await;
    }
    let gap = window / (workflows.max(1) as u32);
    let mut running = Vec::new();
    for i in 0..workflows as u64 {
        if i > 0 {
            s.sleep(gap).await;
        }
        running.push(tokio::task::spawn_local(one(s.clone(), i)));
    }
    let mut errors = Vec::new();
    for r in running {
        match r.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("a workflow driver task failed: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
