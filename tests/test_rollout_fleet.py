"""A rollout through the simulated cloud: real workers, dispatcher and health watch. Live
nodes are updated, started again and healthy before the next batch; a stopped node is
updated and stays stopped; never more than max-unavailable live nodes down at once, as
the history shows."""

import json
import subprocess
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import add_nodes, fetch, wait_until
from tests.simulation import RELEASE, Simulation, release_sha256
from tests.test_lifecycle import reach, request
from worker.dispatcher import Dispatcher

StartWorker = Callable[..., subprocess.Popen[bytes]]
Fleet = Callable[..., subprocess.CompletedProcess[str]]
DOWN = {"update", "stopped", "start", "wallet"}
# Each makes a fleet live through the simulator first: tens of seconds apiece.
pytestmark = pytest.mark.slow


def most_down_at_once(db_url: str, node_ids: list[int]) -> int:
    """From the history: the most of these nodes out of live at any moment."""
    rows = fetch(
        db_url,
        "SELECT at, node_id, to_state FROM node_history WHERE event = 'transition'"
        " AND node_id = ANY(%s) AND at > (SELECT created_at FROM rollouts) ORDER BY id",
        node_ids,
    )
    down: set[int] = set()
    most = 0
    for _at, node_id, to_state in rows:
        (down.add if to_state in DOWN else down.discard)(int(node_id))
        most = max(most, len(down))
    return most


def test_a_rollout_updates_each_batch_and_brings_live_nodes_back_healthy(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    start_watch: Callable[..., subprocess.Popen[bytes]], fleet: Fleet,
) -> None:  # fmt: skip
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(
            "INSERT INTO releases (version, artifact_url, sha256) VALUES (%s, %s, %s)",
            (RELEASE, f"s3://releases/rln-{RELEASE}.tar.gz", release_sha256()),
        )
    live = add_nodes(db_url, ["roll-a", "roll-b", "roll-c", "roll-d"])
    [resting] = add_nodes(db_url, ["roll-e"])
    for _ in range(2):
        start_worker(env=simulation.env)
    reach(db_url, [*live, resting], "live")
    request(db_url, [resting], "stop")
    reach(db_url, [resting], "stopped")
    start_watch()
    started = fleet("rollout", "start", "--to", RELEASE, "--batch", "40%",
                    "--max-unavailable", "2")  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == f"rollout 1: 5 nodes to {RELEASE}, 3 batches of at most 2"

    def finished() -> bool:
        [shown] = json.loads(fleet("rollout", "status", "--json").stdout)
        assert shown["status"] in ("running", "done"), shown
        return bool(shown["status"] == "done")

    wait_until(finished, 120, "the rollout is done")
    states = fetch(db_url, "SELECT state, current_version, held FROM nodes ORDER BY id")
    assert states == [("live", RELEASE, False)] * 4 + [("stopped", RELEASE, False)]
    assert most_down_at_once(db_url, live) <= 2
    healthy_after = fetch(
        db_url,
        "SELECT h.last_probe > rn.phase_at FROM node_health h JOIN rollout_nodes rn"
        " USING (node_id) WHERE node_id = ANY(%s)",
        live,
    )
    assert healthy_after == [(True,)] * 4
    for node_id in [*live, resting]:
        assert simulation.host(node_id).version == RELEASE
        assert simulation.host(node_id).disk.init_calls == 1
    shown = fleet("rollout", "status")
    assert "rollout 1 to 0.10.0: done" in shown.stdout and "5/5 nodes" in shown.stdout
