"""Makespan: N nodes new -> live through the simulated cloud (sim.cloud.SimCloud, as
sim/demo.py runs it) with W `fleet worker` processes running the real steps, against the
floor the cloud sets, twice in one run: with batched launches (FLEET_LAUNCH_BATCH_MAX,
each region paced by EC2's own buckets) and, as the reference, one instance per
RunInstances paced by a fleet-wide budget of 2 a second, burst 5 (how the fleet launched
before batches).

Apart from the launch settings the fleet runs with its own defaults (poll interval,
leases); only the endpoints, the SSH key and the secret keys point at the simulator, whose
EC2 throttles as AWS documents (sim/ec2_limits.py). The nodes are inserted in `new` while
the fleet starts; once it is ready, one UPDATE asks for an instance for all of them.
Makespan: from that UPDATE to the last node's arrival in `live` (node_history, the
database's clock). CPU per node: what the fleet's processes (workers, dispatcher) and its
Postgres and Redis spent from that UPDATE to the last arrival, over N (the simulated cloud
runs in the harness and is not counted).

Floor = launches + boot + critical-path step latencies, from the cloud alone (never the
fleet's settings):
- launches = max(0, N - C) / R, where C and R are the simulated EC2's RunInstances
  resource bucket (instances; AWS's 1000, refilled at 2 a second): one call may launch
  many instances, so up to C launch at once and the rest no faster than R a second;
- boot = the simulator's boot_seconds: a launched instance gets its host (SSH, then the
  node API) that long after the simulator first sees it;
- step latencies = the simulator's delays on the last node's remaining path: the
  wallet's unlock (unlock_seconds) and the API's added latency per call (zero by
  default). SSH sessions and API calls otherwise cost only what they cost here, which is
  the fleet's overhead, not part of the floor."""

import base64
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncssh
import psycopg

from benchmarks.cpu import CpuMeter, CpuSnapshot, per_unit_ms
from benchmarks.harness import (
    Bench,
    BenchFailed,
    Processes,
    bench_settings,
    execute,
    fleet,
    fresh_database,
    held_count,
    insert_nodes,
    percentile,
    scalar,
)
from benchmarks.report import Figure, Measurement, Target
from jobs.config import RegionConfig
from sim.cloud import SimCloud, SimSettings, fleet_chain
from sim.ec2_limits import Ec2Limits
from worker.settings import FleetSettings

AMI = "ami-0123456789abcdef0"
PREFIX = "mk"
WATCH_SECONDS = 0.5
# API calls on the wallet step's path after the host is up (unlock is the slow one).
WALLET_API_CALLS = 4
# The targets: within 1.5x of the cloud's floor at 300 nodes, 2x at 1,000.
LARGE_FLEET = 1000
# How the fleet launched before batches: the reference's launch settings.
ONE_AT_A_TIME = {"launch_batch_max": 1, "launch_rate": 2.0, "launch_burst": 5.0}


@dataclass(frozen=True)
class MakespanSizes:
    nodes: int
    workers: int
    boot_seconds: float
    batch_max: int = 100
    reference: bool = True


@dataclass(frozen=True)
class Floor:
    launches: float
    boot: float
    steps: float

    @property
    def total(self) -> float:
        return self.launches + self.boot + self.steps


@dataclass(frozen=True)
class FleetRun:
    """One fleet's way from new to live: its figures and where the time and CPU went."""

    label: str
    makespan: float
    floor: Floor
    cpu_ms_per_node: dict[str, float]
    details: dict[str, Any]


def target_for(nodes: int) -> Target:
    return Target(2.0 if nodes >= LARGE_FLEET else 1.5, at_most=True, on_ratio=True)


def measure(bench: Bench, sizes: MakespanSizes) -> Measurement:
    batched = run_fleet(bench, sizes, {"launch_batch_max": sizes.batch_max}, "batched")
    reference = run_fleet(bench, sizes, ONE_AT_A_TIME, "one at a time") if sizes.reference else None
    floor = batched.floor
    name = f"makespan, {sizes.nodes} nodes new -> live, {sizes.workers} workers"
    figures = [Figure(f"{name}, batched launches", batched.makespan, "s", floor.total,
                      "floor (the cloud's limits)", target_for(sizes.nodes))]  # fmt: skip
    if reference is not None:
        figures.append(Figure(f"{name}, one launch per call (before)", reference.makespan, "s",
                              batched.makespan, "batched launches"))  # fmt: skip
    figures.append(Figure(f"CPU per node new -> live, {sizes.nodes} nodes, batched",
                          batched.cpu_ms_per_node["all"], "ms",
                          None if reference is None else reference.cpu_ms_per_node["all"],
                          "one launch per call"))  # fmt: skip
    details = {
        "sizes": asdict(sizes),
        "floor": asdict(floor) | {"total": floor.total},
        "runs": {
            run.label: run.details | {"cpu_ms_per_node": run.cpu_ms_per_node}
            for run in (batched, reference)
            if run is not None
        },
    }
    return Measurement(f"makespan_{sizes.nodes}", figures, details)


