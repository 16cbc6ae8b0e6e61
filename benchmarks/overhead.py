"""Overhead: the fleet's transitions per second through a chain of instant steps, against
bare RQ running no-op jobs with the same worker class (SimpleWorker) and as many worker
processes, interleaved in rounds in one run.

Fleet: a dispatcher and W `fleet worker` processes are started and warmed up (one node per
worker goes new -> live); then N nodes are inserted in `instance` and each takes 4 steps
(instance -> key -> start -> wallet -> live). The rate is taken from node_history, between
the 10% and the 90% of those transitions. Bare RQ: 4N no-op jobs are queued, then W
`rq worker --burst` processes drain them; the rate is taken while the queue drains from
90% to 10% (benchmarks.worker_class.drain_rate)."""

import os
import uuid
from dataclasses import asdict, dataclass

import psycopg
import redis
from rq import Queue

from benchmarks.harness import (
    REPO,
    Bench,
    Processes,
    bench_settings,
    count_in_state,
    fleet,
    fresh_database,
    insert_nodes,
    median,
    middle_rate,
    rq_command,
    scalar,
    wait_until,
)
from benchmarks.report import Figure, Measurement, Target
from benchmarks.steps import no_op
from benchmarks.worker_class import drain_rate

STEPS_PER_NODE = 4  # instance, key, start, wallet
TARGET = Target(0.8, at_most=False, on_ratio=True)
ENQUEUE_CHUNK = 1000
# Generous: a deadline only catches a stuck fleet, it never shapes a figure.
MIN_STEPS_PER_SECOND = 10.0


@dataclass(frozen=True)
class OverheadSizes:
    nodes: int
    workers: int
    rounds: int


def measure(bench: Bench, sizes: OverheadSizes) -> Measurement:
    fleet_rates: list[float] = []
    rq_rates: list[float] = []
    for _ in range(sizes.rounds):  # interleaved, so drift hits both alike
        rq_rates.append(bare_rq_rate(bench, sizes.nodes * STEPS_PER_NODE, sizes.workers))
        fleet_rates.append(fleet_rate(bench, sizes.nodes, sizes.workers))
    figure = Figure(
        name=f"overhead: {sizes.nodes} nodes x {STEPS_PER_NODE} steps, {sizes.workers} workers",
        value=median(fleet_rates),
        unit="steps/s",
        reference=median(rq_rates),
        reference_label="bare RQ no-op",
        target=TARGET,
        note=f"median of {sizes.rounds} rounds",
    )
    details = {"sizes": asdict(sizes), "fleet_rates": fleet_rates, "rq_rates": rq_rates}
    return Measurement("overhead", [figure], details)


def bare_rq_rate(bench: Bench, jobs: int, workers: int) -> float:
    broker = redis.Redis.from_url(bench.services.redis_url)
    queue = Queue(f"bare-{uuid.uuid4().hex[:8]}", connection=broker)
    enqueue_no_ops(queue, jobs)
    command = rq_command(bench.services.redis_url, queue.name, burst=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return drain_rate(queue, [command] * workers, env)


def enqueue_no_ops(queue: Queue, jobs: int) -> None:
    for start in range(0, jobs, ENQUEUE_CHUNK):
        batch = [
            Queue.prepare_data(no_op, result_ttl=0) for _ in range(min(ENQUEUE_CHUNK, jobs - start))
        ]
        with queue.connection.pipeline() as pipe:
            queue.enqueue_many(batch, pipeline=pipe)
            pipe.execute()


def fleet_rate(bench: Bench, nodes: int, workers: int) -> float:
    with fresh_database(bench, "overhead") as db_url:
        config = bench_settings(db_url, bench.services.redis_url)
        with fleet(bench, config, workers) as started:
            warm_up(db_url, workers, started)
            first_id = next_node_id(db_url)
            insert_nodes(db_url, nodes, "instance", prefix="n")
            deadline = 60 + nodes * STEPS_PER_NODE / MIN_STEPS_PER_SECOND
            wait_until(lambda: count_in_state(db_url, "live", "n") == nodes, deadline,
                       "overhead run", started)  # fmt: skip
        return middle_rate(transition_moments(db_url, first_id))


def warm_up(db_url: str, workers: int, started: Processes) -> None:
    """One node per worker through the chain: connections open, code paths warm."""
    insert_nodes(db_url, workers, "instance", prefix="warm")
    wait_until(lambda: count_in_state(db_url, "live", "warm") == workers, 60, "warm-up", started)


def next_node_id(db_url: str) -> int:
    return int(scalar(db_url, "SELECT coalesce(max(id), 0) + 1 FROM nodes"))


def transition_moments(db_url: str, first_id: int) -> list[float]:
    """When each worker transition of the measured nodes happened (epoch seconds)."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT extract(epoch FROM at)::float8 FROM node_history"
            " WHERE event = 'transition' AND node_id >= %s AND actor LIKE 'fleet-worker%%'",
            (first_id,),
        ).fetchall()
    return [float(row[0]) for row in rows]
