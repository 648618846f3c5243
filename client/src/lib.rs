//! Norn's Rust client SDK: a cluster-aware Temporal client, a worker, and deterministic
//! workflows written as `async fn`, with replay.
//!
//! It speaks Temporal's `WorkflowService` protocol, so it works against Norn and against a
//! Temporal server; against Norn it also learns the shard map and sends each workflow call to
//! the leader of the workflow's shard.
//!
//! ```no_run
//! use std::time::Duration;
//! use norn_client::{Client, ClientOptions, StartOptions, Worker, WorkerOptions};
//! use norn_client::workflow::{ActivityOptions, WfContext, WfResult};
//!
//! async fn greet(ctx: WfContext, name: String) -> WfResult<String> {
//!     let opts = ActivityOptions::start_to_close(Duration::from_secs(10));
//!     ctx.activity::<_, String>("hello", &name, opts).await
//! }
//!
//! # async fn run() -> Result<(), norn_client::Error> {
//! let client = Client::connect(&["127.0.0.1:7233"], ClientOptions::default()).await?;
//! let mut worker = Worker::new(client.clone(), WorkerOptions::new("greetings"));
//! worker.register_workflow("greet", greet);
//! worker.register_activity("hello", |_ctx, name: String| async move { Ok(format!("Hello, {name}!")) });
//! let handle = client.start_workflow("greet", &"Norn".to_string(), StartOptions::new("greet-1", "greetings")).await?;
//! # Ok(()) }
//! ```
//!
//! Architecture invariant: this crate depends on no server crate (`norn-node`, `norn-raft`,
//! `norn-storage`); `norn-proto` is the shared wire protocol only.

// Failures carry Temporal's failure record (message, kind, details, cause); they are the cold path,
// so results keep it inline rather than boxing every error.
#![allow(clippy::result_large_err)]
#![deny(missing_docs)]

pub mod client;
pub mod error;
pub mod failure;
pub mod handle;
pub mod payload;
pub mod replay;
pub mod worker;
pub mod workflow;

pub use client::{
    Client, ClientOptions, Connector, RetryOptions, RetryPolicy, StartOptions, TcpConnector, TlsOptions, UpdateHandle,
    UpdateWait,
};
pub use error::Error;
pub use failure::{ApplicationError, Failure, FailureKind};
pub use handle::WorkflowHandle;
pub use payload::{ProtoJson, RawBytes};
pub use replay::{history_from_json, history_to_json, ReplayError, Replayer};
pub use worker::{ActivityContext, ActivityInfo, AttemptHook, Registry, Worker, WorkerOptions};

/// The Temporal message types this SDK speaks.
pub use temporalio_protos as protos;
