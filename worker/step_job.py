"""What a worker takes from Redis: one function, with ids, encoded as JSON.

Anyone who can write to Redis can queue a job, and RQ would import whatever function a
job names, import and call the callbacks it names, send its webhooks and, with its
default serializer, unpickle its payload: each of those runs code or reaches out on the
job's say-so. So the fleet's jobs are JSON (never pickle, anywhere), name
`worker.runtime.run_step` with (node id, state, step run) and carry nothing else. A
worker refuses any other job before decoding more than JSON or importing anything, and
moves it to the failed registry with the reason; StepJob itself also resolves no other
function and has no callbacks or webhooks, for RQ's own code paths (registry cleanup
calls the failure callback of every abandoned job)."""

import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from redis import Redis
from rq import Queue
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from worker.runtime import run_step

log = structlog.get_logger()

STEP_FUNCTION = f"{run_step.__module__}.{run_step.__qualname__}"
FAILED_JOB_TTL_SECONDS = 7 * 24 * 3600
# RQ 3.0 keeps the callback names it would import on the job as these attributes.
CALLBACK_ATTRIBUTES = ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name")
STEP_ARGUMENTS = "(node_id: int, state: str, step_run: int)"


class RefusedJob(Exception):
    """The job is not a fleet step; the reason says why."""


class StepJob(Job):
    """An RQ job that is JSON whatever serializer it is handed, whose function can only
    be run_step, and that has no callbacks or webhooks."""

    # Set when RQ could not parse the job's hash: the worker refuses such a job.
    unreadable: str | None = None

    def __init__(
        self, id: str | None = None, connection: Redis | None = None, serializer: object = None
    ) -> None:
        super().__init__(id, connection, serializer=JSONSerializer)

    def restore(self, raw_data: Any) -> None:
        # A field RQ cannot parse (result_ttl=abc) raised out of the dequeue and ended the
        # worker, and again after each restart: keep what was read, so it can be refused.
        try:
            super().restore(raw_data)
        except NoSuchJobError:
            raise
        except Exception as exc:  # noqa: BLE001  # whatever a garbled hash makes RQ raise
            self.unreadable = f"{type(exc).__name__}: {' '.join(str(exc).split())[:100]}"

    @property
    def func(self) -> Callable[..., Any]:
        problem = refusal(self)
        if problem is not None:
            raise RefusedJob(problem)
        return run_step

    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: str | JobStatus, *, exc_string: str | None = None) -> None:
        return None


def step_queue(redis: Redis, name: str) -> Queue:
    """The fleet's queue: StepJobs, JSON."""
    return Queue(name, connection=redis, job_class=StepJob, serializer=JSONSerializer)


def refusal(job: Job) -> str | None:
    """Why this job is not a run of a fleet step, or None if it is one."""
    if isinstance(job, StepJob) and job.unreadable:
        return f"its hash is unreadable ({job.unreadable})"
    try:
        func_name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except DeserializationError:
        return "its payload is not JSON (rq's default pickle?): nothing in it was decoded"
    if func_name != STEP_FUNCTION or instance is not None:
        return f"it names {str(func_name)[:100]!r}: a worker runs only {STEP_FUNCTION}"
    if kwargs != {} or not _step_arguments(args):
        return f"its arguments are not {STEP_ARGUMENTS}"
    if any(getattr(job, name, None) for name in CALLBACK_ATTRIBUTES) or job.webhooks:
        return "it carries callbacks or webhooks, which fleet steps never have"
    return None


def _step_arguments(args: object) -> bool:
    if not isinstance(args, list | tuple) or len(args) != 3:
        return False
    node_id, state, step_run = args
    # bool is an int to Python, not to the fleet.
    return type(node_id) is int and isinstance(state, str) and type(step_run) is int


def refuse(job: Job, queue: Queue, reason: str) -> None:
    """Out of the queue and into the failed registry, without running or saving the job:
    the fields are written directly, so nothing of the job is decoded or encoded again."""
    log.error("job refused: not a fleet step", job_id=job.id, queue=queue.name, reason=reason)
    with queue.connection.pipeline() as pipeline:
        pipeline.hset(job.key, mapping={
            "status": JobStatus.FAILED.value,
            "ended_at": utcformat(datetime.now(UTC)),
            "exc_info": zlib.compress(f"refused by the fleet worker: {reason}".encode()),
        })  # fmt: skip
        pipeline.expire(job.key, FAILED_JOB_TTL_SECONDS)
        pipeline.zadd(queue.failed_job_registry.key, {job.id: time.time() + FAILED_JOB_TTL_SECONDS})
        pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
        pipeline.execute()


def admit(job: Job, queue: Queue) -> bool:
    """True if the worker may run the job; a job it may not is refused here."""
    reason = refusal(job)
    if reason is None:
        return True
    refuse(job, queue, reason)
    return False
