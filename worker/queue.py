"""The RQ side of dispatch: one job per run of a step, enqueued at most once.

The job id names the run (node, state, step_run). RQ's `unique=True` enqueue is atomic
in Redis, so any number of dispatchers and sweeps queue a run once. A job of that id
that can no longer run (failed, or started by a worker that died before its claim) is
replaced. Jobs are JSON, naming run_step with ids only (worker/step_job.py)."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis import Redis
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.utils import as_text, str_to_date

from worker.runtime import run_step
from worker.step_job import FAILED_JOB_TTL_SECONDS, StepJob, step_queue

LIVE_STATUSES = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


@dataclass(frozen=True)
class DueStep:
    node_id: int
    state: str
    step_run: int

    @property
    def job_id(self) -> str:
        return f"node-{self.node_id}-{self.state}-{self.step_run}"


class StepQueue:
    def __init__(
        self,
        redis: Redis,
        name: str,
        step_timeout: int,
        lease_seconds: float,
        recheck_seconds: float = 0.0,
    ) -> None:
        self.queue = step_queue(redis, name)
        self._step_timeout = step_timeout
        self._claim_grace = timedelta(seconds=lease_seconds)
        self._recheck_seconds = recheck_seconds
        # Job id -> when this process last saw the run queued, oldest first.
        self._known: dict[str, float] = {}

    def enqueue(self, step: DueStep) -> bool:
        """Queue the step's job unless a live job for the same run exists. True if queued.

        A row stays due until a worker claims it, so under load most rows a sweep sees
        were queued moments ago: for recheck_seconds those are trusted without asking
        Redis. Asking for each on every sweep cost the dispatcher more CPU per step than
        the workers spent running it. After that window the run is checked again, which
        is how a flushed Redis or a job lost with its worker gets queued anew."""
        if self._known_queued(step.job_id):
            return False
        queued = self._enqueue_unless_live(step)
        self._known[step.job_id] = time.monotonic()
        return queued

    def _known_queued(self, job_id: str) -> bool:
        horizon = time.monotonic() - self._recheck_seconds
        while self._known:
            oldest = next(iter(self._known))
            if self._known[oldest] >= horizon:
                break
            del self._known[oldest]
        return job_id in self._known

    def _enqueue_unless_live(self, step: DueStep) -> bool:
        # The common answer costs one HMGET, not a Job built and encoded for an enqueue
        # that Redis refuses. The atomic unique enqueue below still decides every race.
        if self._still_runs(*self._status(step.job_id)):
            return False
        try:
            self._enqueue(step)
            return True
        except DuplicateJobError:
            pass
        existing = self._fetch(step.job_id)
        if existing is not None:
            # The status read with the job: asking Redis again could find the job gone (a
            # worker finishing it deletes it) and gains nothing.
            if self._still_runs(existing.get_status(refresh=False), existing.started_at):
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

    def _status(self, job_id: str) -> tuple[JobStatus | None, datetime | None]:
        """The job's status and start, straight from its hash (None, None: no such job)."""
        raw_status, raw_started = self.queue.connection.hmget(
            Job.key_for(job_id), ["status", "started_at"]
        )
        status = JobStatus(as_text(raw_status)) if raw_status else None
        started = str_to_date(raw_started) if raw_started else None
        return status, started

    def _fetch(self, job_id: str) -> Job | None:
        try:
            return StepJob.fetch(job_id, connection=self.queue.connection)
        except NoSuchJobError:
            # It finished between the two calls (result_ttl=0 deletes it). Queuing the run
            # again is safe: if it was done, the copy's claim finds the row changed.
            return None

    def _still_runs(self, status: JobStatus | None, started: datetime | None) -> bool:
        if status in LIVE_STATUSES:
            return True
        if status == JobStatus.STARTED:
            # A started job claims its row within milliseconds; one that has not after a
            # whole lease belongs to a worker that died before its claim.
            return started is not None and datetime.now(UTC) - _aware(started) < self._claim_grace
        return False


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
