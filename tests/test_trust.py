"""The steps trust only what the fleet observed, tried through the simulated cloud with
real workers: a row pointed at another host, a mnemonic gone from the database, a second
fleet (or this fleet's re-created database) in the same AWS account, a row naming
another fleet's instance. Apps cannot make these edits (tests/test_roles.py); here the
schema owner makes them, to show that the steps would not be fooled either."""

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
import redis

from sim.services import Services
from tests.conftest import add_nodes, fetch, fleet_database, held_with, role_url
from tests.simulation import Simulation
from tests.test_lifecycle import reach, request
from worker.dispatcher import Dispatcher
from worker.settings import FleetSettings

StartWorker = Callable[..., subprocess.Popen[bytes]]


@pytest.mark.parametrize("clear_pin", [False, True])
def test_a_row_pointed_at_another_host_sends_it_nothing(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    clear_pin: bool,
) -> None:
    victim, attacker = add_nodes(db_url, ["victim", "attacker"])
    start_worker(env=simulation.env)
    reach(db_url, [victim, attacker], "live")
    trap = simulation.host(attacker)
    calls_before = (trap.disk.unlock_calls, trap.disk.init_calls, list(trap.commands))
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(
            "UPDATE nodes SET address = %s, ssh_host_key = CASE WHEN %s THEN NULL"
            " ELSE ssh_host_key END WHERE id = %s",
            (trap.address, clear_pin, victim),
        )
    request(db_url, [victim], "wallet")  # what an app asks after a restart

    error, _ = held_with(db_url, victim)
    assert "nothing was sent" in error or "man in the middle" in error, error
    assert (trap.disk.unlock_calls, trap.disk.init_calls, trap.commands) == calls_before
    [(state, attempts)] = fetch(db_url, "SELECT state, attempts FROM nodes WHERE id = %s", victim)
    assert (state, attempts) == ("wallet", 1)  # held at once, not retried


def test_a_missing_mnemonic_of_an_initialised_wallet_holds_the_node(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    [node_id] = add_nodes(db_url, ["forgetful"])
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(
            "DELETE FROM node_secrets WHERE node_id = %s AND kind = 'mnemonic'", (node_id,)
        )
    request(db_url, [node_id], "wallet")

    error, _ = held_with(db_url, node_id)
    assert "the fleet no longer holds the mnemonic that recovers this wallet" in error
    kinds = fetch(db_url, "SELECT kind FROM node_secrets WHERE node_id = %s ORDER BY 1", node_id)
    assert kinds == [("api_root_key",), ("wallet_password",)]  # no new mnemonic
    assert simulation.host(node_id).disk.init_calls == 1


@dataclass
class OtherFleet:
    db_url: str
    settings: FleetSettings
    env: dict[str, str]


@pytest.fixture
def other_fleet(
    services: Services, template_db: str, simulation: Simulation
) -> Iterator[OtherFleet]:
    """A second fleet in the same simulated AWS account, with the same FLEET_TAG: its own
    database (node ids from 1 again, a fleet id of its own), Redis database, dispatcher
    and worker. It is also exactly what this fleet's re-created database would be."""
    with fleet_database(services, template_db, "fleet_other") as url:
        # A Redis database of its own: job ids name node ids, the same in both fleets.
        broker = simulation.settings.redis_url.rsplit("/", 1)[0] + "/1"
        redis.Redis.from_url(broker).flushdb()
        settings = simulation.settings.model_copy(
            update={"database_url": role_url(url, "worker"), "owner_database_url": url,
                    "redis_url": broker}
        )  # fmt: skip
        env = simulation.env | {
            "FLEET_DATABASE_URL": settings.database_url,
            "FLEET_OWNER_DATABASE_URL": url,
            "FLEET_REDIS_URL": broker,
        }
        dispatcher = Dispatcher(
            settings.model_copy(update={"database_url": role_url(url, "dispatcher")}),
            redis.Redis.from_url(settings.redis_url),
        )
        stop = threading.Event()
        thread = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
        thread.start()
        try:
            yield OtherFleet(url, settings, env)
        finally:
            stop.set()
            thread.join(timeout=10)


def reconcile_fix(env: dict[str, str], db_url: str) -> list[dict[str, str]]:
    operator = {**env, "FLEET_DATABASE_URL": role_url(db_url, "operator")}
    run = [sys.executable, "-m", "worker", "reconcile", "--fix", "--yes", "--json"]
    result = subprocess.run(
        run, env=operator, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    findings: list[dict[str, str]] = json.loads(result.stdout.split("\nterminated")[0])["findings"]
    return findings


def instance_states(simulation: Simulation) -> dict[str, str]:
    return {str(i["InstanceId"]): i["State"]["Name"] for i in simulation.instances()}  # type: ignore[index]


@pytest.mark.slow  # tens of seconds: the second tier (scripts/test)
def test_two_fleets_in_one_account_never_touch_each_others_instances(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    other_fleet: OtherFleet,
) -> None:
    [ours] = add_nodes(db_url, ["ours"])
    [theirs] = add_nodes(other_fleet.db_url, ["theirs"])
    assert ours == theirs == 1  # the same node id in both fleets
    start_worker(env=simulation.env)
    start_worker(env=other_fleet.env)
    reach(db_url, [ours], "live")
    reach(other_fleet.db_url, [theirs], "live")

    [(our_instance,)] = fetch(db_url, "SELECT instance_id FROM nodes")
    [(their_instance,)] = fetch(other_fleet.db_url, "SELECT instance_id FROM nodes")
    assert our_instance != their_instance  # launched its own, adopted nothing
    assert len(simulation.instances_of(1)) == 2

    for env, url, foreign in (
        (simulation.env, db_url, their_instance),
        (other_fleet.env, other_fleet.db_url, our_instance),
    ):
        findings = reconcile_fix(env, url)
        assert [(f["kind"], f["instance_id"]) for f in findings] == [("foreign", foreign)]
    assert set(instance_states(simulation).values()) == {"running"}

    # A row naming another fleet's instance: destroy terminates only its own.
    with psycopg.connect(other_fleet.db_url, autocommit=True) as owner:
        owner.execute("UPDATE nodes SET instance_id = %s", (our_instance,))
    request(other_fleet.db_url, [theirs], "destroy")
    reach(other_fleet.db_url, [theirs], "destroyed")
    assert instance_states(simulation) == {our_instance: "running", their_instance: "terminated"}
    notes = fetch(other_fleet.db_url, "SELECT detail FROM node_history WHERE event = 'note'")
    assert any(
        f"instance {our_instance} in the row is not this fleet's instance" in note
        for (note,) in notes
    ), notes
    assert fetch(db_url, "SELECT state, held FROM nodes") == [("live", False)]
