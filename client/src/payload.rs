//! Temporal's default data converter: values become `Payload`s with an `encoding` metadata key.
//!
//! | Rust value                               | encoding        | data                     |
//! |------------------------------------------|-----------------|--------------------------|
//! | `()`, `None`, anything serialising to null | `binary/null`   | empty                    |
//! | [`RawBytes`]                             | `binary/plain`  | the bytes                |
//! | [`ProtoJson`]                            | `json/protobuf` | protobuf JSON, plus `messageType` |
//! | any other `serde::Serialize`             | `json/plain`    | compact JSON             |
//!
//! Decoding accepts all four encodings for any `serde::Deserialize` target (a `binary/null`
//! payload decodes as JSON `null`, so into `()`, `Option<T>` or `serde_json::Value`), and
//! `binary/plain` into [`RawBytes`]. This is what the Python, Go and TypeScript SDKs produce and
//! expect, so a Rust client and a worker written with another SDK exchange values unchanged.

use std::any::Any;
use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use temporalio_protos::temporal::api::common::v1::{Payload, Payloads};

/// The metadata key naming a payload's encoding.
pub const ENCODING: &str = "encoding";
/// `binary/null`: no value.
pub const BINARY_NULL: &str = "binary/null";
/// `binary/plain`: raw bytes.
pub const BINARY_PLAIN: &str = "binary/plain";
/// `json/plain`: JSON text.
pub const JSON_PLAIN: &str = "json/plain";
/// `json/protobuf`: a protobuf message in its JSON form.
pub const JSON_PROTOBUF: &str = "json/protobuf";

/// Raw bytes, carried as `binary/plain` (Python's `bytes`, Go's `[]byte`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawBytes(pub Vec<u8>);

/// A protobuf message already in its JSON form, carried as `json/protobuf` with its full message
/// type name in the `messageType` metadata (as the other SDKs write it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProtoJson {
    /// Fully qualified message name, e.g. `temporal.api.common.v1.WorkflowExecution`.
    pub message_type: String,
    /// The message's protobuf-JSON value.
    pub json: serde_json::Value,
}

/// A value could not be converted to or from a payload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The payload's encoding is not one this converter knows.
    #[error("unknown payload encoding {0:?}; expected binary/null, binary/plain, json/plain or json/protobuf")]
    UnknownEncoding(String),
    /// The payload's bytes do not decode into the requested type.
    #[error("payload ({encoding}) does not decode into {target}: {reason}")]
    Decode {
        /// The payload's encoding.
        encoding: String,
        /// The requested Rust type.
        target: &'static str,
        /// Why.
        reason: String,
    },
    /// The value could not be serialised.
    #[error("value does not encode: {0}")]
    Encode(String),
    /// A required value was missing (no payload at that position).
    #[error("expected a value at position {0}, found none")]
    Missing(usize),
}

fn payload(encoding: &str, data: Vec<u8>) -> Payload {
    let mut metadata = HashMap::new();
    metadata.insert(ENCODING.to_string(), encoding.as_bytes().to_vec());
    Payload { metadata, data, ..Default::default() }
}

/// The encoding of a payload (`""` when it has none).
pub fn encoding_of(p: &Payload) -> &str {
    p.metadata.get(ENCODING).and_then(|e| std::str::from_utf8(e).ok()).unwrap_or("")
}

/// Encodes one value.
pub fn to_payload<T: Serialize + 'static>(value: &T) -> Result<Payload, PayloadError> {
    let any = value as &dyn Any;
    if let Some(b) = any.downcast_ref::<RawBytes>() {
        return Ok(payload(BINARY_PLAIN, b.0.clone()));
    }
    if let Some(p) = any.downcast_ref::<ProtoJson>() {
        let mut out =
            payload(JSON_PROTOBUF, serde_json::to_vec(&p.json).map_err(|e| PayloadError::Encode(e.to_string()))?);
        out.metadata.insert("messageType".into(), p.message_type.as_bytes().to_vec());
        return Ok(out);
    }
    if let Some(p) = any.downcast_ref::<Payload>() {
        return Ok(p.clone());
    }
    let json = serde_json::to_value(value).map_err(|e| PayloadError::Encode(e.to_string()))?;
    if json.is_null() {
        return Ok(payload(BINARY_NULL, Vec::new()));
    }
    Ok(payload(JSON_PLAIN, serde_json::to_vec(&json).map_err(|e| PayloadError::Encode(e.to_string()))?))
}

/// Decodes one value.
pub fn from_payload<T: DeserializeOwned + 'static>(p: &Payload) -> Result<T, PayloadError> {
    let target = std::any::type_name::<T>();
    let enc = encoding_of(p);
    let decode_err = |reason: String| PayloadError::Decode { encoding: enc.to_string(), target, reason };
    // Special targets first: raw bytes and the payload itself.
    let mut slot: Option<T> = None;
    if let Some(s) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Payload>>() {
        *s = Some(p.clone());
        return slot.ok_or_else(|| decode_err("internal".into()));
    }
    if let Some(s) = (&mut slot as &mut dyn Any).downcast_mut::<Option<RawBytes>>() {
        match enc {
            BINARY_PLAIN => *s = Some(RawBytes(p.data.clone())),
            BINARY_NULL => *s = Some(RawBytes(Vec::new())),
            _ => return Err(decode_err("raw bytes need a binary/plain payload".into())),
        }
        return slot.ok_or_else(|| decode_err("internal".into()));
    }
    if let Some(s) = (&mut slot as &mut dyn Any).downcast_mut::<Option<ProtoJson>>() {
        let json: serde_json::Value = serde_json::from_slice(&p.data).map_err(|e| decode_err(e.to_string()))?;
        let message_type =
            p.metadata.get("messageType").map(|m| String::from_utf8_lossy(m).into_owned()).unwrap_or_default();
        *s = Some(ProtoJson { message_type, json });
        return slot.ok_or_else(|| decode_err("internal".into()));
    }
    match enc {
        BINARY_NULL => serde_json::from_value(serde_json::Value::Null).map_err(|e| decode_err(e.to_string())),
        JSON_PLAIN | JSON_PROTOBUF => serde_json::from_slice(&p.data).map_err(|e| decode_err(e.to_string())),
        BINARY_PLAIN => {
            // Bytes into a non-bytes type: as a JSON array of numbers (Vec<u8>) if that fits.
            serde_json::from_value(serde_json::Value::from(p.data.clone())).map_err(|e| decode_err(e.to_string()))
        }
        other => Err(PayloadError::UnknownEncoding(other.to_string())),
    }
}

