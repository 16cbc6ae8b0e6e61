"""The chaos run: the whole lifecycle under faults, then a check of what must hold.

Nodes go new -> live -> stop -> stopped -> update -> stopped -> start -> live, and half of
them on to destroyed, while the simulator fails a share of SSH and API calls and kills
some hosts, and the harness SIGKILLs and restarts random workers, flushes Redis once and
restarts Postgres (its own) once. At the end it checks and prints:
- every node reached the state it was asked for, or is held with an error naming why;
- exactly one instance was ever launched per node (counted in the cloud by tag);
- no orphaned instance (reconcile finds none);
- every initialised wallet's mnemonic decrypts from the database and is the node's;
- no secret in Redis or in the logs;
- no secret crossed a connection other than the node's SSH tunnel (the simulated
  daemons count the calls that reached them directly, and those that carried secrets).

    ./scripts/chaos [--nodes 200] [--workers 4] [--failure-rate 0.1] [--kill-every 8]
"""

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

import migrations
from jobs.config import StepSettings
from jobs.ec2 import NODE_ID_TAG, Ec2Cloud
from models.identity import fleet_id
from models.secrets import KeyRing
from models.session import engine_for
from sim.cloud import SimCloud
from sim.demo import ARTIFACT, RELEASE, as_login, fleet_environment, fleet_logins, simulated_cloud
from sim.host import HostFaults
from sim.rln_daemon import ApiFaults
from sim.services import Services, admin_execute, database_url, local_services
from worker.reconcile import FleetMarks, reconcile

# The flush comes this long after the nodes are inserted: jobs are queued and running.
FLUSH_AFTER_SECONDS = 2.0


@dataclass
class Plan:
    nodes: int
    workers: int
    failure_rate: float
    kill_every: float  # seconds between worker SIGKILLs
    dead_hosts: int  # hosts the simulator kills for good while nodes are live
    seed: int = 7
    settle_seconds: float = 600  # per phase


@dataclass
class Chaos:
    """What the harness did, for the report."""

    worker_kills: int = 0
    redis_flushes: int = 0
    postgres_restarts: int = 0
    hosts_killed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)  # nodes asked to update
    phases: list[tuple[str, float]] = field(default_factory=list)  # (asked, seconds)


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def run(plan: Plan, work: Path) -> list[Check]:
    rng = random.Random(plan.seed)
    with local_services(work) as services:
        if services.local_postgres is None:
            raise SystemExit("chaos: needs a Postgres it starts itself (it restarts it)")
        admin_execute(services.postgres_url, "CREATE DATABASE fleet_chaos")
        db_url = database_url(services.postgres_url, "fleet_chaos")
        migrations.upgrade(db_url)
        faults = HostFaults(
            agent_failure_rate=plan.failure_rate,
            api=ApiFaults(failure_rate=plan.failure_rate, rng=random.Random(plan.seed)),
            rng=random.Random(plan.seed + 1),
        )
        with simulated_cloud(work, faults=faults, boot_seconds=1.0) as cloud:
            env = fleet_environment(cloud, db_url, services.redis_url, work) | {
                "FLEET_LEASE_SECONDS": "6",
                "FLEET_MAX_ATTEMPTS": "10",
                "FLEET_BACKOFF_BASE_SECONDS": "0.2",
                "FLEET_BACKOFF_MAX_SECONDS": "3",
                "FLEET_SWEEP_INTERVAL_SECONDS": "1",
                "FLEET_LAUNCH_RATE": "20",
                "FLEET_LAUNCH_BURST": "20",
                "FLEET_LOG_LEVEL": "DEBUG",
            }
            release(db_url)
            chaos = Chaos()
            # Every process and the app with a login of its role, never the owner.
            with (
                fleet_logins(env) as urls,
                fleet(env, urls, plan.workers, work) as processes,
                agitator(plan, rng, processes, chaos),
            ):
                targets = drive(db_url, urls["app"], cloud, services, plan, rng, chaos)
            return verify(db_url, cloud, env, services, work, targets, chaos)


