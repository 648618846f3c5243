//! The cluster-aware `WorkflowService` client.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use hyper_util::rt::TokioIo;
use norn_proto::admin::admin_client::AdminClient;
use norn_proto::admin::ClusterStatusRequest;
use norn_proto::WorkflowServiceClient;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use temporalio_protos::temporal::api::common::v1::{Payload, Payloads, WorkflowExecution, WorkflowType};
use temporalio_protos::temporal::api::enums::v1::{
    HistoryEventFilterType, QueryRejectCondition, TaskQueueKind, WorkflowIdConflictPolicy, WorkflowIdReusePolicy,
};
use temporalio_protos::temporal::api::history::v1::HistoryEvent;
use temporalio_protos::temporal::api::query::v1::WorkflowQuery;
use temporalio_protos::temporal::api::taskqueue::v1::TaskQueue;
use temporalio_protos::temporal::api::workflow::v1::WorkflowExecutionInfo;
use temporalio_protos::temporal::api::workflowservice::v1 as ws;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Uri};
use tonic::{Code, Request, Status};

use crate::error::Error;
use crate::handle::WorkflowHandle;
use crate::payload::to_payloads;

/// A byte stream to a server.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed connection future.
pub type ConnectFuture = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Io>>> + Send>>;

/// Opens connections to `host:port` addresses. The default is TCP; the simulator passes
/// turmoil's, so the whole SDK runs on a simulated network.
pub trait Connector: Send + Sync + 'static {
    /// Connects to `addr`.
    fn connect(&self, addr: &str) -> ConnectFuture;
}

/// Plain TCP with `TCP_NODELAY`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect(&self, addr: &str) -> ConnectFuture {
        let addr = addr.to_string();
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as Box<dyn Io>)
        })
    }
}

/// How calls that fail with `Unavailable` are retried.
#[derive(Clone, Debug)]
pub struct RetryOptions {
    /// First backoff.
    pub initial_interval: Duration,
    /// Backoff cap.
    pub max_interval: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(2),
            multiplier: 2.0,
            max_attempts: 12,
        }
    }
}

/// TLS settings (server authentication, optionally mutual TLS).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM of the CA that signed the server's certificate; the system's web roots when `None`.
    pub server_root_ca_pem: Option<Vec<u8>>,
    /// The name to check the server certificate against; the endpoint's host when `None`.
    pub domain: Option<String>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Namespace every call uses.
    pub namespace: String,
    /// Identity reported to the server (shown in histories).
    pub identity: String,
    /// TLS, when the server speaks it.
    pub tls: Option<TlsOptions>,
    /// Sent as `authorization: Bearer <key>` on every call.
    pub api_key: Option<String>,
    /// Extra metadata headers on every call.
    pub headers: Vec<(String, String)>,
    /// Deadline of ordinary calls.
    pub rpc_timeout: Duration,
    /// Deadline of long polls (task polls, history waits).
    pub long_poll_timeout: Duration,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// Retries on `Unavailable`.
    pub retry: RetryOptions,
    /// Route each workflow call to the leader of its shard (Norn only; ignored elsewhere).
    pub shard_routing: bool,
    /// Seed for request ids (simulations pass one; `None` takes entropy).
    pub seed: Option<u64>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            namespace: "default".into(),
            identity: format!(
                "{}@{}",
                std::process::id(),
                std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into())
            ),
            tls: None,
            api_key: None,
            headers: Vec::new(),
            rpc_timeout: Duration::from_secs(10),
            long_poll_timeout: Duration::from_secs(70),
            connect_timeout: Duration::from_secs(3),
            retry: RetryOptions::default(),
            shard_routing: true,
            seed: None,
        }
    }
}

/// Adds the API key and extra headers to every call.
#[derive(Clone)]
pub struct Headers(Arc<Vec<(tonic::metadata::AsciiMetadataKey, tonic::metadata::AsciiMetadataValue)>>);

impl tonic::service::Interceptor for Headers {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        for (k, v) in self.0.iter() {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        Ok(req)
    }
}

/// The raw generated client, with headers applied.
pub type RawClient = WorkflowServiceClient<InterceptedService<Channel, Headers>>;

