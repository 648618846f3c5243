//! Workflow updates: admission, delivery with workflow tasks, and the worker's acceptance,
//! rejection and response messages.
//!
//! Admission writes no event (a rejected update leaves no trace, as in Temporal); it schedules a
//! workflow task whose poll response carries the request as a protocol message. The worker
//! answers with messages placed among its commands by `ProtocolMessage` commands: an acceptance
//! writes `WorkflowExecutionUpdateAccepted` (with the request, so replays can run the handler
//! again), a response writes `WorkflowExecutionUpdateCompleted`, a rejection only records the
//! outcome for the caller.

use norn_proto::protos::temporal::api::protocol::v1::Message as ProtocolMessage;
use norn_proto::protos::temporal::api::update::v1::{
    Acceptance, Outcome as UpdateOutcome, Rejection, Request, Response,
};

use super::*;
use crate::history::state::{UpdateInfo, UpdateStage};

/// `type_url` of each protocol message body.
pub const REQUEST_TYPE: &str = "type.googleapis.com/temporal.api.update.v1.Request";
const ACCEPTANCE_TYPE: &str = "temporal.api.update.v1.Acceptance";
const REJECTION_TYPE: &str = "temporal.api.update.v1.Rejection";
const RESPONSE_TYPE: &str = "temporal.api.update.v1.Response";

/// A caller asks for an update. A known update id changes nothing (the caller waits on it).
pub fn admit_update(
    run: &mut RunState,
    request: Request,
    limits: &crate::limits::EngineLimits,
    now_ms: u64,
) -> Result<Outcome, EngineError> {
    if !run.is_open() {
        return Err(EngineError::NotFound("workflow execution already completed".into()));
    }
    let update_id = request.meta.as_ref().map(|m| m.update_id.clone()).unwrap_or_default();
    if update_id.is_empty() {
        return Err(EngineError::InvalidArgument("Update id is not set on request.".into()));
    }
    if request.input.as_ref().is_none_or(|i| i.name.is_empty()) {
        return Err(EngineError::InvalidArgument("Update name is not set on request.".into()));
    }
    if run.updates.contains_key(&update_id) {
        return Ok(Outcome::default());
    }
    let in_flight = run.updates.values().filter(|u| !matches!(u.stage, UpdateStage::Completed { .. })).count() as u64;
    if in_flight >= limits.updates_in_flight_max {
        return Err(EngineError::ResourceExhausted(format!(
            "in-flight workflow update limit of {} reached for this workflow execution; retry once updates complete",
            limits.updates_in_flight_max
        )));
    }
    if run.updates.len() as u64 >= limits.updates_total_max {
        return Err(EngineError::FailedPrecondition(format!(
            "total workflow update limit of {} reached for this workflow execution; continue it as new",
            limits.updates_total_max
        )));
    }
    run.updates.insert(
        update_id.clone(),
        UpdateInfo { update_id, request: request.encode_to_vec(), stage: UpdateStage::Admitted, admitted_ms: now_ms },
    );
    let mut w = Writer::new(run, now_ms);
    w.need_workflow_task();
    Ok(w.out)
}

/// The protocol messages a workflow task started at `started_id` carries: every admitted update.
pub fn update_messages(run: &RunState, started_id: i64) -> Vec<ProtocolMessage> {
    use norn_proto::protos::temporal::api::protocol::v1::message::SequencingId;
    run.updates
        .values()
        .filter(|u| u.stage == UpdateStage::Admitted)
        .map(|u| ProtocolMessage {
            id: format!("{}/request", u.update_id),
            protocol_instance_id: u.update_id.clone(),
            sequencing_id: Some(SequencingId::EventId(started_id - 1)),
            body: Some(prost_wkt_types::Any { type_url: REQUEST_TYPE.into(), value: u.request.clone() }),
        })
        .collect()
}

fn body_type(m: &ProtocolMessage) -> &str {
    let url = m.body.as_ref().map(|b| b.type_url.as_str()).unwrap_or("");
    url.rsplit('/').next().unwrap_or(url)
}