def release(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as db:
        db.execute(
            "INSERT INTO releases (version, artifact_url, sha256) VALUES (%s, %s, %s)",
            (RELEASE, f"s3://releases/rln-{RELEASE}.tar.gz", hashlib.sha256(ARTIFACT).hexdigest()),
        )


@dataclass
class Processes:
    env: dict[str, str]
    urls: dict[str, str]  # role -> its login's database URL
    work: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start_worker(self, index: int) -> subprocess.Popen[bytes]:
        return self._start("worker", index)

    def _start(self, role: str, index: int) -> subprocess.Popen[bytes]:
        with open(self.work / f"{role}-{index}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "worker", role],
                env=as_login(self.env, self.urls, role), stdout=log, stderr=log,
            )  # fmt: skip


@contextmanager
def fleet(
    env: dict[str, str], urls: dict[str, str], workers: int, work: Path
) -> Iterator[Processes]:
    processes = Processes(env, urls, work)
    dispatcher = processes._start("dispatcher", 0)
    processes.workers = [processes.start_worker(i) for i in range(workers)]
    try:
        yield processes
    finally:
        with processes.lock:
            for process in [dispatcher, *processes.workers]:
                process.send_signal(signal.SIGTERM)
            for process in [dispatcher, *processes.workers]:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()


@contextmanager
def agitator(plan: Plan, rng: random.Random, processes: Processes, chaos: Chaos) -> Iterator[None]:
    """SIGKILL and restart random workers until the run ends."""
    stop = threading.Event()

    def agitate() -> None:
        while not stop.wait(plan.kill_every * rng.uniform(0.5, 1.5)):
            with processes.lock:
                index = rng.randrange(len(processes.workers))
                processes.workers[index].kill()
                processes.workers[index].wait()
                processes.workers[index] = processes.start_worker(index)
                chaos.worker_kills += 1

    thread = threading.Thread(target=agitate, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def drive(
    db_url: str,
    app_url: str,
    cloud: SimCloud,
    services: Services,
    plan: Plan,
    rng: random.Random,
    chaos: Chaos,
) -> dict[str, str]:
    """Move the nodes through the lifecycle; return the state each was last asked for.

    Redis is flushed and Postgres restarted at fixed points of the lifecycle, each while
    work is certainly pending, not at fixed times: on a fast machine a timed restart came
    after the fleet had already finished."""
    names = [f"chaos-{i:03d}" for i in range(plan.nodes)]
    targets = dict.fromkeys(names, "live")
    # What an app does (insert, ask) it does with the app's login; the harness watches as owner.
    with connect_retrying(app_url) as db:
        for name in names:
            db.execute(
                "INSERT INTO nodes (name, owner, region, instance_type, network, current_version,"
                " state) VALUES (%s, 'chaos', 'eu-west-1', 't3.small', 'regtest', '0.9.0',"
                " 'instance')",
                (name,),
            )
    time.sleep(FLUSH_AFTER_SECONDS)
    redis.Redis.from_url(services.redis_url).flushdb()
    chaos.redis_flushes += 1
    timed_settle(db_url, targets, plan, chaos, "live")
    kill_hosts(cloud, db_url, rng.sample(names, plan.dead_hosts), chaos)
    for asked, then in (("stop", "stopped"), ("update", "stopped"), ("start", "live")):
        began = time.monotonic()
        moved = ask(app_url, targets, names, asked, then)
        if asked == "update":
            chaos.updated = moved
            restart_postgres(services, chaos)
        timed_settle(db_url, targets, plan, chaos, asked, began)
    ask(app_url, targets, names[: plan.nodes // 2], "destroy", "destroyed")
    timed_settle(db_url, targets, plan, chaos, "destroy")
    return targets


def restart_postgres(services: Services, chaos: Chaos) -> None:
    assert services.local_postgres is not None
    services.local_postgres.restart()
    chaos.postgres_restarts += 1


def timed_settle(
    db_url: str,
    targets: dict[str, str],
    plan: Plan,
    chaos: Chaos,
    phase: str,
    began: float | None = None,
) -> None:
    """Wait for the phase to settle; its time counts from `began` (the request, and a
    Postgres restart made during it) when given, else from now."""
    began = time.monotonic() if began is None else began
    settle(db_url, targets, plan.settle_seconds)
    chaos.phases.append((phase, time.monotonic() - began))


def kill_hosts(cloud: SimCloud, db_url: str, names: list[str], chaos: Chaos) -> None:
    with connect_retrying(db_url) as db:
        ids = dict(db.execute("SELECT name, instance_id FROM nodes WHERE name = ANY(%s)", (names,)))
    for name, instance_id in ids.items():
        if instance_id in cloud.hosts:
            cloud.run(cloud.host_of(instance_id).power_off())
            chaos.hosts_killed.append(name)


def ask(db_url: str, targets: dict[str, str], names: list[str], state: str, then: str) -> list[str]:
    """Request `state` for the named nodes that are not held (a held node waits for an
    operator; the chaos run leaves it held, with its error, for the report)."""
    with connect_retrying(db_url) as db:
        moved = db.execute(
            "UPDATE nodes SET state = %s, target_version = CASE WHEN %s = 'update' THEN %s"
            " ELSE target_version END WHERE name = ANY(%s) AND NOT held RETURNING name",
            (state, state, RELEASE, names),
        ).fetchall()
    for (name,) in moved:
        targets[name] = then
    return [name for (name,) in moved]


def settle(db_url: str, targets: dict[str, str], timeout: float) -> None:
    """Wait until every node is where it was sent or held."""
    deadline = time.monotonic() + timeout
    rows: list[tuple[str, str, bool, int, str | None]] = []
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(db_url, autocommit=True) as db:
                rows = db.execute(
                    "SELECT name, state, held, attempts, last_error FROM nodes"
                ).fetchall()
        except psycopg.OperationalError:
            time.sleep(0.5)  # Postgres is being restarted
            continue
        if all(held or state == targets[name] for name, state, held, *_ in rows):
            return
        time.sleep(0.5)
    stuck = [f"{name} in {state} (asked {targets[name]}, {attempts} attempts, {error})"
             for name, state, held, attempts, error in rows
             if not held and state != targets[name]]  # fmt: skip
    raise SystemExit(f"chaos: {len(stuck)} nodes did not settle in time: " + "; ".join(stuck[:5]))


@contextmanager
def connect_retrying(db_url: str) -> Iterator[psycopg.Connection]:
    for _ in range(60):
        try:
            connection = psycopg.connect(db_url, autocommit=True)
            break
        except psycopg.OperationalError:
            time.sleep(0.5)
    else:
        raise SystemExit("chaos: cannot reach Postgres")
    with connection:
        yield connection


def verify(
    db_url: str,
    cloud: SimCloud,
    env: dict[str, str],
    services: Services,
    work: Path,
    targets: dict[str, str],
    chaos: Chaos,
) -> list[Check]:
    with connect_retrying(db_url) as db:
        rows = db.execute(
            "SELECT id, name, state, held, last_error, instance_id FROM nodes"
        ).fetchall()
        secrets = db.execute("SELECT node_id, kind, key_id, nonce, ciphertext FROM node_secrets")
        sealed = secrets.fetchall()
        versions = db.execute(
            "SELECT name, current_version, held FROM nodes WHERE name = ANY(%s)",
            (chaos.updated,),
        ).fetchall()
    checks = [
        check_states(rows, targets),
        check_updates(versions, len(chaos.updated)),
        check_one_instance_each(cloud, rows),
        check_no_orphans(env, db_url),
    ]
    ring = KeyRing.parse(env["FLEET_SECRET_KEYS"], env["FLEET_SECRET_KEY_ID"])
    plain = [
        ring.open(node_id, kind, key_id, nonce, blob).reveal()
        for node_id, kind, key_id, nonce, blob in sealed
    ]
    checks.append(check_mnemonics(cloud, rows, ring, sealed))
    checks.append(check_no_leaks(plain, services, work))
    checks.append(check_tunnelled(cloud))
    checks.append(
        Check(
            "chaos happened",
            chaos.worker_kills > 0 and chaos.redis_flushes == 1 and chaos.postgres_restarts == 1,
            f"{chaos.worker_kills} worker kills, {chaos.redis_flushes} Redis flush, "
            f"{chaos.postgres_restarts} Postgres restart, "
            f"{len(chaos.hosts_killed)} hosts killed; phases "
            + ", ".join(f"{phase} {seconds:.0f}s" for phase, seconds in chaos.phases),
        )
    )
    return checks


Row = tuple[int, str, str, bool, str | None, str | None]


def check_states(rows: list[Row], targets: dict[str, str]) -> Check:
    arrived = sum(1 for _, name, state, held, *_ in rows if state == targets[name] and not held)
    held = [(name, error) for _, name, _, is_held, error, _ in rows if is_held]
    unnamed = [name for name, error in held if not error]
    causes = sorted({(error or "")[:60] for _, error in held})
    return Check(
        "every node arrived or is held with its cause",
        arrived + len(held) == len(rows) and not unnamed,
        f"{arrived} arrived, {len(held)} held" + (f" ({'; '.join(causes)})" if causes else ""),
    )


def check_updates(versions: list[tuple[str, str | None, bool]], asked: int) -> Check:
    """The update really happened: arriving back in `stopped` is not proof of it (a
    Postgres that lost the request would leave the nodes there too)."""
    updated = sum(1 for _, version, _ in versions if version == RELEASE)
    held = sum(1 for _, version, is_held in versions if version != RELEASE and is_held)
    return Check(
        "every node asked to update runs the release",
        asked > 0 and updated + held == asked,
        f"{updated} of {asked} on {RELEASE}, {held} held",
    )


def check_one_instance_each(cloud: SimCloud, rows: list[Row]) -> Check:
    pages = cloud.client("ec2").get_paginator("describe_instances").paginate()
    counts: dict[str, int] = {}
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                node = tags.get(NODE_ID_TAG, "?")
                counts[node] = counts.get(node, 0) + 1
    launched = [counts.get(str(node_id), 0) for node_id, *_ in rows]
    return Check(
        "exactly one instance ever launched per node",
        all(n == 1 for n in launched) and sum(counts.values()) == len(rows),
        f"{sum(counts.values())} instances for {len(rows)} nodes",
    )


def check_no_orphans(env: dict[str, str], db_url: str) -> Check:
    settings = StepSettings.model_validate(
        {"aws_endpoint_url": env["FLEET_AWS_ENDPOINT_URL"], "regions": {"eu-west-1": {"ami": "x"}}}
    )
    os.environ.update({"AWS_ACCESS_KEY_ID": "sim", "AWS_SECRET_ACCESS_KEY": "sim"})
    engine = engine_for(db_url, "fleet-chaos")
    with engine.connect() as connection:
        fleet = fleet_id(connection)
    marks = FleetMarks(fleet, settings.fleet_tag)
    findings = reconcile(engine, Ec2Cloud(settings, fleet), marks, ["eu-west-1"])
    bad = [f for f in findings if f.kind in ("orphan", "duplicate")]
    return Check(
        "no orphaned or duplicate instance (reconcile)",
        not bad,
        f"{len(bad)} orphans or duplicates, {len(findings) - len(bad)} other findings",
    )


def check_mnemonics(
    cloud: SimCloud,
    rows: list[Row],
    ring: KeyRing,
    sealed: list[tuple[int, str, str, bytes, bytes]],
) -> Check:
    stored = {
        node_id: ring.open(node_id, "mnemonic", key_id, nonce, blob).reveal()
        for node_id, kind, key_id, nonce, blob in sealed
        if kind == "mnemonic"
    }
    with_wallets = 0
    mismatched = 0
    for node_id, *_, instance_id in rows:
        host = cloud.hosts_ever.get(instance_id or "")
        if host is None or host.disk.mnemonic is None:
            continue
        disk = host.disk
        with_wallets += 1
        mismatched += stored.get(node_id) != disk.mnemonic
    return Check(
        "every wallet's mnemonic decrypts and is the node's",
        mismatched == 0 and with_wallets > 0,
        f"{with_wallets} wallets checked, {mismatched} mismatched",
    )


def check_no_leaks(plain: list[str], services: Services, work: Path) -> Check:
    client = redis.Redis.from_url(services.redis_url)
    redis_text = "".join(repr(client.dump(k)) + repr(k) for k in client.scan_iter())
    logs = "".join(p.read_text(errors="replace") for p in work.glob("*.log"))
    leaks = [
        where
        for secret in plain
        for where, text in (("redis", redis_text), ("logs", logs))
        if secret in text
    ]
    return Check(
        "no secret in Redis or the logs",
        not leaks and bool(logs),
        f"{len(plain)} secrets searched in {len(logs) // 1024} KiB of logs and Redis",
    )


def check_tunnelled(cloud: SimCloud) -> Check:
    traffic = cloud.api_traffic()
    return Check(
        "no secret crossed a connection other than the SSH tunnel",
        traffic.direct_secrets == 0 and traffic.tunnelled > 0,
        f"{traffic.direct_secrets} direct calls carrying secrets "
        f"({traffic.direct} direct calls in all, {traffic.tunnelled} through the tunnel)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--failure-rate", type=float, default=0.1)
    # A worker costs about 3 s of CPU to start (imports, botocore's service model): on 2
    # cores, killing one every 3 s left the fleet mostly restarting workers.
    parser.add_argument("--kill-every", type=float, default=8.0, help="seconds (mean)")
    parser.add_argument("--dead-hosts", type=int, default=0, help="default: 2%% of the nodes")
    parser.add_argument("--settle-seconds", type=float, default=1200, help="limit per phase")
    parser.add_argument("--keep", type=Path, help="keep the logs in this directory")
    args = parser.parse_args()
    plan = Plan(
        args.nodes,
        args.workers,
        args.failure_rate,
        args.kill_every,
        args.dead_hosts or max(1, args.nodes // 50),
        settle_seconds=args.settle_seconds,
    )
    started = time.monotonic()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        checks = run(plan, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="fleet-chaos-") as work:
            checks = run(plan, Path(work))
    print(
        f"chaos run: {plan.nodes} nodes, {plan.workers} workers, "
        f"{plan.failure_rate:.0%} SSH/API failures, {time.monotonic() - started:.0f}s"
    )
    for c in checks:
        print(f"  [{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.detail}")
    raise SystemExit(0 if all(c.passed for c in checks) else 1)


if __name__ == "__main__":
    main()
