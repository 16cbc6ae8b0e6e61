"""Rollouts driven in SQL: the rules of fleet_advance_rollouts turn by turn, with the
workers' and the watch's part played by the test (the schema owner placing rows where a
step would leave them), and the CLI as operators use it. tests/test_rollout_fleet.py
runs one through the simulated cloud."""

import json
import subprocess
import threading
import time
from collections.abc import Callable

import psycopg
import pytest
import redis

from models.logins import FleetRole
from tests.conftest import fetch, role_url, wait_until
from worker.dispatcher import Dispatcher
from worker.settings import FleetSettings

Fleet = Callable[..., subprocess.CompletedProcess[str]]
OLD, NEW = "1.0.0", "2.0.0"
DOWN = ("update", "start", "wallet")  # a node in these is not serving


def place(db_url: str, name: str, state: str, version: str = OLD) -> int:
    """A node in a state, as the schema owner (triggers off): test setup only."""
    with psycopg.connect(db_url, autocommit=True) as owner:
        for release in (OLD, NEW):
            owner.execute(
                "INSERT INTO releases (version, artifact_url, sha256) VALUES"
                " (%s, 's3://releases/rln.tar.gz', repeat('a', 64)) ON CONFLICT DO NOTHING",
                (release,),
            )
        [(node_id,)] = owner.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network, current_version)"
            " VALUES (%s, 'shop', 'eu-west-1', 't3.small', 'regtest', %s) RETURNING id",
            (name, version),
        ).fetchall()
        owner.execute("SET session_replication_role = replica")
        owner.execute("UPDATE nodes SET state = %s WHERE id = %s", (state, node_id))
    return int(node_id)


def as_steps_would(db_url: str, node_id: int, state: str, **columns: object) -> None:
    sets = ", ".join(["state = %s", *(f"{c} = %s" for c in columns)])
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute("SET session_replication_role = replica")
        owner.execute(f"UPDATE nodes SET {sets} WHERE id = %s", (state, *columns.values(), node_id))


def probed_ok(db_url: str, node_id: int) -> None:
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(
            "INSERT INTO node_health (node_id, status, detail, since, last_probe)"
            " VALUES (%s, 'ok', 'ok', now(), clock_timestamp()) ON CONFLICT (node_id)"
            " DO UPDATE SET status = 'ok', last_probe = clock_timestamp()",
            (node_id,),
        )


def turn(db_url: str) -> int:
    with psycopg.connect(role_url(db_url, "dispatcher"), autocommit=True) as dispatcher:
        [(moved,)] = dispatcher.execute("SELECT fleet_advance_rollouts()").fetchall()
    return int(moved)


def states(db_url: str, ids: list[int]) -> list[str]:
    rows = fetch(db_url, "SELECT state FROM nodes WHERE id = ANY(%s) ORDER BY id", ids)
    return [str(state) for (state,) in rows]


def finish_updates(db_url: str, ids: list[int]) -> None:
    for node_id, state in zip(ids, states(db_url, ids), strict=True):
        if state == "update":
            as_steps_would(db_url, node_id, "stopped", current_version=NEW, target_version=None)
        elif state == "start":
            as_steps_would(db_url, node_id, "live")
            probed_ok(db_url, node_id)


def rollout(fleet: Fleet, *args: str) -> dict[str, object]:
    started = fleet("rollout", "start", "--to", NEW, *args)
    assert started.returncode == 0, started.stderr
    [shown] = json.loads(fleet("rollout", "status", "--json").stdout)
    return dict(shown)


def test_batches_never_take_more_than_max_unavailable_down(
    fleet: Fleet, db_url: str, logins: dict[FleetRole, str]
) -> None:
    live = [place(db_url, f"live-{i}", "live") for i in range(5)]
    stopped = place(db_url, "resting", "stopped")
    shown = rollout(fleet, "--batch", "50%", "--max-unavailable", "2")
    assert (shown["nodes"], shown["batch_size"], shown["max_unavailable"]) == (6, 3, 2)
    ids = [*live, stopped]
    for _ in range(20):
        turn(db_url)
        now = states(db_url, ids)
        assert sum(state in DOWN for state in now) <= 2, now
        if fetch(db_url, "SELECT status FROM rollouts") == [("done",)]:
            break
        finish_updates(db_url, ids)
    assert states(db_url, ids) == ["live"] * 5 + ["stopped"], "each back where it was"
    versions = fetch(db_url, "SELECT DISTINCT current_version FROM nodes")
    assert versions == [(NEW,)]
    [shown] = json.loads(fleet("rollout", "status", "--json").stdout)
    assert (shown["status"], shown["done"], shown["batches_started"]) == ("done", 6, 3)
    notes = fetch(db_url, "SELECT count(*) FROM node_history WHERE starts_with(detail, 'rollout ')")
    assert notes == [(6,)]


