"""Norn's own Rust SDK (`norn-client`, client/examples/interop.rs) and the Python SDK drive each
other's workflows: structs, bytes, null and failures cross both ways unchanged."""

import asyncio
import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from conftest import ROOT, temporal_cli
from workflows import PyBytes, PyFail, PyNull, PyOrder, py_price


def interop_binary() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    path = Path(target) / "debug" / "examples" / "interop"
    assert path.exists(), f"{path} not found: build it with `cargo build -p norn-client --example interop`"
    return path


async def test_a_norn_rust_client_drives_python_workflows(client, cluster):
    tq = f"interop-py-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=tq, workflows=[PyOrder, PyBytes, PyNull, PyFail], activities=[py_price]):
        proc = await asyncio.create_subprocess_exec(
            str(interop_binary()), "client", cluster[2], tq,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text
        assert "all checks passed" in text, text


async def test_python_clients_drive_a_norn_rust_worker(client, cluster):
    tq = f"interop-rs-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([str(interop_binary()), "worker", cluster[1], tq],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        run = lambda wf, arg, **kw: client.execute_workflow(wf, arg, id=f"{wf}-{uuid.uuid4()}", task_queue=tq, **kw)
        order = await asyncio.wait_for(run("RustOrder", {"id": 3, "items": ["x", "y"], "total": None}), 60)
        assert order == {"id": 3, "items": ["x", "y"], "total": 5.0}
        assert await run("RustBytes", b"\x01\x02\x00\xff", result_type=bytes) == b"\xff\x00\x02\x01"
        assert await run("RustNull", None) is None
        with pytest.raises(WorkflowFailureError) as err:
            await run("RustFail", "no stock")
        cause = err.value.cause
        assert isinstance(cause, ApplicationError)
        assert cause.type == "RustError"
        assert cause.message == "no stock"
        assert cause.non_retryable
        assert cause.details == ({"id": 9, "items": [], "total": None},)

        # A history exported by Temporal's CLI replays clean through the Rust workflows.
        rid = f"RustOrder-{uuid.uuid4()}"
        await client.execute_workflow("RustOrder", {"id": 4, "items": ["z"], "total": None}, id=rid, task_queue=tq)
        shown = subprocess.run([temporal_cli(), "workflow", "show", "--address", cluster[0], "--workflow-id", rid,
                                "--output", "json"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write(shown.stdout)
        replayed = subprocess.run([str(interop_binary()), "replay", f.name], capture_output=True, text=True, timeout=60)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert "replayed" in replayed.stdout

        # Updates from Python to a Rust workflow: accepted, rejected by the Rust validator.
        h = await client.start_workflow("RustTally", id=f"RustTally-{uuid.uuid4()}", task_queue=tq)
        assert await h.execute_update("add", 4, result_type=int) == 4
        assert await h.execute_update("add", 3, result_type=int) == 7
        with pytest.raises(WorkflowUpdateFailedError) as uerr:
            await h.execute_update("add", -2, result_type=int)
        assert isinstance(uerr.value.cause, ApplicationError) and uerr.value.cause.type == "Negative"
        await h.signal("finish")
        assert await h.result() == 7
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.returncode not in (0, None, -9):
            print(proc.stdout.read().decode(errors="replace"))
