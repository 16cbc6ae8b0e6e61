"""What the steps need to know about the cloud, the hosts and the nodes' chain backend.
Read from the environment (prefix FLEET_); worker/settings.py extends it for the runtime."""

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.user_data import compressed_user_data
from models.formats import Network
from models.placement import RegionOffer
from models.session import DatabaseUrl

# A host name or address, as bitcoind's RPC client takes it.
RPC_HOST = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^\[[0-9A-Fa-f:.]+\]$"
# An indexer as upstream's check_indexer_url takes it: electrum (tcp:// or ssl://, or a
# bare host:port) or esplora (http:// or https://).
SUBNET_ID = re.compile(r"subnet-[0-9a-f]{8,32}")
INDEXER_URL = r"^((tcp|ssl|https?)://)?[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\s]*)?$"


class RootVolume(BaseModel):
    device: str = "/dev/xvda"  # the root device of Debian's AMIs
    size_gib: int = Field(default=20, ge=8)


class RegionConfig(RegionOffer):
    """Where and how to launch in one region (the golden image is per region), and which
    instance types may be asked for there (RegionOffer: the API reads only that)."""

    ami: str
    key_name: str | None = None
    security_group_ids: list[str] = Field(default_factory=list)
    # The subnets (one per availability zone, say) a launch may go to, in order: when EC2
    # has no capacity for the type in one, the node's next launch tries the next. None:
    # the default VPC's choice. `subnet_id` is the one-subnet form of older settings.
    subnet_ids: list[str] = Field(default_factory=list)
    subnet_id: str | None = None
    iam_instance_profile: str | None = None
    # A cloud-init file sent as the launch's user data (gzip-compressed), for an AMI that
    # is not the golden image yet: deploy/host/cloud-init.yaml on stock Debian 12.
    user_data: Path | None = None
    # For an AMI whose root snapshot is not encrypted (stock Debian): the launch asks for
    # its root volume encrypted, of this size. The golden image needs none: its snapshot
    # is encrypted (encrypt_boot), and so is every volume made from it.
    root_volume: RootVolume | None = None

    @model_validator(mode="after")
    def _one_list_of_subnets(self) -> "RegionConfig":
        if self.subnet_id is not None and self.subnet_ids:
            raise ValueError("give subnet_ids or subnet_id, not both")
        named = [subnet for subnet in self.subnets() if subnet is not None]
        if len(set(named)) != len(named):
            raise ValueError("subnet_ids names a subnet twice")
        if any(not SUBNET_ID.fullmatch(subnet) for subnet in named):
            raise ValueError("each subnet must be an EC2 subnet id (subnet-...)")
        return self

    def subnets(self) -> list[str | None]:
        """Where launches may go, in the order they are tried ([None]: EC2 chooses)."""
        if self.subnet_ids:
            return list(self.subnet_ids)
        return [self.subnet_id] if self.subnet_id else [None]

    @field_validator("user_data")
    @classmethod
    def _user_data_fits(cls, path: Path | None) -> Path | None:
        # Refused when the settings are read, not at the first launch.
        if path is not None:
            compressed_user_data(path)
        return path


class ChainBackend(BaseModel):
    """What `/unlock` is given for one network: a bitcoind for LDK's BlockSync, and an
    indexer. The daemon connects to both from its host before it unlocks, so these are
    addresses as the host sees them; nothing runs on the host itself (no default)."""

    # The RPC password is in what failed to validate: errors never show the input.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    bitcoind_rpc_host: str = Field(pattern=RPC_HOST)
    bitcoind_rpc_port: int = Field(ge=1, le=65535)
    bitcoind_rpc_username: str = Field(min_length=1)
    bitcoind_rpc_password: str = Field(min_length=1, repr=False)
    indexer_url: str = Field(pattern=INDEXER_URL)


