"""Which RQ worker class should run the fleet's steps?

For each class, side by side in one run: bare RQ running no-op jobs, and fleet workers
running instant steps (claim + settle in Postgres). Same number of jobs and worker
processes; rates are taken while the queue drains from 90% to 10%, and the median of
several rounds is reported.

    .venv/bin/python -m benchmarks.worker_class [--jobs 400] [--workers 2] [--rounds 3]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis
from rq import Queue

import migrations
from benchmarks.harness import drop_logins, fleet_env, role_env
from benchmarks.steps import no_op
from sim.services import admin_execute, database_url, local_services
from worker.dispatcher import Dispatcher
from worker.settings import FleetSettings

CLASSES = {"simple": "rq.SimpleWorker", "fork": "rq.Worker"}
REPO = Path(__file__).resolve().parent.parent


def drain_rate(queue: Queue, commands: list[list[str]], env: dict[str, str]) -> float:
    """Jobs per second while the queue drains from 90% to 10% full: the steady state,
    without process start-up or the last stragglers."""
    total = queue.count
    samples: list[tuple[float, int]] = []
    processes = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL) for c in commands]
    while any(p.poll() is None for p in processes):
        samples.append((time.perf_counter(), queue.count))
        time.sleep(0.01)
    if any(p.returncode != 0 for p in processes):
        raise SystemExit("a worker failed")
    start = next(t for t, left in samples if left <= 0.9 * total)
    end = next(t for t, left in samples if left <= 0.1 * total)
    return 0.8 * total / (end - start)


def bare_rq(redis_url: str, worker_class: str, jobs: int, workers: int) -> float:
    # RQ as it comes, default (pickle) serializer and stock worker classes: the reference
    # measures RQ itself. Fleet workers take only JSON step jobs (worker/step_job.py).
    queue = Queue(f"bare-{uuid.uuid4().hex[:6]}", connection=redis.Redis.from_url(redis_url))
    for _ in range(jobs):
        queue.enqueue(no_op, result_ttl=0)
    rq_bin = str(Path(sys.executable).parent / "rq")
    command = [rq_bin, "worker", "--burst", "--url", redis_url, "--worker-class",
               CLASSES[worker_class], "--quiet", queue.name]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return drain_rate(queue, [command] * workers, env)


def fleet_steps(config: FleetSettings, worker_class: str, jobs: int, workers: int) -> float:
    with psycopg.connect(config.database_url, autocommit=True) as connection:
        # new -> destroy: one step per job (destroyed has no work to chain to), so that
        # a fleet job and a bare RQ job do as much.
        connection.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network)"
            " SELECT 'b' || i, 'bench', 'eu-west-1', 't3.small', 'regtest'"
            " FROM generate_series(1, %s) i",
            (jobs,),
        )
        connection.execute("UPDATE nodes SET state = 'destroy'")
    broker = redis.Redis.from_url(config.redis_url)
    Dispatcher(config, broker).sweep()
    env = role_env(
        fleet_env(config, {"FLEET_WORKER_CLASS": worker_class}), config.database_url, "worker"
    )
    command = [sys.executable, "-m", "worker", "worker", "--burst"]
    rate = drain_rate(Queue(config.queue_name, connection=broker), [command] * workers, env)
    with psycopg.connect(config.database_url, autocommit=True) as connection:
        moved = connection.execute(
            "SELECT count(*) FROM nodes WHERE state = 'destroyed'"
        ).fetchone()
    if moved is None or moved[0] != jobs:
        raise SystemExit(f"only {moved} of {jobs} steps were done")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {c: {"rq": [], "fleet": []} for c in CLASSES}
    with (
        tempfile.TemporaryDirectory() as workdir,
        local_services(
            Path(workdir),
            os.environ.get("FLEET_TEST_DATABASE_URL"),
            os.environ.get("FLEET_TEST_REDIS_URL"),
        ) as services,
    ):
        template = "fleet_bench_template"
        admin_execute(services.postgres_url, f"DROP DATABASE IF EXISTS {template}")
        admin_execute(services.postgres_url, f"CREATE DATABASE {template}")
        migrations.upgrade(database_url(services.postgres_url, template))
        for _ in range(args.rounds):
            for worker_class in CLASSES:  # interleaved, so drift hits both alike
                results[worker_class]["rq"].append(
                    bare_rq(services.redis_url, worker_class, args.jobs, args.workers)
                )
                name = f"fleet_bench_{uuid.uuid4().hex[:8]}"
                admin_execute(services.postgres_url, f"CREATE DATABASE {name} TEMPLATE {template}")
                config = FleetSettings(
                    database_url=database_url(services.postgres_url, name),
                    redis_url=services.redis_url,
                    queue_name=f"bench-{name}",
                    step_modules="benchmarks.steps",
                    log_level="WARNING",
                )
                results[worker_class]["fleet"].append(
                    fleet_steps(config, worker_class, args.jobs, args.workers)
                )
                drop_logins(config.database_url)
                admin_execute(services.postgres_url, f"DROP DATABASE {name} WITH (FORCE)")
    print(f"{args.jobs} jobs, {args.workers} worker processes, median of {args.rounds} rounds")
    print(f"{'class':<8} {'bare RQ jobs/s':>15} {'fleet steps/s':>14} {'fleet/RQ':>9}")
    for worker_class, figures in results.items():
        rq_rate, fleet_rate = (statistics.median(figures[k]) for k in ("rq", "fleet"))
        print(
            f"{worker_class:<8} {rq_rate:>15.1f} {fleet_rate:>14.1f} {fleet_rate / rq_rate:>9.2f}"
        )


if __name__ == "__main__":
    main()
