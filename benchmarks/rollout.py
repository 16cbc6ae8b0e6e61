"""Rollout: a release rolled across N live nodes through the simulated cloud, batch P%, by
the fleet's own dispatcher, workers and health watch, against the floor of its batches'
critical paths.

The nodes are first brought new -> live (as the makespan benchmark does, not timed);
then an operator login starts `fleet_start_rollout(..., batch_percent)` (what `fleet
rollout start --batch P%` calls). Figure: from the rollout's creation to its last node's
`done` (rollout_nodes.phase_at, the database's clock).

Floor = the sum over the batches of the slowest node's critical path, where a node's
critical path is the time its own steps took, from the history: in `update` (lock,
backup, stop, install), in `start`, in `wallet` (unlock), plus the watch's probe interval
for "healthy" (a rollout counts a started node once a probe after its start found it
ok; the next probe is at most one interval away). What the floor leaves out is the
rollout's own cost: the dispatcher's turns (once a second), a node waiting in `stopped`
to be started again, the wait for the next probe beyond the bound above.

Also checked from the history: the most nodes of the rollout not live at one moment,
against max-unavailable (the batch)."""

import hashlib
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

from benchmarks.harness import (
    Bench,
    BenchFailed,
    Processes,
    fleet,
    fleet_command,
    fleet_env,
    fresh_database,
    insert_nodes,
    login_url,
    role_env,
)
from benchmarks.makespan import (
    MakespanSizes,
    aws_env,
    drive_to_live,
    sim_fleet_settings,
    simulated_cloud,
)
from benchmarks.report import Figure, Measurement, Target
from sim.cloud import SimCloud
from sim.demo import ARTIFACT, RELEASE

TARGET = Target(1.5, at_most=True, on_ratio=True)
PREFIX = "ro"
BACKUPS = "rollout-backups"
STEP_STATES = ("update", "start", "wallet")
WATCH_SECONDS = 0.5


@dataclass(frozen=True)
class RolloutSizes:
    nodes: int
    batch_percent: int
    workers: int
    watch_interval: float
    boot_seconds: float


def measure(bench: Bench, sizes: RolloutSizes) -> Measurement:
    makespan = MakespanSizes(sizes.nodes, sizes.workers, sizes.boot_seconds)
    with fresh_database(bench, "rollout") as db_url, simulated_cloud(bench, makespan) as cloud:
        stock(cloud, db_url)
        config = sim_fleet_settings(bench, db_url, cloud).model_copy(
            update={"backup_bucket": BACKUPS}
        )
        insert_nodes(db_url, sizes.nodes, "new", prefix=PREFIX, region=cloud.settings.region)
        extra = aws_env(cloud) | watch_env(sizes)
        with fleet(bench, config, sizes.workers, extra) as started:
            env = fleet_env(config, extra)
            started.start("watch", fleet_command("watch"), role_env(env, db_url, "watch"))
            drive_to_live(db_url, makespan, started)
            rollout = start_rollout(db_url, sizes)
            wait_done(db_url, rollout, sizes, started)
        found = timeline(db_url, rollout, sizes.watch_interval)
    floor = found["floor_seconds"]
    figures = [
        Figure(
            name=f"rollout, {sizes.nodes} live nodes, batch {sizes.batch_percent}%,"
            f" {sizes.workers} workers",
            value=found["rollout_seconds"],
            unit="s",
            reference=floor,
            reference_label="floor",
            target=TARGET,
        ),
        Figure(
            name="rollout: most nodes down at once (history)",
            value=found["most_down"],
            unit="nodes",
            reference=found["max_unavailable"],
            reference_label="max-unavailable",
            target=Target(1.0, at_most=True, on_ratio=True),
        ),
    ]
    details = {"sizes": asdict(sizes), **found}
    return Measurement("rollout", figures, details)


def watch_env(sizes: RolloutSizes) -> dict[str, str]:
    return {
        "FLEET_WATCH_INTERVAL_SECONDS": str(sizes.watch_interval),
        "FLEET_WATCH_REFRESH_SECONDS": "0.5",
    }


def stock(cloud: SimCloud, db_url: str) -> None:
    """The backup bucket (an update backs a live node up first) and the release."""
    s3 = cloud.client("s3")
    where = {"LocationConstraint": cloud.settings.region}
    for bucket in (BACKUPS, "releases"):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration=where)
    s3.put_object(Bucket="releases", Key=f"rln-{RELEASE}.tar.gz", Body=ARTIFACT)
    with psycopg.connect(db_url, autocommit=True) as db:
        db.execute(
            "INSERT INTO releases (version, artifact_url, sha256) VALUES (%s, %s, %s)",
            (RELEASE, f"s3://releases/rln-{RELEASE}.tar.gz", hashlib.sha256(ARTIFACT).hexdigest()),
        )


def start_rollout(db_url: str, sizes: RolloutSizes) -> int:
    """As `fleet rollout start --to RELEASE --batch P%` does, with an operator's login."""
    with psycopg.connect(login_url(db_url, "operator"), autocommit=True) as db:
        [(made,)] = db.execute(
            "SELECT fleet_start_rollout(%s, NULL, NULL, NULL, NULL, %s, NULL, 0)",
            (RELEASE, sizes.batch_percent),
        ).fetchall()
    return int(made)


