"""EC2 behind a small interface. Instances are found by their tags first, so a launch
that a dead worker made is found again instead of repeated; a ClientToken derived from
the node makes AWS itself refuse a second launch. Throttling (RequestLimitExceeded) is
retried by botocore's standard retry mode with exponential backoff.

Every instance carries the fleet's own id (made with its database) besides the node id,
and the fleet only ever looks up, adopts or terminates instances that carry its id: a
second fleet in the account, or this fleet's re-created database whose node ids start at
1 again, has instances with the same node ids that are not ours."""

from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from prometheus_client import Counter

from jobs.config import RegionConfig, StepSettings
from jobs.ec2_errors import classify
from jobs.registry import Launch, LaunchBatch, NodeSnapshot
from jobs.user_data import compressed_user_data

NODE_ID_TAG = "rln-fleet:node-id"
NODE_NAME_TAG = "rln-fleet:node"
FLEET_ID_TAG = "rln-fleet:fleet-id"
FLEET_TAG = "rln-fleet"
ALIVE = ["pending", "running", "stopping", "stopped", "shutting-down"]

LAUNCHES = Counter("fleet_ec2_launches_total", "Instances launched by this process")
LAUNCH_RETRIES = Counter(
    "fleet_ec2_launch_retries_total", "RunInstances retries (throttling) before a launch went"
)


@dataclass(frozen=True)
class Instance:
    id: str
    state: str
    public_ip: str | None
    private_ip: str | None
    tags: dict[str, str]
    # The RunInstances token that made it (which launch generation), if EC2 says.
    client_token: str | None = None
    # Its place in its RunInstances' reservation (EC2's AmiLaunchIndex): in a batch, which
    # node it was launched for (LaunchBatch.node_ids[launch_index]).
    launch_index: int = 0

    def address(self, settings: StepSettings) -> str | None:
        match settings.address_kind():
            case "public_ip":
                return self.public_ip
            case "private_ip":
                return self.private_ip
            case "tag":
                return self.tags.get(settings.address_source.removeprefix("tag:"))

    def fleet_id(self) -> str | None:
        return self.tags.get(FLEET_ID_TAG)

    def node_id(self) -> int | None:
        tag = self.tags.get(NODE_ID_TAG, "")
        return int(tag) if tag.isdigit() else None

    def belongs_to(self, fleet_id: str, node_id: int) -> bool:
        return self.fleet_id() == fleet_id and self.node_id() == node_id


def client_token(fleet_id: str, node_id: int, launch_generation: int, subnet_slot: int = 0) -> str:
    """The launch's idempotency token: one per fleet, node, launch generation and subnet
    (EC2 refuses a token repeated with other parameters, and another subnet is one). At
    most 64 ASCII characters (EC2's limit): 32 hex + three numbers, never cut, never
    shared. The first subnet's token is the one launches had before subnets were tried."""
    token = f"{fleet_id}-{node_id}-{launch_generation}"
    return token if subnet_slot == 0 else f"{token}-s{subnet_slot}"


def launch_request(
    node: NodeSnapshot, region: RegionConfig, fleet_id: str, fleet_tag: str, subnet_slot: int = 0
) -> dict[str, Any]:
    """RunInstances' parameters for the node in the region's subnet_slot'th subnet: the
    same on every run of that launch (its ClientToken promises EC2 an identical request).
    The instance and its volumes carry the fleet's tags from their first moment (the IAM
    policy can require them); the instance metadata service answers only IMDSv2 session
    requests, one hop, so a process on the host that is tricked into fetching a URL
    cannot read the instance role's credentials."""
    tags = _tags(
        {"Name": node.name, **node_tags(node.id, node.name), **fleet_tags(fleet_id, fleet_tag)}
    )
    token = client_token(fleet_id, node.id, node.launch_generation, subnet_slot)
    return _request(region, node.instance_type, subnet_slot, token, 1, tags)


