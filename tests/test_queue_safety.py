"""Redis cannot run code: whoever can write to Redis can queue jobs, but a worker runs
only the fleet's step function with id arguments, decodes jobs as JSON (never pickle),
imports nothing a job names and keeps serving real steps. The throw-away Redis needs
credentials, and the queue works over TLS. Real Redis, real `fleet worker` processes.

The attacker's jobs are written with plain rq or plain redis commands, as anyone holding
a Redis connection could, in both of rq's encodings: pickle (rq's default, which the
fleet used to read) and JSON (which the fleet reads now, so the allow-list is what
refuses them)."""

import ipaddress
import json
import os
import pickle
import subprocess
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from rq import Callback, Queue, Worker
from rq.serializers import DefaultSerializer, JSONSerializer, Serializer

from sim.services import (
    RedisDidNotStart,
    RedisTls,
    Services,
    free_port,
    redis_url_for,
    start_redis_server,
)
from tests.conftest import REPO, add_nodes, fetch, wait_until
from worker.dispatcher import Dispatcher
from worker.queue import DueStep, StepQueue
from worker.settings import FleetSettings

StartWorker = Callable[..., subprocess.Popen[bytes]]
STEP_FUNCTION = "worker.runtime.run_step"  # spelt out: what the dispatcher must write
ENCODINGS: dict[str, Serializer] = {"pickle": DefaultSerializer, "json": JSONSerializer}
SETTLED = {b"finished", b"failed", b"stopped", b"canceled"}
# What a worker's environment holds and a job naming os.getenv would hand back.
SECRET_KEYS = "k1:" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU="


@dataclass(frozen=True)
class Canary:
    """A throw-away module on the worker's PYTHONPATH: importing it creates one file,
    calling its function another. Neither may ever exist."""

    module: str
    home: Path
    imported: Path
    ran: Path

    @property
    def function(self) -> str:
        return f"{self.module}.touch"

    def tripped(self) -> list[str]:
        return [path.name for path in (self.imported, self.ran) if path.exists()]


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    home = tmp_path / "pythonpath"
    home.mkdir()
    found = Canary(f"canary_{uuid.uuid4().hex[:8]}", home, tmp_path / "imported", tmp_path / "ran")
    (home / f"{found.module}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(found.imported)!r}).touch()\n\n\n"
        "def touch(*args, **kwargs):\n"
        f"    pathlib.Path({str(found.ran)!r}).touch()\n"
    )
    return found


@dataclass
class RunningWorker:
    process: subprocess.Popen[bytes]
    log: Path

    def log_lines(self, *words: str) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if all(word in line for word in words)]


@pytest.fixture(params=["simple", "fork"])
def worker_class(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def broker(config: FleetSettings) -> redis.Redis:
    return redis.Redis.from_url(config.redis_url)


def start_fleet_worker(
    start_worker: StartWorker,
    config: FleetSettings,
    canary: Canary,
    worker_class: str,
    log: Path,
) -> RunningWorker:
    """A long-running `fleet worker` with the canary importable, registered with RQ."""
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO), str(canary.home)]),
        "FLEET_WORKER_CLASS": worker_class,
        "FLEET_SECRET_KEYS": SECRET_KEYS,
        "FLEET_LOG_LEVEL": "INFO",
    }
    process = start_worker(env=env, log=log)
    queue = Queue(config.queue_name, connection=redis.Redis.from_url(config.redis_url))
    wait_until(lambda: Worker.count(queue=queue) >= 1, 30, "the worker registers")
    return RunningWorker(process, log)


@pytest.fixture
def running_worker(
    start_worker: StartWorker,
    config: FleetSettings,
    canary: Canary,
    worker_class: str,
    tmp_path: Path,
) -> RunningWorker:
    return start_fleet_worker(start_worker, config, canary, worker_class, tmp_path / "worker.log")


def plant(
    broker: redis.Redis, queue_name: str, encoding: str, func: str, *args: Any, **options: Any
) -> str:
    """Queue a job as anyone with a Redis connection could, with plain rq."""
    job_id = f"planted-{encoding}-{uuid.uuid4().hex[:10]}"
    queue = Queue(queue_name, connection=broker, serializer=ENCODINGS[encoding])
    queue.enqueue_call(func, args=args, job_id=job_id, **options)
    return job_id


