"""Starting a worker process: the runtime, its step modules and an RQ worker loop.

Both worker classes take StepJobs (JSON) and run a job only if it is a run of a fleet
step; any other job is refused before anything in it is imported (worker/step_job.py)."""

from types import FrameType

from redis import Redis
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from worker.metrics import serve_metrics
from worker.runtime import CHAIN_STOP, start_runtime
from worker.settings import FleetSettings
from worker.step_job import StepJob, admit, step_queue


class ChainStoppingWorker(SimpleWorker):
    """Runs steps in the worker process. A warm shutdown also ends the step chain after
    the step in hand. (The forking Worker runs steps in a child that never hears of it:
    its chain runs to the end, at most four steps.)"""

    def execute_job(self, job: Job, queue: Queue) -> None:
        if admit(job, queue):
            super().execute_job(job, queue)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        CHAIN_STOP.set()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]  # rq is untyped here


class ForkingStepWorker(Worker):
    """Forks a child per step; refuses a job in the parent, before any fork."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        if admit(job, queue):
            super().execute_job(job, queue)


WORKER_CLASSES: dict[str, type[Worker] | type[SimpleWorker]] = {
    "simple": ChainStoppingWorker,
    "fork": ForkingStepWorker,
}


def run_worker(config: FleetSettings, burst: bool = False) -> None:
    runtime = start_runtime(config)
    serve_metrics(config.worker_metrics_port, search=True)
    redis = Redis.from_url(config.redis_url)
    queue = step_queue(redis, config.queue_name)
    worker_class = WORKER_CLASSES[config.worker_class]
    rq_worker = worker_class(
        [queue],
        connection=redis,
        name=runtime.worker.replace(":", "."),
        job_class=StepJob,
        serializer=JSONSerializer,
    )
    rq_worker.work(burst=burst, logging_level=config.log_level.upper(), with_scheduler=False)
