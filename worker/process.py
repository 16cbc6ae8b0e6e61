"""Starting a worker process: the runtime, its step modules and an RQ worker loop."""

from types import FrameType

from redis import Redis
from rq import Queue, SimpleWorker, Worker

from worker.metrics import serve_metrics
from worker.runtime import CHAIN_STOP, start_runtime
from worker.settings import FleetSettings


class ChainStoppingWorker(SimpleWorker):
    """A warm shutdown also ends the step chain after the step in hand. (The forking
    Worker runs steps in a child that never hears of it: its chain runs to the end,
    at most four steps.)"""

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        CHAIN_STOP.set()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]  # rq is untyped here


WORKER_CLASSES: dict[str, type[Worker] | type[SimpleWorker]] = {
    "simple": ChainStoppingWorker,
    "fork": Worker,
}


def run_worker(config: FleetSettings, burst: bool = False) -> None:
    runtime = start_runtime(config)
    serve_metrics(config.worker_metrics_port, search=True)
    redis = Redis.from_url(config.redis_url)
    queue = Queue(config.queue_name, connection=redis)
    worker_class = WORKER_CLASSES[config.worker_class]
    rq_worker = worker_class([queue], connection=redis, name=runtime.worker.replace(":", "."))
    rq_worker.work(burst=burst, logging_level=config.log_level.upper(), with_scheduler=False)
