"""Retention deletes closed runs; DeleteWorkflowExecution deletes one at once."""

import asyncio
import uuid

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from workflows import OneActivity, WaitsLong, hello


async def gone(handle) -> bool:
    try:
        await handle.describe()
        return False
    except RPCError as e:
        assert e.status == RPCStatusCode.NOT_FOUND, e
        return True


async def test_closed_runs_are_deleted_after_the_namespace_retention(client, cluster):
    ns = f"short-{uuid.uuid4().hex[:8]}"
    await client.workflow_service.register_namespace(
        RegisterNamespaceRequest(namespace=ns, workflow_execution_retention_period=Duration(seconds=1))
    )
    c = await Client.connect(cluster[0], namespace=ns)
    tq = f"ret-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[OneActivity, WaitsLong], activities=[hello]):
        closed = await c.start_workflow(OneActivity.run, "x", id=f"wf-{uuid.uuid4()}", task_queue=tq)
        open_ = await c.start_workflow(WaitsLong.run, id=f"wf-{uuid.uuid4()}", task_queue=tq)
        assert await closed.result() == "Hello, x!"
        assert not await gone(closed)
        for _ in range(120):
            if await gone(closed):
                break
            await asyncio.sleep(0.25)
        assert await gone(closed), "closed run still there 30 s after a 1 s retention"
        assert not await gone(open_), "retention never touches open runs"
        await open_.terminate("done")


async def test_delete_workflow_execution(client, cluster):
    c = await Client.connect(cluster[1])
    tq = f"del-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[WaitsLong]):
        w = f"wf-{uuid.uuid4()}"
        h = await client.start_workflow(WaitsLong.run, id=w, task_queue=tq)
        # Terminates the open run, then deletes it.
        await client.workflow_service.delete_workflow_execution(
            DeleteWorkflowExecutionRequest(
                namespace="default", workflow_execution=WorkflowExecution(workflow_id=w, run_id=h.result_run_id)
            )
        )
        assert await gone(h)
        with pytest.raises(RPCError) as e:
            await client.get_workflow_handle(w).fetch_history()
        assert e.value.status == RPCStatusCode.NOT_FOUND
        again = await client.start_workflow(WaitsLong.run, id=w, task_queue=tq)
        assert again.result_run_id != h.result_run_id
        await again.terminate("done")
