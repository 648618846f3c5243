//! [`Scenario`]: what a simulation's client code gets on the driver host. Its calls retry
//! through faults the way a careful application would (one request id or update id across
//! retries, so a lost answer never doubles an effect) and record every operation with its
//! simulated time, so the checks can hold the cluster to what it acknowledged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use norn_client::protos::temporal::api::enums::v1::EventType;
use norn_client::protos::temporal::api::history::v1::history_event::Attributes;
use norn_client::protos::temporal::api::history::v1::HistoryEvent;
use norn_client::{Client, Error, StartOptions, UpdateWait, WorkflowHandle};
use rand::rngs::StdRng;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::net::now;
use crate::observe::{Observations, ReadOp, SignalOp, StartOp};

/// Pause between retries of a failed call (simulated time).
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The scenario's view of the cluster: a routed client, one unrouted client per node (reads
/// through them may land on followers), and the run's observations.
#[derive(Clone)]
pub struct Scenario {
    pub(crate) client: Client,
    pub(crate) readers: Vec<Client>,
    pub(crate) obs: Observations,
    pub(crate) rng: Arc<Mutex<StdRng>>,
}

impl Scenario {
    /// The cluster-aware client (routes each call to its shard's leader, retries).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Simulated time since the run started.
    pub fn now(&self) -> Duration {
        now()
    }

    /// Adds a line to the run's trace (printed by `norn-sim --seed`).
    pub fn note(&self, what: impl Into<String>) {
        self.obs.lock().trace.push((now(), what.into()));
    }

    /// A number from the run's seed.
    pub fn random(&self, below: u64) -> u64 {
        self.rng.lock().unwrap_or_else(|p| p.into_inner()).gen_range(0..below.max(1))
    }

