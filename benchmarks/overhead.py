"""Overhead: the fleet's transitions per second through a chain of instant steps, against
bare RQ running no-op jobs with the same worker class (SimpleWorker) and as many worker
processes, interleaved in rounds in one run.

Fleet: a dispatcher and W `fleet worker` processes are started and warmed up (one node per
worker goes new -> live); then N nodes are inserted in `instance` and each takes 4 steps
(instance -> key -> start -> wallet -> live; a worker that finishes one step runs the
next in the same job, the step chain). The rate is taken from node_history, between
the 10% and the 90% of those transitions. Bare RQ: 4N no-op jobs are queued, then W
`rq worker --burst` processes drain them; the rate is taken while the queue drains from
90% to 10%. Workers only (an explanatory figure, no target): as many nodes, their jobs
queued by one sweep before W `fleet worker --burst` processes start, so no dispatcher
runs while they work.

Over the same middle 80% of each run, the CPU seconds of every part (workers,
dispatcher, Postgres, Redis, the harness itself) are read (benchmarks.cpu) and reported
per step in the JSON: where the cores went, which is what explains the ratio."""

import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
import redis
from rq import Queue, Worker
from rq.job import Job
from rq.utils import as_text

from benchmarks.cpu import CpuMeter, CpuSnapshot, per_unit_ms
from benchmarks.harness import (
    REPO,
    Bench,
    BenchFailed,
    Processes,
    bench_settings,
    fleet,
    fleet_command,
    fleet_env,
    fresh_database,
    insert_nodes,
    median,
    middle_rate,
    processes,
    role_env,
    rq_command,
    scalar,
    wait_until,
)
from benchmarks.report import Figure, Measurement, Target
from benchmarks.steps import no_op
from worker.dispatcher import Dispatcher
from worker.queue import DueStep
from worker.settings import FleetSettings

STEPS_PER_NODE = 4  # instance, key, start, wallet
TARGET = Target(0.8, at_most=False, on_ratio=True)
ENQUEUE_CHUNK = 1000
LOW_SHARE, HIGH_SHARE = 0.1, 0.9
# How often progress is polled. Bare RQ's queue length costs Redis next to nothing; the
# fleet's progress is a query on one open connection, polled more slowly so that the
# harness takes little of the fleet's CPU (its rate comes from node_history, not polls).
RQ_POLL_SECONDS = 0.01
FLEET_POLL_SECONDS = 0.1
# Generous: a deadline only catches a stuck run, it never shapes a figure.
MIN_STEPS_PER_SECOND = 10.0


@dataclass(frozen=True)
class OverheadSizes:
    nodes: int
    workers: int
    rounds: int


@dataclass(frozen=True)
class Run:
    """One side of one round: its rate and the CPU it cost per step (or job), by part."""

    rate: float
    cpu_ms: dict[str, float]


def measure(bench: Bench, sizes: OverheadSizes) -> Measurement:
    fleet_runs: list[Run] = []
    rq_runs: list[Run] = []
    alone_runs: list[Run] = []
    steps = sizes.nodes * STEPS_PER_NODE
    for _ in range(sizes.rounds):  # interleaved, so drift hits all sides alike
        rq_runs.append(bare_rq_run(bench, steps, sizes.workers))
        fleet_runs.append(fleet_run(bench, sizes.nodes, sizes.workers))
        alone_runs.append(workers_only_run(bench, steps, sizes.workers))
    rq_rate = median([r.rate for r in rq_runs])
    figure = Figure(
        name=f"overhead: {sizes.nodes} nodes x {STEPS_PER_NODE} steps, {sizes.workers} workers",
        value=median([r.rate for r in fleet_runs]),
        unit="steps/s",
        reference=rq_rate,
        reference_label="bare RQ no-op",
        target=TARGET,
        note=f"median of {sizes.rounds} rounds",
    )
    alone = Figure(
        name=f"overhead, workers only: {steps} steps, jobs pre-queued, no dispatcher",
        value=median([r.rate for r in alone_runs]),
        unit="steps/s",
        reference=rq_rate,
        reference_label="bare RQ no-op",
        note="where the gap comes from: without it, the dispatcher's share",
    )
    details = {
        "sizes": asdict(sizes),
        "fleet_rates": [r.rate for r in fleet_runs],
        "rq_rates": [r.rate for r in rq_runs],
        "workers_only_rates": [r.rate for r in alone_runs],
        "fleet_cpu_ms_per_step": median_parts([r.cpu_ms for r in fleet_runs]),
        "workers_only_cpu_ms_per_step": median_parts([r.cpu_ms for r in alone_runs]),
        "rq_cpu_ms_per_job": median_parts([r.cpu_ms for r in rq_runs]),
        "fleet_cpu_ms_per_step_rounds": [r.cpu_ms for r in fleet_runs],
        "workers_only_cpu_ms_per_step_rounds": [r.cpu_ms for r in alone_runs],
        "rq_cpu_ms_per_job_rounds": [r.cpu_ms for r in rq_runs],
    }
    return Measurement("overhead", [figure, alone], details)


