"""The health watch against the simulated cloud: a real `fleet watch` process (its own
login), real SSH to the simulated hosts, the simulated daemon over HTTP, moto for EC2.
Each fault is made on a live node; the watch must find it and heal it (the workers then
bring the node back live) or hold it with its cause, with no operator action."""

import subprocess
from collections.abc import Callable

import pytest
from mnemonic import Mnemonic

from tests.conftest import add_nodes, fetch, held_with, wait_until
from tests.simulation import Simulation
from tests.test_lifecycle import reach
from worker.dispatcher import Dispatcher

StartWorker = Callable[..., subprocess.Popen[bytes]]
# Each makes a fleet live through the simulator first: tens of seconds apiece.
pytestmark = pytest.mark.slow


def live_node(simulation: Simulation, db_url: str, start_worker: StartWorker, name: str) -> int:
    [node_id] = add_nodes(db_url, [name])
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    return node_id


def health(db_url: str, node_id: int) -> str | None:
    rows = fetch(db_url, "SELECT status FROM node_health WHERE node_id = %s", node_id)
    return str(rows[0][0]) if rows else None


def heals(db_url: str, node_id: int) -> int:
    rows = fetch(db_url, "SELECT count(*) FROM node_history WHERE node_id = %s"
                 " AND event = 'heal'", node_id)  # fmt: skip
    return int(rows[0][0])


def healed_back(db_url: str, node_id: int, status: str, timeout: float = 60) -> None:
    """The watch healed the node for `status` and the workers brought it back live."""

    def back() -> bool:
        heals = fetch(db_url, "SELECT detail FROM node_history WHERE node_id = %s"
                      " AND event = 'heal'", node_id)  # fmt: skip
        rows = fetch(db_url, "SELECT state, held, last_error FROM nodes WHERE id = %s", node_id)
        assert not rows[0][1], f"held: {rows}"
        return bool(heals) and rows[0][0] == "live" and health(db_url, node_id) == "ok"

    wait_until(back, timeout, f"node {node_id} healed from {status} and ok again")
    [(detail,)] = fetch(db_url, "SELECT detail FROM node_history WHERE node_id = %s"
                        " AND event = 'heal'", node_id)  # fmt: skip
    assert str(detail).startswith(f"{status}: ")


