"""Workflows and activities used by the compatibility tests (importable by the SDK sandbox)."""

import asyncio
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    import shared_state


@activity.defn
async def hello(name: str) -> str:
    return f"Hello, {name}!"


@activity.defn
async def always_fails(reason: str) -> str:
    raise ApplicationError(reason, non_retryable=True)


@workflow.defn
class OneActivity:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_activity(hello, name, start_to_close_timeout=timedelta(seconds=10))


@workflow.defn
class TimerThenActivity:
    @workflow.run
    async def run(self, name: str) -> str:
        await asyncio.sleep(1.5)
        return await workflow.execute_activity(hello, name, start_to_close_timeout=timedelta(seconds=10))


@workflow.defn
class ParallelActivities:
    @workflow.run
    async def run(self, n: int) -> list:
        futures = [
            workflow.execute_activity(hello, f"n{i}", start_to_close_timeout=timedelta(seconds=10)) for i in range(n)
        ]
        return list(await asyncio.gather(*futures))


@workflow.defn
class CatchesActivityFailure:
    @workflow.run
    async def run(self) -> str:
        try:
            await workflow.execute_activity(
                always_fails,
                "boom",
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except Exception as e:  # ActivityError wrapping the ApplicationError
            return f"caught: {e.cause}"
        return "not caught"


@workflow.defn
class Fails:
    @workflow.run
    async def run(self) -> str:
        raise ApplicationError("deliberate failure", non_retryable=True)


@workflow.defn
class WaitsLong:
    @workflow.run
    async def run(self) -> str:
        await asyncio.sleep(3600)
        return "woke"


@workflow.defn
class TwoSteps:
    @workflow.run
    async def run(self, name: str) -> str:
        first = await workflow.execute_activity(hello, name, start_to_close_timeout=timedelta(seconds=10))
        await asyncio.sleep(2)
        second = await workflow.execute_activity(hello, first, start_to_close_timeout=timedelta(seconds=10))
        return second


@workflow.defn
class CollectsSignals:
    def __init__(self) -> None:
        self.items: list = []

    @workflow.signal
    def add(self, item: str) -> None:
        self.items.append(item)

    @workflow.run
    async def run(self, expected: int) -> list:
        await workflow.wait_condition(lambda: len(self.items) >= expected)
        return self.items


@workflow.defn
class CancellableSleep:
    @workflow.run
    async def run(self) -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise
        return "slept"


@activity.defn
async def flaky(name: str) -> str:
    """Fails its first two attempts; the server's retry policy brings it back."""
    attempt = activity.info().attempt
    if attempt < 3:
        raise ApplicationError(f"attempt {attempt} fails")
    return f"{name} succeeded on attempt {attempt}"


@workflow.defn
class RetriesFlaky:
    @workflow.run
    async def run(self, name: str) -> str:
        return await workflow.execute_activity(
            flaky,
            name,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=200)),
        )


@activity.defn
async def heartbeats_until_canceled() -> str:
    while True:
        activity.heartbeat("working")
        await asyncio.sleep(0.2)  # raises CancelledError once a heartbeat reply says so


@workflow.defn
class CancelsItsActivity:
    @workflow.run
    async def run(self) -> str:
        handle = workflow.start_activity(
            heartbeats_until_canceled,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=2),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        await asyncio.sleep(1)
        handle.cancel()
        try:
            await handle
        except Exception as e:  # ActivityError caused by CancelledError
            return f"canceled: {type(e.cause).__name__}"
        return "not canceled"


@activity.defn
async def goes_silent() -> str:
    activity.heartbeat("started")
    await asyncio.sleep(30)
    return "should have timed out"


@workflow.defn
class SilentActivity:
    @workflow.run
    async def run(self) -> str:
        try:
            await workflow.execute_activity(
                goes_silent,
                start_to_close_timeout=timedelta(seconds=60),
                heartbeat_timeout=timedelta(seconds=1),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except Exception as e:  # ActivityError caused by TimeoutError
            return f"{type(e.cause).__name__}: {e.cause.type.name}"
        return "no timeout"


@workflow.defn
class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.done = False

    @workflow.signal
    def bump(self) -> None:
        self.count += 1

    @workflow.signal
    def finish(self) -> None:
        self.done = True

    @workflow.query
    def value(self) -> int:
        return self.count

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.done)
        return self.count


@workflow.defn
class Countdown:
    @workflow.run
    async def run(self, n: int) -> str:
        if n > 0:
            workflow.continue_as_new(n - 1)
        return "liftoff"


