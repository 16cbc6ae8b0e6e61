"""`fleet node replace` end to end: a real operator CLI, workers, the dispatcher, moto,
real SSH to the simulated hosts and the simulated daemon. A node's host dies; the
replacement launches a new instance (a new ClientToken), terminates the old one if it
still exists, and brings the wallet back: from a clean backup (the same pubkey, the
channels' state as the backup holds it), or, without one, only with the operator's
consent, a fresh wallet from the stored mnemonic (the channels gone)."""

import subprocess
from collections.abc import Callable

import pytest

from jobs.ec2 import client_token
from sim.host import SimHost
from tests.conftest import fetch, held_with, wait_until
from tests.simulation import Simulation
from tests.test_lifecycle import assert_api_reached_only_through_the_tunnel, reach, request
from tests.test_watch import health, live_node
from worker.dispatcher import Dispatcher

StartWorker = Callable[..., subprocess.Popen[bytes]]
Fleet = Callable[..., subprocess.CompletedProcess[str]]
PEER = "03" + "77" * 32

pytestmark = pytest.mark.slow


def host_now(simulation: Simulation, db_url: str, node_id: int) -> SimHost:
    [(instance_id,)] = fetch(db_url, "SELECT instance_id FROM nodes WHERE id = %s", node_id)
    return simulation.cloud.host_of(str(instance_id))


def node_row(db_url: str, node_id: int) -> tuple[str, str, str, int]:
    [row] = fetch(db_url, "SELECT instance_id, node_pubkey, ssh_host_key, launch_generation"
                  " FROM nodes WHERE id = %s", node_id)  # fmt: skip
    return str(row[0]), str(row[1]), str(row[2]), int(row[3])


def instance_state(simulation: Simulation, instance_id: str) -> str:
    [found] = [i for i in simulation.instances() if i["InstanceId"] == instance_id]
    return str(found["State"]["Name"])  # type: ignore[index]


def replacement(db_url: str, node_id: int) -> list[tuple[object, ...]]:
    return fetch(db_url, "SELECT generation, outcome, done_at IS NOT NULL FROM node_replacements"
                 " WHERE node_id = %s", node_id)  # fmt: skip


def notes(db_url: str, node_id: int) -> list[str]:
    rows = fetch(db_url, "SELECT detail FROM node_history WHERE node_id = %s AND event = 'note'"
                 " ORDER BY id", node_id)  # fmt: skip
    return [str(detail) for (detail,) in rows]


def test_a_dead_host_with_a_clean_backup_comes_back_with_its_channels(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    fleet: Fleet,
) -> None:  # fmt: skip
    node_id = live_node(simulation, db_url, start_worker, "phoenix")
    old_host = host_now(simulation, db_url, node_id)
    old_host.disk.open_channel(PEER)
    request(db_url, [node_id], "stop")  # lock, back up (the clean backup), stop
    reach(db_url, [node_id], "stopped")
    ldk_state = old_host.disk.read("/var/lib/rln/.ldk/channel_manager")
    old_instance, pubkey, old_key, _ = node_row(db_url, node_id)
    simulation.cloud.run(old_host.power_off())  # the host dies; EC2 still says running

    replaced = fleet("node", "replace", "phoenix")
    assert replaced.returncode == 0, replaced.stderr
    assert "restored from s3://fleet-backups/" in replaced.stdout
    reach(db_url, [node_id], "live", timeout=90)

    new_instance, new_pubkey, new_key, generation = node_row(db_url, node_id)
    assert new_instance != old_instance and new_key != old_key and generation == 1
    assert new_pubkey == pubkey
    new_host = host_now(simulation, db_url, node_id)
    assert new_host is not old_host
    # The channels' state is the backup's: LDK's files as they were, the channel open.
    assert new_host.disk.read("/var/lib/rln/.ldk/channel_manager") == ldk_state
    assert new_host.disk.channels() == [PEER]
    assert new_host.daemon is not None and new_host.daemon.unlocked
    assert new_host.disk.init_calls == 0  # restored, never initialised
    assert new_host.backup_files() == []  # the downloaded backup is not left on the host
    wait_until(lambda: instance_state(simulation, old_instance) == "terminated", 30,
               "the old instance is terminated")  # fmt: skip
    assert replacement(db_url, node_id) == [(1, "restored", True)]
    tokens = fetch(db_url, "SELECT launch_generation, client_token FROM node_launches"
                   " WHERE node_id = %s ORDER BY 1", node_id)  # fmt: skip
    [(fleet_id,)] = fetch(db_url, "SELECT fleet_id FROM fleet_identity")
    assert tokens == [(g, client_token(str(fleet_id), node_id, g)) for g in (0, 1)]
    assert any("replacement done" in n and "restored" in n for n in notes(db_url, node_id))
    assert_api_reached_only_through_the_tunnel(simulation)


