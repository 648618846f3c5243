"""The core workflow loop with the real temporalio SDK against a real 3-node Norn cluster."""

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.worker import Worker

from workflows import (
    CatchesActivityFailure,
    Fails,
    OneActivity,
    ParallelActivities,
    TimerThenActivity,
    WaitsLong,
    always_fails,
    hello,
)

ALL_WORKFLOWS = [OneActivity, TimerThenActivity, ParallelActivities, CatchesActivityFailure, Fails, WaitsLong]
ALL_ACTIVITIES = [hello, always_fails]


def wid() -> str:
    return f"wf-{uuid.uuid4()}"


@pytest.fixture(scope="module")
async def worker(cluster):
    """A worker connected to node 3; tests start workflows through node 1."""
    c = await Client.connect(cluster[2])
    tq = f"tq-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=ALL_WORKFLOWS, activities=ALL_ACTIVITIES):
        yield tq


async def history_types(client: Client, workflow_id: str) -> list:
    h = await client.get_workflow_handle(workflow_id).fetch_history()
    ids = [e.event_id for e in h.events]
    assert ids == list(range(1, len(ids) + 1)), f"event ids not contiguous: {ids}"
    return [e.event_type for e in h.events]


async def test_one_activity(client, worker):
    w = wid()
    assert await client.execute_workflow(OneActivity.run, "Norn", id=w, task_queue=worker) == "Hello, Norn!"
    types = await history_types(client, w)
    assert types == [
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED,
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    ]


async def test_timer_never_fires_early(client, worker):
    w = wid()
    assert await client.execute_workflow(TimerThenActivity.run, "timer", id=w, task_queue=worker) == "Hello, timer!"
    h = await client.get_workflow_handle(w).fetch_history()
    started = next(e for e in h.events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED)
    fired = next(e for e in h.events if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED)
    elapsed = fired.event_time.ToMilliseconds() - started.event_time.ToMilliseconds()
    assert elapsed >= 1500, f"timer fired after {elapsed} ms, before its 1500 ms deadline"


async def test_parallel_activities(client, worker):
    r = await client.execute_workflow(ParallelActivities.run, 5, id=wid(), task_queue=worker)
    assert r == [f"Hello, n{i}!" for i in range(5)]


async def test_activity_failure_reaches_the_workflow(client, worker):
    r = await client.execute_workflow(CatchesActivityFailure.run, id=wid(), task_queue=worker)
    assert r.startswith("caught:") and "boom" in r