/// Workflow start options.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// The workflow id (required).
    pub id: String,
    /// The task queue its workers poll (required).
    pub task_queue: String,
    /// Limit of the whole execution, retries and continue-as-new included.
    pub execution_timeout: Option<Duration>,
    /// Limit of one run.
    pub run_timeout: Option<Duration>,
    /// Limit of one workflow task (server default 10 s).
    pub task_timeout: Option<Duration>,
    /// What may happen when a closed workflow has this id.
    pub id_reuse_policy: WorkflowIdReusePolicy,
    /// What happens when a running workflow has this id.
    pub id_conflict_policy: WorkflowIdConflictPolicy,
    /// Retry policy of the workflow.
    pub retry_policy: Option<RetryPolicy>,
    /// Memo fields.
    pub memo: HashMap<String, Payload>,
    /// Search attributes.
    pub search_attributes: HashMap<String, Payload>,
    /// Idempotency key; a fresh one when `None`. A retried start with the same key returns the
    /// same run instead of failing.
    pub request_id: Option<String>,
}

impl StartOptions {
    /// Options with an id and a task queue, the rest default.
    pub fn new(id: impl Into<String>, task_queue: impl Into<String>) -> StartOptions {
        StartOptions { id: id.into(), task_queue: task_queue.into(), ..Default::default() }
    }
}

/// A retry policy (activities and workflows).
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// First backoff.
    pub initial_interval: Duration,
    /// Backoff growth.
    pub backoff_coefficient: f64,
    /// Backoff cap (`None`: 100 × initial).
    pub maximum_interval: Option<Duration>,
    /// Attempts in all (0 = unlimited).
    pub maximum_attempts: i32,
    /// Application error types never retried.
    pub non_retryable_error_types: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_interval: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            maximum_interval: None,
            maximum_attempts: 0,
            non_retryable_error_types: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// The wire form.
    pub fn to_proto(&self) -> temporalio_protos::temporal::api::common::v1::RetryPolicy {
        temporalio_protos::temporal::api::common::v1::RetryPolicy {
            initial_interval: Some(duration(self.initial_interval)),
            backoff_coefficient: self.backoff_coefficient,
            maximum_interval: self.maximum_interval.map(duration),
            maximum_attempts: self.maximum_attempts,
            non_retryable_error_types: self.non_retryable_error_types.clone(),
        }
    }
}

/// A protobuf duration.
pub(crate) fn duration(d: Duration) -> prost_wkt_types::Duration {
    prost_wkt_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// The stage an update call waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateWait {
    /// The workflow accepted it (its validator passed); the result comes later.
    Accepted,
    /// The handler finished.
    Completed,
}

/// An update sent to a workflow.
#[derive(Clone, Debug)]
pub struct UpdateHandle {
    client: Client,
    workflow_id: String,
    run_id: String,
    update_id: String,
    outcome: Option<temporalio_protos::temporal::api::update::v1::Outcome>,
}

impl UpdateHandle {
    /// The update id.
    pub fn update_id(&self) -> &str {
        &self.update_id
    }

    /// Waits for the handler's result (or the rejection or failure, as `Error::UpdateFailed`).
    pub async fn result<R: serde::de::DeserializeOwned + 'static>(&self) -> Result<R, Error> {
        use temporalio_protos::temporal::api::enums::v1::UpdateWorkflowExecutionLifecycleStage as Stage;
        use temporalio_protos::temporal::api::update::v1::{outcome, UpdateRef, WaitPolicy};
        let mut outcome = self.outcome.clone();
        while outcome.is_none() {
            let req = ws::PollWorkflowExecutionUpdateRequest {
                namespace: self.client.namespace().into(),
                update_ref: Some(UpdateRef {
                    workflow_execution: Some(execution(&self.workflow_id, Some(&self.run_id))),
                    update_id: self.update_id.clone(),
                }),
                identity: self.client.identity().into(),
                wait_policy: Some(WaitPolicy { lifecycle_stage: Stage::Completed as i32 }),
            };
            let resp = self
                .client
                .call(Route::Workflow(self.workflow_id.clone()), true, req, |mut c, r| async move {
                    c.poll_workflow_execution_update(r).await
                })
                .await?;
            outcome = resp.outcome;
        }
        match outcome.and_then(|o| o.value) {
            Some(outcome::Value::Success(p)) => Ok(crate::payload::from_payloads(Some(&p))?),
            Some(outcome::Value::Failure(f)) => {
                Err(Error::UpdateFailed(Box::new(crate::failure::Failure::from_proto(&f))))
            }
            None => Ok(crate::payload::from_payloads(None)?),
        }
    }
}

