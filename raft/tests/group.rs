//! In-process Raft groups on the memory engine over real TCP: crash-recovery with lost unsynced
//! writes, fsync failure, and corrupted log bytes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use norn_raft::{
    Applied, ApplyError, GroupSpec, NodeInfo, ProposeError, RaftNode, RaftOptions, RaftService, Role, StateMachine,
    SystemClock, TcpConnector, Transport, Txn,
};
use norn_storage::{Cf, Engine, MemDisk, MemEngine, WriteBatch};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// Appends every command's payload to a per-group list and answers with the list's length.
struct Append;

impl StateMachine for Append {
    fn apply(&mut self, txn: &mut Txn<'_>, cmd: Applied<'_>) -> Result<Vec<u8>, ApplyError> {
        let len = txn.get(b"len").map_err(|e| ApplyError::Fatal(e.to_string()))?;
        let n = len.map(|v| u64::from_be_bytes(v.try_into().unwrap())).unwrap_or(0) + 1;
        txn.put(format!("item/{n:08}").into_bytes(), cmd.payload.to_vec());
        txn.put(b"len".to_vec(), n.to_be_bytes().to_vec());
        // A refused command: it wrote above, and none of it may remain.
        if cmd.payload.starts_with(b"reject") {
            return Err(ApplyError::Rejected(b"rejected".to_vec()));
        }
        Ok(n.to_be_bytes().to_vec())
    }
}

struct Node {
    raft: RaftNode,
    server: tokio::task::JoinHandle<()>,
}

struct Group {
    disks: Vec<MemDisk>,
    addrs: Vec<String>,
    nodes: Vec<Option<Node>>,
}

fn options() -> RaftOptions {
    RaftOptions {
        election_timeout_ms_min: 300,
        election_timeout_ms_max: 600,
        heartbeat_interval_ms: 100,
        propose_timeout_ms: 3_000,
        ..Default::default()
    }
}

fn members(addrs: &[String]) -> BTreeMap<u64, NodeInfo> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (i as u64 + 1, NodeInfo { raft_addr: a.clone(), client_addr: a.clone() }))
        .collect()
}

async fn start_node(id: u64, disk: &MemDisk, addrs: &[String]) -> Result<Node, norn_raft::Error> {
    let listener = TcpListener::bind(&addrs[(id - 1) as usize]).await.expect("bind");
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::open(disk));
    // Each start is a new incarnation, as a node's data directory would count it.
    static INCARNATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let incarnation = INCARNATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let identity = norn_raft::Identity { cluster: 7, node: id, incarnation };
    let transport = Transport::new(identity, Arc::new(TcpConnector));
    let spec = GroupSpec { id: 0, members: members(addrs), bootstrap: id == 1 };
    let raft =
        RaftNode::start(id, engine, transport, Arc::new(SystemClock), options(), vec![spec], |_| Box::new(Append))
            .await?;
    let svc = RaftService::server(raft.clone());
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    Ok(Node { raft, server })
}

