"""The Rust SDK examples of docs/sdk.md (client/examples) run as written and print what the page
shows."""

import asyncio
import os

import pytest

from test_sdk_interop import interop_binary

EXPECTED = {
    "hello_activity": ["Hello, Norn!"],
    "signals_queries": ['in the cart: ["apples", "pears"]', 'bought: ["apples", "pears"]'],
    "fan_out": ["sum of squares 1..=10 = 385"],
    "saga": ['booked: ["flight", "hotel", "car"]', "cancel_hotel: compensated", "cancel_flight: compensated",
             "trip failed and was rolled back"],
}


@pytest.mark.parametrize("example", sorted(EXPECTED))
async def test_example_runs(cluster, example):
    binary = interop_binary().parent / example
    assert binary.exists(), f"{binary} not found: build it with `cargo build -p norn-client --examples`"
    proc = await asyncio.create_subprocess_exec(
        str(binary), env={**os.environ, "NORN_ADDRESS": cluster[0]},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    for line in EXPECTED[example]:
        assert line in text, f"{line!r} missing from:\n{text}"
