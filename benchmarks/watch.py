"""The health watch: one `fleet watch` process (its own login, the fleet's defaults but
for the interval) keeping N live nodes of the simulated cloud under watch.

The nodes are made directly, not through the lifecycle: benchmarks.watch_fleet says how
and what that leaves out. The simulator (moto, the hosts' SSH servers and daemons) runs in
the harness process, the watch in its own, so /proc/<pid>/stat of the watch is the
watch's CPU alone (user + system).

- Warm-up: from the watch's start until every node has been probed once (its SSH
  connection made and kept): CPU per first probe, an info row.
- Steady state: `windows` intervals, one interval after the warm-up (the first round's
  handshakes put the schedule behind; it catches up in that interval). CPU per probe =
  the watch's CPU seconds over the window / probes done in it (node_health.probes,
  summed); probes per second against the schedule's N / interval; overdue = the most
  nodes, at any of the samples taken every few seconds, whose last probe is older than
  the interval plus the watch's batched-write delay (FLUSH_SLACK_SECONDS).
- Detection: `reboots` hosts are rebooted at once (SSH drops, the daemon comes back
  locked); latency = from each reboot to the watch's heal row in node_history (the
  database's clock and this machine's are the same clock). The reference is the
  interval: a probe once per interval means a uniform 0..interval wait, so p99 near the
  interval is the schedule working, not slowness.
- Reference for the CPU: benchmarks.watch_reference in its own process probes
  `reference_probes` of the nodes the workers' way (a new paramiko SSH session per API
  call, jobs/tunnel.py), measured in the same run, while the watch keeps running.

Targets (issue 11): under 2 ms of the watch's CPU per probe, one process keeps N nodes
on a 30 s interval (probes/s >= 0.95 x N / interval, no node overdue)."""

import base64
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncssh
import psycopg

from benchmarks.cpu import process_seconds
from benchmarks.harness import (
    Bench,
    BenchFailed,
    Processes,
    bench_settings,
    fleet_env,
    fresh_database,
    login_url,
    median,
    percentile,
    processes,
    scalar,
)
from benchmarks.report import Figure, Measurement, Target
from benchmarks.watch_fleet import BenchNode, make_fleet
from jobs.config import RegionConfig
from models.secrets import KeyRing
from sim.cloud import SimCloud, SimSettings
from sim.ssh_server import public_key_text
from worker.settings import FleetSettings

TARGET_CPU_MS = Target(2.0, at_most=True)
TARGET_RATE = Target(0.95, at_most=False, on_ratio=True)
TARGET_OVERDUE = Target(0.0, at_most=True)
TARGET_DETECTION = Target(1.1, at_most=True, on_ratio=True)
FLUSH_SLACK_SECONDS = 3.0  # results are written in batches (watch.loop.FLUSH_SECONDS)
SAMPLE_SECONDS = 3.0
AMI = "ami-0123456789abcdef0"
WATCH_COMMAND = [sys.executable, "-m", "worker", "watch"]


@dataclass(frozen=True)
class WatchSizes:
    nodes: int
    interval_seconds: float
    windows: int  # steady-state intervals measured
    reboots: int
    reference_probes: int


def measure(bench: Bench, sizes: WatchSizes) -> Measurement:
    with fresh_database(bench, "watch") as db_url, simulated_hosts(bench) as cloud:
        config, ring = watch_settings(bench, db_url, cloud)
        began = time.monotonic()
        nodes = make_fleet(cloud, db_url, ring, sizes.nodes)
        setup_seconds = time.monotonic() - began
        with processes(bench, "watch") as started:
            details = watch_run(bench, db_url, config, cloud, nodes, sizes, started)
    details |= {"sizes": asdict(sizes), "setup_seconds": round(setup_seconds, 1)}
    # What EC2's buckets (AWS's sizes, sim/ec2_limits.py) refused of the watch's describes.
    throttle = cloud.launches.throttle
    details["ec2_throttling"] = throttle.summary() if throttle is not None else None
    return Measurement("watch", figures(sizes, details), details)


@contextmanager
def simulated_hosts(bench: Bench) -> Iterator[SimCloud]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    private, public = bench.workdir / "watch_ssh_key", bench.workdir / "watch_ssh_key.pub"
    key.write_private_key(str(private))
    key.write_public_key(str(public))
    private.chmod(0o600)
    first = f"127.{random.randint(100, 250)}.{random.randint(0, 200)}.1"
    # The hosts are made by benchmarks.watch_fleet, not by the simulator's watcher: it
    # need not poll EC2 (which, over thousands of instances, would cost this process CPU).
    cloud = SimCloud(SimSettings(client_public_key=public, first_address=first,
                                 poll_seconds=3600.0))  # fmt: skip
    cloud.start()
    try:
        yield cloud
    finally:
        cloud.stop()


