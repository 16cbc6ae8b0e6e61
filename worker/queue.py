"""The RQ side of dispatch: one job per run of a step, enqueued at most once.

The job id names the run (node, state, step_run). RQ's `unique=True` enqueue is atomic
in Redis, so any number of dispatchers and sweeps queue a run once. A job of that id
that can no longer run (failed, or started by a worker that died before its claim) is
replaced."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis import Redis
from rq import Queue
from rq.exceptions import DuplicateJobError
from rq.job import Job, JobStatus

from worker.runtime import run_step

LIVE_STATUSES = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}
FAILED_JOB_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class DueStep:
    node_id: int
    state: str
    step_run: int

    @property
    def job_id(self) -> str:
        return f"node-{self.node_id}-{self.state}-{self.step_run}"


class StepQueue:
    def __init__(self, redis: Redis, name: str, step_timeout: int, lease_seconds: float) -> None:
        self.queue = Queue(name, connection=redis)
        self._step_timeout = step_timeout
        self._claim_grace = timedelta(seconds=lease_seconds)

    def enqueue(self, step: DueStep) -> bool:
        """Queue the step's job unless a live job for the same run exists. True if queued."""
        try:
            self._enqueue(step)
            return True
        except DuplicateJobError:
            pass
        existing = Job.fetch(step.job_id, connection=self.queue.connection)
        if self._still_runs(existing):
            return False
        existing.delete()
        try:
            self._enqueue(step)
            return True
        except DuplicateJobError:  # another dispatcher replaced it first
            return False

    def _enqueue(self, step: DueStep) -> None:
        self.queue.enqueue_call(
            run_step,
            args=(step.node_id, step.state, step.step_run),
            job_id=step.job_id,
            description=f"{step.state} step of node {step.node_id} (run {step.step_run})",
            timeout=self._step_timeout,
            # The database holds the outcome; a finished job need not linger.
            result_ttl=0,
            failure_ttl=FAILED_JOB_TTL_SECONDS,
            unique=True,
        )

    def _still_runs(self, job: Job) -> bool:
        status = job.get_status()
        if status in LIVE_STATUSES:
            return True
        if status == JobStatus.STARTED:
            # A started job claims its row within milliseconds; one that has not after a
            # whole lease belongs to a worker that died before its claim.
            started = job.started_at
            return started is not None and datetime.now(UTC) - _aware(started) < self._claim_grace
        return False


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
