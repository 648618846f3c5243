//! Signals and queries: a workflow collects items sent as signals until "checkout", and answers
//! a query with the cart so far.
//!
//! Run `norn dev` in another terminal, then `cargo run -p norn-client --example signals_queries`.

use std::cell::RefCell;
use std::rc::Rc;

use norn_client::workflow::{WfContext, WfResult};
use norn_client::{Client, ClientOptions, StartOptions, Worker, WorkerOptions};

async fn cart(ctx: WfContext, _: ()) -> WfResult<Vec<String>> {
    let items = Rc::new(RefCell::new(Vec::<String>::new()));
    let view = items.clone();
    ctx.query_handler("items", move |_: ()| view.borrow().clone());
    let adds = ctx.signal_channel::<String>("add");
    loop {
        let item = adds.recv().await?;
        if item == "checkout" {
            return Ok(items.borrow().clone());
        }
        items.borrow_mut().push(item);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::var("NORN_ADDRESS").unwrap_or_else(|_| "127.0.0.1:7233".into());
    let client = Client::connect(&[address], ClientOptions::default()).await?;

    let mut worker = Worker::new(client.clone(), WorkerOptions::new("carts"));
    worker.register_workflow("cart", cart);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move { worker.run(async { stopped.await.unwrap_or(()) }).await });

    let id = format!("cart-{}", client.new_request_id());
    let handle = client.start_workflow("cart", &(), StartOptions::new(id, "carts")).await?;
    handle.signal("add", &"apples".to_string()).await?;
    handle.signal("add", &"pears".to_string()).await?;
    // Queries see the state as of the last workflow task; wait until both items are in.
    loop {
        let so_far: Vec<String> = handle.query("items", &()).await?;
        if so_far.len() == 2 {
            println!("in the cart: {so_far:?}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    handle.signal("add", &"checkout".to_string()).await?;
    let bought: Vec<String> = handle.result().await?;
    println!("bought: {bought:?}");

    let _ = stop.send(());
    running.await??;
    Ok(())
}
