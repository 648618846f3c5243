//! Hello activity: a workflow calls one activity and returns its result.
//!
//! Run `norn dev` in another terminal, then `cargo run -p norn-client --example hello_activity`.

use std::time::Duration;

use norn_client::workflow::{ActivityOptions, WfContext, WfResult};
use norn_client::{Client, ClientOptions, StartOptions, Worker, WorkerOptions};

async fn greet(ctx: WfContext, name: String) -> WfResult<String> {
    let opts = ActivityOptions::start_to_close(Duration::from_secs(10));
    ctx.activity("compose_greeting", &name, opts).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("NORN_ADDRESS").unwrap_or_else(|_| "127.0.0.1:7233".into());
    let client = Client::connect(&[address], ClientOptions::default()).await?;

    let mut worker = Worker::new(client.clone(), WorkerOptions::new("hello-activity"));
    worker
        .register_workflow("greet", greet)
        .register_activity("compose_greeting", |_ctx, name: String| async move { Ok(format!("Hello, {name}!")) });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move { worker.run(async { stopped.await.unwrap_or(()) }).await });

    let id = format!("hello-{}", client.new_request_id());
    let handle = client.start_workflow("greet", &"Norn".to_string(), StartOptions::new(id, "hello-activity")).await?;
    let greeting: String = handle.result().await?;
    println!("{greeting}");

    let _ = stop.send(());
    running.await??;
    Ok(())
}
