import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

import migrations
from models.logins import FLEET_ROLES, FleetRole, create_login
from models.session import sqlalchemy_url
from sim.cloud import fleet_chain, sim_chains
from sim.services import NoServices, Services, admin_execute, database_url, local_services
from worker.dispatcher import Dispatcher
from worker.settings import FleetSettings

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = f"fleet_template_{os.getpid()}"


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    try:
        with local_services(
            tmp_path_factory.mktemp("services"),
            os.environ.get("FLEET_TEST_DATABASE_URL"),
            os.environ.get("FLEET_TEST_REDIS_URL"),
        ) as found:
            yield found
    except NoServices as exc:
        pytest.exit(str(exc), returncode=3)


@pytest.fixture(scope="session")
def template_db(services: Services) -> Iterator[str]:
    """A migrated database that every test's database is copied from."""
    admin_execute(services.postgres_url, f"DROP DATABASE IF EXISTS {TEMPLATE}")
    admin_execute(services.postgres_url, f"CREATE DATABASE {TEMPLATE}")
    url = database_url(services.postgres_url, TEMPLATE)
    migrations.upgrade(url)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE test_effects (node_id bigint, state text, step_run bigint,"
            " phase text, at timestamptz DEFAULT clock_timestamp())"
        )
        # The runtime tests' own steps (tests/steps.py) write it as the worker they run in.
        connection.execute("GRANT SELECT, INSERT ON test_effects TO fleet_worker")
    yield TEMPLATE
    admin_execute(services.postgres_url, f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")


# The session's logins, one per fleet role: role -> URL (to the template).
LOGINS: dict[FleetRole, str] = {}


@pytest.fixture(scope="session", autouse=True)
def logins(services: Services, template_db: str) -> Iterator[dict[FleetRole, str]]:
    """One login per fleet role for the whole session, as `fleet db create-login` makes
    them: role -> connection URL (to the template; `role_url` points it at a test's
    database). Roles are cluster-wide, so they work in every copy of the template."""
    url = database_url(services.postgres_url, template_db)
    made: dict[FleetRole, str] = {}
    # Not a pooled engine: a connection left open to the template blocks copying it.
    setup = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    with setup.begin() as connection:
        for role in FLEET_ROLES:
            made[role] = create_login(
                connection, url, f"fleet_t{os.getpid()}_{role}", role, None
            ).url.reveal()
    LOGINS.update(made)
    yield made
    LOGINS.clear()
    for role in FLEET_ROLES:
        login = f"fleet_t{os.getpid()}_{role}"
        admin_execute(url, f"REVOKE ALL ON DATABASE {template_db} FROM {login}")
        admin_execute(services.postgres_url, f"DROP ROLE IF EXISTS {login}")


def role_url(db_url: str, role: FleetRole) -> str:
    """The test database's URL as the session's login of that role."""
    login = make_url(LOGINS[role]).set(database=make_url(db_url).database)
    return login.render_as_string(hide_password=False)


@contextmanager
def fleet_database(services: Services, template_db: str, prefix: str) -> Iterator[str]:
    """A fleet of its own: a copy of the template, as its owner (what migrations run as),
    dropped on leaving."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin_execute(services.postgres_url, f"CREATE DATABASE {name} TEMPLATE {template_db}")
    url = database_url(services.postgres_url, name)
    with psycopg.connect(url, autocommit=True) as connection:
        # A copy of the template would share its fleet id.
        connection.execute(
            "UPDATE fleet_identity SET fleet_id = replace(gen_random_uuid()::text, '-', '')"
        )
        # Nor does a copy have the template's CONNECT grants: as `fleet db upgrade` does.
        connection.execute("SELECT fleet_grant_connect()")
    try:
        yield url
    finally:
        admin_execute(services.postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(services: Services, template_db: str) -> Iterator[str]:
    """A fresh database for one test."""
    with fleet_database(services, template_db, "fleet_test") as url:
        yield url


@pytest.fixture
def redis_url(services: Services) -> str:
    redis.Redis.from_url(services.redis_url).flushdb()
    return services.redis_url


@pytest.fixture
def config(db_url: str, redis_url: str, logins: dict[FleetRole, str]) -> FleetSettings:
    """The settings of a worker of the test's fleet (its worker login)."""
    return FleetSettings(
        database_url=role_url(db_url, "worker"),
        owner_database_url=db_url,
        redis_url=redis_url,
        queue_name=f"fleet-test-{uuid.uuid4().hex[:8]}",
        lease_seconds=2.0,
        max_attempts=3,
        backoff_base_seconds=0.3,
        backoff_max_seconds=30.0,
        sweep_interval_seconds=0.5,
        step_modules="tests.steps",
        log_level="WARNING",
        chain=fleet_chain(sim_chains(), ["regtest"]),
    )


@pytest.fixture
def fleet_env(config: FleetSettings) -> dict[str, str]:
    """The environment for `fleet` subprocesses: the test's settings as FLEET_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    for field, value in config.model_dump(mode="json").items():
        if value is not None:
            env[f"FLEET_{field.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture
def operator_env(
    fleet_env: dict[str, str], db_url: str, logins: dict[FleetRole, str]
) -> dict[str, str]:
    """The environment of an operator at the `fleet` command line (the operator login)."""
    return {**fleet_env, "FLEET_DATABASE_URL": role_url(db_url, "operator")}


@pytest.fixture
def fleet(operator_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real `fleet` command line as an operator and capture what it prints."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=operator_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


@pytest.fixture
def start_worker(fleet_env: dict[str, str]) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `fleet worker` processes; whatever is still running at the end is killed."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        *args: str, env: dict[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        # A file, not a pipe: a pipe nobody reads fills up and blocks a chatty worker.
        with open(log or os.devnull, "ab") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker", "worker", *args],
                env={**fleet_env, **(env or {})},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


@pytest.fixture
def dispatcher_config(
    config: FleetSettings, db_url: str, logins: dict[FleetRole, str]
) -> FleetSettings:
    return config.model_copy(update={"database_url": role_url(db_url, "dispatcher")})


@pytest.fixture
def dispatcher(dispatcher_config: FleetSettings) -> Iterator[Dispatcher]:
    """A dispatcher (with the dispatcher login) running its loop in a thread of the test
    process."""
    running = Dispatcher(dispatcher_config, redis.Redis.from_url(dispatcher_config.redis_url))
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,), daemon=True)
    thread.start()
    yield running
    stop.set()
    thread.join(timeout=10)


def add_nodes(
    db_url: str, names: list[str], state: str = "instance", network: str = "regtest"
) -> list[int]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        return [
            int(connection.execute(
                "INSERT INTO nodes (name, owner, region, instance_type, network, state)"
                " VALUES (%s, 'tester', 'eu-west-1', 't3.small', %s, %s) RETURNING id",
                (name, network, state),
            ).fetchone()[0])  # type: ignore[index]
            for name in names
        ]  # fmt: skip


def held_with(db_url: str, node_id: int, timeout: float = 60) -> tuple[str, int]:
    """Wait until the node is held: the error it was held with, and its attempts then."""
    wait_until(
        lambda: fetch(db_url, "SELECT held FROM nodes WHERE id = %s", node_id) == [(True,)],
        timeout,
        f"node {node_id} is held",
    )
    [(error, attempts)] = fetch(
        db_url, "SELECT last_error, attempts FROM nodes WHERE id = %s", node_id
    )
    return str(error), int(attempts)


def fetch(db_url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        return connection.execute(sql, params).fetchall()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting until {what}")
        time.sleep(0.05)


pytest_plugins = ["tests.simulation"]