def run_fleet(
    bench: Bench, sizes: MakespanSizes, launching: dict[str, Any], label: str
) -> FleetRun:
    with fresh_database(bench, "makespan") as db_url, simulated_cloud(bench, sizes) as cloud:
        config = sim_fleet_settings(bench, db_url, cloud).model_copy(update=launching)
        insert_nodes(db_url, sizes.nodes, "new", prefix=PREFIX, region=cloud.settings.region)
        meter = CpuMeter(bench.services)
        with fleet(bench, config, sizes.workers, aws_env(cloud)) as started:
            before, after = timed_to_live(db_url, sizes, started, meter)
        timeline = node_timeline(db_url)
        details = {
            "launch_settings": launching,
            "launches": launch_summary(sorted(cloud.launches.launched_at)),
            "run_instances_calls": run_instances_calls(cloud),
            # What EC2's buckets (AWS's sizes, sim/ec2_limits.py) refused and let through.
            "ec2_throttling": cloud.launches.throttle.summary()
            if cloud.launches.throttle
            else None,
            "seconds_in_state": seconds_in_state(db_url),
            **timeline,
        }
    cpu = per_unit_ms(before, after, sizes.nodes)
    cpu.pop("harness", None)  # the simulated cloud runs there: not the fleet's cost
    cpu["all"] = round(sum(v for k, v in cpu.items() if k != "all"), 3)
    floor = floor_of(cloud.settings, sizes.nodes)
    return FleetRun(label, timeline["makespan_seconds"], floor, cpu, details)


def run_instances_calls(cloud: SimCloud) -> dict[str, int]:
    """RunInstances as the simulated EC2 saw them, by outcome (launched, replayed, ...)."""
    outcomes: dict[str, int] = {}
    for call in cloud.launches.calls:
        outcomes[call.outcome] = outcomes.get(call.outcome, 0) + 1
    return outcomes


def floor_of(sim: SimSettings, nodes: int) -> Floor:
    bucket = (sim.ec2_limits or Ec2Limits()).resource_bucket("RunInstances")
    assert bucket is not None, "EC2 limits RunInstances by instances"
    api_latency = sim.faults.api.latency_seconds * WALLET_API_CALLS
    return Floor(
        launches=max(0.0, nodes - bucket.capacity) / bucket.refill_per_second,
        boot=sim.boot_seconds,
        steps=sim.unlock_seconds + api_latency,
    )


@contextmanager
def simulated_cloud(bench: Bench, sizes: MakespanSizes) -> Iterator[SimCloud]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(bench.workdir / "fleet_ssh_key"))
    key.write_public_key(str(bench.workdir / "fleet_ssh_key.pub"))
    (bench.workdir / "fleet_ssh_key").chmod(0o600)
    # A random 127/8 block, as the tests do: other runs on this machine keep theirs.
    first = f"127.{random.randint(100, 250)}.{random.randint(0, 200)}.1"
    cloud = SimCloud(
        SimSettings(
            client_public_key=bench.workdir / "fleet_ssh_key.pub",
            first_address=first,
            boot_seconds=sizes.boot_seconds,
        )
    )
    cloud.start()
    try:
        yield cloud
    finally:
        cloud.stop()


def sim_fleet_settings(bench: Bench, db_url: str, cloud: SimCloud) -> FleetSettings:
    """The fleet's defaults; only the endpoints and keys point at the simulator."""
    return bench_settings(
        db_url,
        bench.services.redis_url,
        step_modules="jobs.steps",
        aws_endpoint_url=cloud.aws_url,
        regions={cloud.settings.region: RegionConfig(ami=AMI)},
        default_region=cloud.settings.region,
        address_source=f"tag:{cloud.settings.address_tag}",
        ssh_port=cloud.settings.ssh_port,
        ssh_key_path=str(Path(bench.workdir / "fleet_ssh_key")),
        node_api_port=cloud.settings.api_port,
        chain=fleet_chain(cloud.settings.chain, ["regtest"]),
        secret_keys="bench:" + base64.b64encode(os.urandom(32)).decode(),
        secret_key_id="bench",
    )


