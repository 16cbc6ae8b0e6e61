"""Scale: the dispatcher's due-work query on a large fleet, and one worker's memory over
many steps.

Query: a database of `rows` nodes, of which due_share are due (in `instance`, free, next
attempt reached), as many again wait in a work state (next attempt an hour away: in the
nodes_due index but not due) and the rest are idle (`new`). The reference is a database
holding only the due rows. The query runs exactly as Dispatcher.sweep runs it (its
engine, a transaction, LIMIT dispatch_batch, all rows fetched), alternating between the
two databases. Both are ANALYZEd after loading, as autovacuum would. The EXPLAIN plan
must read the nodes_due index.

Memory: one `fleet worker` (and a dispatcher) runs `rss_steps` instant steps; its VmRSS is
sampled along the way. The reference is a bare RQ SimpleWorker running as many no-op
jobs. Growth compares the RSS at the checkpoint (a fifth of the steps) with the end."""

import json
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
import redis
from rq import Queue
from sqlalchemy import text

from benchmarks.harness import (
    REPO,
    Bench,
    BenchFailed,
    Processes,
    bench_settings,
    count_in_state,
    fleet,
    fresh_database,
    insert_nodes,
    percentile,
    processes,
    rq_command,
    rss_bytes,
    scalar,
)
from benchmarks.overhead import STEPS_PER_NODE, enqueue_no_ops
from benchmarks.report import Figure, Measurement, Target
from models.queries import query
from worker.dispatcher import Dispatcher

TARGET_QUERY_MS = Target(5.0, at_most=True)
TARGET_RSS_MB = Target(150.0, at_most=True)
# "Not growing": the RSS at the end may exceed the RSS at the checkpoint by this factor.
TARGET_GROWTH = Target(1.05, at_most=True, on_ratio=True)
DUE_INDEX = "nodes_due"
SAMPLE_SECONDS = 0.2
MIB = 1024 * 1024
CHECKPOINT_SHARE = 0.2
MEMORY_TIMEOUT_SECONDS = 900.0  # only catches a stuck run


@dataclass(frozen=True)
class ScaleSizes:
    rows: int
    due_share: float
    query_runs: int
    rss_steps: int

    @property
    def due_rows(self) -> int:
        return max(1, round(self.rows * self.due_share))

    @property
    def checkpoint(self) -> int:
        return round(self.rss_steps * CHECKPOINT_SHARE)


def measure(bench: Bench, sizes: ScaleSizes) -> Measurement:
    query_figures, query_details = measure_due_query(bench, sizes)
    memory_figures, memory_details = measure_memory(bench, sizes)
    details = {"sizes": asdict(sizes), "due_query": query_details, "memory": memory_details}
    return Measurement("scale", query_figures + memory_figures, details)


# --- the due-work query ----------------------------------------------------------------
def measure_due_query(bench: Bench, sizes: ScaleSizes) -> tuple[list[Figure], dict[str, Any]]:
    with (
        fresh_database(bench, "scale") as big_url,
        fresh_database(bench, "due_only") as small_url,
    ):
        load_fleet(big_url, sizes.rows, sizes.due_rows)
        load_fleet(small_url, sizes.due_rows, sizes.due_rows, waiting=False)
        big, small = (
            Dispatcher(bench_settings(url, bench.services.redis_url), _broker(bench))
            for url in (big_url, small_url)
        )
        plan = explain(big, analyze=True)
        big_ms, small_ms = time_alternately(big, small, sizes.query_runs)
        for dispatcher in (big, small):
            dispatcher.engine.dispose()
    indexes = sorted(set(_plan_values(plan, "Index Name")))
    p50 = percentile(big_ms, 0.5)
    figures = [
        Figure(
            name=f"due query p50, {sizes.rows:,} rows, {sizes.due_rows:,} due",
            value=p50,
            unit="ms",
            reference=percentile(small_ms, 0.5),
            reference_label=f"{sizes.due_rows:,} rows, all due",
            target=TARGET_QUERY_MS,
        ),
        Figure(
            name=f"due query plan reads {DUE_INDEX}",
            value=float(DUE_INDEX in indexes),
            unit="",
            reference_label=f"indexes: {', '.join(indexes) or 'none'}",
            target=Target(1.0, at_most=False),
        ),
    ]
    details = {
        "runs": sizes.query_runs,
        "p50_ms": p50,
        "p99_ms": percentile(big_ms, 0.99),
        "reference_p50_ms": percentile(small_ms, 0.5),
        "server_execution_ms": _plan_values(plan, "Execution Time"),
        "plan_nodes": _plan_values(plan, "Node Type"),
        "indexes": indexes,
        "plan": plan,
    }
    return figures, details


def _broker(bench: Bench) -> redis.Redis:
    return redis.Redis.from_url(bench.services.redis_url)


def load_fleet(db_url: str, rows: int, due: int, *, waiting: bool = True) -> None:
    """rows nodes: `due` due ones spread evenly, as many waiting (if asked), the rest idle."""
    every = max(1, rows // due)
    with psycopg.connect(db_url, autocommit=True) as connection:
        params = {"every": every, "waiting": waiting and every > 1, "rows": rows}
        connection.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network, current_version,"
            " state)"
            " SELECT 's-' || i, 'owner-' || i %% 500, 'eu-west-1', 't3.small', 'regtest', '0.9.0',"
            "  CASE WHEN i %% %(every)s = 0 OR (%(waiting)s AND i %% %(every)s = 1)"
            "       THEN 'instance' ELSE 'new' END"
            " FROM generate_series(1, %(rows)s) i",
            params,
        )
        # An insert is a request (its next attempt is now): postpone the waiting ones as a
        # step that waits would.
        connection.execute(
            "UPDATE nodes SET next_attempt_at = now() + interval '1 hour'"
            " WHERE %(waiting)s AND id %% %(every)s = 1",
            params,
        )
        connection.execute("ANALYZE nodes")