def test_a_live_node_is_recorded_healthy(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    start_watch: Callable[..., subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    node_id = live_node(simulation, db_url, start_worker, "healthy")
    start_watch()
    wait_until(lambda: health(db_url, node_id) == "ok", 30, "the watch saw the node ok")
    wait_until(
        lambda: (
            fetch(db_url, "SELECT probes FROM node_health WHERE node_id = %s", node_id)[0][0] >= 3
        ),
        30,
        "the watch probed the node again",
    )
    [(last_ok, detail)] = fetch(
        db_url, "SELECT last_ok, detail FROM node_health WHERE node_id = %s", node_id
    )
    assert last_ok is not None and "height 150" in str(detail)
    assert heals(db_url, node_id) == 0
    # Probes go through the node's SSH connection, never in clear.
    assert simulation.host(node_id).traffic.direct == 0


def test_a_rebooted_node_is_unlocked_without_init(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    start_watch: Callable[..., subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    node_id = live_node(simulation, db_url, start_worker, "rebooted")
    start_watch()
    wait_until(lambda: health(db_url, node_id) == "ok", 30, "the watch saw the node ok")
    host = simulation.host(node_id)
    simulation.cloud.run(host.reboot())
    healed_back(db_url, node_id, "locked")
    assert host.daemon is not None and host.daemon.unlocked
    assert host.disk.init_calls == 1  # the heal unlocked; /init never ran again
    [(login,)] = fetch(db_url, "SELECT login FROM node_history WHERE node_id = %s"
                       " AND event = 'heal'", node_id)  # fmt: skip
    assert "watch" in str(login)


def test_a_crashed_daemon_is_started_again(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    start_watch: Callable[..., subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    node_id = live_node(simulation, db_url, start_worker, "crashed")
    start_watch()
    host = simulation.host(node_id)
    simulation.cloud.run(host.crash())
    healed_back(db_url, node_id, "daemon_down")
    assert host.daemon is not None and host.daemon.unlocked
    assert host.disk.init_calls == 1


def test_an_instance_stopped_from_outside_is_started_again(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    start_watch: Callable[..., subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    node_id = live_node(simulation, db_url, start_worker, "stopped-outside")
    [(instance_id, before)] = fetch(
        db_url, "SELECT instance_id, address FROM nodes WHERE id = %s", node_id
    )
    start_watch()
    wait_until(lambda: health(db_url, node_id) == "ok", 30, "the watch saw the node ok")
    simulation.cloud.stop_from_outside(str(instance_id))
    healed_back(db_url, node_id, "instance_stopped")
    [(address,)] = fetch(db_url, "SELECT address FROM nodes WHERE id = %s", node_id)
    assert address != before, "a started instance has a new address, and the fleet took it"
    host = simulation.host(node_id)
    assert host.daemon is not None and host.daemon.unlocked and host.disk.init_calls == 1
    assert len(simulation.instances_of(node_id)) == 1


@pytest.mark.parametrize("fault", ["another wallet", "another network"])
def test_a_node_that_answers_as_another_is_held_never_healed(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    start_watch: Callable[..., subprocess.Popen[bytes]], fault: str,
) -> None:  # fmt: skip
    node_id = live_node(simulation, db_url, start_worker, "hijacked")
    host = simulation.host(node_id)
    assert host.daemon is not None
    if fault == "another wallet":
        host.replace_wallet(Mnemonic("english").generate(strength=256))
    else:
        host.daemon.network = "mainnet"
    start_watch()
    error, _ = held_with(db_url, node_id, timeout=30)
    expected = "wrong pubkey" if fault == "another wallet" else "wrong network"
    assert error.startswith(f"health watch: {expected}: "), error
    assert fetch(db_url, "SELECT state FROM nodes WHERE id = %s", node_id) == [("live",)]
    assert heals(db_url, node_id) == 0


def test_a_node_healed_too_often_is_held_as_flapping(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    start_watch: Callable[..., subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    node_id = live_node(simulation, db_url, start_worker, "flappy")
    start_watch(FLEET_WATCH_FLAP_LIMIT="2")
    host = simulation.host(node_id)
    for heal in (1, 2):
        wait_until(lambda: health(db_url, node_id) == "ok", 60, "the node is ok again")
        simulation.cloud.run(host.reboot())
        wait_until(lambda: heals(db_url, node_id) == heal, 30, f"heal {heal}")  # noqa: B023
    wait_until(lambda: health(db_url, node_id) == "ok", 60, "the node is ok again")
    simulation.cloud.run(host.reboot())
    error, _ = held_with(db_url, node_id, timeout=30)
    assert error.startswith("flapping: healed 2 times within 01:00:00"), error
    assert error.count("locked: ") == 3  # both heals' causes, and today's


def test_a_node_whose_instance_is_gone_is_held(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    start_watch: Callable[..., subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    node_id = live_node(simulation, db_url, start_worker, "terminated")
    [(instance_id,)] = fetch(db_url, "SELECT instance_id FROM nodes WHERE id = %s", node_id)
    simulation.cloud.client("ec2").terminate_instances(InstanceIds=[instance_id])
    start_watch()
    error, _ = held_with(db_url, node_id, timeout=30)
    assert error.startswith("health watch: instance gone: EC2 says "), error
    assert instance_id in error


def test_a_dead_host_is_held_as_unreachable(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    start_watch: Callable[..., subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    node_id = live_node(simulation, db_url, start_worker, "deadhost")
    simulation.cloud.run(simulation.host(node_id).power_off())
    start_watch()
    wait_until(lambda: health(db_url, node_id) == "unreachable", 30, "seen unreachable")
    error, _ = held_with(db_url, node_id, timeout=30)
    assert error.startswith("health watch: unreachable since "), error
    assert "EC2 says running" in error


def test_a_heal_never_initialises_a_wallet_that_ran(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    start_watch: Callable[..., subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    """The host came back with an empty storage dir: the daemon answers like a locked
    node, the watch heals it to wallet, and the wallet step holds instead of /init."""
    node_id = live_node(simulation, db_url, start_worker, "wiped")
    host = simulation.host(node_id)
    simulation.cloud.run(host.power_off())
    host.disk.mnemonic = None  # a new, empty disk
    simulation.cloud.run(host.boot())
    simulation.cloud.run(host.start())
    start_watch()
    error, _ = held_with(db_url, node_id, timeout=30)
    assert "is gone from its host (NotInitialized)" in error, error
    assert fetch(db_url, "SELECT state FROM nodes WHERE id = %s", node_id) == [("wallet",)]
    assert host.disk.init_calls == 1
