"""Signals and signal-with-start with the temporalio SDK."""

import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from workflows import CollectsSignals, OneActivity, hello


@pytest.fixture(scope="module")
async def signal_worker(cluster):
    c = await Client.connect(cluster[1])
    tq = f"sig-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[CollectsSignals, OneActivity], activities=[hello]):
        yield tq


async def test_signals_arrive_exactly_once_in_order(client, signal_worker):
    w = f"wf-{uuid.uuid4()}"
    h = await client.start_workflow(CollectsSignals.run, 3, id=w, task_queue=signal_worker)
    for item in ["a", "b", "c"]:
        await h.signal(CollectsSignals.add, item)
    assert await h.result() == ["a", "b", "c"]
    events = (await h.fetch_history()).events
    assert sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED for e in events) == 3
    with pytest.raises(RPCError) as e:
        await h.signal(CollectsSignals.add, "late")
    assert e.value.status == RPCStatusCode.NOT_FOUND, "a signal after close must be refused"


async def test_signal_with_start_starts_then_signals(client, signal_worker):
    w = f"wf-{uuid.uuid4()}"
    h1 = await client.start_workflow(CollectsSignals.run, 2, id=w, task_queue=signal_worker, start_signal="add", start_signal_args=["first"])
    h2 = await client.start_workflow(CollectsSignals.run, 2, id=w, task_queue=signal_worker, start_signal="add", start_signal_args=["second"])
    assert h1.result_run_id == h2.result_run_id, "signal-with-start on an open workflow must signal it, not start another"
    assert await h1.result() == ["first", "second"]
    types = [e.event_type for e in (await h1.fetch_history()).events]
    assert types[:3] == [
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    ]


async def test_signal_to_unknown_workflow_is_not_found(client):
    with pytest.raises(RPCError) as e:
        await client.get_workflow_handle("no-such-wf").signal("add", "x")
    assert e.value.status == RPCStatusCode.NOT_FOUND