def watch_settings(bench: Bench, db_url: str, cloud: SimCloud) -> tuple[FleetSettings, KeyRing]:
    secret_key = (bench.workdir / "watch_ssh_key").as_posix()
    keys = "bench:" + _random_key()
    config = bench_settings(
        db_url,
        bench.services.redis_url,
        aws_endpoint_url=cloud.aws_url,
        regions={cloud.settings.region: RegionConfig(ami=AMI)},
        default_region=cloud.settings.region,
        ssh_port=cloud.settings.ssh_port,
        ssh_key_path=secret_key,
        node_api_port=cloud.settings.api_port,
        secret_keys=keys,
        secret_key_id="bench",
    )
    return config, KeyRing.parse(keys, "bench")


def _random_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def watch_env(
    db_url: str, config: FleetSettings, cloud: SimCloud, interval: float
) -> dict[str, str]:
    env = fleet_env(config, {
        "AWS_ACCESS_KEY_ID": "sim", "AWS_SECRET_ACCESS_KEY": "sim",
        "AWS_DEFAULT_REGION": cloud.settings.region,
        "FLEET_WATCH_INTERVAL_SECONDS": str(interval),
    })  # fmt: skip
    return env | {"FLEET_DATABASE_URL": login_url(db_url, "watch")}


def watch_run(
    bench: Bench, db_url: str, config: FleetSettings, cloud: SimCloud,
    nodes: list[BenchNode], sizes: WatchSizes, started: Processes,
) -> dict[str, Any]:  # fmt: skip
    interval = sizes.interval_seconds
    env = watch_env(db_url, config, cloud, interval)
    process = started.start("watch", WATCH_COMMAND, env)
    warm = warm_up(db_url, process.pid, sizes, started)
    # The first round's handshakes put the schedule behind; one interval to catch up
    # before the steady state is measured (else its overdue count is the warm-up's).
    settled_at = time.monotonic() + interval
    wait_for(lambda: time.monotonic() >= settled_at, 2 * interval, "settling", started)
    steady = steady_state(db_url, process.pid, interval * sizes.windows, interval, started)
    healthy = statuses(db_url)
    reference = reference_run(bench, env, nodes[: sizes.reference_probes], started)
    rebooted = random.sample(nodes, min(sizes.reboots, len(nodes)))
    detection = detect_reboots(db_url, cloud, rebooted, interval, started)
    return {"warm_up": warm, "steady": steady, "statuses_after_steady": healthy,
            "reference": reference, "detection": detection}  # fmt: skip


def warm_up(db_url: str, pid: int, sizes: WatchSizes, started: Processes) -> dict[str, Any]:
    """From the first probe recorded (the process is started, its imports done) until
    every node was probed: each of those probes made its node's SSH connection."""
    timeout = 3 * sizes.interval_seconds + 60 + sizes.nodes * 0.05
    wait_for(lambda: probed_nodes(db_url) > 0, timeout, "a first probe", started)
    cpu0, probes0, t0 = process_seconds(pid), total_probes(db_url), time.monotonic()
    wait_for(lambda: probed_nodes(db_url) >= sizes.nodes, timeout, "every node probed once",
             started)  # fmt: skip
    cpu1, probes1 = process_seconds(pid), total_probes(db_url)
    probes = max(1, probes1 - probes0)
    return {"seconds": time.monotonic() - t0, "cpu_seconds": cpu1 - cpu0, "probes": probes,
            "cpu_ms_per_probe": (cpu1 - cpu0) * 1000 / probes}  # fmt: skip


def wait_for(done: Any, timeout: float, what: str, started: Processes) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        started.check_alive()
        if time.monotonic() > deadline:
            raise BenchFailed(f"watch: {what}: not done after {timeout:.0f} s\n{started.tails()}")
        time.sleep(0.5)


def probed_nodes(db_url: str) -> int:
    return int(scalar(db_url, "SELECT count(*) FROM node_health"))


def total_probes(db_url: str) -> int:
    return int(scalar(db_url, "SELECT coalesce(sum(probes), 0) FROM node_health"))


def overdue(db_url: str, interval: float) -> int:
    return int(scalar(
        db_url,
        "SELECT count(*) FROM node_health WHERE last_probe < now() - make_interval(secs => %s)",
        (interval + FLUSH_SLACK_SECONDS,),
    ))  # fmt: skip


