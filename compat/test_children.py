"""Child workflows: started in their own shard, results and failures reported to the parent."""

import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from workflows import Child, Parent, hello


@pytest.fixture(scope="module")
async def child_worker(cluster):
    c = await Client.connect(cluster[1])
    tq = f"child-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[Parent, Child], activities=[hello]):
        yield tq


async def test_children_report_results_and_failures(client, child_worker):
    w = f"parent-{uuid.uuid4()}"
    result = await client.execute_workflow(Parent.run, ["a", "fail", "b"], id=w, task_queue=child_worker)
    assert result == ["child says Hello, a!", "child error: child failed on purpose", "child says Hello, b!"]
    types = [e.event_type for e in (await client.get_workflow_handle(w).fetch_history()).events]
    assert types.count(EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED) == 3
    assert types.count(EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED) == 3
    assert types.count(EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED) == 2
    assert types.count(EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED) == 1
    child = await client.get_workflow_handle(f"{w}-a").describe()
    assert child.parent_id == w


async def test_an_open_child_is_terminated_when_its_parent_closes(client, cluster):
    import asyncio

    from temporalio.client import WorkflowExecutionStatus

    from workflows import LeavesAChild, WaitsLong

    c = await Client.connect(cluster[2])
    tq = f"orphan-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[LeavesAChild, WaitsLong]):
        kid = f"kid-{uuid.uuid4()}"
        assert await client.execute_workflow(LeavesAChild.run, kid, id=f"p-{uuid.uuid4()}", task_queue=tq) == "parent done"
        for _ in range(100):
            if (await client.get_workflow_handle(kid).describe()).status == WorkflowExecutionStatus.TERMINATED:
                break
            await asyncio.sleep(0.1)
        assert (await client.get_workflow_handle(kid).describe()).status == WorkflowExecutionStatus.TERMINATED


async def test_a_workflow_signals_and_cancels_other_workflows(client, cluster):
    import asyncio

    from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError

    from workflows import CancellableSleep, Counter, Messenger

    c = await Client.connect(cluster[0])
    tq = f"ext-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[Messenger, Counter, CancellableSleep]):
        counter = await client.start_workflow(Counter.run, id=f"counter-{uuid.uuid4()}", task_queue=tq)
        sleeper = await client.start_workflow(CancellableSleep.run, id=f"sleeper-{uuid.uuid4()}", task_queue=tq)
        result = await client.execute_workflow(
            Messenger.run, args=[counter.id, sleeper.id], id=f"messenger-{uuid.uuid4()}", task_queue=tq
        )
        assert result == "missing target reported"
        assert await counter.query(Counter.value) == 1
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(sleeper.result(), 30)
        assert (await sleeper.describe()).status == WorkflowExecutionStatus.CANCELED
        await counter.signal(Counter.finish)
