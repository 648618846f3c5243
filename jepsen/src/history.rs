//! The history: every operation as invoke, then ok / fail / info (indeterminate), with monotonic
//! times, written as JSON lines.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The outcome part of a history record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The operation began.
    Invoke,
    /// It happened.
    Ok,
    /// It certainly did not happen.
    Fail,
    /// It may or may not have happened.
    Info,
}

/// One history record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    /// The logical client that ran it.
    pub process: u64,
    /// invoke / ok / fail / info.
    pub kind: Kind,
    /// The operation: start, start-collide, signal, describe, read-history, finish.
    pub f: String,
    /// The workflow id it concerns.
    pub wf: String,
    /// The node it went to.
    pub node: u64,
    /// Nanoseconds since the run began (monotonic).
    pub time_ns: u64,
    /// The operation's argument (on invoke) or result (on completion).
    pub value: serde_json::Value,
}

/// Records a run's operations.
#[derive(Clone)]
pub struct Recorder {
    ops: Arc<Mutex<Vec<Op>>>,
    origin: tokio::time::Instant,
}

impl Recorder {
    /// A recorder whose times start now.
    pub fn new() -> Recorder {
        Recorder { ops: Arc::default(), origin: tokio::time::Instant::now() }
    }

    /// Nanoseconds since the run began.
    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Appends a record.
    pub fn push(&self, process: u64, kind: Kind, f: &str, wf: &str, node: u64, value: serde_json::Value) {
        let op = Op { process, kind, f: f.into(), wf: wf.into(), node, time_ns: self.now_ns(), value };
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    /// Merges records made elsewhere on this run's clock (the Python SDK workload), keeping the
    /// whole history in time order.
    pub fn merge(&self, more: Vec<Op>) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.extend(more);
        ops.sort_by_key(|o| o.time_ns);
    }

    /// Every record so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// An invocation paired with its completion.
#[derive(Clone, Debug)]
pub struct Pair {
    /// The invoke record.
    pub invoke: Op,
    /// The completion, if the run ended before it.
    pub done: Option<Op>,
}

/// Pairs each process's invocations with their completions (a process runs one at a time).
pub fn pairs(ops: &[Op]) -> Vec<Pair> {
    let mut open: std::collections::BTreeMap<u64, usize> = Default::default();
    let mut out: Vec<Pair> = Vec::new();
    for op in ops {
        match op.kind {
            Kind::Invoke => {
                open.insert(op.process, out.len());
                out.push(Pair { invoke: op.clone(), done: None });
            }
            _ => {
                if let Some(i) = open.remove(&op.process) {
                    out[i].done = Some(op.clone());
                }
            }
        }
    }
    out
}
