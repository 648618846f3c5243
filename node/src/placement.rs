//! Where shards live and which replica bootstraps each, and how keys map to shards.
//!
//! With `n` nodes (sorted by id) and `r = min(replicas, n)` replicas, shard `s` lives on the
//! nodes at positions `s mod n, s+1 mod n, ..., s+r-1 mod n`. Each node therefore holds
//! `shards * r / n` replicas (even within one), and the first replica of each shard, which
//! bootstraps it and usually wins its first election, rotates over the nodes, spreading leaders.

use norn_raft::{GroupId, NodeId};

/// The replicas of `shard`, first one bootstraps.
pub fn replicas(shard: GroupId, nodes: &[NodeId], replicas: usize) -> Vec<NodeId> {
    let mut sorted = nodes.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let r = replicas.min(n);
    (0..r).map(|k| sorted[(shard as usize + k) % n]).collect()
}

pub use norn_proto::placement::stable_hash;

/// The shard of a key among `shards`.
pub fn shard_of(parts: &[&[u8]], shards: u32) -> GroupId {
    norn_proto::placement::shard_of(parts, shards) as GroupId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_nodes_hold_every_shard() {
        for s in 0..16 {
            let mut r = replicas(s, &[3, 1, 2], 3);
            assert_eq!(r[0], [1, 2, 3][s as usize % 3], "bootstrapper rotates");
            r.sort_unstable();
            assert_eq!(r, vec![1, 2, 3]);
        }
    }

    #[test]
    fn five_nodes_spread_three_replicas_evenly() {
        let mut per_node = [0usize; 6];
        let mut leaders = [0usize; 6];
        for s in 0..20 {
            let r = replicas(s, &[1, 2, 3, 4, 5], 3);
            assert_eq!(r.len(), 3);
            let mut d = r.clone();
            d.dedup();
            assert_eq!(d.len(), 3, "distinct replicas");
            for n in &r {
                per_node[*n as usize] += 1;
            }
            leaders[r[0] as usize] += 1;
        }
        assert_eq!(&per_node[1..], &[12, 12, 12, 12, 12]);
        assert_eq!(&leaders[1..], &[4, 4, 4, 4, 4]);
    }

    #[test]
    fn hash_is_stable_and_separated() {
        assert_eq!(stable_hash(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(&[b"a"]), 0xaf63_dc4c_8601_ec8c, "FNV-1a test vector");
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        assert!(shard_of(&[b"x"], 16) < 16);
    }
}
