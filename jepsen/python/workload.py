"""norn-jepsen's workload through Temporal's Python SDK (temporalio, from PyPI).

Started by the harness with `--python`: a worker on every node (through the harness's client
proxies) runs `PyJepsen` (an activity, a timer, then signals until the finish signal, returning
the signals it saw), and logical clients start workflows and signal them with sequence numbers
for `--seconds`. Every operation is written to `--out` as a JSON line in the harness's history
format (invoke, then ok / fail / info), timed on the harness's clock (`--base-ns` is the
harness's time when it started this process; both clocks are CLOCK_MONOTONIC). When the
operations are done it prints `ops-done` and keeps its workers running until its stdin closes,
so the harness can finish every workflow and check the histories as it does its own.
"""

import argparse
import asyncio
import json
import random
import sys
import time
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

QUEUE = "jepsen-py"


@activity.defn(name="py_touch")
async def py_touch(n: int) -> int:
    return n + 1


@workflow.defn(name="PyJepsen")
class PyJepsen:
    def __init__(self) -> None:
        self.pending: list = []

    @workflow.signal(name="op")
    def op(self, v: int) -> None:
        self.pending.append(v)

    @workflow.run
    async def run(self) -> list:
        await workflow.execute_activity(py_touch, 1, start_to_close_timeout=timedelta(seconds=10))
        await asyncio.sleep(0.1)
        seen = []
        while True:
            await workflow.wait_condition(lambda: len(self.pending) > 0)
            v = self.pending.pop(0)
            if v < 0:
                return seen
            seen.append(v)


class Recorder:
    def __init__(self, path: str, base_ns: int) -> None:
        self.file = open(path, "w", encoding="utf-8")
        self.base_ns = base_ns
        self.t0 = time.monotonic_ns()

    def push(self, process: int, kind: str, f: str, wf: str, node: int, value) -> None:
        op = {
            "process": process,
            "kind": kind,
            "f": f,
            "wf": wf,
            "node": node,
            "time_ns": self.base_ns + time.monotonic_ns() - self.t0,
            "value": value,
        }
        self.file.write(json.dumps(op) + "\n")

    def close(self) -> None:
        self.file.close()


def outcome(e: BaseException) -> str:
    """fail: certainly did not happen; info: may or may not have."""
    if isinstance(e, WorkflowAlreadyStartedError):
        return "fail"
    if isinstance(e, RPCError) and e.status in (
        RPCStatusCode.NOT_FOUND,
        RPCStatusCode.ALREADY_EXISTS,
        RPCStatusCode.INVALID_ARGUMENT,
    ):
        return "fail"
    return "info"


async def connect(addr: str) -> Client:
    while True:
        try:
            return await Client.connect(addr, namespace="default")
        except Exception:  # the node may be down or cut off right now
            await asyncio.sleep(0.5)


async def worker(addr: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        client = await connect(addr)
        try:
            async with Worker(client, task_queue=QUEUE, workflows=[PyJepsen], activities=[py_touch]):
                await stop.wait()
        except Exception:
            await asyncio.sleep(0.5)


async def process(p: int, node: int, addr: str, rec: Recorder, until: float, seed: int) -> None:
    rng = random.Random(seed * 7919 + p)
    client = await connect(addr)
    mine: list = []
    next_seq: dict = {}
    k = 0
    while time.monotonic() < until:
        k += 1
        if not mine or rng.random() < 0.15:
            wf = f"py-{p}-{k}"
            rec.push(p, "invoke", "start", wf, node, None)
            try:
                h = await client.start_workflow(
                    "PyJepsen",
                    id=wf,
                    task_queue=QUEUE,
                    rpc_timeout=timedelta(seconds=5),
                )
                rec.push(p, "ok", "start", wf, node, h.result_run_id)
                mine.append(wf)
            except Exception as e:  # recorded, not raised: the history is the result
                rec.push(p, outcome(e), "start", wf, node, str(e))
        else:
            wf = rng.choice(mine)
            seq = next_seq.get(wf, 0) + 1
            next_seq[wf] = seq
            rec.push(p, "invoke", "signal", wf, node, seq)
            try:
                await client.get_workflow_handle(wf).signal("op", seq, rpc_timeout=timedelta(seconds=5))
                rec.push(p, "ok", "signal", wf, node, seq)
            except Exception as e:
                rec.push(p, outcome(e), "signal", wf, node, {"seq": seq, "error": str(e)})
        await asyncio.sleep(0.01)


async def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--addrs", required=True, help="comma-separated client addresses, node 1 first")
    a.add_argument("--processes", type=int, default=2)
    a.add_argument("--first-process", type=int, default=1000)
    a.add_argument("--seconds", type=float, required=True)
    a.add_argument("--base-ns", type=int, required=True)
    a.add_argument("--seed", type=int, default=1)
    a.add_argument("--out", required=True)
    o = a.parse_args()
    addrs = o.addrs.split(",")
    rec = Recorder(o.out, o.base_ns)
    stop = asyncio.Event()
    workers = [asyncio.create_task(worker(x, stop)) for x in addrs]
    until = time.monotonic() + o.seconds
    procs = []
    for i in range(o.processes):
        node = i % len(addrs) + 1
        procs.append(process(o.first_process + i, node, addrs[node - 1], rec, until, o.seed))
    await asyncio.gather(*procs)
    rec.close()
    print("ops-done", flush=True)
    # Keep the workers until the harness closes our stdin (it has finished every workflow).
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    stop.set()
    await asyncio.wait(workers, timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
