//! Fan-out with an error group: ten activities run at once; if one fails, the group cancels the
//! others and the workflow reports the failure.
//!
//! Run `norn dev` in another terminal, then `cargo run -p norn-client --example fan_out`.

use std::time::Duration;

use norn_client::workflow::{ActivityOptions, ErrGroup, WfContext, WfResult};
use norn_client::{ApplicationError, Client, ClientOptions, RetryPolicy, StartOptions, Worker, WorkerOptions};

async fn sum_of_squares(ctx: WfContext, n: u64) -> WfResult<u64> {
    let opts = ActivityOptions::start_to_close(Duration::from_secs(10))
        .retry(RetryPolicy { maximum_attempts: 3, ..Default::default() });
    let mut group = ErrGroup::new(&ctx);
    for i in 1..=n {
        let opts = opts.clone();
        group.spawn(move |scope| async move { scope.activity::<_, u64>("square", &i, opts).await });
    }
    let squares = group.wait().await?;
    Ok(squares.iter().sum())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("NORN_ADDRESS").unwrap_or_else(|_| "127.0.0.1:7233".into());
    let client = Client::connect(&[address], ClientOptions::default()).await?;

    let mut worker = Worker::new(client.clone(), WorkerOptions::new("fan-out"));
    worker.register_workflow("sum_of_squares", sum_of_squares).register_activity("square", |_ctx, i: u64| async move {
        if i > 100 {
            return Err(ApplicationError::non_retryable(format!("{i} is too large"), "TooLarge"));
        }
        Ok(i * i)
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move { worker.run(async { stopped.await.unwrap_or(()) }).await });

    let id = format!("squares-{}", client.new_request_id());
    let handle = client.start_workflow("sum_of_squares", &10u64, StartOptions::new(id, "fan-out")).await?;
    let total: u64 = handle.result().await?;
    println!("sum of squares 1..=10 = {total}");

    let _ = stop.send(());
    running.await??;
    Ok(())
}
