//! Key layout of Raft data in the node's single store. Every key starts with the group id
//! (u32, big-endian) so that one group's data is one contiguous range.
//!
//! | column family | key                          | value                         |
//! |---------------|------------------------------|-------------------------------|
//! | `raft_log`    | group ++ index (u64 BE)      | checked `Entry`               |
//! | `raft_meta`   | group ++ `v`                 | checked `Vote`                |
//! | `raft_meta`   | group ++ `c`                 | checked committed `LogId`     |
//! | `raft_meta`   | group ++ `p`                 | checked last purged `LogId`   |
//! | `raft_meta`   | group ++ `a`                 | checked `AppliedState`        |
//! | `raft_meta`   | group ++ `s`                 | checked `StoredSnapshot`      |
//! | `state`       | group ++ generation ++ key   | sealed user value             |
//!
//! A group's state lives under a generation (u32 BE) named by its applied state: a snapshot
//! install writes a new generation and switches to it in one write, so a crash mid-install leaves
//! the old state whole (and the half-written generation is dropped at the next start).

use crate::types::GroupId;

pub(crate) const VOTE: u8 = b'v';
pub(crate) const COMMITTED: u8 = b'c';
pub(crate) const PURGED: u8 = b'p';
pub(crate) const APPLIED: u8 = b'a';
pub(crate) const SNAPSHOT: u8 = b's';

pub(crate) fn log_key(group: GroupId, index: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&group.to_be_bytes());
    k[4..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The log index inside a `raft_log` key, if the key is well formed.
pub(crate) fn log_index(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(4..12)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

pub(crate) fn meta_key(group: GroupId, tag: u8) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[..4].copy_from_slice(&group.to_be_bytes());
    k[4] = tag;
    k
}

pub(crate) fn state_key(group: GroupId, gen: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(&gen.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Length of the group and generation prefix of a `state` key.
pub(crate) const STATE_PREFIX_BYTES: usize = 8;

/// The first key of generation `gen` of `group`, and the first key after it.
pub(crate) fn gen_range(group: GroupId, gen: u32) -> (Vec<u8>, Vec<u8>) {
    let start = state_key(group, gen, &[]);
    let end = match gen.checked_add(1) {
        Some(next) => state_key(group, next, &[]),
        None => match group.checked_add(1) {
            Some(g) => g.to_be_bytes().to_vec(),
            None => vec![0xff; 9],
        },
    };
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_group_then_index() {
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert!(log_key(1, 255) < log_key(1, 256));
        assert_eq!(log_index(&log_key(7, 1234)), Some(1234));
        assert_eq!(log_index(&[1, 2, 3]), None);
    }
}
