"""Backups a real daemon can take, the node's network on its host, and the chain backend
each network needs: the real steps through the simulated cloud, whose hosts keep their
storage dirs on disk and whose /backup zips them as upstream does."""

import json
import subprocess
import sys
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from tests.conftest import add_nodes, fetch, held_with
from tests.simulation import BACKUP_BUCKET, Simulation, env_for
from tests.test_lifecycle import reach, request
from worker.dispatcher import Dispatcher
from worker.settings import FleetSettings

StartWorker = Callable[..., subprocess.Popen[bytes]]
Fleet = Callable[..., subprocess.CompletedProcess[str]]


def stored_backups(simulation: Simulation) -> dict[str, tuple[int, str]]:
    """S3 key -> (size, sha256 metadata) of every backup in the bucket."""
    s3 = simulation.cloud.client("s3")
    found: dict[str, tuple[int, str]] = {}
    for key in simulation.backups():
        head = s3.head_object(Bucket=BACKUP_BUCKET, Key=key)
        found[key] = (int(head["ContentLength"]), str(head["Metadata"].get("sha256")))
    return found


@pytest.mark.slow  # tens of seconds: the second tier (scripts/test)
def test_a_backup_stays_the_same_size_over_ten_stop_start_cycles(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    node_id = add_nodes(db_url, ["cycler"])[0]
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    host = simulation.host(node_id)
    for _ in range(10):
        request(db_url, [node_id], "stop")
        reach(db_url, [node_id], "stopped")
        request(db_url, [node_id], "start")
        reach(db_url, [node_id], "live")
    sizes = [size for size, _ in stored_backups(simulation).values()]
    assert len(sizes) == 10
    # Each backup holds the storage dir and nothing of the earlier ones: flat, not growing.
    assert max(sizes) < 1.5 * min(sizes), sizes
    # Every upload was verified in S3, then the host's copy removed.
    assert host.backup_files() == []
    assert not any("backup" in p.name for p in host.disk.storage_dir.rglob("*"))


@pytest.mark.slow
def test_fleet_node_backups_lists_key_size_and_checksum(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    operator_env: dict[str, str],
) -> None:
    node_id = add_nodes(db_url, ["listed"])[0]
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    request(db_url, [node_id], "stop")
    reach(db_url, [node_id], "stopped")
    env = simulation.env | {"FLEET_DATABASE_URL": operator_env["FLEET_DATABASE_URL"]}
    run = [sys.executable, "-m", "worker", "node", "backups", "listed"]
    listed = subprocess.run([*run, "--json"], env=env, capture_output=True, text=True, check=False)
    assert listed.returncode == 0, listed.stderr
    [(key, (size, sha256))] = stored_backups(simulation).items()
    assert json.loads(listed.stdout) == [
        {"at": json.loads(listed.stdout)[0]["at"], "bucket": BACKUP_BUCKET, "key": key,
         "size": size, "sha256": sha256}
    ]  # fmt: skip
    table = subprocess.run(run, env=env, capture_output=True, text=True, check=False)
    assert table.returncode == 0 and key in table.stdout and sha256 in table.stdout, table


def test_a_mainnet_node_on_a_testnet_image_runs_mainnet(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    simulation.cloud.settings.network = "testnet"  # the image's /etc/rln/node.env
    node_id = add_nodes(db_url, ["main-node"], network="mainnet")[0]
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    host = simulation.host(node_id)
    assert host.daemon is not None and host.daemon.network == "mainnet"


@pytest.mark.parametrize("mislabelled", [False, True])
def test_a_mainnet_node_on_a_testnet_image_that_ignores_the_network_is_held(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    mislabelled: bool,
) -> None:
    """The image's unit ignores the network the agent sets. Its daemon runs testnet: the
    mainnet chain backend refuses it at /unlock; and should the fleet's "mainnet" backend
    be testnet's (a mislabelled FLEET_CHAIN), /networkinfo still tells."""
    simulation.cloud.settings.network = "testnet"
    simulation.cloud.settings.faults.image_network_fixed = True
    settings = simulation.settings
    if mislabelled:
        chain = dict(settings.chain) | {"mainnet": settings.chain["testnet"]}
        settings = settings.model_copy(update={"chain": chain})
    node_id = add_nodes(db_url, ["wrong-net"], network="mainnet")[0]
    start_worker(env=env_for(settings, simulation.cloud.moto.credentials))
    error, attempts = held_with(db_url, node_id)
    if mislabelled:
        assert error == (
            "node wrong-net asked for mainnet runs Testnet: its host did not take the network"
            " (check /etc/rln/node.env and the unit's --network)"
        )
    else:
        assert error.startswith("chain backend for mainnet: InvalidIndexer"), error
        assert "the node runs Testnet" in error
    assert attempts <= 1
    # Held locked: a wallet on the wrong chain is not left open.
    host = simulation.host(node_id)
    assert host.daemon is not None and not host.daemon.unlocked


@pytest.mark.parametrize(
    ("broken", "cause"),
    [
        ({"indexer_url": "tcp://electrs.nowhere.sim:50001"}, "InvalidIndexer"),
        ({"bitcoind_rpc_host": "bitcoind.nowhere.sim"}, "FailedBitcoindConnection"),
        ({"bitcoind_rpc_host": "bitcoind.testnet.chain.sim", "bitcoind_rpc_port": 18332,
          "bitcoind_rpc_password": "rpc-password-testnet"}, "NetworkMismatch"),
    ],
)  # fmt: skip
def test_a_chain_backend_error_holds_the_node_at_once_with_its_cause(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    broken: dict[str, object],
    cause: str,
) -> None:
    chain = dict(simulation.settings.chain)
    chain["regtest"] = chain["regtest"].model_copy(update=broken)
    settings = simulation.settings.model_copy(update={"chain": chain})
    node_id = add_nodes(db_url, ["chainless"])[0]
    start_worker(env=env_for(settings, simulation.cloud.moto.credentials))
    error, attempts = held_with(db_url, node_id)
    assert error.startswith(f"chain backend for regtest: {cause}"), error
    assert attempts <= 1  # no retries: a configuration problem
    for secret in ("rpc-password-regtest", "rpc-password-testnet"):
        assert secret not in error


def test_a_network_without_a_chain_backend_is_refused_by_the_cli(fleet: Fleet, db_url: str) -> None:
    refused = fleet("node", "create", "signet-node", "--network", "signet")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "no chain backend for network 'signet'" in refused.stderr + refused.stdout
    assert fetch(db_url, "SELECT count(*) FROM nodes") == [(0,)]
    made = fleet("node", "create", "regtest-node", "--network", "regtest")
    assert made.returncode == 0, made.stderr


@pytest.mark.parametrize(
    ("chain", "named"),
    [
        ({"bitcoin": {}}, "chain.bitcoin"),
        ({"regtest": {"bitcoind_rpc_host": "h", "bitcoind_rpc_password": "SEKRIT-RPC"}},
         "chain.regtest.indexer_url"),
        ({"regtest": {"bitcoind_rpc_host": "two words", "bitcoind_rpc_port": 18443,
                      "bitcoind_rpc_username": "u", "bitcoind_rpc_password": "SEKRIT-RPC",
                      "indexer_url": "tcp://electrs:50001"}}, "chain.regtest.bitcoind_rpc_host"),
        ({"regtest": {"bitcoind_rpc_host": "b", "bitcoind_rpc_port": 0,
                      "bitcoind_rpc_username": "u", "bitcoind_rpc_password": "SEKRIT-RPC",
                      "indexer_url": "tcp://electrs:50001"}}, "chain.regtest.bitcoind_rpc_port"),
    ],
)  # fmt: skip
def test_chain_backends_are_checked_for_shape_at_startup(
    chain: dict[str, object], named: str
) -> None:
    """FLEET_CHAIN is read when a process starts: a malformed entry stops it, named, and
    the error never shows the RPC password it was given."""
    with pytest.raises(ValidationError) as refused:
        FleetSettings(_env_file=None, chain=chain)
    assert named in str(refused.value)
    assert "SEKRIT-RPC" not in str(refused.value)


def test_an_upload_s3_does_not_hold_whole_keeps_the_hosts_copy(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    node_id = add_nodes(db_url, ["lossy"])[0]
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    host = simulation.host(node_id)
    simulation.cloud.settings.faults.truncated_uploads = True
    request(db_url, [node_id], "stop")
    error, attempts = held_with(db_url, node_id)
    assert error.startswith("BackupNotVerified: backup s3://fleet-backups/"), error
    assert "the host keeps its copy" in error and attempts == simulation.settings.max_attempts
    # Every attempt's file is still on the host, and the history lists no backup.
    assert len(host.backup_files()) == attempts
    assert fetch(db_url, "SELECT count(*) FROM node_history WHERE event = 'backup'") == [(0,)]
    assert host.daemon is not None  # never stopped without a backup
