//! Checked encoding for everything Norn writes to disk or sends to a peer: a CRC32 of the body,
//! then the postcard-encoded body. Bytes that fail the check or do not decode are reported as
//! corruption, never trusted and never a panic.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The record is shorter than its header.
    #[error("{what}: truncated record ({len} bytes)")]
    Truncated { what: &'static str, len: usize },
    /// The checksum does not match the body.
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { what: &'static str, stored: u32, computed: u32 },
    /// The body does not decode as the expected type.
    #[error("{what}: undecodable body: {source}")]
    Decode { what: &'static str, source: postcard::Error },
    /// The value cannot be encoded (a bug: every Norn type is encodable).
    #[error("{what}: cannot encode: {source}")]
    Encode { what: &'static str, source: postcard::Error },
}

/// Encodes `value` as CRC32 (big-endian) followed by its postcard body.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    let body = postcard::to_stdvec(value).map_err(|source| CodecError::Encode { what, source })?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks and decodes bytes written by [`encode`].
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() < 4 {
        return Err(CodecError::Truncated { what, len: bytes.len() });
    }
    let (head, body) = bytes.split_at(4);
    let stored = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CodecError::Checksum { what, stored, computed });
    }
    postcard::from_bytes(body).map_err(|source| CodecError::Decode { what, source })
}

/// Seals a state value for storage: CRC32 (big-endian) of the key and value, then the value.
/// The key is covered so that a value found under another key is caught too.
pub fn seal_value(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(value);
    let mut out = Vec::with_capacity(value.len() + 4);
    out.extend_from_slice(&h.finalize().to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// Checks a value written by [`seal_value`] under `key` and returns the value.
pub fn open_value<'a>(key: &[u8], stored: &'a [u8]) -> Result<&'a [u8], CodecError> {
    const WHAT: &str = "state value";
    if stored.len() < 4 {
        return Err(CodecError::Truncated { what: WHAT, len: stored.len() });
    }
    let (head, value) = stored.split_at(4);
    let sum = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(value);
    let computed = h.finalize();
    if sum != computed {
        return Err(CodecError::Checksum { what: WHAT, stored: sum, computed });
    }
    Ok(value)
}

/// Decodes `bytes` as every message a peer or the disk hands this crate (Raft requests and
/// answers, log entries, snapshot files), for the fuzzing harness (`norn debug fuzz raft_codec`):
/// whatever the bytes, this returns.
pub fn fuzz_decode_all(bytes: &[u8]) {
    use crate::types::TypeConfig;
    type Tc = TypeConfig;
    let _ = decode::<openraft::raft::AppendEntriesRequest<Tc>>("fuzz", bytes);
    let _ = decode::<openraft::raft::AppendEntriesResponse<crate::NodeId>>("fuzz", bytes);
    let _ = decode::<openraft::raft::VoteRequest<crate::NodeId>>("fuzz", bytes);
    let _ = decode::<openraft::raft::InstallSnapshotRequest<Tc>>("fuzz", bytes);
    let _ = decode::<openraft::Entry<Tc>>("fuzz", bytes);
    let _ = decode::<crate::Command>("fuzz", bytes);
    if let Ok((mut reader, _header)) = crate::snapshot::SnapReader::open(bytes) {
        for _ in 0..10_000 {
            match reader.next_record() {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
}

/// Valid encodings of the messages [`fuzz_decode_all`] reads: seeds for the fuzzing harness.
pub fn fuzz_seeds() -> Vec<Vec<u8>> {
    use crate::types::TypeConfig;
    let entry = openraft::Entry::<TypeConfig> {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 7),
        payload: openraft::EntryPayload::Normal(crate::Command { timestamp_ms: 5, payloads: vec![b"abc".to_vec()] }),
    };
    let append = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: openraft::Vote::new_committed(3, 1),
        prev_log_id: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 6)),
        leader_commit: None,
        entries: vec![entry.clone()],
    };
    let mut snap = Vec::new();
    if let Ok(mut w) = crate::snapshot::SnapWriter::new(&mut snap, b"header") {
        let _ = w.record(b"k", b"v");
        let _ = w.finish();
    }
    [encode("fuzz", &append).ok(), encode("fuzz", &entry).ok(), Some(snap)].into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_catch_flips_truncation_and_moves() {
        let sealed = seal_value(b"run/a", b"state bytes");
        assert_eq!(open_value(b"run/a", &sealed).unwrap(), b"state bytes");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(open_value(b"run/a", &bad).is_err(), "flip at {i} undetected");
        }
        assert!(open_value(b"run/a", &sealed[..3]).is_err());
        assert!(open_value(b"run/a", &sealed[..sealed.len() - 1]).is_err());
        assert!(open_value(b"run/b", &sealed).is_err(), "a value under another key is caught");
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let v = (42u64, "hello".to_string(), vec![1u8, 2, 3]);
        let bytes = encode("test", &v).unwrap();
        assert_eq!(decode::<(u64, String, Vec<u8>)>("test", &bytes).unwrap(), v);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode::<(u64, String, Vec<u8>)>("test", &bad).is_err(), "flip at {i} undetected");
        }
        for n in 0..bytes.len() {
            assert!(decode::<(u64, String, Vec<u8>)>("test", &bytes[..n]).is_err(), "truncation to {n} undetected");
        }
    }
}
