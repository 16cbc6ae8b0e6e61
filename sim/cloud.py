"""The simulated cloud: moto for EC2 and S3, and a watcher that gives every running
instance of the fleet a simulated host after its boot delay. The host's loopback address
is published as a tag on the instance; the fleet, configured to read its addresses from
that tag, runs its production code unchanged. Only loopback addresses are ever used."""

import asyncio
import concurrent.futures
import ipaddress
import logging
import threading
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import boto3

from sim.aws import LaunchLog, MotoServer
from sim.ec2_limits import Ec2Limits, Ec2Throttle
from sim.host import HostFaults, HostPorts, SimHost
from sim.iam_aws import EnforcingMotoServer
from sim.rln_daemon import NETWORKS, ApiTraffic, ChainWorld, SimBitcoind

T = TypeVar("T")
FLEET_TAG = "rln-fleet"
# bitcoind's default RPC port per network.
RPC_PORTS = {
    "mainnet": 8332,
    "testnet": 18332,
    "testnet4": 48332,
    "signet": 38332,
    "regtest": 18443,
}


def sim_chains() -> ChainWorld:
    """A bitcoind and an electrs for every network, at names of their own: what the
    fleet's FLEET_CHAIN points at. Each bitcoind has its own RPC password."""
    return ChainWorld(
        {
            (f"bitcoind.{network}.chain.sim", RPC_PORTS[network]): SimBitcoind(
                network, "fleet", f"rpc-password-{network}"
            )
            for network in NETWORKS
        },
        {f"tcp://electrs.{network}.chain.sim:50001": network for network in NETWORKS},
    )


def fleet_chain(world: ChainWorld, networks: list[str]) -> dict[str, dict[str, object]]:
    """FLEET_CHAIN for these networks, pointing at this world's backends (as JSON)."""
    chain: dict[str, dict[str, object]] = {}
    for network in networks:
        (host, port), bitcoind = next(
            (at, b) for at, b in world.bitcoinds.items() if b.network == network
        )
        indexer = next(url for url, served in world.indexers.items() if served == network)
        chain[network] = {
            "bitcoind_rpc_host": host,
            "bitcoind_rpc_port": port,
            "bitcoind_rpc_username": bitcoind.username,
            "bitcoind_rpc_password": bitcoind.password,
            "indexer_url": indexer,
        }
    return chain


@dataclass
class SimSettings:
    client_public_key: Path  # the fleet's SSH public key, authorised on every host
    region: str = "eu-west-1"
    moto_port: int = 0  # 0: any free port (see SimCloud.aws_url)
    ssh_port: int = 2222
    api_port: int = 3001
    address_tag: str = "sim-address"
    first_address: str = "127.77.0.1"
    boot_seconds: float = 1.0
    unlock_seconds: float = 0.2
    network: str = "regtest"  # the image's network (/etc/rln/node.env until the agent sets it)
    chain: ChainWorld = field(default_factory=sim_chains)
    disk_dir: Path | None = None  # each host's disk is a directory here (default: scratch)
    # The release the image comes with; None: none (the golden image bakes none in).
    image_version: str | None = "0.9.0"
    image_wallet_format: int = 1  # the wallet format of the image's release
    poll_seconds: float = 0.2
    throttle_rate: float = 0.0
    # EC2's documented API throttling (sim/ec2_limits.py), AWS's numbers unless a test
    # sets others; None: unlimited, as moto.
    ec2_limits: Ec2Limits | None = field(default_factory=Ec2Limits)
    launch_delay_seconds: float = 0.0  # every RunInstances in flight this long
    # A terminated instance is forgotten this long after its termination (EC2: about an
    # hour; None: never, as moto).
    forget_terminated_seconds: float | None = None
    faults: HostFaults = field(default_factory=HostFaults)
    # The keys the hosts' S3 calls (backup uploads, release downloads) are signed with,
    # standing for an instance profile's; None: the simulator's own.
    host_credentials: tuple[str, str] | None = None


