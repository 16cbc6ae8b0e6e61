"""Dispatch latency: how long after an app moves a row into a work state its step's handler
starts, on an idle fleet whose workers wait. Measured with notifications (the default)
and, as the reference, with the sweep only (FLEET_LISTEN=false, default sweep interval).

Each row is moved by one UPDATE (autocommit) on a fixed schedule (one every interval).
The move is new -> destroy: an app edge into a work state whose one step ends in a
terminal state, so each row makes exactly one job. The interval (50 ms by default: 20
rows a second, a fraction of what the overhead benchmark shows the fleet can run) keeps
the fleet idle between rows, so that a row's latency is its own and not a queue's.
The handler (benchmarks.latency_steps) notes clock_timestamp() when it starts;
the row's change is the `at` of the transition in node_history, written by the same
UPDATE: both from the database's clock. The client's commit time (time.time() right
after the commit) against the handler's start is kept as a cross-check."""

import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from benchmarks.harness import (
    Bench,
    Processes,
    bench_settings,
    execute,
    fleet,
    fresh_database,
    insert_nodes,
    percentile,
    scalar,
    wait_until,
)
from benchmarks.report import Figure, Measurement, Target

TARGET_P50_MS = Target(25.0, at_most=True)
TARGET_P99_MS = Target(100.0, at_most=True)
WORK_STATE = "destroy"
WARM_ROWS_PER_WORKER = 2
# Where benchmarks.latency_steps notes each handler's start.
CREATE_TABLE = (
    "CREATE TABLE bench_handler_starts (node_id bigint NOT NULL, state text NOT NULL,"
    " step_run bigint NOT NULL, started_at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


@dataclass(frozen=True)
class LatencySizes:
    rows: int
    interval_ms: float
    workers: int


@dataclass(frozen=True)
class Latencies:
    database_clock_ms: list[float]
    client_clock_ms: list[float]
    sweep_interval_seconds: float

    def summary(self) -> dict[str, Any]:
        db, client = self.database_clock_ms, self.client_clock_ms
        return {
            "p50_ms": percentile(db, 0.5),
            "p99_ms": percentile(db, 0.99),
            "max_ms": max(db),
            "client_clock_p50_ms": percentile(client, 0.5),
            "client_clock_p99_ms": percentile(client, 0.99),
            "sweep_interval_seconds": self.sweep_interval_seconds,
        }


def measure(bench: Bench, sizes: LatencySizes) -> Measurement:
    notified = run(bench, sizes, listen=True)
    swept = run(bench, sizes, listen=False)
    rows = f"{sizes.rows} rows, 1 per {sizes.interval_ms:g} ms"
    figures = [
        _figure(f"dispatch latency p{label}, {rows}", notified, swept, share, target)
        for label, share, target in (("50", 0.5, TARGET_P50_MS), ("99", 0.99, TARGET_P99_MS))
    ]
    details = {
        "sizes": asdict(sizes),
        "work_state": WORK_STATE,
        "notified": notified.summary(),
        "sweep_only": swept.summary(),
    }
    return Measurement("latency", figures, details)


def _figure(
    name: str, notified: Latencies, swept: Latencies, share: float, target: Target
) -> Figure:
    return Figure(
        name=name,
        value=percentile(notified.database_clock_ms, share),
        unit="ms",
        reference=percentile(swept.database_clock_ms, share),
        reference_label=f"sweep only, every {swept.sweep_interval_seconds:g} s",
        target=target,
    )


def run(bench: Bench, sizes: LatencySizes, *, listen: bool) -> Latencies:
    with fresh_database(bench, "latency") as db_url:
        execute(db_url, CREATE_TABLE)
        execute(db_url, "GRANT INSERT ON bench_handler_starts TO fleet_worker")
        insert_nodes(db_url, WARM_ROWS_PER_WORKER * sizes.workers, "new", prefix="warm")
        insert_nodes(db_url, sizes.rows, "new", prefix="lat")
        config = bench_settings(
            db_url, bench.services.redis_url, step_modules="benchmarks.latency_steps", listen=listen
        )
        with fleet(bench, config, sizes.workers) as started:
            move_rows(db_url, "warm", sizes.interval_ms, started)
            commits = move_rows(db_url, "lat", sizes.interval_ms, started)
        return Latencies(
            database_clock(db_url, "lat"),
            client_clock(db_url, commits),
            config.sweep_interval_seconds,
        )


def move_rows(db_url: str, prefix: str, interval_ms: float, started: Processes) -> dict[int, float]:
    """Move the prefix's rows into the work state, one UPDATE every interval; wait until
    every handler started. Returns each row's commit time (client clock)."""
    committed: dict[int, float] = {}
    with psycopg.connect(db_url, autocommit=True) as connection:
        ids = [r[0] for r in connection.execute(
            "SELECT id FROM nodes WHERE name LIKE %s ORDER BY id", (f"{prefix}-%",)
        )]  # fmt: skip
        begin = time.monotonic()
        for number, node_id in enumerate(ids):
            time.sleep(max(0.0, begin + number * interval_ms / 1000 - time.monotonic()))
            connection.execute("UPDATE nodes SET state = %s WHERE id = %s", (WORK_STATE, node_id))
            committed[node_id] = time.time()
    deadline = 60 + len(ids) * interval_ms / 1000
    wait_until(lambda: started_count(db_url, prefix) == len(ids), deadline, "latency rows", started)
    return committed


def started_count(db_url: str, prefix: str) -> int:
    return int(
        scalar(
            db_url,
            "SELECT count(DISTINCT s.node_id) FROM bench_handler_starts s"
            " JOIN nodes n ON n.id = s.node_id WHERE n.name LIKE %s",
            (f"{prefix}-%",),
        )
    )


def database_clock(db_url: str, prefix: str) -> list[float]:
    """Handler start minus the row's change, both as the database's clock saw them."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT extract(epoch FROM min(s.started_at) - h.at)::float8 * 1000"
            " FROM node_history h"
            " JOIN nodes n ON n.id = h.node_id"
            " JOIN bench_handler_starts s ON s.node_id = h.node_id AND s.state = h.to_state"
            " WHERE h.event = 'transition' AND h.to_state = %s AND n.name LIKE %s"
            " GROUP BY h.node_id, h.at",
            (WORK_STATE, f"{prefix}-%"),
        ).fetchall()
    return [float(r[0]) for r in rows]


def client_clock(db_url: str, committed: dict[int, float]) -> list[float]:
    """Handler start minus the client's commit time: meaningful when the database runs on
    this machine (one clock), which the run's own services do."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT node_id, extract(epoch FROM min(started_at))::float8"
            " FROM bench_handler_starts WHERE node_id = ANY(%s) GROUP BY node_id",
            (list(committed),),
        ).fetchall()
    return [(float(started) - committed[int(node_id)]) * 1000 for node_id, started in rows]
