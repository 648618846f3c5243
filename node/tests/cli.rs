//! The operator commands as a user types them: `norn cluster up`, `status`, `kv`, `down`.

use std::process::Command;

fn norn(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_norn")).args(args).output().expect("run norn");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A base port with the client, peer and metrics ranges of 3 nodes free.
fn free_base() -> u16 {
    let start = 20_000 + (std::process::id() % 2_000) as u16 * 10;
    (start..60_000)
        .step_by(7)
        .find(|b| {
            [0u16, 100, 200]
                .iter()
                .flat_map(|off| (0..3).map(move |i| b + off + i))
                .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        })
        .expect("no free base port")
}

#[test]
fn cluster_up_status_kv_and_down_work_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let data = data.to_str().unwrap();
    let base = free_base().to_string();
    let (ok, out) = norn(&["cluster", "up", "--nodes", "3", "--data-dir", data, "--base-port", &base, "--shards", "4"]);
    let cleanup = scopeguard(data.to_string());
    assert!(ok, "cluster up failed:\n{out}");
    assert!(out.contains("every shard has a leader"), "{out}");

    let addr = format!("127.0.0.1:{base}");
    let (ok, out) = norn(&["cluster", "status", "--address", &addr]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().filter(|l| l.contains(" up ")).count(), 3, "three healthy nodes:\n{out}");

    // A reader that goes away first (`norn cluster status | head`): a quiet end, no panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_norn"))
        .args(["cluster", "status", "--address", &addr])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run norn");
    drop(child.stdout.take());
    let done = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success() && !err.contains("panicked"), "{:?}: {err}", done.status);

    let (ok, out) = norn(&["cluster", "status", "--address", &addr, "--output", "json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json output");
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
    let leaders: usize = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["shards"].as_array().unwrap().iter().filter(|s| s["role"] == "leader").count())
        .sum();
    assert_eq!(leaders, 4, "one leader per shard");

    let (ok, out) = norn(&["kv", "put", "greeting", "hello", "--address", &addr]);
    assert!(ok, "{out}");
    let (ok, out) =
        norn(&["kv", "get", "greeting", "--address", &format!("127.0.0.1:{}", base.parse::<u16>().unwrap() + 2)]);
    assert!(ok && out.trim() == "hello", "{out}");

    // A node killed and restarted by hand is still this cluster's: `cluster down` stops it too.
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{data}/cluster.json")).unwrap()).unwrap();
    let pid = file["nodes"][1]["pid"].as_u64().expect("node 2's pid").to_string();
    assert!(Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    let mut by_hand = Command::new(env!("CARGO_BIN_EXE_norn"))
        .args(["server", "--config", &format!("{data}/node-2/norn.toml")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut up = 0;
    for _ in 0..150 {
        let (_, out) = norn(&["cluster", "status", "--address", &addr]);
        up = out.lines().filter(|l| l.contains(" up ")).count();
        if up == 3 && by_hand.try_wait().unwrap().is_none() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(up, 3, "node 2 restarted by hand answers");

    drop(cleanup);
    let (ok, out) = norn(&["cluster", "status", "--address", &addr]);
    assert!(!ok, "status after down should fail to connect: {out}");
    let mut stopped = None;
    for _ in 0..100 {
        stopped = by_hand.try_wait().unwrap();
        if stopped.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if stopped.is_none() {
        let _ = by_hand.kill();
        panic!("cluster down left the node restarted by hand running");
    }
}

struct Down(String);
impl Drop for Down {
    fn drop(&mut self) {
        let (ok, out) = norn(&["cluster", "down", "--data-dir", &self.0]);
        assert!(ok || std::thread::panicking(), "cluster down failed: {out}");
    }
}
fn scopeguard(dir: String) -> Down {
    Down(dir)
}