def statuses(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        rows = connection.execute("SELECT status, count(*) FROM node_health GROUP BY 1").fetchall()
    return {str(status): int(count) for status, count in rows}


def steady_state(
    db_url: str, pid: int, seconds: float, interval: float, started: Processes
) -> dict[str, Any]:
    cpu0, probes0, t0 = process_seconds(pid), total_probes(db_url), time.monotonic()
    sim0 = own_cpu_seconds()
    most_overdue = 0
    while time.monotonic() - t0 < seconds:
        time.sleep(SAMPLE_SECONDS)
        started.check_alive()
        most_overdue = max(most_overdue, overdue(db_url, interval))
    cpu1, probes1, t1 = process_seconds(pid), total_probes(db_url), time.monotonic()
    simulator = own_cpu_seconds() - sim0
    probes = probes1 - probes0
    if probes <= 0:
        raise BenchFailed(f"watch: no probes in {seconds:.0f} s\n{started.tails()}")
    return {"seconds": t1 - t0, "cpu_seconds": cpu1 - cpu0, "probes": probes,
            "cpu_ms_per_probe": (cpu1 - cpu0) * 1000 / probes,
            "probes_per_second": probes / (t1 - t0), "most_overdue": most_overdue,
            "cpu_share_of_a_core": (cpu1 - cpu0) / (t1 - t0),
            "simulator_cpu_ms_per_probe": simulator * 1000 / probes,
            "simulator_share_of_a_core": simulator / (t1 - t0)}  # fmt: skip


def own_cpu_seconds() -> float:
    """This process's CPU: the simulator's hosts (its loop thread) and the harness."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reference_run(
    bench: Bench, env: dict[str, str], sample: list[BenchNode], started: Processes
) -> dict[str, Any]:
    targets = [[n.host.address, _pinned(n), n.root_private_hex] for n in sample]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.watch_reference"],
        input=json.dumps({"targets": targets}),
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchFailed(f"watch reference failed: {done.stderr[-2000:]}")
    found: dict[str, Any] = json.loads(done.stdout)
    found["cpu_ms_per_probe"] = found["cpu_seconds"] * 1000 / found["probes"]
    found["wall_ms_per_probe"] = found["wall_seconds"] * 1000 / found["probes"]
    return found


def _pinned(node: BenchNode) -> str:
    return public_key_text(node.host.host_key)


def detect_reboots(
    db_url: str, cloud: SimCloud, rebooted: list[BenchNode], interval: float, started: Processes
) -> dict[str, Any]:
    at: dict[int, float] = {}
    for node in rebooted:
        cloud.run(node.host.reboot())
        at[node.node_id] = time.time()
    ids = list(at)
    wait_for(lambda: len(heals(db_url, ids)) == len(ids), 2 * interval + 60,
             "every rebooted node healed", started)  # fmt: skip
    seconds = [healed.timestamp() - at[node_id] for node_id, healed in heals(db_url, ids).items()]
    return {"reboots": len(ids), "latency_seconds": sorted(round(s, 3) for s in seconds),
            "p50_seconds": percentile(seconds, 0.5), "p99_seconds": percentile(seconds, 0.99),
            "median_seconds": median(seconds)}  # fmt: skip


def heals(db_url: str, ids: list[int]) -> dict[int, datetime]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT node_id, min(at) FROM node_history WHERE event = 'heal'"
            " AND node_id = ANY(%s) GROUP BY node_id",
            (ids,),
        ).fetchall()
    return {int(node_id): healed for node_id, healed in rows}


def figures(sizes: WatchSizes, d: dict[str, Any]) -> list[Figure]:
    n, interval = sizes.nodes, sizes.interval_seconds
    steady, warm, ref, det = d["steady"], d["warm_up"], d["reference"], d["detection"]
    ref_label = f"fresh paramiko SSH per API call, {ref['probes']} probes"
    return [
        Figure(f"watch CPU per probe, {n:,} nodes, kept SSH", steady["cpu_ms_per_probe"], "ms",
               ref["cpu_ms_per_probe"], ref_label, TARGET_CPU_MS),
        Figure(f"watch CPU per first probe, {n:,} nodes (new SSH connection)",
               warm["cpu_ms_per_probe"], "ms",
               ref["cpu_ms_per_probe"], ref_label),
        Figure(f"watch probes/s, {n:,} nodes, every {interval:g} s", steady["probes_per_second"],
               "probes/s", n / interval, "the schedule: nodes / interval", TARGET_RATE),
        Figure(f"watch nodes overdue (> {interval:g} s + {FLUSH_SLACK_SECONDS:g} s unprobed)",
               float(steady["most_overdue"]), "nodes", None, f"of {n:,}", TARGET_OVERDUE),
        Figure(f"watch detection p50, {det['reboots']} reboots of {n:,}", det["p50_seconds"], "s",
               interval / 2, "half the interval (uniform wait)"),
        Figure(f"watch detection p99, {det['reboots']} reboots of {n:,}", det["p99_seconds"], "s",
               interval, "the interval", TARGET_DETECTION),
    ]  # fmt: skip
