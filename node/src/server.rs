//! Starting a node: open the store, start the shard groups this node hosts, serve the peer and
//! client ports, and stop cleanly on shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use norn_raft::{GroupSpec, Identity, IncarnationSink, RaftNode, RaftService, SystemClock, TcpConnector, Transport};
use norn_storage::{Cf, Engine, WriteBatch};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::AdminService;
use crate::command::ShardStateMachine;
use crate::config::NodeConfig;
use crate::frontend::Frontend;
use crate::metrics::Metrics;
use crate::pb::admin_server::AdminServer;
use crate::placement;
use crate::routing::Router;
use norn_proto::WorkflowServiceServer;

/// Keys in the `local` column family: what the data directory belongs to.
const SHARDS_KEY: &[u8] = b"cluster/shards";
/// The on-disk format of the data directory (see [`DATA_FORMAT`]).
const FORMAT_KEY: &[u8] = b"cluster/format";
/// Version of what a node writes to its data directory. 2: state values sealed with checksums,
/// per-run due/ready/closed indexes, cluster identity and incarnation. 3: state keys carry a
/// snapshot generation; snapshots are files beside the store. 4: run states carry the sticky
/// queue and its workflow task whether it went there.
pub const DATA_FORMAT: u64 = 4;
const CLUSTER_ID_KEY: &[u8] = b"cluster/id";
const NODE_ID_KEY: &[u8] = b"node/id";
const INCARNATION_KEY: &[u8] = b"node/incarnation";
/// `peer/incarnation/<node u64 BE>`: the highest incarnation seen from each peer.
const PEER_INCARNATION_PREFIX: &[u8] = b"peer/incarnation/";

/// Largest request the client port accepts (Temporal's default gRPC limit).
const CLIENT_MESSAGE_BYTES_MAX: usize = 4 << 20;

