//! The history engine: a pure function from (run state, command, leader timestamp) to new
//! history events, the new run state, and effects for the leader to run. No clock, no RNG, no
//! I/O: every replica applying the same command to the same state gets the same bytes.
//!
//! - [`state`]: a run's mutable state.
//! - [`engine`]: the transitions (start, workflow tasks, commands, activities, timers).
//!
//! - [`index`]: a run's due, ready and closed index entries (what the leader does next, when).
//! - [`store`]: runs in a shard's state, and the replicated commands that drive the engine.
//! - [`reads`]: typed reads of runs and events from any node (routed to the shard leader).
//! - [`watch`]: node-local wake-ups for history long polls (outside the deterministic core).

pub mod engine;
pub mod index;
pub mod reads;
pub mod state;
pub mod store;
#[cfg(test)]
mod tests;
pub mod watch;

pub use engine::{Effect, EngineError, Outcome};
pub use state::{ActivityInfo, RunState, RunStatus, TimerInfo, WorkflowTaskInfo};