    /// Sleeps for simulated time.
    pub async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Starts a workflow and retries until a start is acknowledged. Every attempt carries the
    /// same request id, so an attempt whose answer was lost cannot start a second run; each
    /// acknowledged run id is recorded (the checks require them all to be the same run, and
    /// that run to exist).
    pub async fn start<A: Serialize + 'static>(
        &self,
        workflow_type: &str,
        workflow_id: &str,
        arg: &A,
        options: StartOptions,
    ) -> WorkflowHandle {
        let request_id = options.request_id.clone().unwrap_or_else(|| self.client.new_request_id());
        let options = StartOptions { request_id: Some(request_id.clone()), ..options };
        let slot = {
            let mut o = self.obs.lock();
            o.starts.push(StartOp {
                workflow_id: workflow_id.into(),
                request_id,
                acked_runs: Vec::new(),
                acked_at: None,
            });
            o.starts.len() - 1
        };
        loop {
            match self.client.start_workflow(workflow_type, arg, options.clone()).await {
                Ok(h) => {
                    if let Some(run) = h.run_id() {
                        let mut o = self.obs.lock();
                        o.starts[slot].acked_runs.push(run.to_string());
                        o.starts[slot].acked_at.get_or_insert(now());
                    }
                    self.note(format!("started {workflow_id}"));
                    return h;
                }
                Err(e) => {
                    self.note(format!("start {workflow_id}: {e}; retrying"));
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Signals the workflow's current run and retries while the cluster is unavailable, with
    /// one request id across retries (so it is delivered once). The argument identifies the
    /// signal in the checks: give each signal of a workflow its own. `Ok` also when the run has
    /// closed (an attempt whose answer was lost may have landed before it did): the signal then
    /// counts as unacknowledged, allowed at most once in the history.
    pub async fn signal<A: Serialize + 'static>(&self, workflow_id: &str, name: &str, arg: &A) -> Result<(), Error> {
        let request_id = self.client.new_request_id();
        let arg_json = serde_json::to_string(arg).unwrap_or_default();
        let slot = {
            let mut o = self.obs.lock();
            o.signals.push(SignalOp { workflow_id: workflow_id.into(), name: name.into(), arg_json, acked_at: None });
            o.signals.len() - 1
        };
        let mut retried = false;
        loop {
            match self.client.signal_with_request_id(workflow_id, None, name, arg, &request_id).await {
                Ok(()) => {
                    self.obs.lock().signals[slot].acked_at = Some(now());
                    self.note(format!("signaled {workflow_id} {name}"));
                    return Ok(());
                }
                Err(e) if e.is_retryable() => {
                    self.note(format!("signal {workflow_id} {name}: {e}; retrying"));
                    retried = true;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                // An earlier attempt (ours, or one the SDK client retried inside the call) may
                // have landed, and the run may have consumed the signal and closed since: the
                // outcome is unknown, not a failure. The signal stays unacknowledged, so the
                // signal check allows it at most once in the history.
                Err(Error::NotFound(e)) if retried || e.contains("already completed") => {
                    self.note(format!("signal {workflow_id} {name}: outcome unknown, the run closed: {e}"));
                    return Ok(());
                }
                Err(e) => {
                    self.note(format!("signal {workflow_id} {name}: {e}"));
                    return Err(e);
                }
            }
        }
    }

    /// Reads the history of the workflow's current run through a node picked by the seed
    /// (often a follower, which must forward the read to the leader) and records what it saw.
    /// `None` when the read failed.
    pub async fn read_history(&self, workflow_id: &str) -> Option<Vec<HistoryEvent>> {
        let node = self.random(self.readers.len() as u64) as usize;
        let invoked_at = now();
        let (events, summary) = match self.readers[node].fetch_history(workflow_id, None).await {
            Ok(events) => {
                let summary = events.iter().map(summarize).collect();
                (Some(events), Some(summary))
            }
            Err(Error::NotFound(_)) => (None, None),
            Err(_) => return None,
        };
        self.obs.lock().reads.push(ReadOp {
            workflow_id: workflow_id.into(),
            run_id: String::new(),
            node: node + 1,
            invoked_at,
            completed_at: now(),
            events: summary,
        });
        events
    }

    /// Counts a workflow that finished as the scenario expected (the report's "completed").
    pub fn completed(&self) {
        self.obs.lock().completed += 1;
    }

    /// Waits for the run's result, retrying through unavailability; other errors (the workflow
    /// failed, was canceled, ...) are its result.
    pub async fn result<T: DeserializeOwned + 'static>(&self, handle: &WorkflowHandle) -> Result<T, Error> {
        // While it waits, the history is read now and then through random nodes: every read is
        // checked for rollbacks and staleness against the others and the final state.
        let watcher = {
            let (s, id) = (self.clone(), handle.workflow_id().to_string());
            tokio::task::spawn_local(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(300 + s.random(700))).await;
                    s.read_history(&id).await;
                }
            })
        };
        let r = self.result_inner(handle).await;
        watcher.abort();
        r
    }

    async fn result_inner<T: DeserializeOwned + 'static>(&self, handle: &WorkflowHandle) -> Result<T, Error> {
        loop {
            match handle.result::<T>().await {
                Err(e) if e.is_retryable() => {
                    self.note(format!("result {}: {e}; retrying", handle.workflow_id()));
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                r => return r,
            }
        }
    }

    /// Sends an update and waits for its result, retrying with one update id (so a retry joins
    /// the same update).
    pub async fn update<A: Serialize + 'static, R: DeserializeOwned + 'static>(
        &self,
        workflow_id: &str,
        name: &str,
        arg: &A,
    ) -> Result<R, Error> {
        let update_id = self.client.new_request_id();
        loop {
            let r = match self
                .client
                .start_update(workflow_id, None, name, arg, UpdateWait::Completed, Some(update_id.clone()))
                .await
            {
                Ok(u) => u.result::<R>().await,
                Err(e) => Err(e),
            };
            match r {
                Err(e) if e.is_retryable() => {
                    self.note(format!("update {workflow_id} {name}: {e}; retrying"));
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                r => return r,
            }
        }
    }

    /// Asks the workflow's current run to cancel, retrying until acknowledged or the run is closed.
    pub async fn cancel(&self, workflow_id: &str) {
        loop {
            match self.client.cancel(workflow_id, None, "canceled by the simulation").await {
                Ok(()) => return,
                // Closed already (perhaps by an attempt of ours whose answer was lost): the
                // run's result tells the scenario how it ended.
                Err(Error::NotFound(e)) if e.contains("already completed") => {
                    self.note(format!("cancel {workflow_id}: the run is closed: {e}"));
                    return;
                }
                Err(e) => {
                    self.note(format!("cancel {workflow_id}: {e}; retrying"));
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Queries the workflow, with a few tries; `None` if no try answered (queries need a live
    /// worker and are not retried forever).
    pub async fn query<A: Serialize + 'static, R: DeserializeOwned + 'static>(
        &self,
        workflow_id: &str,
        name: &str,
        arg: &A,
    ) -> Option<R> {
        let handle = self.client.workflow_handle(workflow_id, None);
        for _ in 0..5 {
            match handle.query::<A, R>(name, arg).await {
                Ok(r) => return Some(r),
                Err(e) => {
                    self.note(format!("query {workflow_id} {name}: {e}"));
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        None
    }
}

/// What the read checks compare of an event.
pub(crate) fn summarize(e: &HistoryEvent) -> crate::observe::EventSummary {
    let ms = e.event_time.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap_or(0);
    (e.event_id, e.event_type, ms, signal_of(e))
}

/// A signal event's name and argument JSON.
pub(crate) fn signal_of(e: &HistoryEvent) -> Option<(String, String)> {
    if e.event_type != EventType::WorkflowExecutionSignaled as i32 {
        return None;
    }
    match &e.attributes {
        Some(Attributes::WorkflowExecutionSignaledEventAttributes(a)) => {
            let arg = a
                .input
                .as_ref()
                .and_then(|p| p.payloads.first())
                .map(|p| String::from_utf8_lossy(&p.data).into_owned())
                .unwrap_or_default();
            Some((a.signal_name.clone(), arg))
        }
        _ => None,
    }
}
