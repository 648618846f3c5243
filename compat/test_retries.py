"""Activity retries decided by the server's retry policy."""

import uuid

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from workflows import ResumesFromHeartbeat, RetriesFlaky, SilentActivity, flaky, goes_silent, resumes_from_heartbeat


@pytest.fixture(scope="module")
async def retry_worker(cluster):
    c = await Client.connect(cluster[1])
    tq = f"retry-{uuid.uuid4().hex[:8]}"
    async with Worker(c, task_queue=tq, workflows=[RetriesFlaky, SilentActivity, ResumesFromHeartbeat],
                      activities=[flaky, goes_silent, resumes_from_heartbeat]):
        yield tq


async def test_a_failing_activity_is_retried_until_it_succeeds(client, retry_worker):
    w = f"wf-{uuid.uuid4()}"
    assert await client.execute_workflow(RetriesFlaky.run, "x", id=w, task_queue=retry_worker) == (
        "x succeeded on attempt 3"
    )
    events = (await client.get_workflow_handle(w).fetch_history()).events
    types = [e.event_type for e in events]
    # Failed attempts leave no events; the started event tells the attempt and the last failure.
    assert types.count(EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED) == 1
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED not in types
    started = next(e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED)
    assert started.activity_task_started_event_attributes.attempt == 3
    assert started.activity_task_started_event_attributes.last_failure.message == "attempt 2 fails"
    scheduled = next(e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    policy = scheduled.activity_task_scheduled_event_attributes.retry_policy
    assert policy.backoff_coefficient == 2.0 and policy.maximum_attempts == 0


async def test_an_activity_that_stops_heartbeating_times_out(client, retry_worker):
    w = f"wf-{uuid.uuid4()}"
    result = await client.execute_workflow(SilentActivity.run, id=w, task_queue=retry_worker)
    assert result == "TimeoutError: HEARTBEAT"
    types = [e.event_type for e in (await client.get_workflow_handle(w).fetch_history()).events]
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT in types


async def test_the_next_attempt_sees_the_last_heartbeat(client, retry_worker):
    result = await client.execute_workflow(ResumesFromHeartbeat.run, id=f"wf-{uuid.uuid4()}", task_queue=retry_worker)
    assert result == "resumed from checkpoint-7 on attempt 2"