def explain(dispatcher: Dispatcher, *, analyze: bool) -> Any:
    options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
    statement = text(f"EXPLAIN ({options}) {query('due_nodes').text}")
    with dispatcher.engine.begin() as connection:
        found = connection.execute(statement, {"limit": dispatcher.config.dispatch_batch})
        plan = found.scalar_one()
    return json.loads(plan) if isinstance(plan, str) else plan


def _plan_values(plan: Any, key: str) -> list[Any]:
    """Every value of key anywhere in an EXPLAIN (FORMAT JSON) document."""
    if isinstance(plan, dict):
        own = [plan[key]] if key in plan else []
        return own + [v for value in plan.values() for v in _plan_values(value, key)]
    if isinstance(plan, list):
        return [v for item in plan for v in _plan_values(item, key)]
    return []


def time_alternately(
    big: Dispatcher, small: Dispatcher, runs: int
) -> tuple[list[float], list[float]]:
    big_ms: list[float] = []
    small_ms: list[float] = []
    for _ in range(runs):
        big_ms.append(time_due_query(big))
        small_ms.append(time_due_query(small))
    return big_ms, small_ms


def time_due_query(dispatcher: Dispatcher) -> float:
    """Milliseconds for the due-work query, run as Dispatcher.sweep runs it."""
    began = time.perf_counter()
    with dispatcher.engine.begin() as connection:
        connection.execute(query("due_nodes"), {"limit": dispatcher.config.dispatch_batch}).all()
    return (time.perf_counter() - began) * 1000


# --- one worker's memory ------------------------------------------------------------------
Sample = tuple[int, int]  # steps done, RSS in bytes


def measure_memory(bench: Bench, sizes: ScaleSizes) -> tuple[list[Figure], dict[str, Any]]:
    fleet_samples = fleet_worker_memory(bench, sizes.rss_steps)
    rq_samples = bare_worker_memory(bench, sizes.rss_steps)
    fleet_end, rq_end = fleet_samples[-1], rq_samples[-1]
    at_checkpoint = rss_at(fleet_samples, sizes.checkpoint)
    figures = [
        Figure(
            name=f"worker RSS after {fleet_end[0]:,} steps",
            value=fleet_end[1] / MIB,
            unit="MB",
            reference=rq_end[1] / MIB,
            reference_label="bare RQ worker, no-op jobs",
            target=TARGET_RSS_MB,
        ),
        Figure(
            name=f"worker RSS growth, {sizes.checkpoint:,} -> {fleet_end[0]:,} steps",
            value=fleet_end[1] / MIB,
            unit="MB",
            reference=at_checkpoint / MIB,
            reference_label=f"at {sizes.checkpoint:,} steps",
            target=TARGET_GROWTH,
        ),
    ]
    details = {
        "fleet_samples": fleet_samples,
        "rq_samples": rq_samples,
        "rq_growth_mb": (rq_end[1] - rss_at(rq_samples, sizes.checkpoint)) / MIB,
    }
    return figures, details


def rss_at(samples: list[Sample], steps: int) -> int:
    """The RSS of the first sample taken once `steps` were done."""
    return next(rss for done, rss in samples if done >= steps)


def fleet_worker_memory(bench: Bench, steps: int) -> list[Sample]:
    nodes = math.ceil(steps / STEPS_PER_NODE)
    with fresh_database(bench, "memory") as db_url:
        config = bench_settings(db_url, bench.services.redis_url)
        with fleet(bench, config, workers=1) as started:
            [pid] = started.pids("worker")
            insert_nodes(db_url, nodes, "instance", prefix="m")

            def finished() -> bool:
                return count_in_state(db_url, "live", "m") == nodes

            return list(sample_rss(pid, lambda: worker_steps(db_url), finished, started))


def worker_steps(db_url: str) -> int:
    return int(
        scalar(
            db_url,
            "SELECT count(*) FROM node_history"
            " WHERE event = 'transition' AND actor LIKE 'fleet-worker%%'",
        )
    )


def bare_worker_memory(bench: Bench, jobs: int) -> list[Sample]:
    queue = Queue(f"bare-mem-{uuid.uuid4().hex[:8]}", connection=_broker(bench))
    enqueue_no_ops(queue, jobs)
    command = rq_command(bench.services.redis_url, queue.name, burst=False)
    with processes(bench, "bare-memory") as started:
        process = started.start("rq", command, {**os.environ, "PYTHONPATH": str(REPO)})

        def done() -> int:
            return jobs - int(queue.count)

        return list(sample_rss(process.pid, done, lambda: queue.count == 0, started))


def sample_rss(
    pid: int, done: Callable[[], int], finished: Callable[[], bool], started: Processes
) -> Iterator[Sample]:
    """(steps done, RSS) every SAMPLE_SECONDS until finished(), then once more."""
    begin = time.monotonic()
    while not finished():
        started.check_alive()
        if time.monotonic() - begin > MEMORY_TIMEOUT_SECONDS:
            raise BenchFailed(f"process {pid}: not done in time\n{started.tails()}")
        yield done(), rss_bytes(pid)
        time.sleep(SAMPLE_SECONDS)
    time.sleep(SAMPLE_SECONDS)  # the last step settles
    yield done(), rss_bytes(pid)