def wait_done(db_url: str, rollout: int, sizes: RolloutSizes, started: Processes) -> None:
    deadline = time.monotonic() + 300 + 10 * sizes.nodes
    while True:
        started.check_alive()
        with psycopg.connect(db_url, autocommit=True) as db:
            [(status, reason)] = db.execute(
                "SELECT status, paused_reason FROM rollouts WHERE id = %s", (rollout,)
            ).fetchall()
        if status == "done":
            return
        if status != "running":
            raise BenchFailed(f"rollout: {status}: {reason}\n{started.tails()}")
        if time.monotonic() > deadline:
            raise BenchFailed(f"rollout: not done in time\n{started.tails()}")
        time.sleep(WATCH_SECONDS)


def timeline(db_url: str, rollout: int, watch_interval: float) -> dict[str, Any]:
    """The rollout's time, its floor, and the most nodes down at once, from the rows and
    the history."""
    with psycopg.connect(db_url, autocommit=True) as db:
        [(began, ended, limit, batch_size)] = db.execute(
            "SELECT r.created_at, max(rn.phase_at), r.max_unavailable, r.batch_size"
            " FROM rollouts r JOIN rollout_nodes rn ON rn.rollout_id = r.id"
            " WHERE r.id = %s GROUP BY r.id",
            (rollout,),
        ).fetchall()
        members = db.execute(
            "SELECT node_id, batch, phase_at FROM rollout_nodes WHERE rollout_id = %s",
            (rollout,),
        ).fetchall()
        history = db.execute(
            "SELECT node_id, to_state, at FROM node_history WHERE event = 'transition'"
            " AND node_id = ANY(%s) AND at >= %s ORDER BY id",
            ([int(row[0]) for row in members], began),
        ).fetchall()
    batches = {int(node_id): int(batch) for node_id, batch, _ in members}
    done_at = {int(node_id): at for node_id, _, at in members}
    paths = critical_paths(history)
    slowest: dict[int, float] = defaultdict(float)
    for node_id, batch in batches.items():
        slowest[int(batch)] = max(slowest[int(batch)], paths.get(int(node_id), 0.0))
    return {
        "rollout_seconds": (ended - began).total_seconds(),
        "batches": len(slowest),
        "batch_size": batch_size,
        "max_unavailable": limit,
        "slowest_step_path_per_batch_seconds": [round(slowest[b], 2) for b in sorted(slowest)],
        "most_down": most_down(history),
        "batch_timeline_seconds": batch_timeline(history, batches, done_at, began),
        "step_seconds_p50": step_p50(history),
        # Each batch's slowest node, and one probe interval for its "healthy".
        "floor_seconds": sum(slowest.values()) + len(slowest) * watch_interval,
        "watch_interval_seconds": watch_interval,
    }


def batch_timeline(
    history: list[tuple[int, str, datetime]],
    batches: dict[int, int],
    done_at: dict[int, datetime],
    began: datetime,
) -> list[dict[str, float]]:
    """Per batch, seconds from the rollout's start: its first update, its last node live,
    its last node done (healthy, as the dispatcher saw it): where the time beyond the
    floor goes."""
    first: dict[int, datetime] = {}
    live: dict[int, datetime] = {}
    for node_id, state, at in history:
        batch = batches[node_id]
        if state == "update":
            first[batch] = min(first.get(batch, at), at)
        elif state == "live":
            live[batch] = max(live.get(batch, at), at)
    done: dict[int, datetime] = {}
    for node_id, at in done_at.items():
        done[batches[node_id]] = max(done.get(batches[node_id], at), at)

    def since(at: datetime | None) -> float:
        return round((at - began).total_seconds(), 2) if at is not None else -1.0

    return [
        {"batch": b, "updating": since(first.get(b)), "live": since(live.get(b)),
         "done": since(done.get(b))}
        for b in sorted(done)
    ]  # fmt: skip


def critical_paths(history: list[tuple[int, str, datetime]]) -> dict[int, float]:
    """Each node's time in its own steps (update, start, wallet), from the history."""
    spent: dict[int, float] = defaultdict(float)
    entered: dict[int, tuple[str, datetime]] = {}
    for node_id, state, at in history:
        if node_id in entered:
            was, since = entered[node_id]
            if was in STEP_STATES:
                spent[node_id] += (at - since).total_seconds()
        entered[node_id] = (state, at)
    return dict(spent)


def step_p50(history: list[tuple[int, str, datetime]]) -> dict[str, float]:
    stays: dict[str, list[float]] = defaultdict(list)
    entered: dict[int, tuple[str, datetime]] = {}
    for node_id, state, at in history:
        if node_id in entered:
            was, since = entered[node_id]
            stays[was].append((at - since).total_seconds())
        entered[node_id] = (state, at)
    return {s: round(sorted(v)[len(v) // 2], 2) for s, v in sorted(stays.items())}


def most_down(history: list[tuple[int, str, datetime]]) -> int:
    """The most of the rollout's nodes (all live before it) out of live at one moment."""
    down: set[int] = set()
    most = 0
    for node_id, state, _ in history:
        (down.add if state != "live" else down.discard)(node_id)
        most = max(most, len(down))
    return most