class SimCloud:
    def __init__(self, settings: SimSettings, aws: EnforcingMotoServer | None = None) -> None:
        self.settings = settings
        launches = LaunchLog(
            throttle_rate=settings.throttle_rate,
            launch_delay_seconds=settings.launch_delay_seconds,
            forget_terminated_seconds=settings.forget_terminated_seconds,
            throttle=None if settings.ec2_limits is None else Ec2Throttle(settings.ec2_limits),
        )
        self.moto: MotoServer | EnforcingMotoServer = aws or MotoServer(
            "127.0.0.1", settings.moto_port, launches
        )
        self.launches = self.moto.log
        self.hosts: dict[str, SimHost] = {}  # by instance id, while the instance runs
        self.hosts_ever: dict[str, SimHost] = {}  # every host ever, terminated ones too
        self.stopped: dict[str, SimHost] = {}  # by instance id, while the instance is stopped
        self._seen: dict[str, float] = {}  # instance id -> when the watcher first saw it
        self._next_address = ipaddress.IPv4Address(settings.first_address)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._watching: concurrent.futures.Future[None] | None = None
        self._client_key = asyncssh.read_public_key(str(settings.client_public_key))

    @property
    def aws_url(self) -> str:
        return self.moto.url

    def client(self, service: str, credentials: tuple[str, str] | None = None) -> Any:
        # The simulator's and the tests' own look-ups take no tokens from EC2's buckets.
        key_id, secret = credentials or self.moto.inspector_credentials
        return boto3.client(
            service,
            region_name=self.settings.region,
            endpoint_url=self.aws_url,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )

    def start(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.moto.start()
        self._ec2, self._s3 = self.client("ec2"), self.client("s3", self.settings.host_credentials)
        self._thread.start()
        self._watching = asyncio.run_coroutine_threadsafe(self._watch(), self._loop)

    def stop(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
        self.run(self._power_off_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self.moto.stop()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the simulator's loop (e.g. a host's reboot) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)

    def host_of(self, instance_id: str) -> SimHost:
        return self.hosts[instance_id]

    def stop_from_outside(self, instance_id: str) -> None:
        """Someone stops the instance (the console, an operator's script): EC2 powers the
        host off; its root volume, and so the host's disk and SSH key, survive."""
        self._ec2.stop_instances(InstanceIds=[instance_id])

    def api_traffic(self) -> ApiTraffic:
        """How the node API calls of every host ever (terminated ones too) arrived."""
        return sum((host.traffic for host in list(self.hosts_ever.values())), ApiTraffic())

    async def _watch(self) -> None:
        while True:
            try:
                await self._reconcile()
            except Exception:  # the watcher must outlive any one bad poll
                logging.getLogger(__name__).exception("simulator watch failed")
            await asyncio.sleep(self.settings.poll_seconds)

    async def _reconcile(self) -> None:
        instances = await asyncio.to_thread(self._fleet_instances)
        now = time.monotonic()
        for instance_id, state in instances.items():
            seen = self._seen.setdefault(instance_id, now)
            if state == "running" and instance_id in self.stopped:
                await self._bring_back(instance_id)
            elif state == "running" and instance_id not in self.hosts:
                if now - seen >= self.settings.boot_seconds:
                    await self._bring_up(instance_id)
            elif state in ("stopping", "stopped") and instance_id in self.hosts:
                await self._power_off_stopped(instance_id)
            elif state in ("shutting-down", "terminated"):
                self.stopped.pop(instance_id, None)
                if instance_id in self.hosts:
                    await self.hosts.pop(instance_id).power_off()
        # EC2 forgot it (terminated long ago) before this watch saw it terminated.
        for instance_id in set(self.hosts) - set(instances):
            await self.hosts.pop(instance_id).power_off()

    def _fleet_instances(self) -> dict[str, str]:
        pages = self._ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "tag-key", "Values": [FLEET_TAG]}]
        )
        return {
            i["InstanceId"]: i["State"]["Name"]
            for page in pages
            for reservation in page["Reservations"]
            for i in reservation["Instances"]
        }

    async def _bring_up(self, instance_id: str) -> None:
        address = self._take_address()
        host = SimHost(
            address,
            HostPorts(ssh=self.settings.ssh_port, api=self.settings.api_port),
            self.settings.network,
            self.settings.image_version,
            self._client_key,
            fetch=self._fetch,
            upload=self._upload,
            unlock_seconds=self.settings.unlock_seconds,
            faults=self.settings.faults,
            chain=self.settings.chain,
            disk_root=self._disk_root(instance_id),
            wallet_format=self.settings.image_wallet_format,
        )
        await host.boot()
        self.hosts[instance_id] = self.hosts_ever[instance_id] = host
        await self._publish_address(instance_id, address)

    async def _power_off_stopped(self, instance_id: str) -> None:
        """A stopped instance has no address (EC2 releases its public IP): the tag goes."""
        host = self.hosts.pop(instance_id)
        await host.power_off()
        self.stopped[instance_id] = host
        await asyncio.to_thread(
            self._ec2.delete_tags,
            Resources=[instance_id],
            Tags=[{"Key": self.settings.address_tag}],
        )

    async def _bring_back(self, instance_id: str) -> None:
        """The stopped instance was started: the same host (disk, SSH host key, node
        release; the daemon not running, as after any boot) at a new address."""
        host = self.stopped.pop(instance_id)
        host.address = self._take_address()
        await host.boot()
        self.hosts[instance_id] = host
        await self._publish_address(instance_id, host.address)

    async def _publish_address(self, instance_id: str, address: str) -> None:
        await asyncio.to_thread(
            self._ec2.create_tags,
            Resources=[instance_id],
            Tags=[{"Key": self.settings.address_tag, "Value": address}],
        )

    def _take_address(self) -> str:
        address = str(self._next_address)
        self._next_address += 1
        return address

    def _disk_root(self, instance_id: str) -> Path | None:
        if self.settings.disk_dir is None:
            return None
        root = self.settings.disk_dir / instance_id
        root.mkdir(parents=True, exist_ok=True)
        return root

    async def _power_off_all(self) -> None:
        for host in self.hosts.values():
            await host.power_off()

    def _fetch(self, url: str) -> bytes:
        if url.startswith(self.aws_url + "/"):
            # A presigned link (a backup a replacement restores): its own signature, no
            # credentials of the host's.
            with urllib.request.urlopen(url, timeout=30) as answer:  # moto's own URL
                return bytes(answer.read())
        bucket, key = _s3_parts(url)
        return bytes(self._s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def _upload(self, url: str, content: bytes, sha256: str) -> None:
        bucket, key = _s3_parts(url)
        self._s3.put_object(Bucket=bucket, Key=key, Body=content, Metadata={"sha256": sha256})


def _s3_parts(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise ValueError(f"the simulator fetches only s3:// artifacts, not {url!r}")
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key
