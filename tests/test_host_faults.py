"""What a real host does to SSH that booting does not: a key it refuses, a key file the
worker lacks, an agent command that never ends. Real SSH to the simulated hosts."""

from pathlib import Path

import psycopg
import pytest

from tests.conftest import add_nodes, fetch, held_with, wait_until
from tests.simulation import RELEASE, Simulation, release_sha256, write_ssh_key
from tests.test_lifecycle import reach, request
from tests.test_step_faults import StartWorker
from worker.dispatcher import Dispatcher


def test_a_refused_ssh_key_holds_within_one_attempt(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    (tmp_path / "other").mkdir()
    other_key, _ = write_ssh_key(tmp_path / "other")  # a key no host authorises
    [node_id] = add_nodes(db_url, ["wrong-key"])
    start_worker(env=simulation.env | {"FLEET_SSH_KEY_PATH": str(other_key)})
    error, attempts = held_with(db_url, node_id)
    assert "SSH key refused by 127." in error and str(other_key) in error
    assert attempts <= 1
    [(state,)] = fetch(db_url, "SELECT state FROM nodes WHERE id = %s", node_id)
    assert state == "key"


def test_a_missing_ssh_key_file_holds_at_once(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    [node_id] = add_nodes(db_url, ["no-key-file"])
    start_worker(env=simulation.env | {"FLEET_SSH_KEY_PATH": "/nonexistent/fleet_key"})
    error, attempts = held_with(db_url, node_id)
    assert error.endswith("SSH key file /nonexistent/fleet_key is missing or unreadable here")
    assert attempts <= 1


@pytest.mark.slow
def test_a_stalled_download_times_out_and_the_update_succeeds_once_it_flows(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    with psycopg.connect(db_url, autocommit=True) as app:
        app.execute(
            "INSERT INTO releases (version, artifact_url, sha256) VALUES (%s, %s, %s)",
            (RELEASE, f"s3://releases/rln-{RELEASE}.tar.gz", release_sha256()),
        )
    [node_id] = add_nodes(db_url, ["stalled"])
    start_worker(env=simulation.env | {"FLEET_SSH_COMMAND_TIMEOUT_SECONDS": "1.5"})
    reach(db_url, [node_id], "live")
    request(db_url, [node_id], "stop")
    reach(db_url, [node_id], "stopped")
    simulation.cloud.settings.faults.download_stall_seconds = 3600
    request(db_url, [node_id], "update", RELEASE)

    def timed_out() -> bool:
        [(error,)] = fetch(db_url, "SELECT last_error FROM nodes WHERE id = %s", node_id)
        return error is not None and "did not answer within 1.5 s" in error

    wait_until(timed_out, 30, "the stalled install times out")
    simulation.cloud.settings.faults.download_stall_seconds = 0
    reach(db_url, [node_id], "stopped")
    [(version,)] = fetch(db_url, "SELECT current_version FROM nodes WHERE id = %s", node_id)
    assert version == RELEASE


def test_a_daemon_that_exits_at_once_fails_its_start_with_the_log_line(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    simulation.cloud.settings.faults.exits_at_once = "Error: Address already in use (os error 98)"
    [node_id] = add_nodes(db_url, ["exits"])
    start_worker(env=simulation.env)

    def failed_at_start() -> bool:
        [(state, error)] = fetch(db_url, "SELECT state, last_error FROM nodes WHERE id = %s",
                                 node_id)  # fmt: skip
        return state == "start" and error is not None and "did not stay up" in error

    wait_until(failed_at_start, 30, "the start step fails")
    [(error,)] = fetch(db_url, "SELECT last_error FROM nodes WHERE id = %s", node_id)
    assert error.endswith(
        "did not stay up after start: Error: Address already in use (os error 98)"
    )
    simulation.cloud.settings.faults.exits_at_once = None
    reach(db_url, [node_id], "live")


def test_a_host_without_a_release_gets_the_nodes_own_on_its_first_start(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    """The golden image bakes no release in (deploy/host/README.md)."""
    simulation.cloud.settings.image_version = None
    with psycopg.connect(db_url, autocommit=True) as app:
        app.execute(
            "INSERT INTO releases (version, artifact_url, sha256) VALUES (%s, %s, %s)",
            (RELEASE, f"s3://releases/rln-{RELEASE}.tar.gz", release_sha256()),
        )
        [(node_id,)] = app.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network, current_version,"
            " state) VALUES ('bare', 'tester', 'eu-west-1', 't3.small', 'regtest', %s,"
            " 'instance') RETURNING id",
            (RELEASE,),
        ).fetchall()
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    assert simulation.host(node_id).version == RELEASE
