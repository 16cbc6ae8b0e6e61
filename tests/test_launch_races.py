"""No instance outlives its node: destroy asked while RunInstances is in flight, a worker
that loses the row (or dies) during its launch, and the dispatcher's reconcile of orphans.
The simulator holds every RunInstances for a while, so the launch is provably in flight."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import redis
from rq import Queue, Worker
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from models.session import sqlalchemy_url
from tests.conftest import add_nodes, fetch, role_url, wait_until
from tests.simulation import Simulation
from tests.test_lifecycle import reach, request
from tests.test_reconcile import launch as tag_and_launch
from worker.dispatcher import Dispatcher
from worker.queue import DueStep, StepQueue
from worker.reconcile import Finding, hold_missing
from worker.settings import FleetSettings

Popen = subprocess.Popen[bytes]
StartWorker = Callable[..., Popen]
LAUNCH_DELAY = 3.0
RUNNING = ("pending", "running", "stopping", "stopped")


def running_for(simulation: Simulation, node_id: int) -> list[str]:
    """The node's instances that are not terminated or shutting down, counted in moto."""
    return [
        str(i["InstanceId"])
        for i in simulation.instances_of(node_id)
        if i["State"]["Name"] in RUNNING  # type: ignore[index]
    ]


def launch_in_flight(simulation: Simulation, count: int = 1) -> None:
    log = simulation.cloud.launches
    wait_until(lambda: log.in_flight == count, 30, f"{count} RunInstances in flight")


def launch_over(simulation: Simulation) -> None:
    wait_until(lambda: simulation.cloud.launches.in_flight == 0, 30, "RunInstances answered")


def launches(db_url: str, node_id: int) -> list[tuple[object, ...]]:
    return fetch(
        db_url,
        "SELECT launch_generation, client_token, intended_at, settles_by > now(), instance_id"
        " FROM node_launches WHERE node_id = %s",
        node_id,
    )


def ready_workers(simulation: Simulation, start_worker: StartWorker, count: int) -> list[Popen]:
    """Start workers and wait until each listens on the queue (an idle one claims at once)."""
    workers = [start_worker(env=simulation.env) for _ in range(count)]
    queue = Queue(simulation.settings.queue_name, connection=redis.Redis.from_url(
        simulation.settings.redis_url))  # fmt: skip
    wait_until(lambda: len(Worker.all(queue=queue)) == count, 60, "workers listen")
    return workers


def the_launcher(db_url: str, node_id: int, workers: list[Popen]) -> Popen:
    """The worker holding the node's lease (its pid is part of its name)."""
    [(owner,)] = fetch(db_url, "SELECT lease_owner FROM nodes WHERE id = %s", node_id)
    pid = int(owner.split(":")[2])
    [launcher] = [w for w in workers if w.pid == pid]
    return launcher


def nothing_left_running(simulation: Simulation, node_id: int) -> None:
    wait_until(lambda: running_for(simulation, node_id) == [], 20, "no instance of the node runs")


