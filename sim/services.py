"""A real Postgres and a real Redis for the tests, the demo and the benchmarks, found in
this order:
1. URLs the caller was given (the tests: FLEET_TEST_DATABASE_URL / FLEET_TEST_REDIS_URL);
2. containers, when a Docker engine answers (testcontainers);
3. servers started here from the installed binaries (initdb/pg_ctl, redis-server),
   under the postgres user when running as root, since Postgres refuses root."""

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg
import redis


class NoServices(RuntimeError):
    pass


@dataclass(frozen=True)
class Services:
    postgres_url: str  # an admin connection to the 'postgres' database
    redis_url: str
    # Set when the Postgres server was started here (the chaos run restarts it).
    local_postgres: "LocalPostgres | None" = None


@contextmanager
def local_services(
    workdir: Path, postgres_url: str | None = None, redis_url: str | None = None
) -> Iterator[Services]:
    """Yield URLs of a Postgres server (its maintenance database) and a Redis; whatever
    was started for them is stopped on leaving."""
    with ExitStack() as stack:
        docker = (not postgres_url or not redis_url) and _docker_answers()
        local: LocalPostgres | None = None
        if not postgres_url and docker:
            postgres_url = stack.enter_context(_postgres_container(workdir))
        elif not postgres_url:
            local = stack.enter_context(_local_postgres(workdir))
            postgres_url = local.url
        if not redis_url:
            redis_starter = _redis_container if docker else _local_redis
            redis_url = stack.enter_context(redis_starter(workdir))
        yield Services(postgres_url, redis_url, local)


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@contextmanager
def _postgres_container(workdir: Path) -> Iterator[str]:
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16", driver=None) as container:
        yield container.get_connection_url()


@contextmanager
def _redis_container(workdir: Path) -> Iterator[str]:
    from testcontainers.redis import RedisContainer

    # The image's default user gets a password nobody is handed (testcontainers waits
    # for the server with it); the fleet's user is the one in the URL.
    password, unused = secrets.token_hex(16), secrets.token_hex(16)
    server = RedisContainer("redis:7", password=unused)
    server.with_command(" ".join(["redis-server", "--requirepass", unused, *fleet_user(password)]))
    with server as container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
        yield f"redis://{REDIS_USER}:{password}@{host}:{port}/0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bin(program: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"), reverse=True)
    found = candidates[0] if candidates else shutil.which(program)
    if found is None:
        raise NoServices(
            "no Postgres for the tests: set FLEET_TEST_DATABASE_URL, start a Docker engine, "
            "or install the PostgreSQL server (initdb, pg_ctl)"
        )
    return found


class LocalPostgres:
    """A throw-away Postgres cluster from the installed binaries."""

    def __init__(self) -> None:
        # Not under pytest's temp dir: the postgres user could not enter a root-only parent.
        self.home = Path(tempfile.mkdtemp(prefix="fleet-test-pg-"))
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.data, self.port = self.home / "data", free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        if not self.data.exists():
            self._run(_postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres",
                      "--auth=trust", "-E", "UTF8", "--no-sync")  # fmt: skip
        # fsync off: a throw-away server need not survive the machine crashing, and
        # what it wrote stays in the OS when the server process dies. synchronous_commit
        # stays on: off, a crash (the chaos run's restart) loses commits it already
        # acknowledged, and the chaos run once lost the very request it was testing.
        options = (
            f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=300"
        )
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.home / "log"),
                  "-o", options, "-w", "start")  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        self._run(_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "stop", check=False)

    def restart(self) -> None:
        """A crash and a restart on the same port: every open connection breaks."""
        self.stop("immediate")
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def _run(self, *command: str, check: bool = True) -> None:
        subprocess.run([*self._as_user, *command], check=check, capture_output=True)


@contextmanager
def _local_postgres(workdir: Path) -> Iterator[LocalPostgres]:
    server = LocalPostgres()
    server.start()
    try:
        yield server
    finally:
        server.remove()


REDIS_USER = "fleet"


class RedisDidNotStart(NoServices):
    pass


@dataclass(frozen=True)
class RedisTls:
    """A Redis that speaks only TLS: the CA its clients verify it with, its certificate
    and key."""

    ca: Path
    cert: Path
    key: Path


def redis_url_for(port: int, password: str, tls: RedisTls | None = None) -> str:
    """The URL of a server started here, credentials included; with TLS the CA travels
    as redis-py's ssl_ca_certs query argument."""
    address = f"{REDIS_USER}:{password}@127.0.0.1:{port}/0"
    if tls is None:
        return f"redis://{address}"
    return f"rediss://{address}?ssl_ca_certs={quote(str(tls.ca))}"


def redis_users(password: str) -> list[str]:
    """redis-server options: the default user off, one password-protected user for the
    fleet (as in docker-compose.yml)."""
    return ["--user", "default", "off", *fleet_user(password)]


def fleet_user(password: str) -> list[str]:
    return ["--user", REDIS_USER, "on", f">{password}", "~*", "&*", "+@all"]


def start_redis_server(
    port: int, workdir: Path, password: str, tls: RedisTls | None = None
) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    if server is None:
        raise NoServices(
            "no Redis for the tests: set FLEET_TEST_REDIS_URL, start a Docker engine, "
            "or install redis-server"
        )
    listen = ["--port", str(port)]
    if tls is not None:
        listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls.cert),
                  "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca),
                  "--tls-auth-clients", "no"]  # fmt: skip
    log = workdir / f"redis-{port}.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            [server, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), *redis_users(password)],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    _wait_for_redis(redis_url_for(port, password, tls), process, log)
    return process


@contextmanager
def _local_redis(workdir: Path) -> Iterator[str]:
    port, password = free_port(), secrets.token_hex(16)
    process = start_redis_server(port, workdir, password)
    try:
        yield redis_url_for(port, password)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_for_redis(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            said = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RedisDidNotStart(f"redis-server exited: {' / '.join(said)}")
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def database_url(admin_url: str, name: str) -> str:
    """The URL of database `name` on the server of admin_url."""
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    info["dbname"] = name
    user = info.get("user", "postgres")
    password = f":{info['password']}" if info.get("password") else ""
    host, port = info.get("host", "127.0.0.1"), info.get("port", "5432")
    return f"postgresql://{user}{password}@{host}:{port}/{name}"


def admin_execute(admin_url: str, *statements: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement)