@workflow.defn
class FlakyTask:
    """Its first two workflow tasks fail (a bug that a deploy fixes); the third completes."""

    @workflow.run
    async def run(self) -> str:
        key = workflow.info().workflow_id
        n = shared_state.task_failures.get(key, 0)
        if n < 2:
            shared_state.task_failures[key] = n + 1
            raise RuntimeError(f"workflow task failure {n + 1}")
        return "third time lucky"


@workflow.defn
class Child:
    @workflow.run
    async def run(self, name: str) -> str:
        if name == "fail":
            raise ApplicationError("child failed on purpose", non_retryable=True)
        greeting = await workflow.execute_activity(hello, name, start_to_close_timeout=timedelta(seconds=10))
        return f"child says {greeting}"


@workflow.defn
class Parent:
    @workflow.run
    async def run(self, names: list) -> list:
        results = []
        for n in names:
            try:
                results.append(await workflow.execute_child_workflow(Child.run, n, id=f"{workflow.info().workflow_id}-{n}"))
            except Exception as e:  # ChildWorkflowError
                results.append(f"child error: {e.cause}")
        return results


@workflow.defn
class LeavesAChild:
    @workflow.run
    async def run(self, child_id: str) -> str:
        await workflow.start_child_workflow(WaitsLong.run, id=child_id)
        return "parent done"


@workflow.defn
class Messenger:
    @workflow.run
    async def run(self, counter_id: str, sleeper_id: str) -> str:
        await workflow.get_external_workflow_handle(counter_id).signal("bump")
        await workflow.get_external_workflow_handle(sleeper_id).cancel()
        try:
            await workflow.get_external_workflow_handle(f"no-such-{counter_id}").signal("bump")
        except Exception:
            return "missing target reported"
        return "missing target not reported"


@workflow.defn
class LocalSteps:
    @workflow.run
    async def run(self, name: str) -> str:
        greeting = await workflow.execute_local_activity(hello, name, start_to_close_timeout=timedelta(seconds=10))
        workflow.upsert_memo({"step": "greeted"})
        return greeting


@activity.defn
async def resumes_from_heartbeat() -> str:
    info = activity.info()
    if info.attempt == 1:
        activity.heartbeat("checkpoint-7")
        raise ApplicationError("first attempt fails after a checkpoint")
    return f"resumed from {info.heartbeat_details[0]} on attempt {info.attempt}"


@workflow.defn
class ResumesFromHeartbeat:
    @workflow.run
    async def run(self) -> str:
        return await workflow.execute_activity(
            resumes_from_heartbeat,
            start_to_close_timeout=timedelta(seconds=10),
            heartbeat_timeout=timedelta(seconds=5),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
        )


# ---- Interop with Norn's Rust SDK (compat/test_sdk_interop.py, client/examples/interop.rs) ----


@activity.defn(name="py_price")
async def py_price(order: dict) -> dict:
    return {**order, "total": len(order["items"]) * 10.0}


@workflow.defn(name="PyOrder")
class PyOrder:
    @workflow.run
    async def run(self, order: dict) -> dict:
        return await workflow.execute_activity(py_price, order, start_to_close_timeout=timedelta(seconds=10))


@workflow.defn(name="PyBytes")
class PyBytes:
    @workflow.run
    async def run(self, data: bytes) -> bytes:
        assert isinstance(data, bytes)
        return bytes(reversed(data))


@workflow.defn(name="PyNull")
class PyNull:
    @workflow.run
    async def run(self, value: None) -> None:
        assert value is None
        return None


@workflow.defn(name="PyFail")
class PyFail:
    @workflow.run
    async def run(self, why: str) -> None:
        raise ApplicationError(why, {"code": 42}, type="PyError", non_retryable=True)


# ---- Workflow updates (compat/test_updates.py) ----


@activity.defn(name="double_int")
async def double_int(n: int) -> int:
    return n * 2


@workflow.defn(name="Tally")
class Tally:
    def __init__(self) -> None:
        self.total = 0
        self.done = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self.done)
        return self.total

    @workflow.signal
    def finish(self) -> None:
        self.done = True

    @workflow.update
    async def add(self, n: int) -> int:
        self.total += await workflow.execute_activity(double_int, n, start_to_close_timeout=timedelta(seconds=10))
        return self.total

    @add.validator
    def validate_add(self, n: int) -> None:
        if n < 0:
            raise ValueError("only positive amounts")
