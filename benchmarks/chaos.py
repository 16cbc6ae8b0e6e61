"""The chaos run: the whole lifecycle under faults, then a check of what must hold.

Nodes go new -> live -> stop -> stopped -> update -> stopped -> start -> live, then
through a rollout of a new release (a fifth of them stopped first; batch 10%, paused and
resumed by hand) and a small second rollout aborted midway (chaos_rollout.py), and half
of them on to destroyed, while the simulator fails a share of SSH and API calls, the harness
SIGKILLs and restarts random workers, flushes Redis once and restarts Postgres (its own)
once, and, while nodes climb to live, reboots some live hosts, crashes some daemons,
stops some instances from outside and kills some hosts for good (chaos_health.py), with
`fleet watch` running. At the end it checks and prints:
- every node reached the state it was asked for, or is held with an error naming why;
- exactly one instance was ever launched per node, two for a replaced one (counted in
  the cloud by tag);
- no orphaned instance (reconcile finds none);
- every initialised wallet's mnemonic decrypts from the database and is the node's;
- no secret in Redis or in the logs;
- no secret crossed a connection other than the node's SSH tunnel (the simulated
  daemons count the calls that reached them directly, and those that carried secrets);
- every node ends where it was last asked, with no operator action but the dead hosts'
  replace;
- /init was called once per node (no heal re-initialised a wallet);
- every dead host is held as "instance gone" or "unreachable", then replaced (accepting
  the loss of its channels: it died live) and ends where it was last asked;
- every live-node fault was healed by the watch alone (detection and heal p50/p99);
- the rollout: every selected node on the new release and back where it was (live or
  stopped), or held with its cause; max-unavailable never exceeded (from the history);
  pause began no batch and resume went on; the aborted one left the nodes it updated
  updated and the rest untouched.

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
from benchmarks.chaos_health import (
    DEAD_CAUSES,
    HEALED,
    FaultRates,
    LiveFaults,
    injecting,
    percentiles,
    plan_faults,
    stops_instances,
    tally,
)
from benchmarks.chaos_rollout import (
    ABORT_RELEASE,
    ROLLOUT_RELEASE,
    STOPPED_SHARE,
    Check,
    abort_checks,
    abort_midway,
    add_releases,
    connected,
    roll,
    rollout_checks,
)
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
    # Live-node faults for the health watch (reboots, crashes, stopped instances, dead hosts).
    faults: FaultRates = field(default_factory=FaultRates)
    seed: int = 7
    settle_seconds: float = 600  # per phase
    watch_interval: float = 2.0  # seconds between two probes of one node


@dataclass
class Chaos:
    """What the harness did, for the report."""

    worker_kills: int = 0
    redis_flushes: int = 0
    postgres_restarts: int = 0
    updated: list[str] = field(default_factory=list)  # nodes asked to update
    phases: list[tuple[str, float]] = field(default_factory=list)  # (asked, seconds)
    dead_held: dict[str, str] = field(default_factory=dict)  # dead host's node -> its hold
    # After the update phase: each updated node's version and hold (later phases move on).
    update_versions: list[tuple[str, str | None, bool]] = field(default_factory=list)
    rollout: list[Check] = field(default_factory=list)  # the rollout phase's checks


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
            add_releases(db_url, cloud)
            chaos = Chaos()
            names = [f"chaos-{i:03d}" for i in range(plan.nodes)]
            live = LiveFaults(cloud, db_url, plan_faults(names, plan.faults, rng, cloud))
            # Every process and the app with a login of its role, never the owner.
            with (
                fleet_logins(env) as urls,
                fleet(env | watch_settings(plan), urls, plan.workers, work) as processes,
                agitator(plan, rng, processes, chaos),
                injecting(live),
            ):
                targets = drive(db_url, urls, names, services, plan, chaos, live)
            return verify(db_url, cloud, env, services, work, targets, chaos, live)


def watch_settings(plan: Plan) -> dict[str, str]:
    """The watch probes every node each interval; a host silent for 10 intervals (EC2
    says it runs) is held as unreachable: long enough that the run's 10% API failures and
    a busy machine never hold a healthy node, short enough for the run."""
    return {
        "FLEET_WATCH_INTERVAL_SECONDS": str(plan.watch_interval),
        "FLEET_WATCH_REFRESH_SECONDS": "0.5",
        "FLEET_WATCH_PROBE_TIMEOUT_SECONDS": "5",
        "FLEET_WATCH_UNREACHABLE_HOLD_SECONDS": str(10 * plan.watch_interval),
    }


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
    watch = processes._start("watch", 0)
    processes.workers = [processes.start_worker(i) for i in range(workers)]
    try:
        yield processes
    finally:
        with processes.lock:
            for process in [dispatcher, watch, *processes.workers]:
                process.send_signal(signal.SIGTERM)
            for process in [dispatcher, watch, *processes.workers]:
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
    urls: dict[str, str],
    names: list[str],
    services: Services,
    plan: Plan,
    chaos: Chaos,
    faults: LiveFaults,
) -> dict[str, str]:
    """Move the nodes through the lifecycle; return the state each was last asked for.

    Redis is flushed and Postgres restarted at fixed points of the lifecycle, each while
    work is certainly pending, not at fixed times: on a fast machine a timed restart came
    after the fleet had already finished. The live-node faults are made while the nodes
    climb to live (first and after the update); a phase ends when its nodes arrived and
    its faults are healed or held, by the watch alone."""
    targets = dict.fromkeys(names, "live")
    app_url = urls["app"]
    faults.open("live")
    # What an app does (insert, ask) it does with the app's login; the harness watches as owner.
    with connected(app_url) as db:
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
    timed_settle(db_url, targets, plan, chaos, "live", faults=faults)
    began = time.monotonic()
    chaos.dead_held = replace_dead(urls["operator"], faults.dead())
    timed_settle(db_url, targets, plan, chaos, "replace", began)
    for asked, then in (("stop", "stopped"), ("update", "stopped"), ("start", "live")):
        began = time.monotonic()
        faults.open(asked)
        moved = ask(app_url, targets, names, asked, then)
        if asked == "update":
            chaos.updated = moved
            restart_postgres(services, chaos)
        timed_settle(db_url, targets, plan, chaos, asked, began, faults)
        if asked == "update":
            chaos.update_versions = versions_of(db_url, moved)
    rollouts(db_url, urls, names, plan, chaos, targets)
    faults.open("destroy")
    ask(app_url, targets, names[: plan.nodes // 2], "destroy", "destroyed")
    timed_settle(db_url, targets, plan, chaos, "destroy", faults=faults)
    return targets


def rollouts(
    db_url: str,
    urls: dict[str, str],
    names: list[str],
    plan: Plan,
    chaos: Chaos,
    targets: dict[str, str],
) -> None:
    """The rollout phase (benchmarks/chaos_rollout.py): a fifth of the nodes stopped, a
    rollout of the fleet batch 10% (paused and resumed by hand), then a small rollout
    aborted midway; checked before the destroy phase moves the nodes on."""
    began = time.monotonic()
    ask(urls["app"], targets, names[::STOPPED_SHARE], "stop", "stopped")
    settle(db_url, targets, plan.settle_seconds)
    run = roll(db_url, urls["operator"], targets, plan.settle_seconds)
    timed_settle(db_url, targets, plan, chaos, f"rollout to {ROLLOUT_RELEASE}", began)
    chaos.rollout = rollout_checks(db_url, run)
    began = time.monotonic()
    abort_midway(db_url, urls["operator"], targets, run, plan.settle_seconds)
    timed_settle(db_url, targets, plan, chaos, f"aborted rollout to {ABORT_RELEASE}", began)
    chaos.rollout += abort_checks(db_url, run)


def versions_of(db_url: str, names: list[str]) -> list[tuple[str, str | None, bool]]:
    with connected(db_url) as db:
        rows = db.execute(
            "SELECT name, current_version, held FROM nodes WHERE name = ANY(%s)", (names,)
        ).fetchall()
    return [(str(name), version, bool(held)) for name, version, held in rows]


def replace_dead(operator_url: str, dead: list[str]) -> dict[str, str]:
    """What an operator does about each dead host the watch held: `fleet node replace`,
    accepting the channels' loss (each died live, so no backup is clean: its last state was
    unlocked). Returns each one's hold, as the watch left it."""
    held: dict[str, str] = {}
    with connected(operator_url) as db:
        for name in dead:
            [(error,)] = db.execute("SELECT last_error FROM nodes WHERE name = %s AND held",
                                    (name,)).fetchall()  # fmt: skip
            held[name] = str(error)
            db.execute("SELECT fleet_request_replace(%s, true)", (name,))
    return held


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
    faults: LiveFaults | None = None,
) -> None:
    """Wait for the phase to settle (and its live-node faults to be healed or held); its
    time counts from `began` (the request, and a Postgres restart made during it) when
    given, else from now."""
    began = time.monotonic() if began is None else began
    settle(db_url, targets, plan.settle_seconds, faults, phase)
    chaos.phases.append((phase, time.monotonic() - began))