class StepSettings(BaseSettings):
    # A bad value is named, never shown: FLEET_CHAIN carries RPC passwords, URLs carry
    # database passwords.
    model_config = SettingsConfigDict(
        env_prefix="FLEET_", env_file=".env", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    database_url: DatabaseUrl = "postgresql://postgres@127.0.0.1:5432/fleet"

    # AWS. An endpoint URL points boto3 at something else than AWS (the simulator).
    aws_endpoint_url: str | None = None
    regions: dict[str, RegionConfig] = {}
    # A label on every instance (its Name-like "rln-fleet" tag). Which fleet owns an
    # instance is its fleet-id tag, made with the database, never this setting.
    fleet_tag: str = "rln-fleet"
    # Where a node's address comes from: its public IP, private IP, or a tag ("tag:Name").
    address_source: str = Field(default="public_ip", pattern=r"^(public_ip|private_ip|tag:.+)$")
    # Fleet-wide EC2 launches per second, and how many may go at once after a quiet spell.
    launch_rate: float = Field(default=2.0, gt=0)
    launch_burst: float = Field(default=5.0, ge=1)
    # Batched launches (jobs/steps/batching.py): one RunInstances for up to this many
    # nodes waiting to launch in one region with one instance type. 1: one launch per
    # node, paced by the fleet-wide budget above (the behaviour before batches).
    launch_batch_max: int = Field(default=1, ge=1, le=1000)
    # With batches, launches are paced per region by EC2's own RunInstances buckets
    # instead: one request token a call (AWS documents capacity 5, refill 2 per second),
    # one resource token an instance (capacity 1000, refill 2 per second); an account
    # may have other figures ("Request throttling for the Amazon EC2 API").
    ec2_request_rate: float = Field(default=2.0, gt=0)
    ec2_request_burst: float = Field(default=5.0, ge=1)
    ec2_resource_rate: float = Field(default=2.0, gt=0)
    ec2_resource_burst: float = Field(default=1000.0, ge=1)
    ec2_max_retries: int = Field(default=8, ge=1)
    # Per attempt. botocore's default (60 s) would park a worker behind one lost request
    # for a minute; a step that times out is simply retried.
    aws_timeout_seconds: float = Field(default=10.0, gt=0)
    # How long a launch waits when EC2 has no room for its type in any of the region's
    # subnets (capacity comes back in minutes), twice that when the account hit its quota
    # (then every launch in the region waits); doubled on each refusal in a row, up to the
    # max. Never counted as an attempt, never held by the wait limit.
    ec2_pause_seconds: float = Field(default=30.0, gt=0)
    ec2_pause_max_seconds: float = Field(default=900.0, gt=0)

    # SSH to the hosts (the golden image's host agent).
    ssh_user: str = "fleet"
    ssh_port: int = 22
    ssh_key_path: str = "~/.ssh/id_ed25519"
    ssh_timeout_seconds: float = 10.0
    # A whole agent command, the release download of `install` included: a stalled command
    # must not hold the host's lock and a worker until RQ's job timeout. The agent's own
    # download limit (RLN_DOWNLOAD_SECONDS on the host, 600 s) stays below it.
    ssh_command_timeout_seconds: float = Field(default=900.0, gt=0)

    # The node's REST API. "ssh": through the node's SSH connection (its pinned host key)
    # to the host's own 127.0.0.1:<port>, so the port stays closed to the world. "direct":
    # plain HTTP to <address>:<port>, where passwords, the mnemonic and admin tokens cross
    # the network in clear: only for a private network the fleet trusts.
    node_api_transport: Literal["ssh", "direct"] = "ssh"
    node_api_port: int = 3001
    node_api_timeout_seconds: float = 10.0
    unlock_timeout_seconds: float = 30.0
    # The chain backend of each network the fleet runs nodes on (FLEET_CHAIN, JSON keyed
    # by network). A node of a network without one is refused at creation.
    chain: dict[Network, ChainBackend] = {}

    # Backups go to this bucket, under <prefix>/<owner>/<node name>/.
    backup_bucket: str = "rln-fleet-backups"
    backup_prefix: str = "backups"

    # Secrets: "key_id:base64,..." and the id that seals new secrets.
    secret_keys: str = ""
    secret_key_id: str = ""

    # How long a step waits before looking again at something slow (a boot, an API).
    poll_seconds: float = Field(default=2.0, gt=0)

    def launch_call_seconds(self) -> float:
        """The longest one RunInstances call can take: every attempt timing out (connect
        and read) plus botocore's backoff (at most 20 s) between them, and a margin for EC2
        to show the instance. A launch not seen by then never went out."""
        per_attempt = 2 * self.aws_timeout_seconds + 20.0
        return self.ec2_max_retries * per_attempt + 30.0

    def address_kind(self) -> Literal["public_ip", "private_ip", "tag"]:
        if self.address_source.startswith("tag:"):
            return "tag"
        return "private_ip" if self.address_source == "private_ip" else "public_ip"
