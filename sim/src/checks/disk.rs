//! What each node holds on its (simulated) disk after a run, decoded for the checks: per shard,
//! the raw history entries (for byte-level replica comparison), the decoded histories, the run
//! states and the open runs.

use std::collections::BTreeMap;

use norn_client::protos::temporal::api::history::v1::HistoryEvent;
use norn_node::history::RunState;
use norn_storage::{MemDisk, MemEngine};
use prost::Message;

/// One shard's state on one node.
#[derive(Default)]
pub struct ShardState {
    /// Every `ev/` entry: key -> bytes.
    pub raw_events: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Decoded histories: run id -> events in key order.
    pub histories: BTreeMap<String, Vec<HistoryEvent>>,
    /// Run states: run id -> state.
    pub runs: BTreeMap<String, RunState>,
    /// Open runs: (namespace id, workflow id, run id).
    pub open: Vec<(String, String, String)>,
    /// Entries that did not decode.
    pub undecodable: Vec<String>,
}

/// Reads every shard of one node's disk.
pub fn read(disk: &MemDisk) -> BTreeMap<u32, ShardState> {
    let engine = MemEngine::open(disk);
    let mut out: BTreeMap<u32, ShardState> = BTreeMap::new();
    let all = match norn_raft::state_machine::stored_state(&engine) {
        Ok(all) => all,
        Err(e) => {
            out.entry(0).or_default().undecodable.push(format!("stored state: {e}"));
            return out;
        }
    };
    for (group, pairs) in all {
        let shard = out.entry(group).or_default();
        for (key, sealed) in pairs {
            let key = key.as_slice();
            let v = match norn_raft::codec::open_value(key, &sealed) {
                Ok(v) => v.to_vec(),
                Err(e) => {
                    shard.undecodable.push(format!("value at {}: {e}", String::from_utf8_lossy(key)));
                    continue;
                }
            };
            if let Some(rest) = key.strip_prefix(b"ev/") {
                shard.raw_events.insert(key.to_vec(), v.clone());
                // `<run id>/<event id, 8 bytes BE>`
                if rest.len() < 10 || rest[rest.len() - 9] != b'/' {
                    shard.undecodable.push(format!("history key {}", String::from_utf8_lossy(key)));
                    continue;
                }
                let run = String::from_utf8_lossy(&rest[..rest.len() - 9]).into_owned();
                match HistoryEvent::decode(v.as_slice()) {
                    Ok(e) => shard.histories.entry(run).or_default().push(e),
                    Err(e) => shard.undecodable.push(format!("event of run {run}: {e}")),
                }
            } else if key.starts_with(b"run/") {
                match postcard::from_bytes::<RunState>(&v) {
                    Ok(r) => {
                        shard.runs.insert(r.run_id.clone(), r);
                    }
                    Err(e) => shard.undecodable.push(format!("run state {}: {e}", String::from_utf8_lossy(key))),
                }
            }
        }
    }
    // Open runs, from the run states themselves.
    for shard in out.values_mut() {
        shard.open = shard
            .runs
            .values()
            .filter(|r| r.is_open())
            .map(|r| (r.namespace_id.clone(), r.workflow_id.clone(), r.run_id.clone()))
            .collect();
    }
    out
}