def ask(db_url: str, targets: dict[str, str], names: list[str], state: str, then: str) -> list[str]:
    """Request `state` for the named nodes that are not held (a held node waits for an
    operator; the chaos run leaves it held, with its error, for the report)."""
    with connected(db_url) as db:
        moved = db.execute(
            "UPDATE nodes SET state = %s, target_version = CASE WHEN %s = 'update' THEN %s"
            " ELSE target_version END WHERE name = ANY(%s) AND NOT held RETURNING name",
            (state, state, RELEASE, names),
        ).fetchall()
    for (name,) in moved:
        targets[name] = then
    return [name for (name,) in moved]


def settle(
    db_url: str,
    targets: dict[str, str],
    timeout: float,
    faults: LiveFaults | None = None,
    phase: str = "",
) -> None:
    """Wait until every node is where it was sent or held, and the phase's faults are
    made and healed or held."""
    deadline = time.monotonic() + timeout
    rows: list[tuple[str, str, bool, int, str | None]] = []
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(db_url, autocommit=True) as db:
                rows = db.execute(
                    "SELECT name, state, held, attempts, last_error FROM nodes"
                ).fetchall()
                faulted = faults is None or faults.settled(db, phase)
        except psycopg.OperationalError:
            time.sleep(0.5)  # Postgres is being restarted
            continue
        if faulted and all(held or state == targets[name] for name, state, held, *_ in rows):
            return
        time.sleep(0.5)
    if faults is not None:
        unresolved = [f"{f.node} ({f.kind}, made at {f.at})" for f in faults.faults
                      if f.phase == phase and not f.outcome]  # fmt: skip
        if unresolved:
            raise SystemExit("chaos: faults neither healed nor held in time: "
                             + "; ".join(unresolved[:5]))  # fmt: skip
    stuck = [f"{name} in {state} (asked {targets[name]}, {attempts} attempts, {error})"
             for name, state, held, attempts, error in rows
             if not held and state != targets[name]]  # fmt: skip
    raise SystemExit(f"chaos: {len(stuck)} nodes did not settle in time: " + "; ".join(stuck[:5]))


