"""The real steps through the simulated cloud: EC2 and S3 in moto, hosts over real SSH,
the node API over real HTTP. Workers are real `fleet worker` processes."""

import subprocess
from collections.abc import Callable

import psycopg
import pytest

from models.backups import BackupRecord
from tests.conftest import add_nodes, fetch, wait_until
from tests.simulation import RELEASE, Simulation, release_sha256
from worker.dispatcher import Dispatcher

StartWorker = Callable[..., subprocess.Popen[bytes]]
Fleet = Callable[..., subprocess.CompletedProcess[str]]


def states(db_url: str, node_ids: list[int]) -> list[str]:
    rows = fetch(db_url, "SELECT state FROM nodes WHERE id = ANY(%s) ORDER BY id", node_ids)
    return [r[0] for r in rows]


def reach(db_url: str, node_ids: list[int], state: str, timeout: float = 60) -> None:
    def arrived() -> bool:
        held = fetch(
            db_url, "SELECT name, last_error FROM nodes WHERE held AND id = ANY(%s)", node_ids
        )
        assert not held, f"held: {held}"
        return states(db_url, node_ids) == [state] * len(node_ids)

    wait_until(arrived, timeout, f"nodes {node_ids} reach {state}")


def request(db_url: str, node_ids: list[int], state: str, version: str | None = None) -> None:
    with psycopg.connect(db_url, autocommit=True) as app:
        for node_id in node_ids:
            app.execute(
                "UPDATE nodes SET state = %s, target_version = coalesce(%s, target_version)"
                " WHERE id = %s",
                (state, version, node_id),
            )


@pytest.mark.slow
def test_full_lifecycle_through_the_simulated_cloud(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    with psycopg.connect(db_url, autocommit=True) as app:
        app.execute(
            "INSERT INTO releases (version, artifact_url, sha256) VALUES (%s, %s, %s)",
            (RELEASE, f"s3://releases/rln-{RELEASE}.tar.gz", release_sha256()),
        )
    node_ids = add_nodes(db_url, ["alpha", "bravo", "charlie"])
    for _ in range(2):
        start_worker(env=simulation.env)

    reach(db_url, node_ids, "live")
    for node_id in node_ids:
        assert len(simulation.instances_of(node_id)) == 1
        host = simulation.host(node_id)
        assert host.daemon is not None and host.daemon.unlocked
        [(pubkey, address)] = fetch(
            db_url, "SELECT node_pubkey, address FROM nodes WHERE id = %s", node_id
        )
        assert pubkey == host.daemon.node_pubkey and address == host.address
        assert host.disk.init_calls == 1

    request(db_url, node_ids, "stop")
    reach(db_url, node_ids, "stopped")
    backups = simulation.backups()
    assert len(backups) == 3 and all(key.startswith("backups/tester/") for key in backups)
    notes = fetch(db_url, "SELECT detail FROM node_history WHERE event = 'backup' ORDER BY id")
    records = [BackupRecord.parse(d) for (d,) in notes]
    assert sorted(r.key for r in records if r is not None) == backups
    assert all(simulation.host(n).daemon is None for n in node_ids)

    request(db_url, node_ids, "update", RELEASE)
    reach(db_url, node_ids, "stopped")
    assert fetch(db_url, "SELECT DISTINCT current_version, target_version FROM nodes") == [
        (RELEASE, None)
    ]
    assert all(simulation.host(n).version == RELEASE for n in node_ids)

    request(db_url, node_ids, "start")
    reach(db_url, node_ids, "live")
    for node_id in node_ids:
        disk = simulation.host(node_id).disk
        # First wallet run: /unlock (NotInitialized), /init, /unlock. After the restart:
        # one /unlock, and never a second /init.
        assert (disk.init_calls, disk.unlock_calls) == (1, 3)

    instance_ids = [str(simulation.instances_of(n)[0]["InstanceId"]) for n in node_ids]
    disks = {n: simulation.host(n).disk for n in node_ids}
    request(db_url, node_ids, "destroy")
    reach(db_url, node_ids, "destroyed")
    assert sorted(str(i["InstanceId"]) for i in simulation.instances()) == sorted(instance_ids)
    assert {i["State"]["Name"] for i in simulation.instances()} == {"terminated"}  # type: ignore[index]
    # stop and destroy each back up every node; update found them stopped already.
    assert len(simulation.backups()) == 6
    # Secrets are kept after destroy, and the stored mnemonic is the node's.
    for node_id in node_ids:
        assert stored_mnemonic(simulation, db_url, node_id) == disks[node_id].mnemonic
    assert_api_reached_only_through_the_tunnel(simulation)


def assert_api_reached_only_through_the_tunnel(simulation: Simulation) -> None:
    """Every node API call came through the node's SSH connection, none over the network
    (so no password, mnemonic or admin token in clear), each with the least token."""
    traffic = simulation.cloud.api_traffic()
    assert (traffic.direct, traffic.direct_secrets) == (0, 0)
    assert traffic.tunnelled > 0 and traffic.tunnelled == sum(traffic.roles.values())
    granted: dict[str, set[str]] = {}
    for path, role in traffic.roles:
        granted.setdefault(path, set()).add(role)
    assert granted.pop("/nodeinfo") == {"read-only"}
    assert granted.pop("/networkinfo") == {"read-only"}
    assert {"/init", "/unlock", "/lock", "/backup"} <= set(granted)
    assert all(roles == {"admin"} for roles in granted.values()), granted


def stored_mnemonic(simulation: Simulation, db_url: str, node_id: int) -> str:
    [(key_id, nonce, sealed)] = fetch(
        db_url,
        "SELECT key_id, nonce, ciphertext FROM node_secrets"
        " WHERE node_id = %s AND kind = 'mnemonic'",
        node_id,
    )
    return simulation.ring.open(node_id, "mnemonic", key_id, nonce, sealed).reveal()