impl Group {
    async fn start() -> Group {
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            addrs.push(l.local_addr().unwrap().to_string());
        }
        let disks = vec![MemDisk::new(), MemDisk::new(), MemDisk::new()];
        let mut nodes = Vec::new();
        for id in 1..=3 {
            nodes.push(Some(start_node(id, &disks[id as usize - 1], &addrs).await.expect("start")));
        }
        Group { disks, addrs, nodes }
    }

    fn node(&self, id: u64) -> &RaftNode {
        &self.nodes[(id - 1) as usize].as_ref().expect("running").raft
    }

    async fn leader(&self) -> u64 {
        for _ in 0..100 {
            for (i, n) in self.nodes.iter().enumerate() {
                if let Some(n) = n {
                    if n.raft.status()[0].role == Role::Leader {
                        return i as u64 + 1;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no leader within 10s");
    }

    /// Stops the node's process and drops its unsynced writes.
    async fn crash(&mut self, id: u64) {
        if let Some(n) = self.nodes[(id - 1) as usize].take() {
            n.raft.shutdown().await;
            n.server.abort();
            let _ = n.server.await;
        }
        self.disks[(id - 1) as usize].crash();
    }

    async fn restart(&mut self, id: u64) -> Result<(), norn_raft::Error> {
        let n = start_node(id, &self.disks[(id - 1) as usize], &self.addrs).await?;
        self.nodes[(id - 1) as usize] = Some(n);
        Ok(())
    }

    async fn propose(&self, payload: &str) -> Result<u64, ProposeError> {
        loop {
            let leader = self.leader().await;
            match self.node(leader).propose(0, payload.as_bytes().to_vec()).await {
                Ok(v) => return Ok(u64::from_be_bytes(v.try_into().unwrap())),
                Err(ProposeError::NotLeader { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(e),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_crashes_that_drop_unsynced_data() {
    let mut g = Group::start().await;
    for i in 1..=20 {
        assert_eq!(g.propose(&format!("a{i}")).await.unwrap(), i);
    }
    // Crash every node at once: whatever was acknowledged was synced on a quorum.
    for id in 1..=3 {
        g.crash(id).await;
    }
    for id in 1..=3 {
        g.restart(id).await.unwrap();
    }
    assert_eq!(g.propose("after").await.unwrap(), 21, "an acknowledged entry was lost or applied twice");
    let leader = g.leader().await;
    g.node(leader).read_index(0).await.unwrap();
    for i in 1..=20u64 {
        let v = g.node(leader).read_local(0, format!("item/{i:08}").as_bytes()).unwrap();
        assert_eq!(v, Some(format!("a{i}").into_bytes()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_node_from_acknowledging() {
    let g = Group::start().await;
    g.propose("x").await.unwrap();
    let leader = g.leader().await;
    g.disks[(leader - 1) as usize].fail_next_sync();
    // The next append on the leader fails its sync; the group stops there.
    let r = g.node(leader).propose(0, b"y".to_vec()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while g.node(leader).status()[0].role != Role::Failed {
        assert!(tokio::time::Instant::now() < deadline, "group kept running after a failed fsync (propose: {r:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = g.node(leader).propose(0, b"z".to_vec()).await;
    assert!(after.is_err(), "a node whose fsync failed acknowledged a write: {after:?}");
    assert!(g.node(leader).status()[0].fatal.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_log_bytes_are_reported_not_trusted() {
    let mut g = Group::start().await;
    for i in 1..=5 {
        g.propose(&format!("c{i}")).await.unwrap();
    }
    g.crash(2).await;
    // Flip a byte in node 2's newest log entry (keys: group u32 BE ++ index u64 BE).
    let engine = MemEngine::open(&g.disks[1]);
    let start = [0u8; 12];
    let end = [0u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let last = engine
        .scan_rev(Cf::RaftLog, std::ops::Bound::Included(&start[..]), std::ops::Bound::Included(&end[..]), 1)
        .unwrap();
    let (key, mut value) = last.into_iter().next().expect("node 2 has log entries");
    let at = value.len() - 1;
    value[at] ^= 0x5a;
    let mut b = WriteBatch::new();
    b.put(Cf::RaftLog, key, value);
    engine.write(b, true).unwrap();
    match g.restart(2).await {
        Err(e) => assert!(e.to_string().contains("checksum"), "unclear error: {e}"),
        Ok(()) => panic!("node 2 started on a corrupted log"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_leaves_nothing_behind_on_any_replica() {
    let g = Group::start().await;
    assert_eq!(g.propose("a1").await.unwrap(), 1);
    let leader = g.leader().await;
    // Refused after writing: none of its writes may remain (the next item is number 2).
    let r = g.node(leader).propose(0, b"reject-me".to_vec()).await.unwrap();
    assert_eq!(r, b"rejected");
    // Refused and accepted commands in one entry: only the accepted ones count.
    let mut calls = Vec::new();
    for i in 0..10 {
        let node = g.node(leader).clone();
        let payload = if i % 2 == 0 { format!("reject-{i}") } else { format!("ok-{i}") };
        calls.push(tokio::spawn(async move { node.propose(0, payload.into_bytes()).await }));
    }
    let mut accepted = 0;
    for c in calls {
        if c.await.unwrap().unwrap() != b"rejected" {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 5);
    assert_eq!(g.propose("last").await.unwrap(), 7, "refused commands left writes behind");
    for id in 1..=3 {
        g.node(id).wait_applied(0, g.node(leader).status()[0].applied_index).await.unwrap();
        let len = g.node(id).read_local(0, b"len").unwrap().unwrap();
        assert_eq!(u64::from_be_bytes(len.try_into().unwrap()), 7, "replica {id} diverged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_value_halts_the_group_on_that_replica_naming_the_key() {
    let g = Group::start().await;
    for i in 1..=3 {
        g.propose(&format!("v{i}")).await.unwrap();
    }
    let leader = g.leader().await;
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    g.node(victim).wait_applied(0, g.node(leader).status()[0].applied_index).await.unwrap();
    // Flip one bit of the stored `len` value on a follower, under its running node.
    let engine = MemEngine::open(&g.disks[(victim - 1) as usize]);
    // State keys: group (u32 BE), generation (u32 BE, 0 until a snapshot is installed), key.
    let key = [&0u32.to_be_bytes()[..], &0u32.to_be_bytes(), b"len"].concat();
    let mut value = engine.get(Cf::State, &key).unwrap().expect("len stored");
    let at = value.len() - 1;
    value[at] ^= 0x01;
    let mut b = WriteBatch::new();
    b.put(Cf::State, key, value);
    engine.write(b, true).unwrap();
    // Reading it is an error naming the key, never a wrong value.
    let err = g.node(victim).read_local(0, b"len").expect_err("a flipped value was trusted");
    assert!(err.to_string().contains("\"len\""), "error does not name the key: {err}");
    // The next command halts the group on that replica; the others go on.
    assert_eq!(g.propose("after").await.unwrap(), 4);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while g.node(victim).status()[0].role != Role::Failed {
        assert!(tokio::time::Instant::now() < deadline, "the replica with a corrupt value kept applying");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fatal = g.node(victim).status()[0].fatal.clone().unwrap_or_default();
    assert!(fatal.contains("len"), "the halt does not name the key: {fatal}");
    assert!(g.node(victim).status()[0].applied_index < g.node(leader).status()[0].applied_index);
    assert_eq!(g.propose("still").await.unwrap(), 5, "the healthy majority stopped");
}
