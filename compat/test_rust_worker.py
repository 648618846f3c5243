"""A worker written with Temporal's own Rust SDK (`temporalio-sdk`, compat/rust-worker) runs a
workflow that a Python client starts, against Norn."""

import asyncio
import os
import subprocess
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio.api.enums.v1 import EventType

from conftest import ROOT


def rust_worker_binary() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return Path(target) / "debug" / "norn-compat-rust-worker"


async def test_a_rust_sdk_worker_runs_a_workflow_started_from_python(client, cluster):
    binary = rust_worker_binary()
    assert binary.exists(), (
        f"{binary} not found: build it with "
        "`cargo build --locked --manifest-path compat/rust-worker/Cargo.toml` (same CARGO_TARGET_DIR)"
    )
    tq = f"rust-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TEMPORAL_ADDRESS": cluster[1], "TEMPORAL_NAMESPACE": "default", "NORN_TASK_QUEUE": tq}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([str(binary)], env=env, stdout=log, stderr=log)
        try:
            w = f"rust-{uuid.uuid4()}"
            h = await client.start_workflow("RustOrder", "book", id=w, task_queue=tq,
                                            execution_timeout=timedelta(seconds=120))
            try:
                result = await asyncio.wait_for(h.result(), 90)
            except Exception:
                log.seek(0)
                raise AssertionError(f"rust worker log:\n{log.read().decode(errors='replace')[-4000:]}")
            assert result == "reserved book, shipped by rust"
            types = [e.event_type for e in (await h.fetch_history()).events]
            assert types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED) == 2
            assert EventType.EVENT_TYPE_TIMER_FIRED in types
            assert types[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
        finally:
            proc.terminate()
            proc.wait(timeout=30)
