"""What every measurement of `benchmarks.run` shares: throw-away services, a fresh migrated
database per measurement, the fleet's settings as FLEET_ variables, and real `fleet`
processes (one dispatcher, W workers) whose logs are kept in the run's scratch folder."""

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import redis
from rq import Queue, Worker
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

import migrations
from models.logins import FleetRole, create_login, drop_login
from models.session import sqlalchemy_url
from sim.services import Services, admin_execute, database_url, local_services
from worker.settings import FleetSettings

REPO = Path(__file__).resolve().parent.parent
STOP_SECONDS = 30.0
POLL_SECONDS = 0.05
READY_TIMEOUT_SECONDS = 60.0


class BenchFailed(RuntimeError):
    """A measurement could not finish (a process died, a deadline passed)."""


@dataclass(frozen=True)
class Bench:
    services: Services
    workdir: Path


@contextmanager
def bench_services() -> Iterator[Bench]:
    """Postgres and Redis for one run: FLEET_TEST_DATABASE_URL / FLEET_TEST_REDIS_URL if
    set, otherwise throw-away servers (sim.services.local_services)."""
    with (
        tempfile.TemporaryDirectory(prefix="fleet-bench-") as workdir,
        local_services(
            Path(workdir),
            os.environ.get("FLEET_TEST_DATABASE_URL"),
            os.environ.get("FLEET_TEST_REDIS_URL"),
        ) as services,
    ):
        yield Bench(services, Path(workdir))


# Logins made for each benchmark database: database URL -> role -> the login's URL.
_LOGINS: dict[str, dict[FleetRole, str]] = {}


@contextmanager
def fresh_database(bench: Bench, label: str) -> Iterator[str]:
    """A new database, migrated to head (its URL is the owner's); dropped on leaving,
    with the logins made for it."""
    name = f"fleet_bench_{label}_{uuid.uuid4().hex[:8]}"
    # Job ids name node ids, which every fresh database starts again at 1, and RQ's job
    # keys are per Redis database, not per queue: a run still queued from the last
    # measurement would stand in for this one's.
    redis.Redis.from_url(bench.services.redis_url).flushdb()
    admin_execute(bench.services.postgres_url, f"CREATE DATABASE {name}")
    url = database_url(bench.services.postgres_url, name)
    try:
        migrations.upgrade(url)
        yield url
    finally:
        drop_logins(url)
        admin_execute(bench.services.postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def drop_logins(db_url: str) -> None:
    """Drop the logins login_url made for this database (before the database goes)."""
    with owner_engine(db_url) as engine, engine.begin() as connection:
        for made in _LOGINS.pop(db_url, {}).values():
            drop_login(connection, str(make_url(made).username))


@contextmanager
def owner_engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(db_url), poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def login_url(db_url: str, role: FleetRole) -> str:
    """The URL of this database's login for role (made on first use): the fleet's
    processes run with their role's login, as in production, never as the owner."""
    made = _LOGINS.setdefault(db_url, {})
    if role not in made:
        name = f"bench_{role}_{uuid.uuid4().hex[:8]}"
        with owner_engine(db_url) as engine, engine.begin() as connection:
            made[role] = create_login(connection, db_url, name, role, None).url.reveal()
    return made[role]


def role_env(env: dict[str, str], db_url: str, role: FleetRole) -> dict[str, str]:
    return env | {"FLEET_DATABASE_URL": login_url(db_url, role)}


def bench_settings(db_url: str, redis_url: str, **overrides: Any) -> FleetSettings:
    """The fleet's defaults, pointed at this run's database, Redis and its own queue."""
    values: dict[str, Any] = {
        "database_url": db_url,
        "redis_url": redis_url,
        "queue_name": f"bench-{uuid.uuid4().hex[:8]}",
        "step_modules": "benchmarks.steps",
        "log_level": "WARNING",
    }
    return FleetSettings(**(values | overrides))


def fleet_env(config: FleetSettings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of `fleet` processes: this config and nothing from the caller's
    own FLEET_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    for name, value in config.model_dump(mode="json").items():
        if value is not None:
            env[f"FLEET_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    env["PYTHONPATH"] = str(REPO)
    return env | (extra or {})


@dataclass
class Processes:
    """Started processes and their log files."""

    logs: Path
    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, role: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path = self.logs / f"{role}-{len(self.started)}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        self.started.append((role, process))
        return process

    def pids(self, role: str) -> list[int]:
        return [p.pid for r, p in self.started if r == role]

    def check_alive(self) -> None:
        for role, process in self.started:
            if process.poll() is not None:
                raise BenchFailed(
                    f"{role} {process.pid} exited ({process.returncode})\n{self.tails()}"
                )

    def tails(self, lines: int = 15) -> str:
        found = sorted(self.logs.glob("*.log"))
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-lines:]) for p in found
        )

    def stop(self) -> None:
        """SIGTERM (a worker finishes its step), then SIGKILL what is left."""
        for _, process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for _, process in self.started:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def processes(bench: Bench, label: str) -> Iterator[Processes]:
    logs = bench.workdir / f"{label}-{uuid.uuid4().hex[:6]}"
    logs.mkdir()
    started = Processes(logs)
    try:
        yield started
    finally:
        started.stop()


