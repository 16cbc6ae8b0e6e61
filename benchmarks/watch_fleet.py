"""N live nodes for the watch benchmark, made directly instead of through the lifecycle
(2,000 nodes through launch, boot, install and wallet would take the better part of an
hour on this machine, and none of it is what the watch benchmark measures).

The shortcut, and what it leaves out:
- one EC2 instance per node is launched in the simulator's moto without the fleet's tag
  (so the simulator's watcher does not give it a host of its own); the watch asks EC2
  about it only when SSH is silent;
- each host is a sim.host.SimHost made on the simulator's loop, at its own 127.x address:
  booted (its SSH server), a fresh API root key set, a wallet put on its disk and the
  daemon started, then marked unlocked through the simulated daemon's own object (no
  /init or /unlock call: those are the worker's steps, not the watch's);
- each node row is inserted as the schema owner, in `live`, with its address, the host's
  SSH key pinned, the daemon's node_pubkey and the API root key sealed in node_secrets
  with the fleet's key ring, as the wallet and key steps would have left them."""

import asyncio
import ipaddress
from dataclasses import dataclass

import asyncssh
import psycopg
from mnemonic import Mnemonic

from jobs.node_auth import new_root_key
from models.secrets import KeyRing, Secret
from sim.cloud import SimCloud
from sim.host import HostPorts, SimHost
from sim.ssh_server import public_key_text

AMI = "ami-0123456789abcdef0"
WALLET_PASSWORD = "bench-wallet-password"  # a simulated wallet's, nowhere else
BATCH = 100  # hosts made per call onto the simulator's loop (each call has a deadline)
LAUNCH_BATCH = 500


@dataclass(frozen=True)
class BenchNode:
    node_id: int
    instance_id: str
    host: SimHost
    root_private_hex: str


def make_fleet(cloud: SimCloud, db_url: str, ring: KeyRing, count: int) -> list[BenchNode]:
    """count live nodes: instances, hosts up and unlocked, rows and sealed root keys."""
    instances = launch(cloud, count)
    first = ipaddress.IPv4Address(cloud.settings.first_address)
    keys = [new_root_key() for _ in range(count)]
    hosts: list[SimHost] = []
    for start in range(0, count, BATCH):
        batch = [
            (str(first + i), keys[i].public_hex) for i in range(start, min(count, start + BATCH))
        ]
        hosts += cloud.run(_bring_up(cloud, batch))
    nodes = [
        BenchNode(0, instance_id, host, key.private_hex)
        for instance_id, host, key in zip(instances, hosts, keys, strict=True)
    ]
    return insert_rows(db_url, ring, nodes, cloud.settings.region)


def launch(cloud: SimCloud, count: int) -> list[str]:
    ec2 = cloud.client("ec2")
    found: list[str] = []
    while len(found) < count:
        many = min(LAUNCH_BATCH, count - len(found))
        made = ec2.run_instances(ImageId=AMI, InstanceType="t3.small", MinCount=many,
                                 MaxCount=many)  # fmt: skip
        found += [i["InstanceId"] for i in made["Instances"]]
    return found


async def _bring_up(cloud: SimCloud, batch: list[tuple[str, str]]) -> list[SimHost]:
    return list(await asyncio.gather(*(_host(cloud, a, k) for a, k in batch)))


async def _host(cloud: SimCloud, address: str, root_public_hex: str) -> SimHost:
    settings = cloud.settings
    host = SimHost(
        address,
        HostPorts(ssh=settings.ssh_port, api=settings.api_port),
        settings.network,
        settings.image_version,
        asyncssh_key(cloud),
        fetch=_no_fetch,
        upload=_no_upload,
        unlock_seconds=0.0,
        chain=settings.chain,
    )
    await host.boot()
    await host.set_root_key(root_public_hex)
    host.disk.keep_wallet(Mnemonic("english").generate(strength=256), WALLET_PASSWORD)
    await host.start()
    await unlock(host)
    return host


async def unlock(host: SimHost) -> None:
    """The daemon as the wallet step leaves it: unlocked (see the module docstring)."""
    assert host.daemon is not None
    # The daemon's own state change, without /unlock's password and chain checks.
    await host.daemon._change_state(0.0, unlocked=True)


def asyncssh_key(cloud: SimCloud) -> asyncssh.SSHKey:
    """The fleet's public key, which every simulated host authorises."""
    return asyncssh.read_public_key(str(cloud.settings.client_public_key))


def _no_fetch(url: str) -> bytes:
    raise RuntimeError(f"the watch benchmark's hosts install nothing ({url})")


def _no_upload(url: str, content: bytes, sha256: str) -> None:
    raise RuntimeError(f"the watch benchmark's hosts upload nothing ({url})")


def insert_rows(db_url: str, ring: KeyRing, nodes: list[BenchNode], region: str) -> list[BenchNode]:
    """The node rows, as the schema owner, in one transaction; the nodes with their ids."""
    placed: list[BenchNode] = []
    with psycopg.connect(db_url) as connection, connection.cursor() as cursor:
        # Straight to live, as tests/test_fleet_columns.py places rows: the insert trigger
        # would start the node in new and clear the columns only the fleet's steps fill.
        cursor.execute("SET LOCAL session_replication_role = replica")
        for number, node in enumerate(nodes, start=1):
            daemon = node.host.daemon
            assert daemon is not None
            cursor.execute(
                "INSERT INTO nodes (name, owner, region, instance_type, network,"
                " current_version, state, instance_id, address, ssh_host_key, node_pubkey)"
                " VALUES (%s, 'bench', %s, 't3.small', 'regtest', '0.9.0', 'live',"
                " %s, %s, %s, %s) RETURNING id",
                (f"w-{number}", region, node.instance_id, node.host.address,
                 public_key_text(node.host.host_key), daemon.node_pubkey),
            )  # fmt: skip
            row = cursor.fetchone()
            assert row is not None
            node_id = int(row[0])
            key_id, nonce, sealed = ring.seal(
                node_id, "api_root_key", Secret(node.root_private_hex)
            )
            cursor.execute(
                "INSERT INTO node_secrets (node_id, kind, key_id, nonce, ciphertext)"
                " VALUES (%s, 'api_root_key', %s, %s, %s)",
                (node_id, key_id, nonce, sealed),
            )
            placed.append(BenchNode(node_id, node.instance_id, node.host, node.root_private_hex))
    return placed