def batch_request(
    batch: LaunchBatch, region: RegionConfig, fleet_id: str, fleet_tag: str
) -> dict[str, Any]:
    """RunInstances' parameters for a batch: MaxCount its nodes, MinCount 1 (EC2 may launch
    fewer: the rest go in a later batch). Only the fleet's tags go in TagSpecifications
    (the same for every node, as the one request must be); each instance gets its node's
    tags by CreateTags, matched by AmiLaunchIndex (Ec2Cloud.tag_batch). The same on every
    run of the batch: its ClientToken promises EC2 an identical request. A batch of one
    node carries the node's tags too, as a launch of its own does: its instance is the
    node's from its first moment, whatever happens to the worker after the call."""
    own: dict[str, str] = {}
    if len(batch.node_ids) == 1:
        name = batch.node_names[0]
        own = {"Name": name, **node_tags(batch.node_ids[0], name)}
    tags = _tags(own | fleet_tags(fleet_id, fleet_tag))
    return _request(
        region,
        batch.instance_type,
        batch.subnet_slot,
        batch.client_token,
        len(batch.node_ids),
        tags,
    )


def node_tags(node_id: int, name: str) -> dict[str, str]:
    return {NODE_ID_TAG: str(node_id), NODE_NAME_TAG: name}


def fleet_tags(fleet_id: str, fleet_tag: str) -> dict[str, str]:
    return {FLEET_ID_TAG: fleet_id, FLEET_TAG: fleet_tag}


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _request(
    region: RegionConfig,
    instance_type: str,
    subnet_slot: int,
    token: str,
    count: int,
    tags: list[dict[str, str]],
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "ImageId": region.ami,
        "InstanceType": instance_type,
        "MinCount": 1,
        "MaxCount": count,
        "ClientToken": token,
        "TagSpecifications": [
            {"ResourceType": kind, "Tags": tags} for kind in ("instance", "volume")
        ],
        "MetadataOptions": {
            "HttpEndpoint": "enabled",
            "HttpTokens": "required",
            "HttpPutResponseHopLimit": 1,
        },
    }
    if region.key_name:
        request["KeyName"] = region.key_name
    if region.security_group_ids:
        request["SecurityGroupIds"] = region.security_group_ids
    if (subnet := region.subnets()[subnet_slot]) is not None:
        request["SubnetId"] = subnet
    if region.iam_instance_profile:
        request["IamInstanceProfile"] = {"Name": region.iam_instance_profile}
    if region.user_data:
        # boto3 base64-encodes UserData itself; the gzip is ours (EC2's 16 KB limit). It is
        # the region's file, the same for every node: a batch can carry it.
        request["UserData"] = compressed_user_data(region.user_data)
    if region.root_volume:
        ebs = {
            "Encrypted": True,  # with the account's EBS key unless the account sets another
            "VolumeSize": region.root_volume.size_gib,
            "VolumeType": "gp3",
            "DeleteOnTermination": True,
        }
        request["BlockDeviceMappings"] = [{"DeviceName": region.root_volume.device, "Ebs": ebs}]
    return request


def made_by(cloud: "Cloud", fleet_id: str, node_id: int, launch: Launch) -> list[Instance]:
    """What a recorded launch made for the node, found by the token EC2 got: its own, or
    its batch's (then the instance at the node's launch index, which may not carry the
    node's tags yet: its launcher may have died before CreateTags)."""
    if launch.batch_token is None:
        found = cloud.find_launch(launch.region, launch.client_token)
        return [i for i in found if i.belongs_to(fleet_id, node_id)]
    if launch.unfulfilled:
        return []
    return [
        i
        for i in cloud.find_launch(launch.region, launch.batch_token)
        if i.launch_index == launch.launch_index
        and i.fleet_id() == fleet_id
        and i.node_id() in (None, node_id)
    ]


