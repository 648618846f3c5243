#!/usr/bin/env python3
"""Workflow throughput under Temporal's Python SDK (temporalio), the workloads of
`norn bench workflows --matrix`: N workflows of K sequential no-op activities, C in flight,
one worker with the SDK's default settings on a fresh task queue, against one or more
Temporal-API addresses. Prints a table (wf/s, p50/p90/p99 start-to-result latency, failures,
this process's CPU). See docs/performance.md.

    python3 scripts/bench-python.py 127.0.0.1:7233 127.0.0.1:7243
"""

import argparse
import asyncio
import os
import resource
import sys
import time
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

MATRIX = [(1, 200, 1), (1, 1000, 50), (1, 2000, 200), (10, 300, 50)]


@activity.defn(name="bench_step")
async def bench_step(i: int) -> int:
    return i


@workflow.defn(name="bench")
class Bench:
    @workflow.run
    async def run(self, n: int) -> int:
        total = 0
        for i in range(n):
            total += await workflow.execute_activity(
                "bench_step", i, start_to_close_timeout=timedelta(seconds=30)
            )
        return total


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def drive(client, queue, first, n, k, c):
    sem = asyncio.Semaphore(max(c, 1))
    out = []

    async def one(i):
        async with sem:
            t = time.monotonic()
            try:
                await client.execute_workflow("bench", k, id=f"{queue}-{i}", task_queue=queue)
                out.append(time.monotonic() - t)
            except Exception as e:  # counted as a failure
                print(f"workflow {queue}-{i} failed: {e}", file=sys.stderr)
                out.append(None)

    await asyncio.gather(*(one(i) for i in range(first, first + n)))
    return out


async def run_one(address, k, n, c, warmup):
    client = await Client.connect(address, namespace="default")
    queue = f"pybench-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    async with Worker(client, task_queue=queue, workflows=[Bench], activities=[bench_step]):
        await drive(client, queue, 0, warmup, k, min(c, warmup))
        cpu0, t0 = cpu_seconds(), time.monotonic()
        results = await drive(client, queue, warmup, n, k, c)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    ok = sorted(r * 1000 for r in results if r is not None)
    pct = lambda q: ok[round((len(ok) - 1) * q)] if ok else 0.0  # noqa: E731
    return len(ok) / elapsed, pct(0.5), pct(0.9), pct(0.99), len(results) - len(ok), cpu / elapsed * 100


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("addresses", nargs="+")
    p.add_argument("--warmup", type=int, default=20)
    a = p.parse_args()
    print("one worker of temporalio's Python SDK with its default settings per run; CPU is percent of one core")
    print(f"{'K':>3} {'N':>5} {'C':>4}  {'address':<20} {'wf/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'failed':>6} {'bench':>6}")
    for k, n, c in MATRIX:
        rows = []
        for address in a.addresses:
            r = await run_one(address, k, n, c, a.warmup)
            rows.append(r)
            print(f"{k:>3} {n:>5} {c:>4}  {address:<20} {r[0]:>7.1f} {r[1]:>8.1f} {r[2]:>8.1f} {r[3]:>8.1f} {r[4]:>6} {r[5]:>6.0f}", flush=True)
        if len(rows) == 2:
            print(f"{'':>16}ratio {a.addresses[0]} / {a.addresses[1]}: {rows[0][0] / max(rows[1][0], 1e-9):.2f}x", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
