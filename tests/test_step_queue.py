"""StepQueue.enqueue, which the benchmarks made faster and found two races in: a run whose
job lives is never queued twice, a job that is gone or can no longer run is replaced,
a job that vanishes while the dispatcher looks at it (a worker finished it) is not an
error, and a run seen queued is trusted only for the recheck window. Real Redis; no
Postgres needed."""

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.utils import utcformat

from worker.queue import DueStep, StepQueue
from worker.step_job import StepJob

LEASE_SECONDS = 60.0
STEP = DueStep(node_id=7, state="key", step_run=3)


@pytest.fixture
def steps(redis_url: str) -> StepQueue:
    return StepQueue(
        redis.Redis.from_url(redis_url), f"q-{uuid.uuid4().hex[:8]}", 60, LEASE_SECONDS
    )


def job_hash(steps: StepQueue) -> str:
    return Job.key_for(STEP.job_id)


def queued(steps: StepQueue) -> list[str]:
    return list(Queue(steps.queue.name, connection=steps.queue.connection).get_job_ids())


def test_a_queued_run_is_not_queued_again(steps: StepQueue) -> None:
    assert steps.enqueue(STEP)
    assert not steps.enqueue(STEP)
    assert queued(steps) == [STEP.job_id]


def test_a_finished_and_deleted_job_is_replaced(steps: StepQueue) -> None:
    assert steps.enqueue(STEP)
    StepJob.fetch(STEP.job_id, connection=steps.queue.connection).delete()
    assert steps.enqueue(STEP)
    assert queued(steps) == [STEP.job_id]


def test_a_failed_job_is_replaced(steps: StepQueue) -> None:
    assert steps.enqueue(STEP)
    steps.queue.connection.hset(job_hash(steps), "status", JobStatus.FAILED.value)
    assert steps.enqueue(STEP)
    assert StepJob.fetch(STEP.job_id, connection=steps.queue.connection).get_status() == "queued"


@pytest.mark.parametrize(("started_ago", "replaced"), [(1.0, False), (2 * LEASE_SECONDS, True)])
def test_a_started_job_is_replaced_only_after_a_whole_lease(
    steps: StepQueue, started_ago: float, replaced: bool
) -> None:
    """A worker that died before its claim leaves a started job that nothing will run."""
    assert steps.enqueue(STEP)
    started = datetime.now(UTC) - timedelta(seconds=started_ago)
    steps.queue.connection.hset(
        job_hash(steps),
        mapping={"status": JobStatus.STARTED.value, "started_at": utcformat(started)},
    )
    assert steps.enqueue(STEP) is replaced


def test_a_job_that_vanishes_while_looked_at_is_queued_again(
    steps: StepQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cheap status read sees the job, the unique enqueue is refused, and by the
    time the dispatcher fetches it a worker has finished and deleted it."""
    assert steps.enqueue(STEP)
    steps.queue.connection.hset(job_hash(steps), "status", JobStatus.FAILED.value)
    real_fetch = StepJob.fetch

    def fetch_after_delete(job_id: str, connection: redis.Redis) -> Job:
        real_fetch(job_id, connection=connection).delete()
        return real_fetch(job_id, connection=connection)

    monkeypatch.setattr(StepJob, "fetch", staticmethod(fetch_after_delete))
    assert steps.enqueue(STEP)
    assert queued(steps) == [STEP.job_id]


def test_a_run_seen_queued_is_trusted_only_for_the_recheck_window(redis_url: str) -> None:
    steps = StepQueue(
        redis.Redis.from_url(redis_url), f"q-{uuid.uuid4().hex[:8]}", 60, LEASE_SECONDS, 0.5
    )
    assert steps.enqueue(STEP)
    steps.queue.connection.flushdb()  # Redis lost: the dispatcher cannot know yet
    assert not steps.enqueue(STEP)
    assert queued(steps) == []
    time.sleep(0.6)
    assert steps.enqueue(STEP)  # checked again, found missing, queued anew
    assert queued(steps) == [STEP.job_id]