def fleet_command(role: str) -> list[str]:
    return [sys.executable, "-m", "worker", role]


def rq_command(redis_url: str, queue_name: str, *, burst: bool) -> list[str]:
    """A bare RQ SimpleWorker, as the fleet's default worker class (with RQ's default
    pickle serializer: the reference measures RQ itself, not the fleet's JSON jobs)."""
    rq_bin = str(Path(sys.executable).parent / "rq")
    burst_flag = ["--burst"] if burst else []
    return [rq_bin, "worker", *burst_flag, "--url", redis_url, "--worker-class",
            "rq.SimpleWorker", "--quiet", queue_name]  # fmt: skip


@contextmanager
def fleet(
    bench: Bench, config: FleetSettings, workers: int, extra_env: dict[str, str] | None = None
) -> Iterator[Processes]:
    """One `fleet dispatcher` and `workers` `fleet worker` processes, ready: the workers
    registered with RQ and the dispatcher connected (listening, if configured to)."""
    env = fleet_env(config, extra_env)
    dispatcher_env = role_env(env, config.database_url, "dispatcher")
    worker_env = role_env(env, config.database_url, "worker")
    with processes(bench, "fleet") as started:
        started.start("dispatcher", fleet_command("dispatcher"), dispatcher_env)
        for _ in range(workers):
            started.start("worker", fleet_command("worker"), worker_env)
        wait_until(
            lambda: fleet_ready(config, workers), READY_TIMEOUT_SECONDS, "fleet start", started
        )
        yield started


def fleet_ready(config: FleetSettings, workers: int) -> bool:
    queue = Queue(config.queue_name, connection=redis.Redis.from_url(config.redis_url))
    if Worker.count(queue=queue) < workers:
        return False
    wanted = "LISTEN%" if config.listen else "%"
    row = scalar(
        config.database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name LIKE 'fleet-dispatcher%%' AND query LIKE %s",
        (wanted,),
    )
    return bool(row)


def wait_until(
    done: Callable[[], bool], timeout: float, what: str, started: Processes | None = None
) -> float:
    """Poll until done() (checking that the processes live); seconds it took."""
    begin = time.monotonic()
    while not done():
        if started is not None:
            started.check_alive()
        if time.monotonic() - begin > timeout:
            tails = started.tails() if started else ""
            raise BenchFailed(f"{what}: not done after {timeout:.0f} s\n{tails}")
        time.sleep(POLL_SECONDS)
    return time.monotonic() - begin


def scalar(db_url: str, sql: LiteralString, params: Sequence[object] = ()) -> Any:
    with psycopg.connect(db_url, autocommit=True) as connection:
        row = connection.execute(sql, params).fetchone()
    return None if row is None else row[0]


def execute(db_url: str, sql: LiteralString, params: Sequence[object] = ()) -> None:
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute(sql, params)


def insert_nodes(
    db_url: str, count: int, state: str, prefix: str, region: str = "eu-west-1"
) -> None:
    """count nodes in one statement (as an app would insert them), named prefix-1..n."""
    execute(
        db_url,
        "INSERT INTO nodes (name, owner, region, instance_type, network, current_version, state)"
        " SELECT %s || '-' || i, 'bench', %s, 't3.small', 'regtest', '0.9.0', %s"
        " FROM generate_series(1, %s) i",
        (prefix, region, state, count),
    )


def count_in_state(db_url: str, state: str, prefix: str) -> int:
    return int(
        scalar(
            db_url,
            "SELECT count(*) FROM nodes WHERE state = %s AND name LIKE %s",
            (state, f"{prefix}-%"),
        )
    )


def held_count(db_url: str) -> int:
    return int(scalar(db_url, "SELECT count(*) FROM nodes WHERE held"))


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (share in 0..1) of a non-empty sample."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(share * len(ordered))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def middle_rate(moments: Sequence[float], low: float = 0.1, high: float = 0.9) -> float:
    """Events per second between the low and high shares of the events: the steady
    state, without process start-up or the last stragglers."""
    ordered = sorted(moments)
    first, last = int(low * len(ordered)), int(high * len(ordered))
    span = ordered[last] - ordered[first]
    if span <= 0:
        raise BenchFailed("too few events to measure a rate")
    return (last - first) / span


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/status (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchFailed(f"no VmRSS for process {pid}")