@pytest.mark.slow
def test_destroy_asked_while_the_launch_is_in_flight_leaves_nothing_running(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    simulation.cloud.launches.launch_delay_seconds = 2 * LAUNCH_DELAY
    ready_workers(simulation, start_worker, 2)  # one launches, the other runs destroy
    [node_id] = add_nodes(db_url, ["racer"])
    launch_in_flight(simulation)
    request(db_url, [node_id], "destroy")
    reach(db_url, [node_id], "destroyed")
    launch_over(simulation)
    assert len(simulation.instances_of(node_id)) == 1  # it was launched, and then ended
    nothing_left_running(simulation, node_id)
    [(state,)] = fetch(db_url, "SELECT state FROM nodes WHERE id = %s", node_id)
    assert state == "destroyed"


def test_a_launcher_that_lost_the_row_to_destroy_terminates_what_it_launched(
    simulation: Simulation, db_url: str, start_worker: StartWorker
) -> None:
    """Only the launching worker runs, and no dispatcher queues the destroy step: nobody
    else could end the instance. Its `record` after RunInstances finds the row gone to
    `destroy`, so it terminates the instance itself."""
    simulation.cloud.launches.launch_delay_seconds = LAUNCH_DELAY
    [node_id] = add_nodes(db_url, ["loser"])
    [(step_run,)] = fetch(db_url, "SELECT step_run FROM nodes WHERE id = %s", node_id)
    settings = simulation.settings
    queue = StepQueue(
        redis.Redis.from_url(settings.redis_url), settings.queue_name,
        settings.step_timeout_seconds, settings.lease_seconds,
    )  # fmt: skip
    assert queue.enqueue(DueStep(node_id, "instance", step_run))
    start_worker(env=simulation.env)
    launch_in_flight(simulation)
    request(db_url, [node_id], "destroy")
    launch_over(simulation)
    assert len(simulation.instances_of(node_id)) == 1
    nothing_left_running(simulation, node_id)
    [(state,)] = fetch(db_url, "SELECT state FROM nodes WHERE id = %s", node_id)
    assert state == "destroy"  # no destroy step ran: the launcher ended its instance
    # The launch is recorded with its instance, for destroy and for reconcile.
    [(_, _, _, _, instance_id)] = launches(db_url, node_id)
    assert instance_id == str(simulation.instances_of(node_id)[0]["InstanceId"])


@pytest.mark.slow  # tens of seconds: the second tier (scripts/test)
def test_the_launch_is_recorded_before_the_call_and_a_killed_launcher_leaves_one_instance(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    """The worker is killed with RunInstances in flight; EC2 goes on with the launch.
    The next attempt sends the same ClientToken and gets the same instance."""
    # Long enough that the next attempt's lookup by tag still finds nothing.
    simulation.cloud.launches.launch_delay_seconds = 3 * LAUNCH_DELAY
    [node_id] = add_nodes(db_url, ["phoenix"])
    [(fleet_id,)] = fetch(db_url, "SELECT fleet_id FROM fleet_identity")
    # The second takes the step again once the lease expires.
    workers = ready_workers(simulation, start_worker, 2)
    launch_in_flight(simulation)
    doomed = the_launcher(db_url, node_id, workers)
    # Recorded before EC2 has made anything: the token, the generation and when.
    assert simulation.instances_of(node_id) == []
    [(generation, token, intended_at, pending, instance_id)] = launches(db_url, node_id)
    assert (generation, token, pending, instance_id) == (0, f"{fleet_id}-{node_id}-0", True, None)
    assert intended_at is not None
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)

    reach(db_url, [node_id], "live", timeout=90)
    [instance] = simulation.instances_of(node_id)
    assert simulation.cloud.launches.replayed >= 1  # a second call, answered by its token
    assert len(simulation.cloud.launches.launched_at) == 1
    [(row_instance,)] = fetch(db_url, "SELECT instance_id FROM nodes WHERE id = %s", node_id)
    assert row_instance == instance["InstanceId"]
    assert launches(db_url, node_id)[0][4] == instance["InstanceId"]


@pytest.mark.slow  # tens of seconds: the second tier (scripts/test)
def test_destroy_finds_and_ends_the_launch_of_a_worker_killed_in_flight(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    """Nobody is left to hand the instance over: destroy must wait for the recorded launch
    (its ClientToken) and terminate what it made. The launch is held long enough that the
    destroy step runs before EC2 shows anything."""
    simulation.cloud.launches.launch_delay_seconds = 3 * LAUNCH_DELAY
    workers = ready_workers(simulation, start_worker, 2)  # the second runs destroy at once
    [node_id] = add_nodes(db_url, ["orphaned-at-birth"])
    launch_in_flight(simulation)
    doomed = the_launcher(db_url, node_id, workers)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    request(db_url, [node_id], "destroy")
    launch_over(simulation)
    reach(db_url, [node_id], "destroyed")
    assert len(simulation.instances_of(node_id)) == 1
    assert running_for(simulation, node_id) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(port: int, name: str) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def state_of(simulation: Simulation, instance_id: str) -> str:
    [found] = [i for i in simulation.instances() if i["InstanceId"] == instance_id]
    return str(found["State"]["Name"])  # type: ignore[index]


def test_reconcile_runs_by_default_in_the_dispatcher() -> None:
    assert FleetSettings.model_fields["reconcile_interval_seconds"].default > 0
    assert FleetSettings.model_fields["reconcile_fix_orphans"].default is True


@pytest.mark.slow  # tens of seconds: the second tier (scripts/test)
def test_the_dispatchers_reconcile_ends_our_orphans_and_only_reports_the_rest(
    simulation: Simulation, db_url: str, tmp_path: Path
) -> None:
    kept, gone = add_nodes(db_url, ["kept", "gone"], state="new")
    [(ours,)] = fetch(db_url, "SELECT fleet_id FROM fleet_identity")
    kept_instance = tag_and_launch(simulation, kept, ours)
    gone_instance = tag_and_launch(simulation, gone, ours)
    no_row = tag_and_launch(simulation, 999, ours)  # a node this fleet has no row for
    duplicate = tag_and_launch(simulation, kept, ours)
    other_fleet = tag_and_launch(simulation, gone, "f" * 32)  # its node id equals ours
    untagged = tag_and_launch(simulation, 999, "")  # no fleet id at all
    simulation.cloud.client("ec2").delete_tags(
        Resources=[untagged], Tags=[{"Key": "rln-fleet:fleet-id"}]
    )
    with psycopg.connect(db_url, autocommit=True) as db:
        db.execute("SET session_replication_role = replica")  # place rows as steps left them
        db.execute(
            "UPDATE nodes SET state = 'live', instance_id = %s WHERE id = %s",
            (kept_instance, kept),
        )
        db.execute("UPDATE nodes SET state = 'destroyed' WHERE id = %s", (gone,))

    port = free_port()
    log = tmp_path / "dispatcher.log"
    env = simulation.env | {
        "FLEET_DATABASE_URL": role_url(db_url, "dispatcher"),
        "FLEET_METRICS_PORT": str(port),
        "FLEET_LOG_FORMAT": "json",
        "FLEET_LOG_LEVEL": "INFO",
    }
    env["FLEET_RECONCILE_INTERVAL_SECONDS"] = "1"  # the default's behaviour, sooner
    with open(log, "wb") as stderr:
        dispatcher = subprocess.Popen(
            [sys.executable, "-m", "worker", "dispatcher"], env=env, stderr=stderr
        )
    try:
        wait_until(
            lambda: {state_of(simulation, i) for i in (gone_instance, no_row)} == {"terminated"},
            30,
            "the dispatcher's reconcile ends the orphans",
        )
        wait_until(
            lambda: metric(port, "fleet_reconcile_terminated_total") is not None, 10, "metrics"
        )
        time.sleep(1.5)  # another round: nothing else is touched later either
        assert metric(port, 'fleet_reconcile_findings_by_kind{kind="foreign"}') == 2.0
        assert metric(port, "fleet_reconcile_terminated_total") == 2.0
    finally:
        dispatcher.send_signal(signal.SIGTERM)
        dispatcher.wait(timeout=20)
    for instance_id in (kept_instance, duplicate, other_fleet, untagged):
        assert state_of(simulation, instance_id) == "running", instance_id
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    reported = {(e.get("kind"), e.get("instance_id")) for e in events}
    assert {("foreign", other_fleet), ("foreign", untagged), ("duplicate", duplicate),
            ("orphan", gone_instance), ("orphan", no_row)} <= reported  # fmt: skip
    ended = {e["instance_id"] for e in events if e["event"] == "reconcile terminated an orphan"}
    assert ended == {gone_instance, no_row}

    by_hand = subprocess.run(
        [sys.executable, "-m", "worker", "reconcile", "--json"],
        env=simulation.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert by_hand.returncode == 0, by_hand.stderr
    found = sorted((f["kind"], f["instance_id"]) for f in json.loads(by_hand.stdout)["findings"])
    assert found == sorted(
        [("duplicate", duplicate), ("foreign", other_fleet), ("foreign", untagged)]
    )


def test_reconcile_holds_no_node_that_moved_on_since_it_read_the_rows(
    simulation: Simulation, db_url: str
) -> None:
    """Reconcile read the node live with its instance; by the time it listed the cloud,
    destroy had terminated that instance and was waiting for it to go. Now on by default,
    reconcile must not hold the destroy (nor a row that names another instance)."""
    engine = create_engine(sqlalchemy_url(role_url(db_url, "dispatcher")), poolclass=NullPool)
    leaving, relaunched = add_nodes(db_url, ["leaving", "relaunched"], state="new")
    with psycopg.connect(db_url, autocommit=True) as db:
        db.execute("SET session_replication_role = replica")
        place = "UPDATE nodes SET state = %s, instance_id = %s WHERE id = %s"
        db.execute(place, ("destroy", "i-0aaaaaaaaaaaaaaaa", leaving))
        db.execute(place, ("live", "i-0cccccccccccccccc", relaunched))
    read_before = [
        Finding("missing", "eu-west-1", "i-0aaaaaaaaaaaaaaaa", leaving, "leaving", "gone"),
        Finding("missing", "eu-west-1", "i-0bbbbbbbbbbbbbbbb", relaunched, "relaunched", "gone"),
    ]
    assert hold_missing(engine, read_before) == 0
    assert fetch(db_url, "SELECT held FROM nodes ORDER BY id") == [(False,), (False,)]
    engine.dispose()
