//! A worker built on `temporalio-sdk`: polls the task queue named by `NORN_TASK_QUEUE` on the
//! server named by `TEMPORAL_ADDRESS` (namespace `TEMPORAL_NAMESPACE`, default `default`) and
//! runs `RustOrder`: an activity, a one-second timer, then a second activity.

use std::time::Duration;

use temporalio_client::envconfig::LoadClientConfigProfileOptions;
use temporalio_client::{Client, ClientOptions, Connection};
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::{ActivityOptions, Runtime, Worker, WorkerOptions, WorkflowContext, WorkflowResult};

#[workflow]
#[derive(Default)]
pub struct RustOrder;

#[workflow_methods]
impl RustOrder {
    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>, item: String) -> WorkflowResult<String> {
        let opts = || ActivityOptions::start_to_close_timeout(Duration::from_secs(10));
        let reserved = ctx.execute_activity(Shop::reserve, item, opts()).await?;
        ctx.timer(Duration::from_secs(1)).await;
        let shipped = ctx.execute_activity(Shop::ship, reserved, opts()).await?;
        Ok(shipped)
    }
}

pub struct Shop;

#[activities]
impl Shop {
    #[activity]
    pub async fn reserve(_ctx: ActivityContext, item: String) -> Result<String, ActivityError> {
        Ok(format!("reserved {item}"))
    }

    #[activity]
    pub async fn ship(_ctx: ActivityContext, what: String) -> Result<String, ActivityError> {
        Ok(format!("{what}, shipped by rust"))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let task_queue = std::env::var("NORN_TASK_QUEUE").unwrap_or_else(|_| "rust-worker".into());
    let runtime = Runtime::from_current_tokio(Default::default())?;
    let (conn_opts, client_opts) = ClientOptions::load_from_config(LoadClientConfigProfileOptions::default())?;
    let client = Client::new(Connection::connect(conn_opts).await?, client_opts)?;
    let options =
        WorkerOptions::new(task_queue.as_str()).register_workflow::<RustOrder>()?.register_activities(Shop).build();
    println!("rust worker polling {task_queue}");
    Worker::new(&runtime, client, options)?.run().await?;
    Ok(())
}
