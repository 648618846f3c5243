//! Temporal's `temporal.api.workflowservice.v1.WorkflowService`, generated at build time from the
//! descriptor set of the `temporalio-protos` crate, over that crate's message types.
//!
//! Why a crate of its own: the generated code is large and changes only with the
//! `temporalio-protos` version, so keeping it apart keeps `norn-node` rebuilds fast, and the
//! build script needs a direct dependency on `temporalio-protos` to see its descriptor path.
//!
//! Every RPC has a default implementation answering `Unimplemented`, so the server implements
//! only what Norn honours.

/// The generated service (server trait and client).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod workflowservice {
    tonic::include_proto!("temporal.api.workflowservice.v1");
}

pub use temporalio_protos as protos;

/// The encoded `FileDescriptorSet` of every Temporal message (from `temporalio-protos`), for
/// reading and writing Temporal's proto-JSON (for example history files from `temporal workflow
/// show --output json`).
pub const TEMPORAL_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/temporal_descriptors.bin"));
pub use workflowservice::workflow_service_client::WorkflowServiceClient;
pub use workflowservice::workflow_service_server::{WorkflowService, WorkflowServiceServer};

/// Norn's own operator protocol (`norn.admin.v1.Admin`), served on every node's client port beside
/// the Temporal API: cluster status (who leads which shard), and test and benchmark calls.
pub mod admin {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("norn.admin.v1");
}

/// Norn's node-to-node protocol (`norn.internal.v1.Internal`), served on the peer port only:
/// proposals, reads and task offers routed to shard leaders. Only `norn-node` uses it; it lives
/// here because this crate holds every generated protocol.
pub mod internal {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("norn.internal.v1");
}

/// How Norn maps keys to shards. Shared by the server and the Rust client SDK, which uses it to
/// send each workflow call straight to the leader of the workflow's shard.
pub mod placement {
    /// FNV-1a, 64-bit: the stable hash Norn routes by. It never changes across versions, because
    /// the shard of existing data depends on it.
    pub fn stable_hash(parts: &[&[u8]]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                // Separator, so that ("ab","c") and ("a","bc") hash apart.
                h ^= 0xff;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            for b in *part {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }

    /// The shard (0-based) of a key among `shards`.
    pub fn shard_of(parts: &[&[u8]], shards: u32) -> u64 {
        stable_hash(parts) % u64::from(shards.max(1))
    }

    /// The home shard of a task queue (where its matching runs, on that shard's leader): by
    /// namespace id, the queue's normal name (a sticky queue lives with its normal queue) and
    /// its kind.
    pub fn task_queue_shard(namespace_id: &str, normal_queue: &str, activity: bool, shards: u32) -> u64 {
        let kind: &[u8] = if activity { b"a" } else { b"w" };
        shard_of(&[namespace_id.as_bytes(), normal_queue.as_bytes(), kind], shards)
    }

    /// The shard of a workflow: by namespace id (not name) and workflow id.
    pub fn workflow_shard(namespace_id: &str, workflow_id: &str, shards: u32) -> u64 {
        shard_of(&[namespace_id.as_bytes(), workflow_id.as_bytes()], shards)
    }
}