def test_a_started_node_counts_only_once_the_watch_found_it_healthy(
    fleet: Fleet, db_url: str, logins: dict[FleetRole, str]
) -> None:
    first, second = place(db_url, "a-1", "live"), place(db_url, "a-2", "live")
    rollout(fleet)  # one at a time
    turn(db_url)
    as_steps_would(db_url, first, "stopped", current_version=NEW)
    turn(db_url)
    as_steps_would(db_url, first, "live")
    turn(db_url)
    assert states(db_url, [first, second]) == ["live", "live"], "the next waits for health"
    probed_ok(db_url, first)
    turn(db_url)
    assert states(db_url, [first, second]) == ["live", "update"]


def test_failures_beyond_the_budget_pause_and_resume_goes_on(
    fleet: Fleet, db_url: str, logins: dict[FleetRole, str]
) -> None:
    ids = [place(db_url, f"f-{i}", "live") for i in range(4)]
    rollout(fleet, "--batch", "2")
    turn(db_url)
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute("UPDATE nodes SET held_at = now(), last_error = 'checksum mismatch'"
                      " WHERE id = %s", (ids[0],))  # fmt: skip
    as_steps_would(db_url, ids[1], "stopped", current_version=NEW)
    turn(db_url)
    [(status, reason)] = fetch(db_url, "SELECT status, paused_reason FROM rollouts")
    assert status == "paused"
    assert reason == "1 nodes failed (budget 0): f-0: checksum mismatch"
    for _ in range(3):
        turn(db_url)
    assert states(db_url, ids[2:]) == ["live", "live"], "a paused rollout starts nothing"
    shown = fleet("rollout", "status")
    assert "paused: 1 nodes failed" in shown.stdout
    assert fleet("rollout", "resume", "1").stdout.strip() == "rollout 1: running"
    turn(db_url)
    finish_updates(db_url, ids)  # the first batch's survivor is back live and healthy
    turn(db_url)
    # f-0 is still held: it fills one of the two places max-unavailable leaves.
    assert states(db_url, ids[2:]) == ["update", "live"], "then the next batch, beside f-0"


def test_abort_leaves_updated_nodes_and_never_touches_the_rest(
    fleet: Fleet, db_url: str, logins: dict[FleetRole, str]
) -> None:
    ids = [place(db_url, f"x-{i}", "live") for i in range(3)]
    rollout(fleet)
    turn(db_url)
    assert fleet("rollout", "abort", "1").stdout.strip() == "rollout 1: aborted"
    as_steps_would(db_url, ids[0], "stopped", current_version=NEW)
    for _ in range(3):
        turn(db_url)
    assert states(db_url, ids) == ["stopped", "live", "live"]
    phases = fetch(db_url, "SELECT phase, error FROM rollout_nodes ORDER BY node_id")
    assert phases == [
        ("skipped", "rollout aborted during its updating"),
        ("skipped", "rollout aborted: not touched"),
        ("skipped", "rollout aborted: not touched"),
    ]
    again = fleet("rollout", "resume", "1")
    assert again.returncode == 2
    assert again.stderr.strip() == "error: rollout 1 is aborted: nothing to resume"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--to", NEW), "no node to roll out 2.0.0"),
        (("--to", "9.9.9"), "no release 9.9.9"),
        (("--to", NEW, "--batch", "0"), "--batch: '0' is not a node count"),
        (("--to", NEW, "--batch", "150%"), "--batch: '150%'"),
        (("--to", NEW, "--where", "colour=red"), "--where: bad term 'colour=red'"),
        (("--to", NEW, "--where", "state=update"), "state must be live or stopped"),
    ],
)
def test_a_rollout_that_cannot_start_says_why_in_one_line(
    fleet: Fleet, db_url: str, args: tuple[str, ...], says: str
) -> None:
    place(db_url, "already", "live", version=NEW)
    started = fleet("rollout", "start", *args)
    assert started.returncode == 2
    [line] = started.stderr.strip().splitlines()
    assert line.startswith("error: ") and says in line, line
    assert fetch(db_url, "SELECT count(*) FROM rollouts") == [(0,)]


