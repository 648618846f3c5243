//! Per-namespace limits on what clients and workers may send, with Temporal's defaults and
//! Temporal's error texts.
//!
//! A namespace overrides a limit with a `norn.limits.<name>` entry in its data map (`temporal
//! operator namespace update --data norn.limits.blob_size_max_bytes=1048576`); DescribeNamespace
//! shows every limit in effect under the same keys. The frontend checks what it can before
//! proposing (ids, names, request payloads); the limits the history engine enforces travel inside
//! the replicated command, so every replica applies the same ones.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tonic::Status;

/// Prefix of the namespace data keys that override limits.
pub const DATA_PREFIX: &str = "norn.limits.";

/// Temporal's error text for a payload over the limit.
pub const BLOB_TOO_LARGE: &str = "Blob data size exceeds limit.";
/// Temporal's terminate reason when a run's history grows past its limits.
pub const HISTORY_TOO_LARGE: &str = "Workflow history size / count exceeds limit.";

/// The limits in effect for a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// A payload (input, result, details, memo, header) above this is logged as a warning.
    pub blob_size_warn_bytes: u64,
    /// A payload above this is refused (`Blob data size exceeds limit.`).
    pub blob_size_max_bytes: u64,
    /// Longest workflow id, run id, type name, task queue, signal, query and update name,
    /// activity id, timer id and request id, in bytes.
    pub id_length_max: u64,
    /// Events in one run's history above this are logged as a warning.
    pub history_count_warn: u64,
    /// A run whose history grows past this many events is terminated.
    pub history_count_max: u64,
    /// History bytes of one run above this are logged as a warning.
    pub history_size_warn_bytes: u64,
    /// A run whose history grows past this many bytes is terminated.
    pub history_size_max_bytes: u64,
    /// Activities scheduled and not closed, per run.
    pub pending_activities_max: u64,
    /// Child workflows initiated and not closed, per run.
    pub pending_children_max: u64,
    /// Signals to other workflows initiated and not delivered, per run.
    pub pending_signals_max: u64,
    /// Cancel requests to other workflows initiated and not delivered, per run.
    pub pending_cancels_max: u64,
    /// Updates admitted and not completed, per run.
    pub updates_in_flight_max: u64,
    /// Updates per run over its lifetime.
    pub updates_total_max: u64,
    /// Commands in one workflow task completion.
    pub commands_per_task_max: u64,
    /// Signals one run may receive over its life.
    pub signals_per_run_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            blob_size_warn_bytes: 256 << 10,
            blob_size_max_bytes: 2 << 20,
            id_length_max: 1000,
            history_count_warn: 10_240,
            history_count_max: 51_200,
            history_size_warn_bytes: 10 << 20,
            history_size_max_bytes: 50 << 20,
            pending_activities_max: 2000,
            pending_children_max: 2000,
            pending_signals_max: 2000,
            pending_cancels_max: 2000,
            updates_in_flight_max: 10,
            updates_total_max: 2000,
            commands_per_task_max: 10_000,
            signals_per_run_max: 10_000,
        }
    }
}

