"""Sticky execution: after its first workflow task a run's tasks go to the sticky queue of the
worker that holds it in its cache, with only the new events, as on Temporal; a worker that goes
away hands its runs to the normal queue at once, and ResetStickyTaskQueue does so by request."""

import asyncio
import uuid

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, TaskQueueKind
from temporalio.api.workflowservice.v1 import ResetStickyTaskQueueRequest
from temporalio.client import Client
from temporalio.worker import Worker

from workflows import CollectsSignals, TwoSteps, hello


def scheduled_kinds(history):
    return [
        e.workflow_task_scheduled_event_attributes.task_queue.kind
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
    ]


async def test_tasks_after_the_first_go_to_the_workers_sticky_queue(cluster):
    c = await Client.connect(cluster[0])
    tq = f"sticky-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[TwoSteps], activities=[hello]):
        h = await c.start_workflow(TwoSteps.run, "x", id=f"wf-{uuid.uuid4()}", task_queue=tq)
        assert await asyncio.wait_for(h.result(), 60) == "Hello, Hello, x!!"
    history = await h.fetch_history()
    kinds = scheduled_kinds(history)
    assert len(kinds) >= 3, kinds
    assert kinds[0] == TaskQueueKind.TASK_QUEUE_KIND_NORMAL
    assert all(k == TaskQueueKind.TASK_QUEUE_KIND_STICKY for k in kinds[1:]), kinds
    sticky = [
        e.workflow_task_scheduled_event_attributes.task_queue
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
    ][1]
    assert sticky.normal_name == tq and sticky.name != tq
    assert not any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT for e in history.events)


async def test_a_worker_that_leaves_hands_its_runs_over_without_a_sticky_timeout(cluster):
    c = await Client.connect(cluster[0])
    tq = f"sticky-leave-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[CollectsSignals]):
        h = await c.start_workflow(CollectsSignals.run, 2, id=f"wf-{uuid.uuid4()}", task_queue=tq)
        await h.signal(CollectsSignals.add, "a")
        for _ in range(200):
            events = (await h.fetch_history()).events
            if sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for e in events) >= 2:
                break
            await asyncio.sleep(0.05)
    # The first worker is gone; a second one (another cache, another sticky queue) on another node.
    c2 = await Client.connect(cluster[1])
    async with Worker(c2, task_queue=tq, workflows=[CollectsSignals]):
        await h.signal(CollectsSignals.add, "b")
        assert await asyncio.wait_for(h.result(), 60) == ["a", "b"]
    events = (await h.fetch_history()).events
    timed_out = [e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT]
    assert not timed_out, "the task waited out the sticky timeout on the departed worker's queue"


async def test_reset_sticky_task_queue(cluster):
    c = await Client.connect(cluster[0])
    tq = f"sticky-reset-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[CollectsSignals]):
        h = await c.start_workflow(CollectsSignals.run, 2, id=f"wf-{uuid.uuid4()}", task_queue=tq)
        await h.signal(CollectsSignals.add, "a")
        for _ in range(200):
            events = (await h.fetch_history()).events
            if sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for e in events) >= 2:
                break
            await asyncio.sleep(0.05)
        await c.workflow_service.reset_sticky_task_queue(
            ResetStickyTaskQueueRequest(namespace="default", execution=WorkflowExecution(workflow_id=h.id))
        )
        await h.signal(CollectsSignals.add, "b")
        assert await asyncio.wait_for(h.result(), 60) == ["a", "b"]
    kinds = scheduled_kinds(await h.fetch_history())
    assert kinds[-1] == TaskQueueKind.TASK_QUEUE_KIND_NORMAL, kinds
