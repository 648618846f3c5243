//! The history engine: a pure function from (run state, command, leader timestamp) to new
//! history events, the new run state, and effects for the leader to run. No clock, no RNG, no
//! I/O: every replica applying the same command to the same state gets the same bytes.
//!
//! - [`state`]: a run's mutable state.
//! - [`engine`]: the transitions (start, workflow tasks, commands, activities, timers).
//!
//! Storage (reading and writing runs in a shard) and the RPCs that propose these commands live
//! outside this module.

pub mod engine;
pub mod state;
#[cfg(test)]
mod tests;

pub use engine::{Effect, EngineError, Outcome};
pub use state::{ActivityInfo, RunState, RunStatus, TimerInfo, WorkflowTaskInfo};
