//! Invariant: every replica of a shard holds the same history entries, byte for byte (after the
//! heal and a quiet period). Different bytes for one key is a fork; missing entries is a
//! replica that failed to converge.

use std::collections::BTreeMap;

use super::disk::ShardState;
use crate::net::node_host;

/// `per_node[i]` is node `i + 1`'s disk.
pub fn check(per_node: &[BTreeMap<u32, ShardState>], shards: u32) -> Vec<String> {
    let mut out = Vec::new();
    for shard in 0..shards {
        let holders: Vec<(usize, &ShardState)> =
            per_node.iter().enumerate().filter_map(|(i, m)| m.get(&shard).map(|s| (i + 1, s))).collect();
        for (node, s) in &holders {
            for what in s.undecodable.iter().take(3) {
                out.push(format!("shard {shard}: {} holds an undecodable entry: {what}", node_host(*node)));
            }
        }
        for w in holders.windows(2) {
            let ((a, sa), (b, sb)) = (w[0], w[1]);
            let (ha, hb) = (&sa.raw_events, &sb.raw_events);
            if let Some(k) = ha.keys().find(|k| hb.get(*k).is_some_and(|v| v != &ha[*k])) {
                out.push(format!(
                    "shard {shard}: fork: {} and {} hold different bytes for {}",
                    node_host(a),
                    node_host(b),
                    event_key(k)
                ));
            } else if ha.len() != hb.len() {
                out.push(format!(
                    "shard {shard}: replicas did not converge after the heal: {} has {} events, {} has {}",
                    node_host(a),
                    ha.len(),
                    node_host(b),
                    hb.len()
                ));
            }
        }
    }
    out
}

/// `ev/<run id>/<event id>` of a raw history key.
fn event_key(k: &[u8]) -> String {
    if k.len() > 8 {
        let (head, id) = k.split_at(k.len() - 8);
        let id = u64::from_be_bytes(id.try_into().unwrap_or([0; 8]));
        return format!("{}{id}", String::from_utf8_lossy(head));
    }
    String::from_utf8_lossy(k).into_owned()
}