def status(broker: redis.Redis, job_id: str) -> bytes | None:
    found = broker.hget(f"rq:job:{job_id}", "status")
    return found if isinstance(found, bytes) else None


def settled(broker: redis.Redis, job_ids: list[str]) -> Callable[[], bool]:
    return lambda: all(status(broker, job_id) in SETTLED | {None} for job_id in job_ids)


def failed_job_ids(broker: redis.Redis, queue_name: str) -> set[str]:
    # The registry's sorted set, read raw: no rq code that might decode a job.
    members = cast(list[bytes], broker.zrange(f"rq:failed:{queue_name}", 0, -1))
    return {member.decode() for member in members}


def failure_text(broker: redis.Redis, job_id: str) -> str:
    raw = broker.hget(f"rq:job:{job_id}", "exc_info")
    return zlib.decompress(raw).decode() if isinstance(raw, bytes) else ""


def assert_refused(
    broker: redis.Redis, config: FleetSettings, worker: RunningWorker, job_ids: list[str], why: str
) -> None:
    """Each job failed without running, with the reason in its failure and a log line."""
    wait_until(settled(broker, job_ids), 30, "the planted jobs are settled")
    for job_id in job_ids:
        assert status(broker, job_id) == b"failed", f"{job_id} ran ({status(broker, job_id)!r})"
        assert job_id in failed_job_ids(broker, config.queue_name), job_id
        assert why in failure_text(broker, job_id), failure_text(broker, job_id)
        assert worker.log_lines("job refused", job_id, why), f"no log line refusing {job_id}"
    assert broker.llen(f"rq:queue:{config.queue_name}") == 0


def assert_still_serves_steps(
    db_url: str, config: FleetSettings, broker: redis.Redis, worker: RunningWorker
) -> None:
    """The same worker process then runs a real step chain, queued by the dispatcher."""
    [node_id] = add_nodes(db_url, [f"ok-after-{uuid.uuid4().hex[:6]}"])
    assert Dispatcher(config, broker).sweep().enqueued == 1
    live = lambda: fetch(db_url, "SELECT state FROM nodes WHERE id = %s", node_id)[0][0] == "live"  # noqa: E731
    wait_until(live, 30, "a real step runs after the refused jobs")
    assert worker.process.poll() is None, "the worker died"


def test_jobs_naming_other_functions_never_run(
    broker: redis.Redis,
    config: FleetSettings,
    db_url: str,
    canary: Canary,
    running_worker: RunningWorker,
    tmp_path: Path,
) -> None:
    shell_marker = tmp_path / "shell-ran"
    job_ids = [
        job_id
        for encoding in ENCODINGS
        for job_id in (
            plant(broker, config.queue_name, encoding, "os.getenv", "FLEET_SECRET_KEYS"),
            plant(
                broker, config.queue_name, encoding, "subprocess.getoutput", f"touch {shell_marker}"
            ),
            plant(broker, config.queue_name, encoding, canary.function),
        )
    ]
    wait_until(settled(broker, job_ids), 30, "the planted jobs are settled")
    assert canary.tripped() == [], "the worker imported or ran a function a job named"
    assert not shell_marker.exists(), "subprocess.getoutput ran as the worker's user"
    assert_refused(broker, config, running_worker, job_ids[3:], STEP_FUNCTION)
    assert_refused(broker, config, running_worker, job_ids[:3], "not JSON")
    assert_still_serves_steps(db_url, config, broker, running_worker)