/// A description of one workflow run.
#[derive(Clone, Debug)]
pub struct WorkflowDescription {
    /// Id, run id, type, status, times, history length, memo, search attributes.
    pub info: WorkflowExecutionInfo,
    /// The full answer of `DescribeWorkflowExecution` (pending activities, children, ...).
    pub raw: ws::DescribeWorkflowExecutionResponse,
}

impl WorkflowDescription {
    /// The run's status.
    pub fn status(&self) -> temporalio_protos::temporal::api::enums::v1::WorkflowExecutionStatus {
        self.info.status()
    }
}

/// Which node a call should go to.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    /// The leader of this workflow's shard.
    Workflow(String),
    /// The leader of a task queue's home shard (by its normal name), where its polls are served.
    Queue { name: String, activity: bool },
    /// Any node.
    Any,
}

struct Routing {
    /// Shard count; 0 when the server is not Norn or routing is off.
    shards: u32,
    namespace_id: String,
    /// Leader client address per shard.
    leaders: Vec<Option<String>>,
}

struct Inner {
    options: ClientOptions,
    endpoints: Vec<String>,
    connector: Arc<dyn Connector>,
    headers: Headers,
    // Ordered, so that dropping a client closes its connections in the same order every run
    // (the simulator's determinism depends on it).
    channels: Mutex<BTreeMap<String, Channel>>,
    routing: Mutex<Routing>,
    next: Mutex<usize>,
    rng: Mutex<rand::rngs::SmallRng>,
}

/// A client of one namespace, over one or more node endpoints. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.endpoints)
            .field("namespace", &self.namespace())
            .finish()
    }
}

impl Client {
    /// Connects over TCP to `endpoints` (`host:port`, any node of the cluster). Checks the server
    /// with `GetSystemInfo` and, against Norn, loads the shard map.
    pub async fn connect<S: AsRef<str>>(endpoints: &[S], options: ClientOptions) -> Result<Client, Error> {
        Client::connect_with(endpoints, options, Arc::new(TcpConnector)).await
    }