/// Creates the `default` namespace if it does not exist yet, retrying until the system shard
/// has a leader. Every node runs it; the registry makes it idempotent.
async fn ensure_default_namespace(router: Router) {
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match crate::frontend::ensure_default(&router).await {
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

fn stored_u64(engine: &dyn Engine, key: &[u8], dir: &std::path::Path) -> anyhow::Result<Option<u64>> {
    match engine.get(Cf::Local, key)? {
        None => Ok(None),
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(|b| Some(u64::from_be_bytes(b)))
            .map_err(|_| anyhow::anyhow!("corrupt {} in {}", String::from_utf8_lossy(key), dir.display())),
    }
}

/// What the data directory says this node is: the cluster it belongs to, the node id, this
/// start's incarnation, and the peer incarnations seen before.
pub struct StoredIdentity {
    /// The identity peers see.
    pub identity: Identity,
    /// The cluster id in full.
    pub cluster_id: String,
    /// Highest incarnation seen from each peer by earlier starts.
    pub peer_incarnations: BTreeMap<u64, u64>,
}

/// Checks that the data directory belongs to this cluster, node and shard count (recording them
/// on first start), and bumps the node's incarnation, synced before the node talks to anyone.
pub fn check_identity(engine: &dyn Engine, config: &NodeConfig) -> anyhow::Result<StoredIdentity> {
    let dir = config.data_dir.as_path();
    let cluster_id = config.effective_cluster_id();
    let mut b = WriteBatch::new();
    let fresh = engine.get(Cf::Local, SHARDS_KEY)?.is_none();
    match stored_u64(engine, FORMAT_KEY, dir)? {
        None if fresh => b.put(Cf::Local, FORMAT_KEY, DATA_FORMAT.to_be_bytes()),
        stored if stored == Some(DATA_FORMAT) => {}
        stored => anyhow::bail!(
            "the data in {} was written in format {} but this norn reads format {DATA_FORMAT}; start it with the \
             norn version that wrote it, or move the directory away and let the node catch up from its peers",
            dir.display(),
            stored.unwrap_or(1)
        ),
    }
    match engine.get(Cf::Local, SHARDS_KEY)? {
        Some(v) => {
            let stored = <[u8; 4]>::try_from(v.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| anyhow::anyhow!("corrupt shard count in {}", dir.display()))?;
            anyhow::ensure!(
                stored == config.shards,
                "the data in {} was created with {stored} shards but the configuration says {}; the shard count is fixed at cluster creation",
                dir.display(),
                config.shards
            );
        }
        None => b.put(Cf::Local, SHARDS_KEY, config.shards.to_be_bytes()),
    }
    match engine.get(Cf::Local, CLUSTER_ID_KEY)? {
        Some(v) => {
            let stored = String::from_utf8_lossy(&v);
            anyhow::ensure!(
                stored == cluster_id,
                "the data in {} belongs to cluster {stored}, but the configuration says cluster {cluster_id}; \
                 start this node with its own cluster's configuration, or move the data directory away to join \
                 this cluster as a new node",
                dir.display()
            );
        }
        None => b.put(Cf::Local, CLUSTER_ID_KEY, cluster_id.as_bytes()),
    }
    match stored_u64(engine, NODE_ID_KEY, dir)? {
        Some(id) => anyhow::ensure!(
            id == config.node_id,
            "the data in {} belongs to node {id}, but the configuration says node {}",
            dir.display(),
            config.node_id
        ),
        None => b.put(Cf::Local, NODE_ID_KEY, config.node_id.to_be_bytes()),
    }
    let incarnation = stored_u64(engine, INCARNATION_KEY, dir)?.unwrap_or(0).saturating_add(1);
    b.put(Cf::Local, INCARNATION_KEY, incarnation.to_be_bytes());
    engine.write(b, true)?;
    let mut peer_incarnations = BTreeMap::new();
    for (k, v) in engine.scan_prefix(Cf::Local, PEER_INCARNATION_PREFIX, usize::MAX)? {
        let node = k.get(PEER_INCARNATION_PREFIX.len()..).and_then(|t| <[u8; 8]>::try_from(t).ok());
        let inc = <[u8; 8]>::try_from(v.as_slice()).ok();
        if let (Some(node), Some(inc)) = (node, inc) {
            peer_incarnations.insert(u64::from_be_bytes(node), u64::from_be_bytes(inc));
        }
    }
    let identity = Identity { cluster: config.cluster_tag(), node: config.node_id, incarnation };
    tracing::info!(cluster = %cluster_id, node = config.node_id, incarnation, "data directory identity checked");
    Ok(StoredIdentity { identity, cluster_id, peer_incarnations })
}

/// Remembers a peer's newer incarnation in the data directory (unsynced: losing it in a crash
/// only forgets a refusal, never accepts what was refused).
fn incarnation_sink(engine: Arc<dyn Engine>) -> IncarnationSink {
    Box::new(move |node, incarnation| {
        let mut key = PEER_INCARNATION_PREFIX.to_vec();
        key.extend_from_slice(&node.to_be_bytes());
        let mut b = WriteBatch::new();
        b.put(Cf::Local, key, incarnation.to_be_bytes());
        if let Err(e) = engine.write(b, false) {
            tracing::warn!(peer = node, incarnation, error = %e, "could not record a peer's incarnation");
        }
    })
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
    /// Free bytes of the file system holding the data directory (`None`: unknown, never low).
    pub free_bytes: crate::disk::FreeBytes,
}

pub(crate) fn tcp_incoming(l: TcpListener) -> Incoming {
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
    let engine = open_store(&config.data_dir.join("db"), config.lose_unsynced_on_kill)?;
    let platform = Platform {
        engine,
        connector: Arc::new(TcpConnector),
        clock: Arc::new(SystemClock),
        raft_incoming: tcp_incoming(raft_listener),
        client_incoming: tcp_incoming(client_listener),
        free_bytes: crate::disk::statvfs_free(config.data_dir.clone()),
    };
    start_on(config, platform, metrics_listener).await
}

/// Opens the node's RocksDB store.
#[cfg(feature = "rocksdb")]
fn open_store(db_path: &std::path::Path, lose_unsynced_on_kill: bool) -> anyhow::Result<Arc<dyn Engine>> {
    let options = norn_storage::RocksOptions { lose_unsynced_on_kill, ..Default::default() };
    let engine = norn_storage::RocksEngine::open(db_path, &options)
        .with_context(|| format!("open store in {}", db_path.display()))?;
    Ok(Arc::new(engine))
}

/// A build without RocksDB (the libFuzzer targets) cannot open a store on disk.
#[cfg(not(feature = "rocksdb"))]
fn open_store(db_path: &std::path::Path, _lose_unsynced_on_kill: bool) -> anyhow::Result<Arc<dyn Engine>> {
    anyhow::bail!("this norn was built without RocksDB (cargo feature `rocksdb`) and cannot open {}", db_path.display())
}

/// Starts a node on a given platform (see [`Platform`]); `metrics` serves Prometheus metrics.
pub async fn start_on(
    config: NodeConfig,
    platform: Platform,
    metrics_listener: Option<TcpListener>,
) -> anyhow::Result<RunningNode> {
    config.validate()?;
    let config = Arc::new(config);
    let Platform { engine, connector, clock, raft_incoming, client_incoming, free_bytes } = platform;
    // Chaos tests may fail this node's fsyncs (norn-jepsen's disk-fail nemesis).
    let (engine, fault_seam) = if config.enable_fault_injection {
        let seam = crate::fault::FaultSeam::new(engine);
        (seam.clone() as Arc<dyn Engine>, Some(seam))
    } else {
        (engine, None)
    };
    let stored = check_identity(&*engine, &config)?;

    let transport = Transport::new(stored.identity, connector.clone());
    if config.raft.planted_bug == Some(norn_raft::PlantedBug::AcceptAnyCluster) {
        transport.plant_accept_any_cluster();
    }
    transport.remember_incarnations(stored.peer_incarnations.clone(), incarnation_sink(engine.clone()));
    let watch = crate::history::watch::RunWatch::default();
    let due = crate::history::watch::DueWatch::default();
    let specs = group_specs(&config);
    tracing::info!(node = config.node_id, shards = specs.len(), client = %config.client_addr, raft = %config.raft_addr, "starting node");
    let raft = RaftNode::start(config.node_id, engine, transport, clock.clone(), config.raft.clone(), specs, |_| {
        Box::new(ShardStateMachine { shards: config.shards, watch: watch.clone(), due: due.clone() })
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
    let disk =
        crate::disk::DiskGuard::new(config.node_id, config.data_dir.clone(), config.disk_reserve_bytes, free_bytes);
    {
        let (disk, metrics) = (disk.clone(), metrics.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let refused = disk.check();
                metrics.set_disk(disk.free_bytes(), refused);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }));
    }
    let router = Router::new(raft.clone(), config.clone(), stored.cluster_id.clone(), metrics, connector, clock, disk);
    if let Some(seam) = fault_seam {
        router.set_fault_seam(seam);
    }
    let peer_server = crate::serve::serve(
        tonic::service::Routes::new(RaftService::server(raft.clone()))
            .add_service(crate::internal::InternalService::server(router.clone())),
        raft_incoming,
        stopped(stop_rx.clone()),
    );
    let admin = AdminService::new(router.clone());
    let frontend = Frontend::new(router.clone(), watch, due);
    let duties = tokio::spawn(frontend.clone().run_duties());
    let (effects_tx, effects_rx) = tokio::sync::mpsc::unbounded_channel();
    router.set_effects_sink(effects_tx);
    tasks.push(tokio::spawn(frontend.clone().run_leader_effects(effects_rx)));
    let client_routes = tonic::service::Routes::new(health_service)
        .add_service(
            WorkflowServiceServer::new(frontend)
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX),
        )
        .add_service(AdminServer::new(admin).accept_compressed(tonic::codec::CompressionEncoding::Gzip));
    let client_server = crate::serve::serve(client_routes, client_incoming, stopped(stop_rx.clone()));
    tasks.push(tokio::spawn(peer_server));
    tasks.push(tokio::spawn(client_server));
    tasks.push(tokio::spawn(ensure_default_namespace(router)));
    tasks.push(duties);
    tracing::info!(node = config.node_id, client = %config.client_addr, raft = %config.raft_addr, "node ready");
    Ok(RunningNode { raft, stop_tx, tasks })
}