def verify(
    db_url: str,
    cloud: SimCloud,
    env: dict[str, str],
    services: Services,
    work: Path,
    targets: dict[str, str],
    chaos: Chaos,
    faults: LiveFaults,
) -> list[Check]:
    with connected(db_url) as db:
        rows = db.execute(
            "SELECT id, name, state, held, last_error, instance_id FROM nodes"
        ).fetchall()
        secrets = db.execute("SELECT node_id, kind, key_id, nonce, ciphertext FROM node_secrets")
        sealed = secrets.fetchall()
    checks = [
        check_states(rows, targets),
        check_updates(chaos.update_versions, len(chaos.updated)),
        check_one_instance_each(cloud, rows, set(chaos.dead_held)),
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
    checks.extend(check_watch(cloud, rows, targets, faults, chaos))
    checks.extend(chaos.rollout)
    checks.append(
        Check(
            "chaos happened",
            chaos.worker_kills > 0 and chaos.redis_flushes == 1 and chaos.postgres_restarts == 1,
            f"{chaos.worker_kills} worker kills, {chaos.redis_flushes} Redis flush, "
            f"{chaos.postgres_restarts} Postgres restart, "
            f"{len(faults.dead())} hosts killed; phases "
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


def check_one_instance_each(cloud: SimCloud, rows: list[Row], replaced: set[str]) -> Check:
    """One instance per launch: a node whose host was replaced has had two."""
    pages = cloud.client("ec2").get_paginator("describe_instances").paginate()
    counts: dict[str, int] = {}
    for page in pages:
        for reservation in page["Reservations"]:
            for instance in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                node = tags.get(NODE_ID_TAG, "?")
                counts[node] = counts.get(node, 0) + 1
    wanted = {str(node_id): 2 if name in replaced else 1 for node_id, name, *_ in rows}
    return Check(
        "exactly one instance ever launched per node (two for a replaced host)",
        all(counts.get(node, 0) == n for node, n in wanted.items())
        and sum(counts.values()) == sum(wanted.values()),
        f"{sum(counts.values())} instances for {len(rows)} nodes, {len(replaced)} replaced",
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


def check_watch(
    cloud: SimCloud, rows: list[Row], targets: dict[str, str], faults: LiveFaults, chaos: Chaos
) -> list[Check]:
    """What the health watch must have done with no operator action (and no retry by
    the harness): healed every node not on a dead host, never re-initialised a wallet,
    held the dead hosts with their cause; and that a replace brought each dead one back."""
    dead = set(faults.dead())
    astray = [f"{name} in {state}{' (held: ' + (error or '')[:60] + ')' if held else ''}"
              for _, name, state, held, error, _ in rows
              if held or state != targets[name]]  # fmt: skip
    inits = [cloud.hosts_ever[instance].disk.init_calls for *_, instance in rows
             if instance in cloud.hosts_ever]  # fmt: skip
    unheld = [name for name in dead if not any(
        cause in chaos.dead_held.get(name, "").lower() for cause in DEAD_CAUSES)]  # fmt: skip
    healed = [f for f in faults.faults if f.kind in HEALED]
    unhealed = [f"{f.node} ({f.kind}): {f.outcome or 'not made'}"
                for f in healed if f.outcome != "healed"]  # fmt: skip
    detected = [f.detected for f in faults.faults if f.detected is not None]
    stops = "" if stops_instances(cloud) else " (this simulator cannot stop an instance)"
    return [
        Check("every node ends where it was last asked (the dead hosts' after a replace)",
              not astray and len(rows) > len(dead),
              f"{len(rows)} nodes, {len(dead)} replaced, {len(astray)} astray"
              + (f" ({'; '.join(astray[:5])})" if astray else "")),
        Check("/init called once per node (no heal re-initialised a wallet)",
              bool(inits) and all(n == 1 for n in inits),
              f"{sum(inits)} /init calls on {len(inits)} hosts"),
        Check("every dead host was held as instance gone or unreachable, then replaced",
              bool(dead) and not unheld,
              f"{len(dead) - len(unheld)} of {len(dead)} held"
              + (f" (not: {', '.join(unheld)})" if unheld else "")),
        Check("every live-node fault healed by the watch alone",
              bool(healed) and not unhealed and len(detected) == len(faults.faults),
              f"{tally(faults.faults)}{stops}; detection {percentiles(detected)}, heal "
              f"{percentiles([f.healed for f in healed if f.healed is not None])}"
              + (f"; not healed: {'; '.join(unhealed[:5])}" if unhealed else "")),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--failure-rate", type=float, default=0.1)
    # A worker costs about 3 s of CPU to start (imports, botocore's service model): on 2
    # cores, killing one every 3 s left the fleet mostly restarting workers.
    parser.add_argument("--kill-every", type=float, default=8.0, help="seconds (mean)")
    rates = FaultRates()
    for name, default in (
        ("reboot", rates.reboot),
        ("crash", rates.crash),
        ("stop-instance", rates.stop_instance),
        ("dead-host", rates.dead_host),
    ):
        parser.add_argument(f"--{name}-rate", type=float, default=default,
                            help=f"share of the nodes (default {default * 100:g}%%)")  # fmt: skip
    parser.add_argument("--watch-interval", type=float, default=2.0, help="seconds")
    parser.add_argument("--settle-seconds", type=float, default=1200, help="limit per phase")
    parser.add_argument("--keep", type=Path, help="keep the logs in this directory")
    args = parser.parse_args()
    plan = Plan(
        args.nodes,
        args.workers,
        args.failure_rate,
        args.kill_every,
        FaultRates(args.reboot_rate, args.crash_rate, args.stop_instance_rate, args.dead_host_rate),
        settle_seconds=args.settle_seconds,
        watch_interval=args.watch_interval,
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
