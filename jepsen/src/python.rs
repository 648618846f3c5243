//! The workload through Temporal's Python SDK: `python/workload.py` (embedded in the binary and
//! written into the report folder) runs as a child process with a worker on every node and two
//! logical clients, recording its operations on this run's clock; its history is merged into
//! the run's before the checkers run, and its workflows are finished and checked like the Rust
//! workload's.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::history::{pairs, Kind, Op, Recorder};
use crate::Options;

const SCRIPT: &str = include_str!("../python/workload.py");
/// Process ids of the Python clients start here (the Rust clients' are small).
const FIRST_PROCESS: u64 = 1000;

/// The running Python workload.
pub struct Python {
    child: Child,
    out: std::path::PathBuf,
}

/// Starts the Python workload against the client addresses `addrs` (node 1 first); `now_ns` is
/// the run's clock now.
pub fn start(o: &Options, addrs: &[String], now_ns: u64) -> anyhow::Result<Python> {
    let script = o.out.join("python-workload.py");
    std::fs::write(&script, SCRIPT)?;
    let out = o.out.join("python-history.jsonl");
    let child = Command::new("python3")
        .arg(&script)
        .args(["--addrs", &addrs.join(",")])
        .args(["--processes", "2"])
        .args(["--first-process", &FIRST_PROCESS.to_string()])
        .args(["--seconds", &o.time_limit.as_secs_f64().to_string()])
        .args(["--base-ns", &now_ns.to_string()])
        .args(["--seed", &o.seed.to_string()])
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(o.out.join("python-workload.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("start python3 for the Python SDK workload (needs python3 with temporalio)")?;
    Ok(Python { child, out })
}

impl Python {
    /// Waits until the Python clients are done, then merges their history into `rec` and their
    /// workflows into the workload's, so they are finished and checked with the rest.
    pub async fn collect(
        &mut self,
        rec: &Recorder,
        shared: &Arc<tokio::sync::Mutex<crate::workload::Shared>>,
    ) -> anyhow::Result<()> {
        let stdout = self.child.stdout.take().context("the Python workload's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let done = tokio::time::timeout(Duration::from_secs(90), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim() == "ops-done" {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        anyhow::ensure!(done, "the Python SDK workload did not finish its operations (see python-workload.log)");
        let text = std::fs::read_to_string(&self.out)?;
        let ops: Vec<Op> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .context("the Python SDK workload's history")?;
        let mut s = shared.lock().await;
        for p in pairs(&ops) {
            if p.invoke.f != "start" {
                continue;
            }
            match &p.done {
                Some(d) if d.kind == Kind::Ok => {
                    let run = d.value.as_str().unwrap_or_default().to_string();
                    s.started.insert(p.invoke.wf.clone(), (p.invoke.process, run));
                }
                Some(d) if d.kind == Kind::Fail => {}
                _ => {
                    s.maybe.insert(p.invoke.wf.clone(), p.invoke.process);
                }
            }
        }
        drop(s);
        rec.merge(ops);
        Ok(())
    }

    /// Stops the Python workers (their stdin closes) once every workflow is finished.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}
