"""The simulated cloud for tests: moto, the simulated hosts, and the fleet settings that
point the production steps at them."""

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from jobs.config import ChainBackend, RegionConfig
from models.logins import FleetRole
from models.secrets import KeyRing
from sim.cloud import SimCloud, SimSettings, fleet_chain
from sim.host import SimHost
from sim.iam_aws import EnforcingMotoServer
from tests.conftest import role_url
from worker.settings import FleetSettings

REGION = "eu-west-1"
RELEASE = "0.10.0"
RELEASE_ARTIFACT = b"rgb-lightning-node 0.10.0 (simulated release artifact)"
BACKUP_BUCKET = "fleet-backups"
# The networks the test fleet has chain backends for (the simulator has every network's).
SIM_NETWORKS = ["regtest", "testnet", "mainnet"]


@dataclass
class Simulation:
    cloud: SimCloud
    settings: FleetSettings
    ring: KeyRing
    env: dict[str, str]

    def instances(self) -> list[dict[str, object]]:
        pages = self.cloud.client("ec2").get_paginator("describe_instances").paginate()
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def instances_of(self, node_id: int) -> list[dict[str, object]]:
        return [
            i
            for i in self.instances()
            if {"Key": "rln-fleet:node-id", "Value": str(node_id)} in i.get("Tags", [])  # type: ignore[operator]
        ]

    def host(self, node_id: int) -> SimHost:
        [instance] = self.instances_of(node_id)
        return self.cloud.host_of(str(instance["InstanceId"]))

    def backups(self) -> list[str]:
        listed = self.cloud.client("s3").list_objects_v2(Bucket=BACKUP_BUCKET)
        return sorted(str(o["Key"]) for o in listed.get("Contents", []))


def write_ssh_key(directory: Path) -> tuple[Path, Path]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    private, public = directory / "fleet_ssh_key", directory / "fleet_ssh_key.pub"
    key.write_private_key(str(private))
    key.write_public_key(str(public))
    private.chmod(0o600)
    return private, public


@pytest.fixture
def simulation(config: FleetSettings, tmp_path: Path) -> Iterator[Simulation]:
    with simulated(config, tmp_path) as simulation:
        yield simulation


@contextmanager
def simulated(
    config: FleetSettings,
    tmp_path: Path,
    aws: EnforcingMotoServer | None = None,
    host_credentials: tuple[str, str] | None = None,
) -> Iterator[Simulation]:
    """The simulated cloud; with `aws`, its moto is that one (tests/test_iam.py)."""
    private, public = write_ssh_key(tmp_path)
    # A random 127/8 block per test: parallel runs on one machine never share addresses.
    first = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}.1"
    sim_settings = SimSettings(
        client_public_key=public, first_address=first, boot_seconds=0.5,
        host_credentials=host_credentials, disk_dir=tmp_path / "hosts",
    )  # fmt: skip
    cloud = SimCloud(sim_settings, aws)
    cloud.start()
    s3 = cloud.client("s3")
    for bucket in (BACKUP_BUCKET, "releases"):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket="releases", Key=f"rln-{RELEASE}.tar.gz", Body=RELEASE_ARTIFACT)
    secret_key = base64.b64encode(os.urandom(32)).decode()
    settings = config.model_copy(
        update={
            "step_modules": "jobs.steps",
            "aws_endpoint_url": cloud.aws_url,
            "regions": {REGION: RegionConfig(ami="ami-0123456789abcdef0")},
            "address_source": f"tag:{cloud.settings.address_tag}",
            "ssh_port": cloud.settings.ssh_port,
            "ssh_key_path": str(private),
            "node_api_port": cloud.settings.api_port,
            "backup_bucket": BACKUP_BUCKET,
            "chain": {
                n: ChainBackend.model_validate(c)
                for n, c in fleet_chain(cloud.settings.chain, SIM_NETWORKS).items()
            },
            "secret_keys": f"k1:{secret_key}",
            "secret_key_id": "k1",
            "poll_seconds": 0.3,
            "launch_rate": 20.0,
            "launch_burst": 20.0,
            "lease_seconds": 3.0,
        }
    )
    try:
        yield Simulation(
            cloud,
            settings,
            KeyRing.parse(f"k1:{secret_key}", "k1"),
            env_for(settings, cloud.moto.credentials),
        )
    finally:
        cloud.stop()


def env_for(settings: FleetSettings, aws_credentials: tuple[str, str]) -> dict[str, str]:
    """The environment of `fleet` processes running with these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    for field, value in settings.model_dump(mode="json").items():
        if value is not None:
            env[f"FLEET_{field.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    key_id, secret = aws_credentials
    env |= {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    env["AWS_DEFAULT_REGION"] = REGION
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env


def release_sha256() -> str:
    return hashlib.sha256(RELEASE_ARTIFACT).hexdigest()


# Small enough for a test, large enough that a probe is never still running at the next.
WATCH_SETTINGS = {
    "FLEET_WATCH_INTERVAL_SECONDS": "0.5",
    "FLEET_WATCH_REFRESH_SECONDS": "0.3",
    "FLEET_WATCH_PROBE_TIMEOUT_SECONDS": "3",
    "FLEET_WATCH_UNREACHABLE_HOLD_SECONDS": "3",
}


@pytest.fixture
def watch_env(simulation: Simulation, db_url: str, logins: dict[FleetRole, str]) -> dict[str, str]:
    return simulation.env | WATCH_SETTINGS | {"FLEET_DATABASE_URL": role_url(db_url, "watch")}


@pytest.fixture
def start_watch(
    watch_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(**settings: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / "watch.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker", "watch"],
                env=watch_env | settings,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=15)
