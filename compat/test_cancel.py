"""Cancel and terminate with the temporalio SDK."""

import asyncio
import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import CancelledError, TerminatedError
from temporalio.worker import Worker

from workflows import CancellableSleep, CancelsItsActivity, WaitsLong, heartbeats_until_canceled


@pytest.fixture(scope="module")
async def cancel_worker(cluster):
    c = await Client.connect(cluster[2])
    tq = f"cancel-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[CancellableSleep, WaitsLong, CancelsItsActivity],
                      activities=[heartbeats_until_canceled]):
        yield tq


async def test_cancel_reaches_the_workflow(client, cancel_worker):
    h = await client.start_workflow(CancellableSleep.run, id=f"wf-{uuid.uuid4()}", task_queue=cancel_worker)
    await asyncio.sleep(0.5)
    await h.cancel()
    with pytest.raises(WorkflowFailureError) as e:
        await asyncio.wait_for(h.result(), 60)
    assert isinstance(e.value.cause, CancelledError)
    assert (await h.describe()).status == WorkflowExecutionStatus.CANCELED
    types = [e.event_type for e in (await h.fetch_history()).events]
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED in types
    assert EventType.EVENT_TYPE_TIMER_CANCELED in types
    assert types[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED


async def test_terminate_closes_at_once(client, cancel_worker):
    h = await client.start_workflow(WaitsLong.run, id=f"wf-{uuid.uuid4()}", task_queue=cancel_worker)
    await h.terminate("operator says so")
    with pytest.raises(WorkflowFailureError) as e:
        await h.result()
    assert isinstance(e.value.cause, TerminatedError)
    d = await h.describe()
    assert d.status == WorkflowExecutionStatus.TERMINATED
    types = [e.event_type for e in (await h.fetch_history()).events]
    assert types[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED
    assert types.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED) == 1


async def test_a_workflow_cancels_its_running_activity(client, cancel_worker):
    h = await client.start_workflow(CancelsItsActivity.run, id=f"wf-{uuid.uuid4()}", task_queue=cancel_worker)
    assert await asyncio.wait_for(h.result(), 60) == "canceled: CancelledError"
    types = [e.event_type for e in (await h.fetch_history()).events]
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED in types
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED in types
    assert types.index(EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED) < types.index(
        EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED
    )
