//! Cross-language check with the Python SDK, driven by `compat/test_sdk_interop.py`:
//!
//! - `interop worker <address> <task-queue>`: a Norn Rust worker with workflows that a Python
//!   client runs (`RustOrder`, `RustBytes`, `RustNull`, `RustFail`, and `RustTally` with an
//!   update handler), until stdin closes.
//! - `interop replay <history.json>`: replays a history in Temporal's JSON format (as
//!   `temporal workflow show --output json` writes it) through the worker's workflows.
//! - `interop client <address> <task-queue>`: a Norn Rust client that runs the Python workflows
//!   `PyOrder`, `PyBytes`, `PyNull` and `PyFail` and checks every value; exits non-zero on a
//!   mismatch.

use std::time::Duration;

use norn_client::workflow::{ActivityOptions, WfContext, WfResult};
use norn_client::{
    ApplicationError, Client, ClientOptions, Error, FailureKind, RawBytes, StartOptions, Worker, WorkerOptions,
};
use serde::{Deserialize, Serialize};

/// The struct both languages exchange (a dict on the Python side).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    items: Vec<String>,
    total: Option<f64>,
}

async fn rust_order(ctx: WfContext, o: Order) -> WfResult<Order> {
    ctx.activity("rust_price", &o, ActivityOptions::start_to_close(Duration::from_secs(10))).await
}

async fn rust_bytes(_ctx: WfContext, b: RawBytes) -> WfResult<RawBytes> {
    Ok(RawBytes(b.0.into_iter().rev().collect()))
}

async fn rust_null(_ctx: WfContext, v: Option<String>) -> WfResult<Option<String>> {
    assert!(v.is_none());
    Ok(None)
}

async fn rust_fail(_ctx: WfContext, why: String) -> WfResult<()> {
    Err(ApplicationError::non_retryable(why, "RustError")
        .with_details(&Order { id: 9, items: vec![], total: None })?
        .into())
}

async fn rust_tally(ctx: WfContext, _: ()) -> WfResult<i64> {
    let total = std::rc::Rc::new(std::cell::Cell::new(0i64));
    let t = total.clone();
    ctx.update_handler_with_validator(
        "add",
        |n: &i64| if *n < 0 { Err(ApplicationError::new("negative amount", "Negative")) } else { Ok(()) },
        move |_c: WfContext, n: i64| {
            let t = t.clone();
            async move {
                t.set(t.get() + n);
                Ok(t.get())
            }
        },
    );
    ctx.signal_channel::<()>("finish").recv().await?;
    Ok(total.get())
}

fn register(w: &mut norn_client::Registry) {
    w.register_workflow("RustOrder", rust_order);
    w.register_workflow("RustBytes", rust_bytes);
    w.register_workflow("RustNull", rust_null);
    w.register_workflow("RustFail", rust_fail);
    w.register_workflow("RustTally", rust_tally);
}

fn replay(path: String) -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = norn_client::Registry::default();
    register(&mut registry);
    let json = std::fs::read_to_string(&path)?;
    norn_client::Replayer::from_registry(registry).replay_json(&json)?;
    println!("replayed {path} clean");
    Ok(())
}

async fn worker(address: String, tq: String) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(&[address], ClientOptions::default()).await?;
    let mut w = Worker::new(client, WorkerOptions::new(tq));
    register(w.registry_mut());
    w.register_activity("rust_price", |_c, mut o: Order| async move {
        o.total = Some(o.items.len() as f64 * 2.5);
        Ok(o)
    });
    println!("ready");
    w.run(async {
        // Stop when the parent closes stdin.
        let mut buf = String::new();
        let stdin = tokio::io::stdin();
        let mut r = tokio::io::BufReader::new(stdin);
        let _ = tokio::io::AsyncBufReadExt::read_line(&mut r, &mut buf).await;
    })
    .await?;
    Ok(())
}

fn check(cond: bool, what: &str) -> Result<(), Box<dyn std::error::Error>> {
    if cond {
        println!("ok: {what}");
        Ok(())
    } else {
        Err(format!("mismatch: {what}").into())
    }
}

async fn client(address: String, tq: String) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(&[address], ClientOptions::default()).await?;
    let id = |k: &str| format!("interop-{k}-{}", client.new_request_id());

    let o = Order { id: 1, items: vec!["a".into(), "b".into(), "c".into()], total: None };
    let h = client.start_workflow("PyOrder", &o, StartOptions::new(id("order"), &tq)).await?;
    let back: Order = h.result().await?;
    check(back == Order { total: Some(30.0), ..o }, "struct through a Python workflow and activity")?;

    let h =
        client.start_workflow("PyBytes", &RawBytes(vec![1, 2, 0, 255]), StartOptions::new(id("bytes"), &tq)).await?;
    let b: RawBytes = h.result().await?;
    check(b == RawBytes(vec![255, 0, 2, 1]), "bytes as binary/plain both ways")?;

    let h = client.start_workflow("PyNull", &None::<String>, StartOptions::new(id("null"), &tq)).await?;
    let n: Option<String> = h.result().await?;
    check(n.is_none(), "null as binary/null both ways")?;

    let h = client.start_workflow("PyFail", &"out of stock".to_string(), StartOptions::new(id("fail"), &tq)).await?;
    match h.result::<()>().await {
        Err(Error::WorkflowFailed(f)) => {
            check(f.message == "out of stock", "failure message")?;
            check(f.application_type() == Some("PyError"), "failure type")?;
            let details = match &f.kind {
                FailureKind::Application { details, non_retryable, .. } => {
                    check(*non_retryable, "non_retryable flag")?;
                    details.clone()
                }
                _ => None,
            };
            let d: serde_json::Value = norn_client::payload::from_payloads(details.as_ref())?;
            check(d == serde_json::json!({"code": 42}), "failure details")?;
        }
        other => return Err(format!("expected a failed workflow, got {other:?}").into()),
    }
    println!("all checks passed");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let (Some("replay"), Some(path)) = (args.get(1).map(String::as_str), args.get(2)) {
        return replay(path.clone());
    }
    match args.get(1..4) {
        Some([mode, address, tq]) if mode == "worker" => worker(address.clone(), tq.clone()).await,
        Some([mode, address, tq]) if mode == "client" => client(address.clone(), tq.clone()).await,
        _ => Err("usage: interop worker|client <address> <task-queue> | interop replay <history.json>".into()),
    }
}
