"""ListWorkflowExecutions and CountWorkflowExecutions with Temporal's filter syntax."""

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from workflows import OneActivity, WaitsLong, hello


async def test_list_and_count_with_filters(client, cluster):
    c = await Client.connect(cluster[1])
    tq = f"vis-{uuid.uuid4().hex[:8]}"
    before = (datetime.now(timezone.utc) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    async with Worker(c, task_queue=tq, workflows=[OneActivity, WaitsLong], activities=[hello]):
        done = []
        for i in range(2):
            w = f"vis-done-{i}-{uuid.uuid4()}"
            await client.execute_workflow(OneActivity.run, "x", id=w, task_queue=tq)
            done.append(w)
        waiting = await client.start_workflow(WaitsLong.run, id=f"vis-wait-{uuid.uuid4()}", task_queue=tq)

        async def ids(query, **kw):
            return [w.id async for w in client.list_workflows(query, **kw)]

        assert sorted(await ids(f"TaskQueue = '{tq}'")) == sorted(done + [waiting.id])
        assert await ids(f"TaskQueue = '{tq}' AND ExecutionStatus = 'Running'") == [waiting.id]
        assert await ids(f"TaskQueue = '{tq}' AND ExecutionStatus = 'Completed' ORDER BY StartTime ASC") == done
        assert await ids(f"TaskQueue = '{tq}' AND ExecutionStatus = 'Completed'") == done[::-1], "newest first"
        assert sorted(
            await ids(f"TaskQueue = '{tq}' AND WorkflowType IN ('OneActivity') AND StartTime > '{before}'")
        ) == sorted(done)
        assert await ids(f"TaskQueue = '{tq}' AND (WorkflowId = '{done[0]}' OR CloseTime IS NULL) "
                         "ORDER BY StartTime") == [done[0], waiting.id]
        assert len(await ids(f"TaskQueue = '{tq}'", page_size=1)) == 3, "paging returns every run once"

        listed = [w async for w in client.list_workflows(f"WorkflowId = '{done[0]}'")]
        assert listed[0].status == WorkflowExecutionStatus.COMPLETED
        assert listed[0].workflow_type == "OneActivity"
        assert listed[0].task_queue == tq
        assert listed[0].close_time is not None

        assert (await client.count_workflows(f"TaskQueue = '{tq}'")).count == 3
        grouped = await client.count_workflows(f"TaskQueue = '{tq}' GROUP BY ExecutionStatus")
        assert sorted((g.group_values[0], g.count) for g in grouped.groups) == [("Completed", 2), ("Running", 1)]

        with pytest.raises(RPCError) as e:
            await ids("NoSuchField = 'x'")
        assert e.value.status == RPCStatusCode.INVALID_ARGUMENT
        assert "NoSuchField" in e.value.message
        await waiting.terminate("test done")