class Cloud(Protocol):
    def find_instances(self, region: str, node_id: int) -> list[Instance]: ...

    def tagged_instances(self, region: str) -> list[Instance]: ...

    def find_launch(self, region: str, client_token: str) -> list[Instance]: ...

    def subnets(self, region: str) -> list[str | None]: ...

    def launch(self, node: NodeSnapshot, subnet_slot: int = 0) -> Instance: ...

    def launch_batch(self, batch: LaunchBatch) -> list[Instance]: ...

    def tag_batch(self, batch: LaunchBatch, instances: list[Instance]) -> None: ...

    def terminate_many(self, region: str, instance_ids: list[str]) -> None: ...

    def describe(self, region: str, instance_id: str) -> Instance | None: ...

    def terminate(self, region: str, instance_id: str) -> None: ...

    def start(self, region: str, instance_id: str) -> None: ...

    def adopt(self, region: str, instance_id: str) -> None: ...


class Ec2Cloud:
    def __init__(self, settings: StepSettings, fleet_id: str) -> None:
        self.settings = settings
        self.fleet_id = fleet_id

    def find_instances(self, region: str, node_id: int) -> list[Instance]:
        """The node's instances that are not terminated: this fleet's, tagged for it."""
        filters = [
            {"Name": f"tag:{NODE_ID_TAG}", "Values": [str(node_id)]},
            {"Name": f"tag:{FLEET_ID_TAG}", "Values": [self.fleet_id]},
            {"Name": "instance-state-name", "Values": ALIVE},
        ]
        return self._describe(region, Filters=filters)

    def tagged_instances(self, region: str) -> list[Instance]:
        """Every live instance that any RLN fleet tagged (ours and other fleets'), so that
        reconcile can tell the operator about the ones that are not ours."""
        filters = [
            {"Name": "tag-key", "Values": [NODE_ID_TAG]},
            {"Name": "instance-state-name", "Values": ALIVE},
        ]
        return self._describe(region, Filters=filters)

    def find_launch(self, region: str, client_token: str) -> list[Instance]:
        """The instance(s) a RunInstances with this token made, in any state: what a
        launch in flight made once EC2 shows it, terminated ones included."""
        return self._describe(region, Filters=[{"Name": "client-token", "Values": [client_token]}])

    def subnets(self, region: str) -> list[str | None]:
        return self._region(region).subnets()

    def launch(self, node: NodeSnapshot, subnet_slot: int = 0) -> Instance:
        region = self._region(node.region)
        tag = self.settings.fleet_tag
        request = launch_request(node, region, self.fleet_id, tag, subnet_slot)
        answer = self._client(node.region).run_instances(**request)
        LAUNCHES.inc()
        LAUNCH_RETRIES.inc(answer.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        return _instance(answer["Instances"][0])

    def launch_batch(self, batch: LaunchBatch) -> list[Instance]:
        """One RunInstances for the batch: the instances EC2 launched, in launch index
        order (it may launch fewer than the batch's nodes). A repeat with the batch's
        token answers the same reservation and launches nothing."""
        region = self._region(batch.region)
        request = batch_request(batch, region, self.fleet_id, self.settings.fleet_tag)
        answer = self._client(batch.region).run_instances(**request)
        instances = sorted((_instance(raw) for raw in answer["Instances"]),
                           key=lambda i: i.launch_index)  # fmt: skip
        LAUNCHES.inc(len(instances))
        LAUNCH_RETRIES.inc(answer.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        return instances

    def tag_batch(self, batch: LaunchBatch, instances: list[Instance]) -> None:
        """Each instance gets its node's tags (matched by launch index): one CreateTags per
        instance (the tags differ), skipped when the instance has them already."""
        client = self._client(batch.region)
        for instance in instances:
            if instance.launch_index >= len(batch.node_ids):
                continue  # not one EC2 should have made: left to reconcile
            node_id = batch.node_ids[instance.launch_index]
            if instance.node_id() == node_id:
                continue
            name = batch.node_names[instance.launch_index]
            tags = _tags({"Name": name, **node_tags(node_id, name)})
            client.create_tags(Resources=[instance.id], Tags=tags)

    def terminate_many(self, region: str, instance_ids: list[str]) -> None:
        """One TerminateInstances for several instances; one EC2 forgot (NotFound fails the
        whole call) sends the rest one at a time. Terminating twice is harmless."""
        if not instance_ids:
            return
        try:
            self._client(region).terminate_instances(InstanceIds=instance_ids)
        except ClientError as exc:
            if (error := classify(exc)) is None or error.kind != "gone":
                raise
            for instance_id in instance_ids:
                self.terminate(region, instance_id)

    def describe(self, region: str, instance_id: str) -> Instance | None:
        """None when EC2 does not know the id: terminated over about an hour ago (moto
        keeps them forever, EC2 does not), or too new to be visible yet."""
        try:
            found = self._describe(region, InstanceIds=[instance_id])
        except ClientError as exc:
            if (error := classify(exc)) is not None and error.kind == "gone":
                return None
            raise
        return found[0] if found else None

    def terminate(self, region: str, instance_id: str) -> None:
        try:
            self._client(region).terminate_instances(InstanceIds=[instance_id])
        except ClientError as exc:
            if (error := classify(exc)) is None or error.kind != "gone":
                raise

    def start(self, region: str, instance_id: str) -> None:
        """Start a stopped instance (someone stopped it outside the fleet). EC2 answers a
        start of a running or pending instance with success: asking twice is harmless.
        The IAM policy allows it only for this fleet's instances."""
        self._client(region).start_instances(InstanceIds=[instance_id])

    def adopt(self, region: str, instance_id: str) -> None:
        """Tag an instance with this fleet's id (one launched before fleets had ids)."""
        tags = [{"Key": FLEET_ID_TAG, "Value": self.fleet_id}]
        self._client(region).create_tags(Resources=[instance_id], Tags=tags)

    def _describe(self, region: str, **query: Any) -> list[Instance]:
        pages = self._client(region).get_paginator("describe_instances").paginate(**query)
        return [
            _instance(raw)
            for page in pages
            for reservation in page["Reservations"]
            for raw in reservation["Instances"]
        ]

    def _region(self, name: str) -> RegionConfig:
        try:
            return self.settings.regions[name]
        except KeyError:
            raise UnknownRegion(name) from None

    def _client(self, region: str) -> Any:
        s = self.settings
        return _ec2_client(region, s.aws_endpoint_url, s.ec2_max_retries, s.aws_timeout_seconds)


class UnknownRegion(LookupError):
    def __init__(self, region: str) -> None:
        super().__init__(f"region {region!r} has no launch configuration (FLEET_REGIONS)")


# Standard retry mode, not adaptive: the AWS SDKs' reference ("Retry behavior") recommends
# standard and keeps adaptive for specialised uses; adaptive's client-side rate limiter is
# per process and client (it cannot pace a fleet of workers), and the fleet paces launches
# itself (launch_budget). Standard retries RequestLimitExceeded with
# jittered exponential backoff; `max_attempts` here counts retries after the first.
@cache
def _ec2_client(region: str, endpoint_url: str | None, max_attempts: int, timeout: float) -> Any:
    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    return boto3.client("ec2", region_name=region, endpoint_url=endpoint_url, config=config)


def _instance(raw: dict[str, Any]) -> Instance:
    return Instance(
        id=raw["InstanceId"],
        state=raw["State"]["Name"],
        public_ip=raw.get("PublicIpAddress"),
        private_ip=raw.get("PrivateIpAddress"),
        tags={t["Key"]: t["Value"] for t in raw.get("Tags", [])},
        client_token=raw.get("ClientToken") or None,
        launch_index=int(raw.get("AmiLaunchIndex") or 0),
    )