def median_parts(rounds: Sequence[Mapping[str, float]]) -> dict[str, float]:
    parts = sorted({part for cpu in rounds for part in cpu})
    return {p: round(median([cpu[p] for cpu in rounds if p in cpu]), 3) for p in parts}


# --- bare RQ ------------------------------------------------------------------------------
def bare_rq_run(bench: Bench, jobs: int, workers: int) -> Run:
    broker = redis.Redis.from_url(bench.services.redis_url)
    queue = Queue(f"bare-{uuid.uuid4().hex[:8]}", connection=broker)
    enqueue_no_ops(queue, jobs)
    command = rq_command(bench.services.redis_url, queue.name, burst=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    meter = CpuMeter(bench.services)
    with processes(bench, "bare-rq") as started:
        for _ in range(workers):
            started.start("rq", command, env)
        window = middle_window(
            lambda: jobs - int(queue.count),
            jobs,
            lambda: meter.snapshot({"workers": started.pids("rq")}),
            RQ_POLL_SECONDS,
            started,
        )
        wait_until(lambda: all_exited(started), 60, "bare RQ workers", None)
    return window.run()


def all_exited(started: Processes) -> bool:
    for _, process in started.started:
        if process.poll() is None:
            return False
        if process.returncode != 0:
            raise BenchFailed(f"a burst worker failed ({process.returncode})\n{started.tails()}")
    return True


def enqueue_no_ops(queue: Queue, jobs: int) -> None:
    for start in range(0, jobs, ENQUEUE_CHUNK):
        batch = [
            Queue.prepare_data(no_op, result_ttl=0) for _ in range(min(ENQUEUE_CHUNK, jobs - start))
        ]
        with queue.connection.pipeline() as pipe:
            queue.enqueue_many(batch, pipeline=pipe)
            pipe.execute()


# --- the fleet ----------------------------------------------------------------------------
def fleet_run(bench: Bench, nodes: int, workers: int) -> Run:
    steps = nodes * STEPS_PER_NODE
    meter = CpuMeter(bench.services)
    with fresh_database(bench, "overhead") as db_url:
        config = bench_settings(db_url, bench.services.redis_url)
        with (
            fleet(bench, config, workers) as started,
            psycopg.connect(db_url, autocommit=True) as watcher,
        ):
            warm_up(db_url, workers, started)
            first_id = next_node_id(db_url)
            insert_nodes(db_url, nodes, "instance", prefix="n")
            window = middle_window(
                lambda: transitions_since(watcher, first_id),
                steps,
                lambda: meter.snapshot(fleet_groups(started)),
                FLEET_POLL_SECONDS,
                started,
            )
            finish(db_url, config, nodes, started)
        rate = middle_rate(transition_moments(db_url, first_id))
    return Run(rate, window.run().cpu_ms)


def workers_only_run(bench: Bench, steps: int, workers: int) -> Run:
    """The fleet's workers alone: the same steps (nodes in `instance`, each job chaining
    through the node's 4 steps), all queued by one sweep before W `fleet worker --burst`
    processes start. What the fleet would run at if dispatching cost nothing; the gap to
    the whole fleet is the dispatcher's share."""
    meter = CpuMeter(bench.services)
    with fresh_database(bench, "workers_only") as db_url:
        config = bench_settings(db_url, bench.services.redis_url, dispatch_batch=steps)
        insert_nodes(db_url, steps // STEPS_PER_NODE, "instance", prefix="w")
        queue_all(config)
        env = role_env(fleet_env(config), db_url, "worker")
        with (
            processes(bench, "workers-only") as started,
            psycopg.connect(db_url, autocommit=True) as watcher,
        ):
            for _ in range(workers):
                started.start("worker", [*fleet_command("worker"), "--burst"], env)
            window = middle_window(
                lambda: transitions_since(watcher, 1),
                steps,
                lambda: meter.snapshot({"workers": started.pids("worker")}),
                FLEET_POLL_SECONDS,
                started,
            )
            wait_until(lambda: all_exited(started), 120, "workers-only run", None)
        rate = middle_rate(transition_moments(db_url, 1))
    return Run(rate, window.run().cpu_ms)


def queue_all(config: FleetSettings) -> None:
    dispatcher = Dispatcher(config, redis.Redis.from_url(config.redis_url))
    try:
        report = dispatcher.sweep()
    finally:
        dispatcher.engine.dispose()
    if report.enqueued != report.due:
        raise BenchFailed(f"one sweep queued {report.enqueued} of {report.due} due rows")


def finish(db_url: str, config: FleetSettings, nodes: int, started: Processes) -> None:
    """Wait for the last nodes; if they never arrive, say where they are stuck."""
    try:
        wait_until(lambda: live_count(db_url, "n") == nodes, 300, "overhead run", started)
    except BenchFailed as exc:
        raise BenchFailed(f"{exc}\nstuck: {stuck_rows(db_url, config)}") from None


def stuck_rows(db_url: str, config: FleetSettings) -> list[dict[str, Any]]:
    """A few rows that are not live yet, with what Redis holds for their current run."""
    broker = redis.Redis.from_url(config.redis_url)
    with psycopg.connect(db_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT id, state, step_run, lease_owner, held_at IS NOT NULL,"
            " next_attempt_at > now() FROM nodes WHERE state <> 'live' ORDER BY id LIMIT 5"
        ).fetchall()
    queue = Queue(config.queue_name, connection=broker)
    intermediate = queue.intermediate_queue_key
    found: list[dict[str, Any]] = [{
        "queued": queue.count,
        "intermediate": broker.llen(queue.intermediate_queue_key),
        "workers": [(w.get_state(), w.get_current_job_id()) for w in Worker.all(queue=queue)],
    }]  # fmt: skip
    for node_id, state, step_run, owner, held, later in rows:
        job_id = DueStep(node_id, state, step_run).job_id
        job = broker.hgetall(Job.key_for(job_id))
        status = {as_text(k): as_text(job[k]) for k in (b"status", b"started_at") if k in job}
        found.append({"id": node_id, "state": state, "step_run": step_run, "lease": owner,
                      "held": held, "not_yet_due": later, "job": status,
                      "in_queue": broker.lpos(queue.key, job_id),
                      "in_intermediate": broker.lpos(intermediate, job_id)})  # fmt: skip
    return found


def fleet_groups(started: Processes) -> dict[str, list[int]]:
    return {"workers": started.pids("worker"), "dispatcher": started.pids("dispatcher")}


def warm_up(db_url: str, workers: int, started: Processes) -> None:
    """One node per worker through the chain: connections open, code paths warm."""
    insert_nodes(db_url, workers, "instance", prefix="warm")
    wait_until(lambda: live_count(db_url, "warm") == workers, 60, "warm-up", started)


def live_count(db_url: str, prefix: str) -> int:
    return int(
        scalar(
            db_url,
            "SELECT count(*) FROM nodes WHERE state = 'live' AND name LIKE %s",
            (f"{prefix}-%",),
        )
    )


def next_node_id(db_url: str) -> int:
    return int(scalar(db_url, "SELECT coalesce(max(id), 0) + 1 FROM nodes"))


def transitions_since(watcher: psycopg.Connection[Any], first_id: int) -> int:
    row = watcher.execute(
        "SELECT count(*) FROM node_history"
        " WHERE event = 'transition' AND node_id >= %s AND actor LIKE 'fleet-worker%%'",
        (first_id,),
    ).fetchone()
    return int(row[0]) if row else 0


def transition_moments(db_url: str, first_id: int) -> list[float]:
    """When each worker transition of the measured nodes happened (epoch seconds)."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT extract(epoch FROM at)::float8 FROM node_history"
            " WHERE event = 'transition' AND node_id >= %s AND actor LIKE 'fleet-worker%%'",
            (first_id,),
        ).fetchall()
    return [float(row[0]) for row in rows]


# --- the measured window ------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """Progress and CPU at the low and the high mark of a run."""

    units: float
    seconds: float
    before: CpuSnapshot
    after: CpuSnapshot

    def run(self) -> Run:
        return Run(self.units / self.seconds, per_unit_ms(self.before, self.after, self.units))


def middle_window(
    done: Callable[[], int],
    total: int,
    snapshot: Callable[[], CpuSnapshot],
    poll_seconds: float,
    started: Processes,
) -> Window:
    """Poll done() until the high mark; snapshot the CPU at the low and the high mark."""
    low, high = int(LOW_SHARE * total), int(HIGH_SHARE * total)
    deadline = time.monotonic() + 60 + total / MIN_STEPS_PER_SECOND
    marks: list[tuple[int, float, CpuSnapshot]] = []
    while len(marks) < 2:
        count = done()
        if count >= (high if marks else low):
            marks.append((count, time.monotonic(), snapshot()))
            continue
        if time.monotonic() > deadline:
            raise BenchFailed(f"{count} of {total} done in time\n{started.tails()}")
        started.check_alive()
        time.sleep(poll_seconds)
    (count_low, at_low, before), (count_high, at_high, after) = marks
    if at_high <= at_low:
        raise BenchFailed("the run was too short to measure a window")
    return Window(count_high - count_low, at_high - at_low, before, after)
