//! Process tests: real `norn` processes over real TCP with real RocksDB and fsync.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{fast_raft, shard_of, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_keep_acknowledged_writes_through_leader_kill_and_full_restart() {
    let mut c = Cluster::start(3, 8, fast_raft()).await;
    let status = c.wait_ready().await;
    for n in &status.nodes {
        assert_eq!(n.status.as_ref().unwrap().shards.len(), 8, "every node of 3 holds every shard");
    }

    let mut acked = BTreeMap::new();
    for i in 0..120 {
        let (k, v) = (format!("key-{i}"), format!("v1-{i}"));
        c.put(1 + (i % 3) as u64, &k, &v).await.unwrap_or_else(|e| panic!("put {k}: {e}\n{}", c.logs()));
        acked.insert(k, v);
    }

    // SIGKILL the leader of key-0's shard; the survivors elect a new one and keep acknowledging.
    let victim = c.leader_of(shard_of("key-0", 8)).await;
    c.kill(victim);
    let survivor = c.running_ids()[0];
    for i in 0..60 {
        let (k, v) = (format!("key-{i}"), format!("v2-{i}"));
        c.put(survivor, &k, &v).await.unwrap_or_else(|e| panic!("put {k} after leader kill: {e}\n{}", c.logs()));
        acked.insert(k, v);
    }
    for (k, v) in &acked {
        assert_eq!(c.get(survivor, k, false).await.as_deref(), Some(v.as_str()), "{k} after leader kill");
    }

    // The killed node comes back and catches up.
    c.restart(victim);
    c.wait_ready().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for (k, v) in &acked {
        loop {
            if c.get(victim, k, true).await.as_deref() == Some(v.as_str()) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "restarted node {victim} never caught up on {k}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Kill every node at once and restart: everything acknowledged is still there.
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.restart(id);
    }
    c.wait_ready().await;
    for (k, v) in &acked {
        assert_eq!(c.get(2, k, false).await.as_deref(), Some(v.as_str()), "{k} after full restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_place_three_replicas_per_shard_and_survive_a_node_kill() {
    let mut c = Cluster::start(5, 10, fast_raft()).await;
    let status = c.wait_ready().await;
    let mut leaders_per_node = BTreeMap::new();
    for n in &status.nodes {
        let st = n.status.as_ref().unwrap();
        assert_eq!(st.shards.len(), 6, "10 shards x 3 replicas / 5 nodes");
        for s in &st.shards {
            assert_eq!(s.members.len(), 3, "shard {} has 3 voters", s.shard);
        }
        leaders_per_node.insert(n.node_id, st.shards.iter().filter(|s| s.role == "leader").count());
    }
    assert_eq!(leaders_per_node.values().sum::<usize>(), 10);

    // Any node accepts any key: forwarding reaches the leader even on nodes without a replica.
    for i in 0..50 {
        c.put(1 + (i % 5) as u64, &format!("k{i}"), "a").await.unwrap_or_else(|e| panic!("put k{i}: {e}"));
    }
    c.kill(3);
    for i in 0..50 {
        c.put([1, 2, 4, 5][i % 4], &format!("k{i}"), "b")
            .await
            .unwrap_or_else(|e| panic!("put k{i} with node 3 down: {e}"));
    }
    for i in 0..50 {
        assert_eq!(c.get(5, &format!("k{i}"), false).await.as_deref(), Some("b"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_for_long_catches_up_through_a_snapshot() {
    let raft = norn_raft::RaftOptions { snapshot_logs_since_last: 40, logs_kept_after_snapshot: 5, ..fast_raft() };
    let mut c = Cluster::start(3, 2, raft).await;
    c.kill(3);
    c.wait_leaders().await;
    for i in 0..300 {
        c.put(1, &format!("s{i}"), &format!("{i}")).await.unwrap_or_else(|e| panic!("put s{i}: {e}"));
    }
    // The leaders' logs are purged well past what node 3 has.
    let st = c.status(1).await;
    for id in [1, 2] {
        let st = c.status(id).await;
        for s in st.shards.iter().filter(|s| s.role == "leader") {
            assert!(s.purged_index > 0, "shard {} on node {id} purged nothing: {s:?}", s.shard);
        }
    }
    drop(st);
    c.restart(3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = c.client(3).await.node_status(norn_node::pb::NodeStatusRequest {}).await;
        if let Ok(st) = st {
            let st = st.into_inner();
            if st.shards.iter().map(|s| s.snapshots_installed).sum::<u64>() > 0
                && c.get(3, "s299", true).await.is_some()
            {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "node 3 never installed a snapshot\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..300 {
        let k = format!("s{i}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while c.get(3, &k, true).await.as_deref() != Some(format!("{i}").as_str()) {
            assert!(tokio::time::Instant::now() < deadline, "node 3 lacks {k} after catch-up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_the_minority_side_of_a_partition_are_never_acknowledged() {
    let raft = norn_raft::RaftOptions { propose_timeout_ms: 3_000, ..fast_raft() };
    let c = Cluster::start(3, 4, raft).await;
    let key = "isolated-key";
    let shard = shard_of(key, 4);
    let old = c.leader_of(shard).await;
    let others: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    c.partition(old, others.clone()).await;
    for o in &others {
        c.partition(*o, vec![old]).await;
    }

    // Sent straight to the isolated leader, with forwarding disabled (hops at the limit).
    let r = c
        .client(old)
        .await
        .put(norn_node::pb::PutRequest { key: key.into(), value: b"minority".to_vec(), hops: 2 })
        .await;
    assert!(r.is_err(), "a write on the minority side was acknowledged: {r:?}");

    // The majority elects a leader and acknowledges writes.
    c.put(others[0], key, "majority").await.unwrap_or_else(|e| panic!("majority write: {e}\n{}", c.logs()));

    // Heal: the minority write never appears.
    for id in 1..=3 {
        c.partition(id, vec![]).await;
    }
    c.wait_ready().await;
    assert_eq!(c.get(old, key, false).await.as_deref(), Some("majority"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.get(old, key, true).await.as_deref(), Some("majority"), "old leader's local state diverged");
}
