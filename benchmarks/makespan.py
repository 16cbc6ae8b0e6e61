"""Makespan: N nodes new -> live through the simulated cloud (sim.cloud.SimCloud, as
sim/demo.py runs it) with W `fleet worker` processes running the real steps, against the
floor no fleet can beat.

The fleet runs with its own defaults (launch budget, poll interval, leases); only the
endpoints, the SSH key and the secret keys point at the simulator. The nodes are inserted
in `new` while the fleet starts; once it is ready, one UPDATE asks for an instance for all
of them. Makespan: from that UPDATE to the last node's arrival in `live` (node_history,
the database's clock).

Floor = launches + boot + critical-path step latencies, where
- launches = (N - launch_burst) / launch_rate: the fleet-wide token bucket lets the first
  launch_burst instances go at once, then launch_rate a second, so the last launch is no
  earlier than that;
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
from worker.settings import FleetSettings

TARGET = Target(1.25, at_most=True, on_ratio=True)
AMI = "ami-0123456789abcdef0"
PREFIX = "mk"
WATCH_SECONDS = 0.5
# API calls on the wallet step's path after the host is up (unlock is the slow one).
WALLET_API_CALLS = 4


@dataclass(frozen=True)
class MakespanSizes:
    nodes: int
    workers: int
    boot_seconds: float


@dataclass(frozen=True)
class Floor:
    launches: float
    boot: float
    steps: float

    @property
    def total(self) -> float:
        return self.launches + self.boot + self.steps


def measure(bench: Bench, sizes: MakespanSizes) -> Measurement:
    with fresh_database(bench, "makespan") as db_url, simulated_cloud(bench, sizes) as cloud:
        config = sim_fleet_settings(bench, db_url, cloud)
        insert_nodes(db_url, sizes.nodes, "new", prefix=PREFIX, region=cloud.settings.region)
        with fleet(bench, config, sizes.workers, aws_env(cloud)) as started:
            drive_to_live(db_url, sizes, started)
        timeline = node_timeline(db_url)
        dwell = seconds_in_state(db_url)
        launches = sorted(cloud.launches.launched_at)
        throttle = cloud.launches.throttle
        # What EC2's buckets (AWS's sizes, sim/ec2_limits.py) refused and let through.
        ec2_throttling = throttle.summary() if throttle is not None else None
    floor = floor_of(config, cloud.settings, sizes.nodes)
    figure = Figure(
        name=f"makespan, {sizes.nodes} nodes new -> live, {sizes.workers} workers",
        value=timeline["makespan_seconds"],
        unit="s",
        reference=floor.total,
        reference_label="floor",
        target=TARGET,
    )
    details = {
        "sizes": asdict(sizes),
        "floor": asdict(floor) | {"total": floor.total},
        "floor_inputs": {
            "launch_rate": config.launch_rate,
            "launch_burst": config.launch_burst,
            "boot_seconds": cloud.settings.boot_seconds,
            "unlock_seconds": cloud.settings.unlock_seconds,
            "poll_seconds": config.poll_seconds,
        },
        "launches": launch_summary(launches, config),
        "ec2_throttling": ec2_throttling,
        "seconds_in_state": dwell,
        **timeline,
    }
    return Measurement("makespan", [figure], details)


def floor_of(config: FleetSettings, sim: SimSettings, nodes: int) -> Floor:
    api_latency = sim.faults.api.latency_seconds * WALLET_API_CALLS
    return Floor(
        launches=max(0.0, nodes - config.launch_burst) / config.launch_rate,
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
    """Ask for every node at once; wait until all are live. A held node ends the run."""
    execute(db_url, "UPDATE nodes SET state = 'instance' WHERE state = 'new'")
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


def launch_summary(launched_at: list[float], config: FleetSettings) -> dict[str, Any]:
    """What the simulated EC2 saw: launches and the rate they achieved after the burst."""
    burst = int(config.launch_burst)
    if len(launched_at) <= burst:
        return {"count": len(launched_at)}
    after_burst = launched_at[burst:]
    span = after_burst[-1] - launched_at[0]
    return {
        "count": len(launched_at),
        "span_seconds": span,
        "rate_after_burst": len(after_burst) / span if span > 0 else None,
    }