/// Encodes one value as a one-element `Payloads` (how SDKs pass a single argument or result).
pub fn to_payloads<T: Serialize + 'static>(value: &T) -> Result<Payloads, PayloadError> {
    Ok(Payloads { payloads: vec![to_payload(value)?] })
}

/// Decodes the first payload of `payloads`; a missing one decodes as `binary/null` (so `()` and
/// `Option` accept "no value", as the other SDKs do for empty inputs and results).
pub fn from_payloads<T: DeserializeOwned + 'static>(payloads: Option<&Payloads>) -> Result<T, PayloadError> {
    match payloads.and_then(|p| p.payloads.first()) {
        Some(p) => from_payload(p),
        None => from_payload(&payload(BINARY_NULL, Vec::new())),
    }
}

/// Encodes several arguments of different types, in order: `args![a, b, c]`.
#[macro_export]
macro_rules! args {
    ($($v:expr),* $(,)?) => {{
        (|| -> ::std::result::Result<$crate::protos::temporal::api::common::v1::Payloads, $crate::payload::PayloadError> {
            Ok($crate::protos::temporal::api::common::v1::Payloads {
                payloads: vec![$($crate::payload::to_payload(&$v)?),*],
            })
        })()
    }};
}

/// Decodes the argument at `index` of `payloads`.
pub fn arg<T: DeserializeOwned + 'static>(payloads: Option<&Payloads>, index: usize) -> Result<T, PayloadError> {
    match payloads.and_then(|p| p.payloads.get(index)) {
        Some(p) => from_payload(p),
        None => from_payload(&payload(BINARY_NULL, Vec::new())).map_err(|_| PayloadError::Missing(index)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Order {
        id: u32,
        items: Vec<String>,
    }

    #[test]
    fn structs_are_json_plain_and_round_trip() {
        let o = Order { id: 7, items: vec!["a".into()] };
        let p = to_payload(&o).unwrap();
        assert_eq!(encoding_of(&p), JSON_PLAIN);
        assert_eq!(p.data, br#"{"id":7,"items":["a"]}"#);
        assert_eq!(from_payload::<Order>(&p).unwrap(), o);
    }

    #[test]
    fn null_and_unit_are_binary_null() {
        let p = to_payload(&()).unwrap();
        assert_eq!(encoding_of(&p), BINARY_NULL);
        assert!(p.data.is_empty());
        assert_eq!(encoding_of(&to_payload(&None::<u8>).unwrap()), BINARY_NULL);
        assert_eq!(from_payload::<Option<u8>>(&p).unwrap(), None);
        from_payload::<()>(&p).unwrap();
        assert!(from_payload::<u32>(&p).is_err());
        assert_eq!(from_payloads::<Option<String>>(None).unwrap(), None);
    }

    #[test]
    fn raw_bytes_are_binary_plain() {
        let p = to_payload(&RawBytes(vec![0, 255, 3])).unwrap();
        assert_eq!(encoding_of(&p), BINARY_PLAIN);
        assert_eq!(p.data, vec![0, 255, 3]);
        assert_eq!(from_payload::<RawBytes>(&p).unwrap(), RawBytes(vec![0, 255, 3]));
        assert!(from_payload::<RawBytes>(&to_payload(&"x").unwrap()).is_err());
    }

    #[test]
    fn proto_json_keeps_its_message_type() {
        let v = ProtoJson { message_type: "a.b.C".into(), json: serde_json::json!({"x": 1}) };
        let p = to_payload(&v).unwrap();
        assert_eq!(encoding_of(&p), JSON_PROTOBUF);
        assert_eq!(p.metadata["messageType"], b"a.b.C");
        assert_eq!(from_payload::<ProtoJson>(&p).unwrap(), v);
        assert_eq!(from_payload::<serde_json::Value>(&p).unwrap(), serde_json::json!({"x": 1}));
    }

    #[test]
    fn unknown_encodings_and_bad_bytes_are_errors() {
        let p = payload("binary/protobuf", vec![1]);
        assert_eq!(from_payload::<u8>(&p), Err(PayloadError::UnknownEncoding("binary/protobuf".into())));
        let bad = payload(JSON_PLAIN, b"{".to_vec());
        assert!(matches!(from_payload::<Order>(&bad), Err(PayloadError::Decode { .. })));
    }

    #[test]
    fn several_arguments() {
        let ps = crate::args!["a", 2u8, RawBytes(vec![1])].unwrap();
        assert_eq!(ps.payloads.len(), 3);
        assert_eq!(arg::<String>(Some(&ps), 0).unwrap(), "a");
        assert_eq!(arg::<u8>(Some(&ps), 1).unwrap(), 2);
        assert_eq!(arg::<RawBytes>(Some(&ps), 2).unwrap(), RawBytes(vec![1]));
        assert_eq!(arg::<u8>(Some(&ps), 3), Err(PayloadError::Missing(3)));
    }
}
