"""Workers that come and go, and a cluster that loses the leader of a workflow's shard."""

import asyncio
import json
import os
import signal
import subprocess
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from conftest import free_base_port, norn_binary
from workflows import TwoSteps, hello


async def test_workflow_finishes_after_its_worker_restarts(cluster):
    c = await Client.connect(cluster[0])
    tq = f"restart-{uuid.uuid4().hex[:8]}"
    # First worker: runs the first activity, then goes away during the 2 s timer.
    async with Worker(c, task_queue=tq, workflows=[TwoSteps], activities=[hello]):
        h = await c.start_workflow(TwoSteps.run, "x", id=f"wf-{uuid.uuid4()}", task_queue=tq)
        await asyncio.sleep(1.0)
    # Second worker, on another node, picks the workflow up from its history.
    c2 = await Client.connect(cluster[1])
    async with Worker(c2, task_queue=tq, workflows=[TwoSteps], activities=[hello]):
        assert await asyncio.wait_for(h.result(), 60) == "Hello, Hello, x!!"


def fnv1a(parts):
    h = 0xCBF29CE484222325
    for i, p in enumerate(parts):
        if i:
            h ^= 0xFF
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        for b in p:
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


@pytest.fixture
def own_cluster():
    """A 3-node cluster of its own, since this test kills a node."""
    binary = norn_binary()
    with tempfile.TemporaryDirectory(prefix="norn-failover-") as tmp:
        data = str(Path(tmp) / "cluster")
        base = free_base_port()
        up = subprocess.run(
            [binary, "cluster", "up", "--nodes", "3", "--data-dir", data, "--base-port", str(base), "--shards", "4"],
            capture_output=True, text=True, timeout=120,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        try:
            yield data, [f"127.0.0.1:{base + i}" for i in range(3)]
        finally:
            subprocess.run([binary, "cluster", "down", "--data-dir", data], capture_output=True, timeout=60)


async def test_workflows_complete_when_the_leader_of_their_shard_is_killed(own_cluster):
    data, addrs = own_cluster
    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

    c = await Client.connect(addrs[0])
    ns_id = (await c.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="default"))).namespace_info.id
    status = json.loads(subprocess.run([norn_binary(), "cluster", "status", "--address", addrs[0], "--output", "json"],
                                       capture_output=True, text=True, check=True).stdout)
    leader_of = {s["shard"]: n["node_id"] for n in status["nodes"] for s in (n["shards"] or []) if s["role"] == "leader"}
    # Workflows whose shard node 1 leads, so killing node 1 kills their leader.
    victim = 1
    ids = [w for w in (f"fo-{uuid.uuid4()}" for _ in range(200))
           if leader_of[fnv1a([ns_id.encode(), w.encode()]) % 4] == victim][:5]
    assert ids, "no workflow id mapped to a shard led by node 1"

    tq = f"failover-{uuid.uuid4().hex[:8]}"
    survivors = [await Client.connect(a) for a in addrs[1:]]
    async with Worker(survivors[0], task_queue=tq, workflows=[TwoSteps], activities=[hello]):
        handles = [await survivors[1].start_workflow(TwoSteps.run, w, id=w, task_queue=tq) for w in ids]
        await asyncio.sleep(0.5)
        pids = json.loads((Path(data) / "cluster.json").read_text())
        pid = next(n["pid"] for n in pids["nodes"] if n["id"] == victim)
        os.kill(pid, signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 90)
    assert results == [f"Hello, Hello, {w}!!" for w in ids]
    run_ids = {}
    for w in ids:
        events = (await survivors[1].get_workflow_handle(w).fetch_history()).events
        assert [e.event_id for e in events] == list(range(1, len(events) + 1))
        run_ids[w] = (await survivors[1].get_workflow_handle(w).describe()).run_id

    # Bring the killed node back; once it has caught up, every replica holds the same bytes.
    cluster_file = Path(data) / "cluster.json"
    layout = json.loads(cluster_file.read_text())
    node = next(n for n in layout["nodes"] if n["id"] == victim)
    with open(node["log"], "ab") as log:
        proc = subprocess.Popen([norn_binary(), "server", "--config", node["config"]], stdout=log, stderr=log)
    node["pid"] = proc.pid
    cluster_file.write_text(json.dumps(layout))

    def replica(addr, w):
        out = subprocess.run(
            [norn_binary(), "debug", "history", "--address", addr, "--workflow-id", w, "--run-id", run_ids[w], "--local"],
            capture_output=True, text=True, timeout=30,
        )
        return out.stdout if out.returncode == 0 else f"error: {out.stderr}"

    for w in ids:
        expected = replica(addrs[1], w)
        assert expected.count("\n") >= 10, expected
        for _ in range(100):
            copies = [replica(a, w) for a in addrs]
            if all(c == expected for c in copies):
                break
            await asyncio.sleep(0.3)
        assert copies == [expected] * 3, f"replicas of {w} differ"
