"""Benchmark steps that note when their handler starts, for the dispatch latency: every work
state is done at once, after one INSERT of clock_timestamp() into bench_handler_starts
(created by benchmarks.latency in the benchmark's database). Only the workers import this
module: importing it registers the steps."""

from functools import cache

import psycopg

from jobs.outcomes import Done, Outcome
from jobs.registry import StepContext, steps
from models.states import WORK_STATES
from worker.settings import settings


@cache
def _connection() -> psycopg.Connection[tuple[object, ...]]:
    url = settings().database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    return psycopg.connect(url, autocommit=True, application_name="fleet-bench-handler")


def note_start(context: StepContext) -> Outcome:
    node = context.node
    _connection().execute(
        "INSERT INTO bench_handler_starts (node_id, state, step_run) VALUES (%s, %s, %s)",
        (node.id, node.state, node.step_run),
    )
    return Done()


for _state in WORK_STATES:
    steps.register(_state, note_start)
