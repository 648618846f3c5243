"""Workflow updates with the Python SDK: validated, run (with an activity inside the handler),
rejected without a trace, started and awaited later, and recorded as accepted/completed events."""

import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.worker import Worker

from workflows import Tally, double_int


async def test_updates_run_and_rejections_leave_no_trace(client):
    tq = f"updates-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=tq, workflows=[Tally], activities=[double_int]):
        h = await client.start_workflow(Tally.run, id=f"tally-{uuid.uuid4()}", task_queue=tq)
        assert await h.execute_update(Tally.add, 5) == 10
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await h.execute_update(Tally.add, -1)
        assert "only positive amounts" in str(err.value.cause)
        started = await h.start_update(Tally.add, 1, wait_for_stage=WorkflowUpdateStage.ACCEPTED)
        assert await started.result() == 12
        # The same update id again returns the recorded outcome instead of running twice.
        again = await h.start_update(Tally.add, 1, id=started.id, wait_for_stage=WorkflowUpdateStage.COMPLETED)
        assert await again.result() == 12
        await h.signal(Tally.finish)
        assert await h.result() == 12
        types = [e.event_type for e in (await h.fetch_history()).events]
        assert types.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED) == 2
        assert types.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED) == 2


async def test_an_update_on_a_closed_workflow_is_refused(client):
    tq = f"updates-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=tq, workflows=[Tally], activities=[double_int]):
        h = await client.start_workflow(Tally.run, id=f"tally-{uuid.uuid4()}", task_queue=tq)
        await h.signal(Tally.finish)
        assert await h.result() == 0
        with pytest.raises(Exception) as err:
            await h.execute_update(Tally.add, 1)
        assert "completed" in str(err.value).lower()