def aws_env(cloud: SimCloud) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "sim",
        "AWS_SECRET_ACCESS_KEY": "sim",
        "AWS_DEFAULT_REGION": cloud.settings.region,
    }


def drive_to_live(db_url: str, sizes: MakespanSizes, started: Processes) -> None:
    """Ask for every node at once; wait until all are live."""
    execute(db_url, "UPDATE nodes SET state = 'instance' WHERE state = 'new'")
    wait_live(db_url, sizes, started)


def timed_to_live(
    db_url: str, sizes: MakespanSizes, started: Processes, meter: CpuMeter
) -> tuple[CpuSnapshot, CpuSnapshot]:
    """drive_to_live, with the fleet's CPU snapshots at the request and the last arrival."""
    groups = {"workers": started.pids("worker"), "dispatcher": started.pids("dispatcher")}
    before = meter.snapshot(groups)
    drive_to_live(db_url, sizes, started)
    return before, meter.snapshot(groups)


def wait_live(db_url: str, sizes: MakespanSizes, started: Processes) -> None:
    """Until every node is live; a held node ends the run."""
    deadline = time.monotonic() + 300 + 20 * sizes.nodes
    while live_count(db_url) < sizes.nodes:
        started.check_alive()
        if held_count(db_url):
            raise BenchFailed(f"makespan: nodes held: {held_errors(db_url)}\n{started.tails()}")
        if time.monotonic() > deadline:
            raise BenchFailed(f"makespan: not all nodes live in time\n{started.tails()}")
        time.sleep(WATCH_SECONDS)


def live_count(db_url: str) -> int:
    return int(scalar(db_url, "SELECT count(*) FROM nodes WHERE state = 'live'"))


def held_errors(db_url: str) -> list[str]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT name || ': ' || coalesce(last_error, '') FROM nodes WHERE held LIMIT 5"
        ).fetchall()
    return [str(r[0]) for r in rows]


def node_timeline(db_url: str) -> dict[str, Any]:
    """Makespan, per-node time to live, and how often steps ran (claims per node)."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        per_node = connection.execute(
            "SELECT extract(epoch FROM min(at) FILTER (WHERE to_state = 'instance'))::float8,"
            "       extract(epoch FROM max(at) FILTER (WHERE to_state = 'live'))::float8"
            " FROM node_history WHERE event = 'transition' GROUP BY node_id"
        ).fetchall()
        claims = connection.execute(
            "SELECT avg(step_run)::float8, max(step_run) FROM nodes"
        ).fetchone()
    asked = min(float(r[0]) for r in per_node)
    to_live = [float(r[1]) - float(r[0]) for r in per_node]
    return {
        "makespan_seconds": max(float(r[1]) for r in per_node) - asked,
        "node_to_live_p50_seconds": percentile(to_live, 0.5),
        "node_to_live_max_seconds": max(to_live),
        "step_runs_per_node_mean": claims[0] if claims else None,
        "step_runs_per_node_max": claims[1] if claims else None,
    }


def seconds_in_state(db_url: str) -> dict[str, dict[str, float]]:
    """How long the nodes stayed in each state on the way to live (p50 and max): where
    the makespan goes beyond the floor."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT to_state, percentile_cont(0.5) WITHIN GROUP (ORDER BY stay)::float8,"
            "       max(stay)::float8"
            " FROM (SELECT to_state, extract(epoch FROM"
            "         lead(at) OVER (PARTITION BY node_id ORDER BY id) - at) AS stay"
            "       FROM node_history WHERE event = 'transition') stays"
            " WHERE stay IS NOT NULL GROUP BY to_state ORDER BY 2 DESC"
        ).fetchall()
    return {str(state): {"p50": round(p50, 2), "max": round(top, 2)} for state, p50, top in rows}


def launch_summary(launched_at: list[float]) -> dict[str, Any]:
    """What the simulated EC2 saw: instances launched, and over how long."""
    if not launched_at:
        return {"count": 0}
    return {"count": len(launched_at), "span_seconds": launched_at[-1] - launched_at[0]}