/// Checks the messages of a workflow task completion before anything is applied.
pub(super) fn check_messages(req: &RespondWorkflowTaskCompletedRequest, run: &RunState) -> Result<(), EngineError> {
    for m in &req.messages {
        let body = m.body.as_ref().map(|b| b.value.as_slice()).unwrap_or_default();
        let known = match body_type(m) {
            ACCEPTANCE_TYPE => Acceptance::decode(body).is_ok(),
            REJECTION_TYPE => Rejection::decode(body).is_ok(),
            RESPONSE_TYPE => Response::decode(body).is_ok(),
            _ => false,
        };
        if !known {
            return Err(EngineError::InvalidArgument(format!(
                "protocol message {} has an unsupported or malformed body ({})",
                m.id,
                m.body.as_ref().map(|b| b.type_url.as_str()).unwrap_or("none")
            )));
        }
        if !run.updates.contains_key(&m.protocol_instance_id) {
            return Err(EngineError::InvalidArgument(format!(
                "protocol message {} names update {:?}, which this workflow does not have",
                m.id, m.protocol_instance_id
            )));
        }
    }
    for c in &req.commands {
        if let Some(Cmd::ProtocolMessageCommandAttributes(a)) = &c.attributes {
            if !req.messages.iter().any(|m| m.id == a.message_id) {
                return Err(EngineError::InvalidArgument(format!(
                    "ProtocolMessageCommand names message {:?}, which the request does not carry",
                    a.message_id
                )));
            }
        }
    }
    Ok(())
}

impl Writer<'_> {
    /// Applies one protocol message of the worker.
    pub(super) fn protocol_message(&mut self, m: &ProtocolMessage) {
        if !self.run.is_open() {
            return;
        }
        let Some(info) = self.run.updates.get(&m.protocol_instance_id).cloned() else { return };
        let body = m.body.as_ref().map(|b| b.value.as_slice()).unwrap_or_default();
        match body_type(m) {
            ACCEPTANCE_TYPE if info.stage == UpdateStage::Admitted => {
                let a = Acceptance::decode(body).unwrap_or_default();
                let request = a.accepted_request.clone().or_else(|| Request::decode(info.request.as_slice()).ok());
                let id = self.event(
                    EventType::WorkflowExecutionUpdateAccepted,
                    Ev::WorkflowExecutionUpdateAcceptedEventAttributes(
                        WorkflowExecutionUpdateAcceptedEventAttributes {
                            protocol_instance_id: info.update_id.clone(),
                            accepted_request_message_id: a.accepted_request_message_id,
                            accepted_request_sequencing_event_id: a.accepted_request_sequencing_event_id,
                            accepted_request: request,
                        },
                    ),
                );
                if let Some(u) = self.run.updates.get_mut(&info.update_id) {
                    u.stage = UpdateStage::Accepted { event_id: id };
                }
            }
            REJECTION_TYPE if info.stage == UpdateStage::Admitted => {
                let r = Rejection::decode(body).unwrap_or_default();
                let outcome = UpdateOutcome {
                    value: Some(norn_proto::protos::temporal::api::update::v1::outcome::Value::Failure(
                        r.failure.unwrap_or_default(),
                    )),
                };
                if let Some(u) = self.run.updates.get_mut(&info.update_id) {
                    u.stage = UpdateStage::Completed { outcome: outcome.encode_to_vec() };
                }
            }
            RESPONSE_TYPE => {
                let UpdateStage::Accepted { event_id } = info.stage else { return };
                let r = Response::decode(body).unwrap_or_default();
                let outcome = r.outcome.unwrap_or_default();
                self.event(
                    EventType::WorkflowExecutionUpdateCompleted,
                    Ev::WorkflowExecutionUpdateCompletedEventAttributes(
                        WorkflowExecutionUpdateCompletedEventAttributes {
                            meta: r.meta,
                            accepted_event_id: event_id,
                            outcome: Some(outcome.clone()),
                        },
                    ),
                );
                if let Some(u) = self.run.updates.get_mut(&info.update_id) {
                    u.stage = UpdateStage::Completed { outcome: outcome.encode_to_vec() };
                }
            }
            // Out of order (a second acceptance, a response before acceptance): ignored.
            _ => {}
        }
    }
}