class Tripwire:
    """Unpickling this creates a file: proof that something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_a_pickled_job_hash_is_never_unpickled(
    broker: redis.Redis,
    config: FleetSettings,
    db_url: str,
    running_worker: RunningWorker,
    tmp_path: Path,
) -> None:
    """A job hash written field by field: its payload, meta and result are pickles that
    would each create a file, around the one function the worker allows."""
    trips = {field: tmp_path / f"unpickled-{field}" for field in ("data", "meta", "result")}
    payload: tuple[object, ...] = (
        STEP_FUNCTION,
        None,
        (Tripwire(trips["data"]), "instance", 0),
        {},
    )
    job_id = f"planted-hash-{uuid.uuid4().hex[:10]}"
    broker.hset(f"rq:job:{job_id}", mapping={
        "data": zlib.compress(pickle.dumps(payload)),
        "meta": pickle.dumps(Tripwire(trips["meta"])),
        "result": pickle.dumps(Tripwire(trips["result"])),
        "status": "queued",
        "origin": config.queue_name,
        "description": "not a step",
    })  # fmt: skip
    broker.rpush(f"rq:queue:{config.queue_name}", job_id)
    wait_until(settled(broker, [job_id]), 30, "the planted job is settled")
    assert [path.name for path in trips.values() if path.exists()] == []
    assert_refused(broker, config, running_worker, [job_id], "not JSON")
    assert_still_serves_steps(db_url, config, broker, running_worker)


@pytest.mark.parametrize("worker_class", ["simple"])
def test_a_job_hash_rq_cannot_parse_does_not_stop_the_worker(
    broker: redis.Redis, config: FleetSettings, db_url: str, running_worker: RunningWorker
) -> None:
    """RQ parses a job's fields as it dequeues it: one it cannot parse raised out of the
    dequeue and ended the worker, and again after every restart."""
    job_id = f"planted-garbled-{uuid.uuid4().hex[:10]}"
    step = json.dumps([STEP_FUNCTION, None, [1, "instance", 0], {}]).encode()
    broker.hset(f"rq:job:{job_id}", mapping={
        "data": zlib.compress(step), "status": "queued", "origin": config.queue_name,
        "result_ttl": "not a number", "dependency_ids": "not json",
    })  # fmt: skip
    broker.rpush(f"rq:queue:{config.queue_name}", job_id)
    assert_refused(broker, config, running_worker, [job_id], "unreadable")
    assert_still_serves_steps(db_url, config, broker, running_worker)


@pytest.mark.parametrize("worker_class", ["simple"])
def test_a_step_job_with_bad_arguments_or_callbacks_is_refused(
    broker: redis.Redis,
    config: FleetSettings,
    db_url: str,
    canary: Canary,
    running_worker: RunningWorker,
) -> None:
    """The allowed function, but not as the dispatcher queues it: arguments that are not
    (node id, state, step run), or callbacks, which rq would import and call."""
    [node_id] = add_nodes(db_url, ["ok-target"], state="new")
    queue = config.queue_name
    bad_arguments = [
        plant(broker, queue, "json", STEP_FUNCTION, str(node_id), "instance", 0),
        plant(broker, queue, "json", STEP_FUNCTION, True, "instance", 0),
        plant(broker, queue, "json", STEP_FUNCTION, node_id, "instance", 0, "more"),
        plant(broker, queue, "json", STEP_FUNCTION, node_id, ["instance"], 0),
        plant(
            broker,
            queue,
            "json",
            STEP_FUNCTION,
            kwargs={"node_id": node_id, "state": "instance", "step_run": 0},
        ),
    ]
    callbacks = [
        plant(
            broker,
            queue,
            encoding,
            STEP_FUNCTION,
            node_id,
            "instance",
            0,
            on_success=Callback(canary.function),
            on_failure=Callback(canary.function),
        )
        for encoding in ENCODINGS
    ]
    wait_until(settled(broker, bad_arguments + callbacks), 30, "the planted jobs are settled")
    assert canary.tripped() == [], "the worker imported a callback a job named"
    assert_refused(broker, config, running_worker, bad_arguments, "arguments")
    assert_refused(broker, config, running_worker, callbacks[:1], "not JSON")
    assert_refused(broker, config, running_worker, callbacks[1:], "callback")
    assert fetch(db_url, "SELECT state, step_run FROM nodes WHERE id = %s", node_id) == [("new", 0)]
    assert_still_serves_steps(db_url, config, broker, running_worker)


@pytest.mark.parametrize("worker_class", ["simple"])
def test_rq_cleanup_never_imports_a_callback_an_abandoned_job_names(
    broker: redis.Redis,
    config: FleetSettings,
    canary: Canary,
    start_worker: StartWorker,
    worker_class: str,
    tmp_path: Path,
) -> None:
    """RQ's registry cleanup (run when a worker starts) calls the failure callback of
    every abandoned started job: a planted one must not make the worker import it."""
    job_id = f"planted-abandoned-{uuid.uuid4().hex[:10]}"
    broker.hset(f"rq:job:{job_id}", mapping={
        "data": zlib.compress(json.dumps([STEP_FUNCTION, None, [1, "x", 0], {}]).encode()),
        "status": "started",
        "origin": config.queue_name,
        "failure_callback_name": canary.function,
        "stopped_callback_name": canary.function,
        "success_callback_name": canary.function,
    })  # fmt: skip
    broker.zadd(f"rq:wip:{config.queue_name}", {f"{job_id}:gone-execution": 1})
    worker = start_fleet_worker(start_worker, config, canary, worker_class, tmp_path / "log")
    wait_until(lambda: broker.zcard(f"rq:wip:{config.queue_name}") == 0, 30, "the cleanup ran")
    assert canary.tripped() == [], "RQ's cleanup imported a callback a job named"
    assert status(broker, job_id) == b"failed"
    assert worker.process.poll() is None


def test_the_dispatcher_queues_json_naming_run_step_with_ids(
    broker: redis.Redis, config: FleetSettings, db_url: str
) -> None:
    [node_id] = add_nodes(db_url, ["ok-json"])
    assert Dispatcher(config, broker).sweep().enqueued == 1
    queued = cast(list[bytes], broker.lrange(f"rq:queue:{config.queue_name}", 0, -1))
    assert queued == [DueStep(node_id, "instance", 0).job_id.encode()]
    job = cast(dict[bytes, bytes], broker.hgetall(f"rq:job:{queued[0].decode()}"))
    func, instance, args, kwargs = json.loads(zlib.decompress(job[b"data"]))
    assert (func, instance, args, kwargs) == (STEP_FUNCTION, None, [node_id, "instance", 0], {})
    assert [type(arg) for arg in args] == [int, str, int]
    assert json.loads(job.get(b"meta", b"{}")) == {}  # stored only when set
    assert not [field for field, value in job.items() if b"callback" in field and value]
    assert b"webhooks" not in job


# --- Redis credentials and TLS ----------------------------------------------------------


def test_the_throw_away_redis_needs_credentials(services: Services) -> None:
    if os.environ.get("FLEET_TEST_REDIS_URL"):
        pytest.skip("FLEET_TEST_REDIS_URL names a Redis these tests did not start")
    url = urlsplit(services.redis_url)
    assert url.username and url.password, "the Redis URL carries no credentials"
    anonymous = redis.Redis(host=str(url.hostname), port=int(url.port or 6379))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    default_user = redis.Redis(
        host=str(url.hostname), port=int(url.port or 6379), password=url.password
    )
    with pytest.raises(redis.AuthenticationError):
        default_user.ping()  # the default user is off, whatever the password
    assert redis.Redis.from_url(services.redis_url).ping()


@dataclass(frozen=True)
class TlsRedis:
    url: str
    tls: RedisTls


def write_test_ca(home: Path) -> RedisTls:
    """A throw-away CA and a server certificate for 127.0.0.1, made here."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = RedisTls(ca=home / "ca.pem", cert=home / "redis.pem", key=home / "redis.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))  # fmt: skip
    return files


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    tls = write_test_ca(tmp_path)
    port, password = free_port(), uuid.uuid4().hex
    try:
        server = start_redis_server(port, tmp_path, password, tls=tls)
    except RedisDidNotStart as exc:
        if "tls" in str(exc).lower() and "unrecognized option" in str(exc).lower():
            pytest.skip(f"redis-server here is built without TLS: {exc}")
        raise
    try:
        yield TlsRedis(redis_url_for(port, password, tls), tls)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_queue_round_trips_a_step_over_tls(
    tls_redis: TlsRedis, config: FleetSettings, db_url: str, start_worker: StartWorker
) -> None:
    """rediss:// with the CA passed as the URL's ssl_ca_certs: the dispatcher's queue and a
    real worker both talk TLS, and the step runs."""
    assert tls_redis.url.startswith("rediss://")
    without_ca = tls_redis.url.partition("?")[0]
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(without_ca).ping()  # proof the CA is what lets it through
    own = config.model_copy(update={"redis_url": tls_redis.url})
    [node_id] = add_nodes(db_url, ["ok-tls"])
    steps = StepQueue(redis.Redis.from_url(own.redis_url), own.queue_name, 60, own.lease_seconds)
    assert steps.enqueue(DueStep(node_id, "instance", 0))
    worker = start_worker("--burst", env={"FLEET_REDIS_URL": own.redis_url})
    assert worker.wait(timeout=60) == 0
    assert fetch(db_url, "SELECT state FROM nodes WHERE id = %s", node_id) == [("live",)]
    assert steps.queue.count == 0