    /// Like [`Client::connect`], over a given connector (the simulator's network, a proxy).
    pub async fn connect_with<S: AsRef<str>>(
        endpoints: &[S],
        options: ClientOptions,
        connector: Arc<dyn Connector>,
    ) -> Result<Client, Error> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|e| {
                let e = e.as_ref();
                e.strip_prefix("http://").or_else(|| e.strip_prefix("https://")).unwrap_or(e).to_string()
            })
            .collect();
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument("no endpoints given".into()));
        }
        let mut headers = Vec::new();
        if let Some(key) = &options.api_key {
            headers.push(header("authorization", &format!("Bearer {key}"))?);
        }
        for (k, v) in &options.headers {
            headers.push(header(k, v)?);
        }
        let rng = match options.seed {
            Some(s) => rand::rngs::SmallRng::seed_from_u64(s),
            None => rand::rngs::SmallRng::from_entropy(),
        };
        let client = Client {
            inner: Arc::new(Inner {
                endpoints,
                connector,
                headers: Headers(Arc::new(headers)),
                channels: Mutex::new(BTreeMap::new()),
                routing: Mutex::new(Routing { shards: 0, namespace_id: String::new(), leaders: Vec::new() }),
                next: Mutex::new(0),
                rng: Mutex::new(rng),
                options,
            }),
        };
        client
            .call(Route::Any, false, ws::GetSystemInfoRequest::default(), |mut c, r| async move {
                c.get_system_info(r).await
            })
            .await?;
        if client.inner.options.shard_routing {
            client.refresh_routing().await;
        }
        Ok(client)
    }

    /// The namespace of this client.
    pub fn namespace(&self) -> &str {
        &self.inner.options.namespace
    }

    /// The identity of this client.
    pub fn identity(&self) -> &str {
        &self.inner.options.identity
    }

    /// The options it was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The same connections, for another namespace.
    pub fn with_namespace(&self, namespace: impl Into<String>) -> Client {
        let mut options = self.inner.options.clone();
        options.namespace = namespace.into();
        Client {
            inner: Arc::new(Inner {
                endpoints: self.inner.endpoints.clone(),
                connector: self.inner.connector.clone(),
                headers: self.inner.headers.clone(),
                channels: Mutex::new(lock(&self.inner.channels).clone()),
                routing: Mutex::new(Routing { shards: 0, namespace_id: String::new(), leaders: Vec::new() }),
                next: Mutex::new(0),
                rng: Mutex::new(rand::rngs::SmallRng::seed_from_u64(lock(&self.inner.rng).gen())),
                options,
            }),
        }
    }

    /// A fresh UUID (v4 layout) from the client's seeded source.
    pub fn new_request_id(&self) -> String {
        let b: [u8; 16] = lock(&self.inner.rng).gen();
        uuid_string(b)
    }

    fn channel(&self, addr: &str) -> Result<Channel, Error> {
        let mut chans = lock(&self.inner.channels);
        if let Some(c) = chans.get(addr) {
            return Ok(c.clone());
        }
        let o = &self.inner.options;
        let scheme = if o.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| Error::InvalidArgument(format!("bad endpoint {addr}: {e}")))?
            .connect_timeout(o.connect_timeout)
            .tcp_nodelay(true)
            // Pings find a dead connection (a crashed node, a cut link) in seconds; the channel
            // then reconnects instead of hanging calls until their deadlines.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if let Some(tls) = &o.tls {
            let mut cfg = ClientTlsConfig::new();
            cfg = match &tls.server_root_ca_pem {
                Some(pem) => cfg.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                None => cfg.with_webpki_roots(),
            };
            if let Some(d) = &tls.domain {
                cfg = cfg.domain_name(d.clone());
            }
            if let Some((cert, key)) = &tls.client_cert_pem {
                cfg = cfg.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            ep = ep.tls_config(cfg).map_err(|e| Error::InvalidArgument(format!("TLS settings: {e}")))?;
        }
        let connector = self.inner.connector.clone();
        let ch = ep.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
            let addr = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let fut = connector.connect(&addr);
            async move { fut.await.map(TokioIo::new) }
        }));
        chans.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// The raw `WorkflowService` client on one endpoint, for calls this SDK does not wrap.
    pub fn raw(&self) -> Result<RawClient, Error> {
        let addr = self.pick(&Route::Any);
        self.raw_at(&addr)
    }

    fn raw_at(&self, addr: &str) -> Result<RawClient, Error> {
        Ok(WorkflowServiceClient::with_interceptor(self.channel(addr)?, self.inner.headers.clone())
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(128 << 20))
    }

    fn pick(&self, route: &Route) -> String {
        let r = lock(&self.inner.routing);
        if r.shards > 0 {
            let shard = match route {
                Route::Workflow(id) => Some(norn_proto::placement::workflow_shard(&r.namespace_id, id, r.shards)),
                Route::Queue { name, activity } => {
                    Some(norn_proto::placement::task_queue_shard(&r.namespace_id, name, *activity, r.shards))
                }
                Route::Any => None,
            };
            if let Some(Some(addr)) = shard.and_then(|s| r.leaders.get(s as usize)) {
                return addr.clone();
            }
        }
        drop(r);
        let mut n = lock(&self.inner.next);
        let addr = self.inner.endpoints[*n % self.inner.endpoints.len()].clone();
        *n = n.wrapping_add(1);
        addr
    }

    /// Loads the shard map from Norn's admin service; a server without one disables routing.
    pub(crate) async fn refresh_routing(&self) {
        let addr = self.pick(&Route::Any);
        let Ok(ch) = self.channel(&addr) else { return };
        let mut admin = AdminClient::with_interceptor(ch, self.inner.headers.clone());
        let mut req = Request::new(ClusterStatusRequest {});
        req.set_timeout(self.inner.options.rpc_timeout);
        let Ok(status) = admin.cluster_status(req).await.map(|r| r.into_inner()) else { return };
        let ns = self.namespace().to_string();
        let ns_id = match self
            .call(
                Route::Any,
                false,
                ws::DescribeNamespaceRequest { namespace: ns, ..Default::default() },
                |mut c, r| async move { c.describe_namespace(r).await },
            )
            .await
        {
            Ok(d) => d.namespace_info.map(|i| i.id).unwrap_or_default(),
            Err(_) => return,
        };
        let mut leaders = vec![None; status.shard_count as usize];
        for n in &status.nodes {
            let Some(st) = &n.status else { continue };
            for s in &st.shards {
                if s.role == "leader" {
                    if let Some(slot) = leaders.get_mut(s.shard as usize) {
                        *slot = Some(n.client_addr.clone());
                    }
                }
            }
        }
        let mut r = lock(&self.inner.routing);
        r.shards = status.shard_count;
        r.namespace_id = ns_id;
        r.leaders = leaders;
    }

    /// Runs one call with retries on `Unavailable`, moving to another node after a failure.
    pub(crate) async fn call<Q, R, F, Fut>(&self, route: Route, long: bool, req: Q, f: F) -> Result<R, Error>
    where
        Q: Clone,
        F: Fn(RawClient, Request<Q>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let o = &self.inner.options;
        let mut backoff = o.retry.initial_interval;
        let mut attempt = 0;
        let mut route = route;
        loop {
            attempt += 1;
            let addr = self.pick(&route);
            let mut r = Request::new(req.clone());
            r.set_timeout(if long { o.long_poll_timeout } else { o.rpc_timeout });
            let result = match self.raw_at(&addr) {
                Ok(c) => f(c, r).await,
                Err(e) => return Err(e),
            };
            match result {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(s) if retryable(&s) && attempt < o.retry.max_attempts => {
                    tracing::debug!(%addr, attempt, code = ?s.code(), message = s.message(), "call failed; retrying");
                    // Start the next attempt on a fresh connection.
                    lock(&self.inner.channels).remove(&addr);
                    // The leader may have moved: route to any node (it forwards) and reload the map.
                    route = Route::Any;
                    if o.shard_routing && lock(&self.inner.routing).shards > 0 {
                        self.refresh_routing_soon();
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.mul_f64(o.retry.multiplier).min(o.retry.max_interval);
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    fn refresh_routing_soon(&self) {
        let c = self.clone();
        tokio::spawn(async move { c.refresh_routing().await });
    }

    // ---- typed calls ----

    fn start_request<A: Serialize + 'static>(
        &self,
        workflow_type: &str,
        input: &A,
        o: &StartOptions,
    ) -> Result<ws::StartWorkflowExecutionRequest, Error> {
        if o.id.is_empty() || o.task_queue.is_empty() {
            return Err(Error::InvalidArgument("a workflow start needs an id and a task queue".into()));
        }
        Ok(ws::StartWorkflowExecutionRequest {
            namespace: self.namespace().into(),
            workflow_id: o.id.clone(),
            workflow_type: Some(WorkflowType { name: workflow_type.into() }),
            task_queue: Some(TaskQueue {
                name: o.task_queue.clone(),
                kind: TaskQueueKind::Normal as i32,
                ..Default::default()
            }),
            input: Some(to_payloads(input)?),
            workflow_execution_timeout: o.execution_timeout.map(duration),
            workflow_run_timeout: o.run_timeout.map(duration),
            workflow_task_timeout: o.task_timeout.map(duration),
            identity: self.identity().into(),
            request_id: o.request_id.clone().unwrap_or_else(|| self.new_request_id()),
            workflow_id_reuse_policy: o.id_reuse_policy as i32,
            workflow_id_conflict_policy: o.id_conflict_policy as i32,
            retry_policy: o.retry_policy.as_ref().map(RetryPolicy::to_proto),
            memo: (!o.memo.is_empty())
                .then(|| temporalio_protos::temporal::api::common::v1::Memo { fields: o.memo.clone() }),
            search_attributes: (!o.search_attributes.is_empty()).then(|| {
                temporalio_protos::temporal::api::common::v1::SearchAttributes {
                    indexed_fields: o.search_attributes.clone(),
                }
            }),
            ..Default::default()
        })
    }

    /// Starts a workflow with one argument (`()` for none) and returns its handle.
    pub async fn start_workflow<A: Serialize + 'static>(
        &self,
        workflow_type: &str,
        input: &A,
        options: StartOptions,
    ) -> Result<WorkflowHandle, Error> {
        let req = self.start_request(workflow_type, input, &options)?;
        let id = options.id.clone();
        let resp =
            self.call(Route::Workflow(id.clone()), false, req, |mut c, r| async move {
                c.start_workflow_execution(r).await
            })
            .await
            .map_err(|e| with_workflow_id(e, &id))?;
        Ok(WorkflowHandle::new(self.clone(), id, Some(resp.run_id.clone()), Some(resp.run_id)))
    }

    /// Sends a signal to the workflow, starting it first if it is not running.
    pub async fn signal_with_start<A: Serialize + 'static, S: Serialize + 'static>(
        &self,
        workflow_type: &str,
        input: &A,
        options: StartOptions,
        signal: &str,
        signal_arg: &S,
    ) -> Result<WorkflowHandle, Error> {
        let s = self.start_request(workflow_type, input, &options)?;
        let req = ws::SignalWithStartWorkflowExecutionRequest {
            namespace: s.namespace,
            workflow_id: s.workflow_id,
            workflow_type: s.workflow_type,
            task_queue: s.task_queue,
            input: s.input,
            workflow_execution_timeout: s.workflow_execution_timeout,
            workflow_run_timeout: s.workflow_run_timeout,
            workflow_task_timeout: s.workflow_task_timeout,
            identity: s.identity,
            request_id: s.request_id,
            workflow_id_reuse_policy: s.workflow_id_reuse_policy,
            workflow_id_conflict_policy: s.workflow_id_conflict_policy,
            signal_name: signal.into(),
            signal_input: Some(to_payloads(signal_arg)?),
            retry_policy: s.retry_policy,
            memo: s.memo,
            search_attributes: s.search_attributes,
            ..Default::default()
        };
        let id = options.id.clone();
        let resp = self
            .call(Route::Workflow(id.clone()), false, req, |mut c, r| async move {
                c.signal_with_start_workflow_execution(r).await
            })
            .await?;
        Ok(WorkflowHandle::new(self.clone(), id, Some(resp.run_id), None))
    }

    /// A handle to an existing workflow (its latest run when `run_id` is `None`).
    pub fn workflow_handle(&self, workflow_id: impl Into<String>, run_id: Option<String>) -> WorkflowHandle {
        WorkflowHandle::new(self.clone(), workflow_id.into(), run_id, None)
    }

    /// Sends a signal.
    pub async fn signal<A: Serialize + 'static>(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        signal: &str,
        arg: &A,
    ) -> Result<(), Error> {
        self.signal_with_request_id(workflow_id, run_id, signal, arg, &self.new_request_id()).await
    }

    /// Sends a signal with a request id of the caller's choosing: calls with the same id
    /// deliver the signal once, so a caller that did not learn the outcome can safely ask again.
    pub async fn signal_with_request_id<A: Serialize + 'static>(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        signal: &str,
        arg: &A,
        request_id: &str,
    ) -> Result<(), Error> {
        let req = ws::SignalWorkflowExecutionRequest {
            namespace: self.namespace().into(),
            workflow_execution: Some(execution(workflow_id, run_id)),
            signal_name: signal.into(),
            input: Some(to_payloads(arg)?),
            identity: self.identity().into(),
            request_id: request_id.into(),
            ..Default::default()
        };
        self.call(Route::Workflow(workflow_id.into()), false, req, |mut c, r| async move {
            c.signal_workflow_execution(r).await
        })
        .await?;
        Ok(())
    }

    /// Runs a query and returns its raw answer.
    pub async fn query_raw(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        query: &str,
        args: Option<Payloads>,
    ) -> Result<Option<Payloads>, Error> {
        let req = ws::QueryWorkflowRequest {
            namespace: self.namespace().into(),
            execution: Some(execution(workflow_id, run_id)),
            query: Some(WorkflowQuery { query_type: query.into(), query_args: args, header: None }),
            query_reject_condition: QueryRejectCondition::None as i32,
        };
        let resp = self
            .call(Route::Workflow(workflow_id.into()), true, req, |mut c, r| async move { c.query_workflow(r).await })
            .await
            .map_err(|e| match e {
                Error::InvalidArgument(m) => Error::QueryFailed(m),
                other => other,
            })?;
        if let Some(rej) = resp.query_rejected {
            return Err(Error::FailedPrecondition(format!("query rejected: workflow status {}", rej.status)));
        }
        Ok(resp.query_result)
    }

    /// Sends a workflow update with one argument and waits until it reaches `wait` (accepted
    /// or completed). The same `update_id` (a fresh one when `None`) is used across retries, so
    /// a retried call joins the same update.
    pub async fn start_update<A: Serialize + 'static>(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        name: &str,
        arg: &A,
        wait: UpdateWait,
        update_id: Option<String>,
    ) -> Result<UpdateHandle, Error> {
        use temporalio_protos::temporal::api::enums::v1::UpdateWorkflowExecutionLifecycleStage as Stage;
        use temporalio_protos::temporal::api::update::v1::{Input, Meta, Request as UpdateRequest, WaitPolicy};
        let update_id = update_id.unwrap_or_else(|| self.new_request_id());
        let want = match wait {
            UpdateWait::Accepted => Stage::Accepted,
            UpdateWait::Completed => Stage::Completed,
        };
        let req = ws::UpdateWorkflowExecutionRequest {
            namespace: self.namespace().into(),
            workflow_execution: Some(execution(workflow_id, run_id)),
            wait_policy: Some(WaitPolicy { lifecycle_stage: want as i32 }),
            request: Some(UpdateRequest {
                meta: Some(Meta { update_id: update_id.clone(), identity: self.identity().into() }),
                input: Some(Input { header: None, name: name.into(), args: Some(to_payloads(arg)?) }),
                ..Default::default()
            }),
            ..Default::default()
        };
        // The server answers with the stage reached when its wait ends; ask again until done.
        loop {
            let resp = self
                .call(Route::Workflow(workflow_id.into()), true, req.clone(), |mut c, r| async move {
                    c.update_workflow_execution(r).await
                })
                .await?;
            if resp.outcome.is_some() || resp.stage >= want as i32 {
                let run_id = resp
                    .update_ref
                    .and_then(|r| r.workflow_execution)
                    .map(|e| e.run_id)
                    .unwrap_or_else(|| run_id.unwrap_or_default().to_string());
                return Ok(UpdateHandle {
                    client: self.clone(),
                    workflow_id: workflow_id.into(),
                    run_id,
                    update_id,
                    outcome: resp.outcome,
                });
            }
        }
    }

    /// Requests cancellation.
    pub async fn cancel(&self, workflow_id: &str, run_id: Option<&str>, reason: &str) -> Result<(), Error> {
        let req = ws::RequestCancelWorkflowExecutionRequest {
            namespace: self.namespace().into(),
            workflow_execution: Some(execution(workflow_id, run_id)),
            identity: self.identity().into(),
            request_id: self.new_request_id(),
            reason: reason.into(),
            ..Default::default()
        };
        self.call(Route::Workflow(workflow_id.into()), false, req, |mut c, r| async move {
            c.request_cancel_workflow_execution(r).await
        })
        .await?;
        Ok(())
    }

    /// Terminates a run.
    pub async fn terminate(&self, workflow_id: &str, run_id: Option<&str>, reason: &str) -> Result<(), Error> {
        let req = ws::TerminateWorkflowExecutionRequest {
            namespace: self.namespace().into(),
            workflow_execution: Some(execution(workflow_id, run_id)),
            reason: reason.into(),
            identity: self.identity().into(),
            ..Default::default()
        };
        self.call(Route::Workflow(workflow_id.into()), false, req, |mut c, r| async move {
            c.terminate_workflow_execution(r).await
        })
        .await?;
        Ok(())
    }

    /// Describes a run.
    pub async fn describe(&self, workflow_id: &str, run_id: Option<&str>) -> Result<WorkflowDescription, Error> {
        let req = ws::DescribeWorkflowExecutionRequest {
            namespace: self.namespace().into(),
            execution: Some(execution(workflow_id, run_id)),
        };
        let raw = self
            .call(Route::Workflow(workflow_id.into()), false, req, |mut c, r| async move {
                c.describe_workflow_execution(r).await
            })
            .await?;
        Ok(WorkflowDescription { info: raw.workflow_execution_info.clone().unwrap_or_default(), raw })
    }

    /// Lists runs matching a visibility query (`""` for all), page by page, as a stream.
    pub fn list(&self, query: &str) -> BoxStream<'static, Result<WorkflowExecutionInfo, Error>> {
        let client = self.clone();
        let query = query.to_string();
        futures::stream::try_unfold((client, query, Some(Vec::<u8>::new())), |(client, query, token)| async move {
            let Some(token) = token else { return Ok(None) };
            let req = ws::ListWorkflowExecutionsRequest {
                namespace: client.namespace().into(),
                page_size: 100,
                next_page_token: token,
                query: query.clone(),
            };
            let resp = client
                .call(Route::Any, false, req, |mut c, r| async move { c.list_workflow_executions(r).await })
                .await?;
            let next = (!resp.next_page_token.is_empty()).then_some(resp.next_page_token);
            Ok::<_, Error>(Some((futures::stream::iter(resp.executions.into_iter().map(Ok)), (client, query, next))))
        })
        .try_flatten()
        .boxed()
    }

    /// Counts runs matching a visibility query.
    pub async fn count(&self, query: &str) -> Result<i64, Error> {
        let req = ws::CountWorkflowExecutionsRequest { namespace: self.namespace().into(), query: query.into() };
        let resp =
            self.call(Route::Any, false, req, |mut c, r| async move { c.count_workflow_executions(r).await }).await?;
        Ok(resp.count)
    }

    /// A run's history, page by page, as a stream of events. With `follow`, waits for new events
    /// until the run closes.
    pub fn history(
        &self,
        workflow_id: &str,
        run_id: Option<&str>,
        follow: bool,
    ) -> BoxStream<'static, Result<HistoryEvent, Error>> {
        let client = self.clone();
        let exec = execution(workflow_id, run_id);
        futures::stream::try_unfold((client, exec, Some(Vec::<u8>::new())), move |(client, exec, token)| async move {
            let Some(token) = token else { return Ok(None) };
            let req = ws::GetWorkflowExecutionHistoryRequest {
                namespace: client.namespace().into(),
                execution: Some(exec.clone()),
                maximum_page_size: 1000,
                next_page_token: token,
                wait_new_event: follow,
                history_event_filter_type: HistoryEventFilterType::AllEvent as i32,
                skip_archival: true,
            };
            let resp = client
                .call(Route::Workflow(exec.workflow_id.clone()), follow, req, |mut c, r| async move {
                    c.get_workflow_execution_history(r).await
                })
                .await?;
            let events = resp.history.map(|h| h.events).unwrap_or_default();
            let next = (!resp.next_page_token.is_empty()).then_some(resp.next_page_token);
            Ok::<_, Error>(Some((futures::stream::iter(events.into_iter().map(Ok)), (client, exec, next))))
        })
        .try_flatten()
        .boxed()
    }

    /// The whole history of a run (no waiting).
    pub async fn fetch_history(&self, workflow_id: &str, run_id: Option<&str>) -> Result<Vec<HistoryEvent>, Error> {
        use futures::TryStreamExt;
        self.history(workflow_id, run_id, false).try_collect().await
    }

    /// Long-polls the close event of a run.
    pub(crate) async fn close_event(&self, workflow_id: &str, run_id: &str) -> Result<HistoryEvent, Error> {
        loop {
            let req = ws::GetWorkflowExecutionHistoryRequest {
                namespace: self.namespace().into(),
                execution: Some(execution(workflow_id, Some(run_id))),
                maximum_page_size: 0,
                next_page_token: Vec::new(),
                wait_new_event: true,
                history_event_filter_type: HistoryEventFilterType::CloseEvent as i32,
                skip_archival: true,
            };
            let resp = self
                .call(Route::Workflow(workflow_id.into()), true, req, |mut c, r| async move {
                    c.get_workflow_execution_history(r).await
                })
                .await;
            match resp {
                Ok(r) => {
                    if let Some(e) = r.history.and_then(|h| h.events.into_iter().last()) {
                        return Ok(e);
                    }
                }
                // A long poll that ran out of time: poll again.
                Err(Error::TimedOut(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

use futures::TryStreamExt as _;

fn retryable(s: &Status) -> bool {
    // Every call this client makes is idempotent (writes carry one request id across attempts),
    // so a call that timed out on this side may be sent again.
    matches!(s.code(), Code::Unavailable | Code::ResourceExhausted) || client_timeout(s) || connection_lost(s)
}

/// The connection broke under the call (tonic reports it as `Unknown` or `Cancelled`, for
/// example "h2 protocol error: error reading a body from connection" when the node died while
/// it answered). The server may or may not have acted; every call is safe to send again.
pub(crate) fn connection_lost(s: &Status) -> bool {
    let m = s.message();
    (s.code() == Code::Unknown && (m.contains("transport") || m.contains("h2 protocol error")))
        || (s.code() == Code::Cancelled && m.contains("connection"))
}

/// tonic reports this side's deadline as `Cancelled: Timeout expired`.
pub(crate) fn client_timeout(s: &Status) -> bool {
    s.code() == Code::Cancelled && s.message().contains("Timeout expired")
}

fn with_workflow_id(e: Error, id: &str) -> Error {
    match e {
        Error::AlreadyStarted { run_id, .. } => Error::AlreadyStarted { workflow_id: id.into(), run_id },
        other => other,
    }
}

pub(crate) fn execution(workflow_id: &str, run_id: Option<&str>) -> WorkflowExecution {
    WorkflowExecution { workflow_id: workflow_id.into(), run_id: run_id.unwrap_or_default().into() }
}

fn header(k: &str, v: &str) -> Result<(tonic::metadata::AsciiMetadataKey, tonic::metadata::AsciiMetadataValue), Error> {
    let key = k.parse().map_err(|_| Error::InvalidArgument(format!("bad header name {k:?}")))?;
    let val = v.parse().map_err(|_| Error::InvalidArgument(format!("bad header value for {k:?}")))?;
    Ok((key, val))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Formats 16 random bytes as a version-4 UUID.
pub fn uuid_string(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}
