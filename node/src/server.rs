//! Starting a node: open the store, start the shard groups this node hosts, serve the peer and
//! client ports, and stop cleanly on shutdown.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use norn_raft::{GroupSpec, RaftNode, RaftService, SystemClock, TcpConnector, Transport};
use norn_storage::{Cf, Engine, RocksEngine, RocksOptions, WriteBatch};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::AdminService;
use crate::command::ShardStateMachine;
use crate::config::NodeConfig;
use crate::frontend::Frontend;
use crate::metrics::Metrics;
use crate::pb::admin_server::AdminServer;
use crate::placement;
use norn_proto::WorkflowServiceServer;

/// Key in the `local` column family holding the shard count fixed at cluster creation.
const SHARDS_KEY: &[u8] = b"cluster/shards";

/// Largest request the client port accepts (Temporal's default gRPC limit).
const CLIENT_MESSAGE_BYTES_MAX: usize = 128 << 20;

/// Creates the `default` namespace if it does not exist yet, retrying until the system shard
/// has a leader. Every node runs it; the registry makes it idempotent.
async fn ensure_default_namespace(admin: AdminService) {
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match crate::frontend::ensure_default(&admin).await {
            Ok(ns) => {
                tracing::info!(namespace = %ns.name, id = %ns.id, "default namespace ready");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "default namespace not ready yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
}

/// The groups this node hosts.
pub fn group_specs(config: &NodeConfig) -> Vec<GroupSpec> {
    let ids: Vec<_> = config.members.iter().map(|m| m.id).collect();
    (0..config.shards)
        .filter_map(|shard| {
            let reps = placement::replicas(shard, &ids, config.replicas);
            if !reps.contains(&config.node_id) {
                return None;
            }
            let members = reps
                .iter()
                .filter_map(|id| config.members.iter().find(|m| m.id == *id).map(|m| (*id, m.info())))
                .collect();
            Some(GroupSpec { id: shard, members, bootstrap: reps.first() == Some(&config.node_id) })
        })
        .collect()
}

/// Refuses to start with a shard count other than the one the data directory was created with.
fn check_identity(engine: &dyn Engine, config: &NodeConfig) -> anyhow::Result<()> {
    match engine.get(Cf::Local, SHARDS_KEY)? {
        Some(v) => {
            let stored = <[u8; 4]>::try_from(v.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| anyhow::anyhow!("corrupt shard count in {}", config.data_dir.display()))?;
            anyhow::ensure!(
                stored == config.shards,
                "the data in {} was created with {stored} shards but the configuration says {}; the shard count is fixed at cluster creation",
                config.data_dir.display(),
                config.shards
            );
        }
        None => {
            let mut b = WriteBatch::new();
            b.put(Cf::Local, SHARDS_KEY, config.shards.to_be_bytes());
            engine.write(b, true)?;
        }
    }
    Ok(())
}

/// A started node: its groups and its servers.
pub struct RunningNode {
    /// The node's Raft groups.
    pub raft: RaftNode,
    stop_tx: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningNode {
    /// Stops serving and shuts every group down.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(true);
        self.raft.shutdown().await;
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Runs a node until `shutdown` resolves.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let node_id = config.node_id;
    let node = start(config).await?;
    shutdown.await;
    tracing::info!(node = node_id, "shutting down");
    node.stop().await;
    Ok(())
}

/// An accepted connection of any kind (TCP, or the simulator's).
pub struct Conn(pub Box<dyn norn_raft::Io>);

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// Incoming connections of one port.
pub type Incoming = futures::stream::BoxStream<'static, std::io::Result<Conn>>;

/// What a node runs on: its store, its network and its clock. `start` builds the production one
/// (RocksDB, TCP, the system clock); the simulator passes the in-memory engine, turmoil's network
/// and the simulated clock to `start_on`.
pub struct Platform {
    /// The node's store.
    pub engine: Arc<dyn Engine>,
    /// Outgoing connections (peers' Raft ports and other nodes' client ports).
    pub connector: Arc<dyn norn_raft::Connector>,
    /// The leader timestamps of log entries come from it.
    pub clock: Arc<dyn norn_raft::Clock>,
    /// Connections to the Raft (peer) port.
    pub raft_incoming: Incoming,
    /// Connections to the client port.
    pub client_incoming: Incoming,
}

fn tcp_incoming(l: TcpListener) -> Incoming {
    use futures::StreamExt;
    TcpListenerStream::new(l)
        .map(|r| {
            r.map(|s| {
                let _ = s.set_nodelay(true);
                Conn(Box::new(s))
            })
        })
        .boxed()
}

/// Starts a node and returns once its ports are served.
pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    let raft_listener = TcpListener::bind(&config.raft_addr)
        .await
        .with_context(|| format!("bind peer address {}", config.raft_addr))?;
    let client_listener = TcpListener::bind(&config.client_addr)
        .await
        .with_context(|| format!("bind client address {}", config.client_addr))?;
    let metrics_listener = match &config.metrics_addr {
        Some(a) => Some(TcpListener::bind(a).await.with_context(|| format!("bind metrics address {a}"))?),
        None => None,
    };
    let db_path = config.data_dir.join("db");
    let engine: Arc<dyn Engine> = Arc::new(
        RocksEngine::open(&db_path, &RocksOptions::default())
            .with_context(|| format!("open store in {}", db_path.display()))?,
    );
    let platform = Platform {
        engine,
        connector: Arc::new(TcpConnector),
        clock: Arc::new(SystemClock),
        raft_incoming: tcp_incoming(raft_listener),
        client_incoming: tcp_incoming(client_listener),
    };
    start_on(config, platform, metrics_listener).await
}

/// Starts a node on a given platform (see [`Platform`]); `metrics` serves Prometheus metrics.
pub async fn start_on(
    config: NodeConfig,
    platform: Platform,
    metrics_listener: Option<TcpListener>,
) -> anyhow::Result<RunningNode> {
    config.validate()?;
    let config = Arc::new(config);
    let Platform { engine, connector, clock, raft_incoming, client_incoming } = platform;
    check_identity(&*engine, &config)?;

    let transport = Transport::new(config.node_id, connector.clone());
    let watch = crate::history::watch::RunWatch::default();
    let specs = group_specs(&config);
    tracing::info!(node = config.node_id, shards = specs.len(), client = %config.client_addr, raft = %config.raft_addr, "starting node");
    let raft = RaftNode::start(config.node_id, engine, transport, clock.clone(), config.raft.clone(), specs, |_| {
        Box::new(ShardStateMachine { watch: watch.clone() })
    })
    .await?;

    let metrics = Metrics::new(config.node_id)?;
    let mut tasks = Vec::new();
    if let Some(l) = metrics_listener {
        tasks.push(tokio::spawn(metrics.clone().serve(l, raft.clone())));
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let peer_server = crate::serve::serve(
        tonic::service::Routes::new(RaftService::server(raft.clone())),
        raft_incoming,
        stopped(stop_rx.clone()),
    );
    let admin = AdminService::new(raft.clone(), config.clone(), metrics, connector, clock);
    let frontend = Frontend::new(admin.clone(), watch);
    let duties = tokio::spawn(frontend.clone().run_duties());
    let client_routes = tonic::service::Routes::new(health_service)
        .add_service(
            WorkflowServiceServer::new(frontend)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX),
        )
        .add_service(AdminServer::new(admin.clone()).accept_compressed(tonic::codec::CompressionEncoding::Gzip));
    let client_server = crate::serve::serve(client_routes, client_incoming, stopped(stop_rx.clone()));
    tasks.push(tokio::spawn(peer_server));
    tasks.push(tokio::spawn(client_server));
    tasks.push(tokio::spawn(ensure_default_namespace(admin)));
    tasks.push(duties);
    tracing::info!(node = config.node_id, client = %config.client_addr, raft = %config.raft_addr, "node ready");
    Ok(RunningNode { raft, stop_tx, tasks })
}