def test_without_a_clean_backup_refused_and_with_the_flag_a_fresh_wallet(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    fleet: Fleet,
) -> None:  # fmt: skip
    node_id = live_node(simulation, db_url, start_worker, "lazarus")
    old_host = host_now(simulation, db_url, node_id)
    old_host.disk.open_channel(PEER)
    old_instance, pubkey, _, _ = node_row(db_url, node_id)
    simulation.cloud.run(old_host.power_off())  # live, unlocked since any backup: none clean

    refused = fleet("node", "replace", "lazarus")
    assert refused.returncode == 2
    [line] = refused.stderr.splitlines()
    assert line.startswith("error: node lazarus has no backup taken while it was locked")
    assert "penalty" in line
    assert node_row(db_url, node_id)[0] == old_instance and replacement(db_url, node_id) == []

    replaced = fleet("node", "replace", "lazarus", "--accept-channel-loss", "--json")
    assert replaced.returncode == 0, replaced.stderr
    assert '"backup": null' in replaced.stdout
    reach(db_url, [node_id], "live", timeout=90)

    new_instance, new_pubkey, _, generation = node_row(db_url, node_id)
    assert new_instance != old_instance and generation == 1
    assert new_pubkey == pubkey  # the stored mnemonic's wallet
    new_host = host_now(simulation, db_url, node_id)
    assert new_host.disk.init_calls == 1 and new_host.disk.channels() == []
    assert new_host.disk.mnemonic == old_host.disk.mnemonic
    # The old instance still ran in EC2 (its host only powered off): terminated.
    wait_until(lambda: instance_state(simulation, old_instance) == "terminated", 30,
               "the old instance is terminated")  # fmt: skip
    assert replacement(db_url, node_id) == [(1, "fresh_wallet", True)]
    said = notes(db_url, node_id)
    assert any("CHANNEL LOSS" in n for n in said) and any(
        "REPLACEMENT WITHOUT A BACKUP" in n for n in said
    )


def test_a_node_the_watch_held_for_its_instance_gone_is_replaced_and_ok_again(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker,
    fleet: Fleet, start_watch: Callable[..., subprocess.Popen[bytes]],
) -> None:  # fmt: skip
    node_id = live_node(simulation, db_url, start_worker, "gone")
    old_instance, pubkey, _, _ = node_row(db_url, node_id)
    simulation.cloud.client("ec2").terminate_instances(InstanceIds=[old_instance])
    start_watch()
    error, _ = held_with(db_url, node_id, timeout=30)
    assert error.startswith("health watch: instance gone: ")
    # Live (unlocked) until its host went: no backup is clean.
    assert fleet("node", "replace", "gone").returncode == 2
    replaced = fleet("node", "replace", "gone", "--accept-channel-loss")
    assert replaced.returncode == 0, replaced.stderr
    assert "WITH A FRESH WALLET" in replaced.stdout
    reach(db_url, [node_id], "live", timeout=90)
    assert node_row(db_url, node_id)[1] == pubkey
    wait_until(lambda: health(db_url, node_id) == "ok", 30, "the watch sees the new host ok")