/// Every limit: its key under [`DATA_PREFIX`], the field, and the largest value accepted.
type Field = (&'static str, fn(&mut Limits) -> &mut u64, u64);

const FIELDS: &[Field] = &[
    ("blob_size_warn_bytes", |l| &mut l.blob_size_warn_bytes, 64 << 20),
    ("blob_size_max_bytes", |l| &mut l.blob_size_max_bytes, 64 << 20),
    ("id_length_max", |l| &mut l.id_length_max, 4096),
    ("history_count_warn", |l| &mut l.history_count_warn, 10_000_000),
    ("history_count_max", |l| &mut l.history_count_max, 10_000_000),
    ("history_size_warn_bytes", |l| &mut l.history_size_warn_bytes, 1 << 30),
    ("history_size_max_bytes", |l| &mut l.history_size_max_bytes, 1 << 30),
    ("pending_activities_max", |l| &mut l.pending_activities_max, 100_000),
    ("pending_children_max", |l| &mut l.pending_children_max, 100_000),
    ("pending_signals_max", |l| &mut l.pending_signals_max, 100_000),
    ("pending_cancels_max", |l| &mut l.pending_cancels_max, 100_000),
    ("updates_in_flight_max", |l| &mut l.updates_in_flight_max, 100_000),
    ("updates_total_max", |l| &mut l.updates_total_max, 1_000_000),
    ("commands_per_task_max", |l| &mut l.commands_per_task_max, 100_000),
    ("signals_per_run_max", |l| &mut l.signals_per_run_max, 10_000_000),
];

impl Limits {
    /// The limits of a namespace with data map `data`: Temporal's defaults, overridden by its
    /// valid `norn.limits.*` entries (invalid ones were refused when written).
    pub fn of(data: &BTreeMap<String, String>) -> Self {
        let mut l = Self::default();
        for (name, field, max) in FIELDS {
            if let Some(v) = data.get(&format!("{DATA_PREFIX}{name}")).and_then(|v| v.trim().parse::<u64>().ok()) {
                if (1..=*max).contains(&v) {
                    *field(&mut l) = v;
                }
            }
        }
        l
    }

    /// Checks the `norn.limits.*` entries of a data map being written to a namespace.
    pub fn validate(data: &BTreeMap<String, String>) -> Result<(), Status> {
        for (key, value) in data {
            let Some(name) = key.strip_prefix(DATA_PREFIX) else { continue };
            let Some((_, _, max)) = FIELDS.iter().find(|(n, _, _)| *n == name) else {
                let known: Vec<&str> = FIELDS.iter().map(|(n, _, _)| *n).collect();
                return Err(Status::invalid_argument(format!(
                    "unknown limit {key}; the limits are {DATA_PREFIX}{{{}}}",
                    known.join(",")
                )));
            };
            match value.trim().parse::<u64>() {
                Ok(v) if (1..=*max).contains(&v) => {}
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "limit {key} must be a whole number from 1 to {max}, not {value:?}"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Every limit as namespace data entries (what DescribeNamespace shows).
    pub fn entries(&self) -> Vec<(String, String)> {
        let mut copy = *self;
        FIELDS.iter().map(|(name, field, _)| (format!("{DATA_PREFIX}{name}"), field(&mut copy).to_string())).collect()
    }

    /// Refuses an id or name longer than the limit, with Temporal's text (`what` is the field
    /// as Temporal names it, e.g. `WorkflowId`).
    pub fn check_id(&self, what: &str, value: &str) -> Result<(), Status> {
        if value.len() as u64 > self.id_length_max {
            return Err(Status::invalid_argument(format!("{what} exceeds length limit.")));
        }
        Ok(())
    }

    /// Refuses a payload over the blob limit with Temporal's text; warns above the warning size.
    pub fn check_blob(&self, what: &str, bytes: usize) -> Result<(), Status> {
        let bytes = bytes as u64;
        if bytes > self.blob_size_max_bytes {
            tracing::warn!(what, bytes, limit = self.blob_size_max_bytes, "refused a payload over the blob size limit");
            return Err(Status::invalid_argument(BLOB_TOO_LARGE));
        }
        if bytes > self.blob_size_warn_bytes {
            tracing::warn!(what, bytes, warn = self.blob_size_warn_bytes, "large payload");
        }
        Ok(())
    }

    /// The part of the limits the history engine enforces.
    pub fn engine(&self) -> EngineLimits {
        EngineLimits {
            blob_size_max_bytes: self.blob_size_max_bytes,
            id_length_max: self.id_length_max,
            history_count_max: self.history_count_max,
            history_size_max_bytes: self.history_size_max_bytes,
            pending_activities_max: self.pending_activities_max,
            pending_children_max: self.pending_children_max,
            pending_signals_max: self.pending_signals_max,
            pending_cancels_max: self.pending_cancels_max,
            updates_in_flight_max: self.updates_in_flight_max,
            updates_total_max: self.updates_total_max,
            commands_per_task_max: self.commands_per_task_max,
        }
    }
}

/// The limits a workflow task completion is applied with; part of the replicated command so that
/// every replica enforces the same ones whatever its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineLimits {
    /// See [`Limits::blob_size_max_bytes`].
    pub blob_size_max_bytes: u64,
    /// See [`Limits::id_length_max`].
    pub id_length_max: u64,
    /// See [`Limits::history_count_max`].
    pub history_count_max: u64,
    /// See [`Limits::history_size_max_bytes`].
    pub history_size_max_bytes: u64,
    /// See [`Limits::pending_activities_max`].
    pub pending_activities_max: u64,
    /// See [`Limits::pending_children_max`].
    pub pending_children_max: u64,
    /// See [`Limits::pending_signals_max`].
    pub pending_signals_max: u64,
    /// See [`Limits::pending_cancels_max`].
    pub pending_cancels_max: u64,
    /// See [`Limits::updates_in_flight_max`].
    pub updates_in_flight_max: u64,
    /// See [`Limits::updates_total_max`].
    pub updates_total_max: u64,
    /// See [`Limits::commands_per_task_max`].
    pub commands_per_task_max: u64,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Limits::default().engine()
    }
}

/// Checks that a run id is a UUID in its text form (as Temporal does: `Invalid RunId.`), so that
/// no run id can reach into another run's storage keys. Empty means "the current run".
pub fn check_run_id(run_id: &str) -> Result<(), Status> {
    if run_id.is_empty() || is_uuid(run_id) {
        Ok(())
    } else {
        Err(Status::invalid_argument("Invalid RunId."))
    }
}

/// True for `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex digits of either case.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn namespace_data_overrides_defaults_and_bad_values_are_refused() {
        let d = data(&[("norn.limits.blob_size_max_bytes", "1024"), ("other", "x")]);
        Limits::validate(&d).unwrap();
        let l = Limits::of(&d);
        assert_eq!(l.blob_size_max_bytes, 1024);
        assert_eq!(l.pending_activities_max, 2000);
        assert!(l.entries().contains(&("norn.limits.blob_size_max_bytes".into(), "1024".into())));
        for bad in
            [("norn.limits.blob_size_max_bytes", "0"), ("norn.limits.nope", "1"), ("norn.limits.id_length_max", "-1")]
        {
            let e = Limits::validate(&data(&[bad])).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn ids_blobs_and_run_ids_get_temporal_errors() {
        let l = Limits::default();
        assert!(l.check_id("WorkflowId", &"w".repeat(1000)).is_ok());
        assert_eq!(
            l.check_id("WorkflowId", &"w".repeat(1001)).unwrap_err().message(),
            "WorkflowId exceeds length limit."
        );
        assert!(l.check_blob("input", 2 << 20).is_ok());
        assert_eq!(l.check_blob("input", (2 << 20) + 1).unwrap_err().message(), BLOB_TOO_LARGE);
        assert!(check_run_id("").is_ok());
        assert!(check_run_id("0b0a6f5e-3c1d-4e2f-9a8b-7c6d5e4f3a2b").is_ok());
        for bad in ["x", "0b0a6f5e/3c1d-4e2f-9a8b-7c6d5e4f3a2b", "0b0a6f5e-3c1d-4e2f-9a8b-7c6d5e4f3a2/"] {
            assert_eq!(check_run_id(bad).unwrap_err().message(), "Invalid RunId.");
        }
    }
}