@pytest.mark.parametrize("role", ["app", "reader", "worker", "watch"])
def test_only_operators_and_the_api_start_rollouts(
    db_url: str, logins: dict[FleetRole, str], role: FleetRole
) -> None:
    place(db_url, "target", "live")
    with (
        psycopg.connect(role_url(db_url, role), autocommit=True) as session,
        pytest.raises(psycopg.Error) as refused,
    ):
        session.execute(
            "SELECT fleet_start_rollout(%s, NULL, NULL, NULL, 1, NULL, NULL, 0)", (NEW,)
        )
    assert refused.value.sqlstate == "42501"


def test_a_quiet_fleet_still_turns_its_rollout_every_second(
    fleet: Fleet, db_url: str, dispatcher_config: FleetSettings
) -> None:
    """A rollout's first batch begins at once, and a node stopped on the new release is
    started again within about a turn, not at the dispatcher's next sweep: nothing
    notifies it of an idle state (found by the rollout benchmark: each batch waited up
    to two sweep intervals, 5 s apiece by default)."""
    first, _ = place(db_url, "q-1", "live"), place(db_url, "q-2", "live")
    config = dispatcher_config.model_copy(update={"sweep_interval_seconds": 10.0})
    running = Dispatcher(config, redis.Redis.from_url(config.redis_url))
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(1.5)  # the dispatcher settles into its wait
        rollout(fleet)
        wait_until(lambda: states(db_url, [first]) == ["update"], 10, "the first batch")
        # From the database's clock: the CLI's own start-up is not the dispatcher's delay.
        [(first_batch,)] = fetch(
            db_url,
            "SELECT extract(epoch FROM h.at - r.created_at)::float8 FROM node_history h,"
            " rollouts r WHERE h.node_id = %s AND starts_with(h.detail, 'rollout ')",
            first,
        )
        time.sleep(1.5)
        as_steps_would(db_url, first, "stopped", current_version=NEW, target_version=None)
        began = time.monotonic()
        wait_until(lambda: states(db_url, [first]) == ["start"], 10, "started again")
        took = time.monotonic() - began
    finally:
        stop.set()
        thread.join(timeout=10)
    assert first_batch < 2.5, f"the first batch began {first_batch:.1f} s after the start"
    assert took < 2.5, f"started again {took:.1f} s after its update, not within a turn"


def test_a_failed_node_still_down_counts_against_max_unavailable(
    fleet: Fleet, db_url: str, logins: dict[FleetRole, str]
) -> None:
    """A live node held by its update is as unavailable as one being updated: the next
    batches take only what max-unavailable leaves, and none goes while the failed fill it."""
    ids = [place(db_url, f"u-{i}", "live") for i in range(5)]
    rollout(fleet, "--batch", "2", "--max-unavailable", "2", "--max-failures", "3")
    turn(db_url)
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute("UPDATE nodes SET held_at = now(), last_error = 'checksum mismatch'"
                      " WHERE id = %s", (ids[0],))  # fmt: skip
    as_steps_would(db_url, ids[1], "stopped", current_version=NEW, target_version=None)
    for _ in range(6):
        turn(db_url)
        if "update" in states(db_url, ids[2:]):
            break
        finish_updates(db_url, ids)
    assert states(db_url, ids)[2:] == ["update", "live", "live"], "one beside the held one"
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute("UPDATE nodes SET held_at = now(), last_error = 'no disk'"
                      " WHERE id = %s", (ids[2],))  # fmt: skip
    for _ in range(3):
        turn(db_url)
    assert states(db_url, ids)[3:] == ["live", "live"], "two down already: nothing more"
    [(status, reason)] = fetch(db_url, "SELECT status, paused_reason FROM rollouts")
    assert (status, reason) == (
        "paused", "2 failed nodes are still down (max unavailable 2): u-0, u-2: bring them"
        " back or release them, then resume")  # fmt: skip
