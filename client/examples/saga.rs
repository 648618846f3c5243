//! Saga with compensation: book a flight, a hotel and a car; when a step fails, undo the steps
//! that succeeded, in reverse order, and fail the trip.
//!
//! Run `norn dev` in another terminal, then `cargo run -p norn-client --example saga`.

use std::time::Duration;

use norn_client::workflow::{ActivityOptions, WfContext, WfResult};
use norn_client::{ApplicationError, Client, ClientOptions, Error, RetryPolicy, StartOptions, Worker, WorkerOptions};

async fn book_trip(ctx: WfContext, fail_at: String) -> WfResult<Vec<String>> {
    let opts = ActivityOptions::start_to_close(Duration::from_secs(10))
        .retry(RetryPolicy { maximum_attempts: 2, ..Default::default() });
    let mut compensations: Vec<&str> = Vec::new();
    for (step, undo) in [("book_flight", "cancel_flight"), ("book_hotel", "cancel_hotel"), ("book_car", "cancel_car")] {
        match ctx.activity::<_, String>(step, &fail_at, opts.clone()).await {
            Ok(_) => compensations.push(undo),
            Err(e) => {
                for undo in compensations.iter().rev() {
                    ctx.activity::<_, String>(undo, &(), opts.clone()).await?;
                }
                return Err(e);
            }
        }
    }
    Ok(vec!["flight".into(), "hotel".into(), "car".into()])
}

fn step(
    name: &'static str,
) -> impl Fn(norn_client::ActivityContext, String) -> std::future::Ready<Result<String, ApplicationError>> {
    move |_ctx, fail_at: String| {
        std::future::ready(if fail_at == name {
            Err(ApplicationError::non_retryable(format!("{name} is sold out"), "SoldOut"))
        } else {
            println!("  {name}: ok");
            Ok(name.to_string())
        })
    }
}

fn undo(
    name: &'static str,
) -> impl Fn(norn_client::ActivityContext, ()) -> std::future::Ready<Result<String, ApplicationError>> {
    move |_ctx, ()| {
        println!("  {name}: compensated");
        std::future::ready(Ok(name.to_string()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("NORN_ADDRESS").unwrap_or_else(|_| "127.0.0.1:7233".into());
    let client = Client::connect(&[address], ClientOptions::default()).await?;

    let mut worker = Worker::new(client.clone(), WorkerOptions::new("trips"));
    worker
        .register_workflow("book_trip", book_trip)
        .register_activity("book_flight", step("book_flight"))
        .register_activity("book_hotel", step("book_hotel"))
        .register_activity("book_car", step("book_car"))
        .register_activity("cancel_flight", undo("cancel_flight"))
        .register_activity("cancel_hotel", undo("cancel_hotel"))
        .register_activity("cancel_car", undo("cancel_car"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move { worker.run(async { stopped.await.unwrap_or(()) }).await });

    println!("trip 1 (everything available):");
    let id = format!("trip-{}", client.new_request_id());
    let h = client.start_workflow("book_trip", &"nothing".to_string(), StartOptions::new(id, "trips")).await?;
    println!("booked: {:?}", h.result::<Vec<String>>().await?);

    println!("trip 2 (no cars left):");
    let id = format!("trip-{}", client.new_request_id());
    let h = client.start_workflow("book_trip", &"book_car".to_string(), StartOptions::new(id, "trips")).await?;
    match h.result::<Vec<String>>().await {
        Err(Error::WorkflowFailed(f)) => println!("trip failed and was rolled back: {f}"),
        other => println!("unexpected: {other:?}"),
    }

    let _ = stop.send(());
    running.await??;
    Ok(())
}