async def test_workflow_failure_reaches_the_client(client, worker):
    w = wid()
    with pytest.raises(WorkflowFailureError) as e:
        await client.execute_workflow(Fails.run, id=w, task_queue=worker)
    assert "deliberate failure" in str(e.value.cause)
    d = await client.get_workflow_handle(w).describe()
    assert d.status == WorkflowExecutionStatus.FAILED
    types = await history_types(client, w)
    assert types[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED


async def test_duplicate_start_is_rejected_and_request_ids_deduplicate(client, worker):
    w = wid()
    h = await client.start_workflow(WaitsLong.run, id=w, task_queue=worker)
    with pytest.raises(WorkflowAlreadyStartedError):
        await client.start_workflow(WaitsLong.run, id=w, task_queue=worker)
    d = await h.describe()
    assert d.status == WorkflowExecutionStatus.RUNNING
    assert d.run_id == h.result_run_id


async def test_describe_completed_run(client, worker):
    w = wid()
    await client.execute_workflow(OneActivity.run, "d", id=w, task_queue=worker)
    d = await client.get_workflow_handle(w).describe()
    assert d.status == WorkflowExecutionStatus.COMPLETED
    assert d.workflow_type == "OneActivity"
    assert d.task_queue == worker
    assert d.close_time is not None and d.close_time >= d.start_time


async def test_unknown_workflow_is_not_found(client):
    from temporalio.service import RPCError, RPCStatusCode

    with pytest.raises(RPCError) as e:
        await client.get_workflow_handle("no-such-workflow").describe()
    assert e.value.status == RPCStatusCode.NOT_FOUND


async def test_workflow_id_reuse_and_conflict_policies(client, worker):
    from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

    w = wid()
    first = await client.start_workflow(WaitsLong.run, id=w, task_queue=worker)
    same = await client.start_workflow(
        WaitsLong.run, id=w, task_queue=worker, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING
    )
    assert same.result_run_id == first.result_run_id, "UseExisting returns the open run"
    second = await client.start_workflow(
        WaitsLong.run, id=w, task_queue=worker, id_conflict_policy=WorkflowIDConflictPolicy.TERMINATE_EXISTING
    )
    assert second.result_run_id != first.result_run_id
    assert (await client.get_workflow_handle(w, run_id=first.result_run_id).describe()).status == (
        WorkflowExecutionStatus.TERMINATED
    )
    await second.terminate("done")
    with pytest.raises(WorkflowAlreadyStartedError):
        await client.start_workflow(
            WaitsLong.run, id=w, task_queue=worker, id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE
        )
    # The last run was terminated, not completed: "failed only" lets a new run start.
    third = await client.start_workflow(
        WaitsLong.run, id=w, task_queue=worker, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY
    )
    await third.terminate("done")

    done = wid()
    await client.execute_workflow(OneActivity.run, "x", id=done, task_queue=worker)
    with pytest.raises(WorkflowAlreadyStartedError):
        await client.start_workflow(
            OneActivity.run, "x", id=done, task_queue=worker,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        )
    again = await client.start_workflow(OneActivity.run, "y", id=done, task_queue=worker)
    assert await again.result() == "Hello, y!", "the default policy allows a new run after close"


async def test_a_run_past_its_timeout_times_out(client, worker):
    from temporalio.exceptions import TimeoutError as TemporalTimeoutError

    w = wid()
    h = await client.start_workflow(WaitsLong.run, id=w, task_queue=worker, run_timeout=timedelta(seconds=2))
    with pytest.raises(WorkflowFailureError) as e:
        await asyncio.wait_for(h.result(), 30)
    assert isinstance(e.value.cause, TemporalTimeoutError)
    assert (await h.describe()).status == WorkflowExecutionStatus.TIMED_OUT
    assert (await history_types(client, w))[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT


async def test_history_pages(client, worker):
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest

    w = wid()
    await client.execute_workflow(ParallelActivities.run, 4, id=w, task_queue=worker)
    everything = [e.event_id for e in (await client.get_workflow_handle(w).fetch_history()).events]
    paged, token, pages = [], b"", 0
    while True:
        r = await client.workflow_service.get_workflow_execution_history(
            GetWorkflowExecutionHistoryRequest(
                namespace="default", execution=WorkflowExecution(workflow_id=w), maximum_page_size=3,
                next_page_token=token,
            )
        )
        paged += [e.event_id for e in r.history.events]
        pages += 1
        token = r.next_page_token
        if not token:
            break
    assert paged == everything
    assert pages == -(-len(everything) // 3), "pages of 3 events"


async def test_continue_as_new_chains_runs(client, cluster):
    from workflows import Countdown

    c = await Client.connect(cluster[2])
    tq = f"can-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[Countdown]):
        w = wid()
        h = await client.start_workflow(Countdown.run, 3, id=w, task_queue=tq)
        assert await h.result() == "liftoff", "result() follows the chain of runs"
        first = await client.get_workflow_handle(w, run_id=h.result_run_id).describe()
        assert first.status == WorkflowExecutionStatus.CONTINUED_AS_NEW
        last_event = (await client.get_workflow_handle(w, run_id=h.result_run_id).fetch_history()).events[-1]
        assert last_event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        nxt = last_event.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        started = (await client.get_workflow_handle(w, run_id=nxt).fetch_history()).events[0]
        assert started.workflow_execution_started_event_attributes.continued_execution_run_id == h.result_run_id
        assert started.workflow_execution_started_event_attributes.first_execution_run_id == h.result_run_id
        current = await client.get_workflow_handle(w).describe()
        assert current.status == WorkflowExecutionStatus.COMPLETED
        runs = [x async for x in client.list_workflows(f"WorkflowId = '{w}'")]
        assert len(runs) == 4
        assert sorted(r.status.name for r in runs) == ["COMPLETED"] + ["CONTINUED_AS_NEW"] * 3


async def test_memo_is_stored_and_described(client, worker):
    w = wid()
    h = await client.start_workflow(WaitsLong.run, id=w, task_queue=worker, memo={"owner": "team-a", "n": 3})
    d = await h.describe()
    assert await d.memo() == {"owner": "team-a", "n": 3}
    await h.terminate("done")


async def test_local_activities_record_markers(client, cluster):
    from workflows import LocalSteps

    c = await Client.connect(cluster[0])
    tq = f"local-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[LocalSteps], activities=[hello]):
        w = wid()
        assert await client.execute_workflow(LocalSteps.run, "la", id=w, task_queue=tq) == "Hello, la!"
        types = await history_types(client, w)
        assert EventType.EVENT_TYPE_MARKER_RECORDED in types
        assert EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED in types
        assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in types, "local activities never reach the server"
