//! Replaying saved histories through workflow code, to catch non-deterministic changes before
//! they reach production.

use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use temporalio_protos::temporal::api::enums::v1::EventType;
use temporalio_protos::temporal::api::history::v1::history_event::Attributes as Ev;
use temporalio_protos::temporal::api::history::v1::{History, HistoryEvent};

use crate::client::Client;
use crate::error::Error;
use crate::worker::Registry;
use crate::workflow::{Nondeterminism, WfContext, WfResult, WorkflowMachine};

/// Why a replay did not come out clean.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The code and the history disagree.
    #[error(transparent)]
    Nondeterminism(#[from] Nondeterminism),
    /// The history's workflow type is not registered.
    #[error("workflow type {0:?} is not registered with the replayer")]
    UnknownWorkflowType(String),
    /// The history is malformed.
    #[error("bad history: {0}")]
    BadHistory(String),
    /// Fetching the history failed.
    #[error(transparent)]
    Client(#[from] Error),
}

/// Runs registered workflow functions against histories.
#[derive(Clone, Default)]
pub struct Replayer {
    registry: Registry,
}

impl Replayer {
    /// A replayer with nothing registered.
    pub fn new() -> Replayer {
        Replayer::default()
    }

    /// A replayer with a worker's registrations.
    pub fn from_registry(registry: Registry) -> Replayer {
        Replayer { registry }
    }

    /// Registers a workflow function.
    pub fn register_workflow<A, R, F, Fut>(&mut self, workflow_type: &str, f: F) -> &mut Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(WfContext, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = WfResult<R>> + 'static,
    {
        self.registry.register_workflow(workflow_type, f);
        self
    }

    /// Replays one history (complete or not); `Ok` when every recorded command matches.
    pub fn replay(&self, history: &[HistoryEvent]) -> Result<(), ReplayError> {
        let first = history.first().ok_or_else(|| ReplayError::BadHistory("the history is empty".into()))?;
        let Some(Ev::WorkflowExecutionStartedEventAttributes(a)) = &first.attributes else {
            return Err(ReplayError::BadHistory("the first event is not WorkflowExecutionStarted".into()));
        };
        let wf_type = a.workflow_type.as_ref().map(|t| t.name.clone()).unwrap_or_default();
        let f = self.registry.workflow(&wf_type).ok_or(ReplayError::UnknownWorkflowType(wf_type))?;
        let run_id = if a.original_execution_run_id.is_empty() { "replay" } else { &a.original_execution_run_id };
        let mut m = WorkflowMachine::new(f, "replay", "replay", run_id);
        m.run(history, false)?;
        Ok(())
    }

    /// Replays a history in Temporal's JSON format (`temporal workflow show --output json`,
    /// or the web UI's download).
    pub fn replay_json(&self, json: &str) -> Result<(), ReplayError> {
        self.replay(&history_from_json(json)?)
    }

    /// Fetches a run's history from the server and replays it.
    pub async fn replay_from_server(
        &self,
        client: &Client,
        workflow_id: &str,
        run_id: Option<&str>,
    ) -> Result<(), ReplayError> {
        let h = client.fetch_history(workflow_id, run_id).await?;
        self.replay(&h)
    }
}

fn history_descriptor() -> Result<prost_reflect::MessageDescriptor, ReplayError> {
    static POOL: OnceLock<Result<prost_reflect::DescriptorPool, String>> = OnceLock::new();
    let pool = POOL
        .get_or_init(|| {
            prost_reflect::DescriptorPool::decode(norn_proto::TEMPORAL_DESCRIPTORS).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ReplayError::BadHistory(format!("descriptor set: {e}")))?;
    pool.get_message_by_name("temporal.api.history.v1.History")
        .ok_or_else(|| ReplayError::BadHistory("History is missing from the descriptor set".into()))
}

/// Reads a history in Temporal's proto-JSON format (`{"events": [...]}`).
pub fn history_from_json(json: &str) -> Result<Vec<HistoryEvent>, ReplayError> {
    use prost::Message;
    let desc = history_descriptor()?;
    let mut de = serde_json::Deserializer::from_str(json);
    let dynamic = prost_reflect::DynamicMessage::deserialize(desc, &mut de)
        .map_err(|e| ReplayError::BadHistory(format!("not a Temporal history JSON: {e}")))?;
    let bytes = dynamic.encode_to_vec();
    let h = History::decode(bytes.as_slice()).map_err(|e| ReplayError::BadHistory(e.to_string()))?;
    check_ids(&h.events)?;
    Ok(h.events)
}

/// Writes a history in Temporal's proto-JSON format.
pub fn history_to_json(events: &[HistoryEvent]) -> Result<String, ReplayError> {
    use prost::Message;
    let desc = history_descriptor()?;
    let bytes = History { events: events.to_vec() }.encode_to_vec();
    let dynamic = prost_reflect::DynamicMessage::decode(desc, bytes.as_slice())
        .map_err(|e| ReplayError::BadHistory(e.to_string()))?;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::pretty(&mut out);
    dynamic
        .serialize_with_options(&mut ser, &prost_reflect::SerializeOptions::new().stringify_64_bit_integers(true))
        .map_err(|e| ReplayError::BadHistory(e.to_string()))?;
    String::from_utf8(out).map_err(|e| ReplayError::BadHistory(e.to_string()))
}

fn check_ids(events: &[HistoryEvent]) -> Result<(), ReplayError> {
    for (i, e) in events.iter().enumerate() {
        if e.event_id != i as i64 + 1 {
            return Err(ReplayError::BadHistory(format!(
                "event ids must run 1, 2, 3, ...; position {} has id {}",
                i + 1,
                e.event_id
            )));
        }
        if EventType::try_from(e.event_type).is_err() {
            return Err(ReplayError::BadHistory(format!("event {} has an unknown type {}", e.event_id, e.event_type)));
        }
    }
    Ok(())
}
