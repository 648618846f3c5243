"""Queries: idle, right after signals (a workflow task pending), failing, and on closed runs."""

import asyncio
import uuid

import pytest
from temporalio.client import Client, WorkflowQueryFailedError, WorkflowQueryRejectedError
from temporalio.common import QueryRejectCondition
from temporalio.worker import Worker

from workflows import Counter


@pytest.fixture(scope="module")
async def query_worker(cluster):
    c = await Client.connect(cluster[2])
    tq = f"query-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[Counter]):
        yield tq


async def test_query_an_idle_workflow(client, query_worker):
    h = await client.start_workflow(Counter.run, id=f"wf-{uuid.uuid4()}", task_queue=query_worker)
    await h.signal(Counter.bump)
    await asyncio.sleep(0.5)
    assert await h.query(Counter.value) == 1


async def test_a_query_sees_every_signal_sent_before_it(client, query_worker):
    h = await client.start_workflow(Counter.run, id=f"wf-{uuid.uuid4()}", task_queue=query_worker)
    for i in range(1, 6):
        await h.signal(Counter.bump)
        # The signal's workflow task is pending or running: the query waits for it.
        assert await h.query(Counter.value) == i


async def test_unknown_query_fails_and_closed_runs_answer(client, query_worker):
    h = await client.start_workflow(Counter.run, id=f"wf-{uuid.uuid4()}", task_queue=query_worker)
    await h.signal(Counter.bump)
    with pytest.raises(WorkflowQueryFailedError):
        await h.query("no-such-query")
    await h.signal(Counter.finish)
    assert await h.result() == 1
    assert await h.query(Counter.value) == 1, "a closed run is queried by replaying its history"
    with pytest.raises(WorkflowQueryRejectedError):
        await h.query(Counter.value, reject_condition=QueryRejectCondition.NOT_OPEN)
