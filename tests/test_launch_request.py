"""What a launch asks EC2 for, seen from moto in server mode: IMDSv2 only, the fleet's
tags on the instance and on its volume, the cloud-init user data (gzip-compressed under
EC2's 16 KB), an encrypted root volume when the region asks for one."""

import base64
import gzip
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import boto3
import pytest
from pydantic import ValidationError

from jobs import ec2 as fleet_ec2
from jobs.config import RegionConfig, RootVolume, StepSettings
from jobs.outcomes import Wait
from jobs.registry import Launch, NodeSnapshot, StepContext
from jobs.steps import instance as instance_step
from jobs.user_data import USER_DATA_LIMIT
from sim.aws import LaunchLog, MotoServer
from sim.services import free_port

REGION = "eu-west-1"
AMI = "ami-0123456789abcdef0"
FLEET_ID = "0123456789abcdef0123456789abcdef"
HOST_DIR = Path(__file__).resolve().parent.parent / "deploy" / "host"
CLOUD_INIT = HOST_DIR / "cloud-init.yaml"


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    server = MotoServer("127.0.0.1", free_port(), LaunchLog())
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "sim")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sim")
    try:
        yield server
    finally:
        server.stop()


def node(node_id: int = 1) -> NodeSnapshot:
    return NodeSnapshot(
        id=node_id, name=f"n{node_id}", owner="o", region=REGION, instance_type="t3.small",
        network="regtest", current_version=None, target_version=None, state="instance",
        instance_id=None, address=None, node_pubkey=None, ssh_host_key=None,
        attempts=0, step_run=1, wallet_initialised=False, launch_generation=0,
    )  # fmt: skip


def launched(moto: MotoServer, region: RegionConfig, node_id: int = 1) -> tuple[str, Any]:
    settings = StepSettings(aws_endpoint_url=moto.url, regions={REGION: region})
    instance = fleet_ec2.Ec2Cloud(settings, FLEET_ID).launch(node(node_id))
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
    return instance.id, ec2


def test_a_launch_requires_imdsv2_and_tags_its_volume(moto: MotoServer) -> None:
    instance_id, ec2 = launched(moto, RegionConfig(ami=AMI))
    [reservation] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    [instance] = reservation["Instances"]
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    filters = [{"Name": "attachment.instance-id", "Values": [instance_id]}]
    [volume] = ec2.describe_volumes(Filters=filters)["Volumes"]
    tags = {t["Key"]: t["Value"] for t in volume.get("Tags", [])}
    assert tags["rln-fleet:fleet-id"] == FLEET_ID
    assert tags["rln-fleet:node-id"] == "1"
    # Nothing asked for user data: none is sent.
    answer = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    assert "Value" not in answer.get("UserData", {})


def test_the_cloud_init_user_data_arrives_compressed_under_16_kb(moto: MotoServer) -> None:
    raw = CLOUD_INIT.read_bytes()
    assert len(raw) > USER_DATA_LIMIT  # why it is compressed at all
    region = RegionConfig(ami=AMI, user_data=CLOUD_INIT)
    instance_id, ec2 = launched(moto, region)
    answer = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    sent = base64.b64decode(answer["UserData"]["Value"])
    assert sent[:2] == b"\x1f\x8b" and len(sent) <= USER_DATA_LIMIT
    assert gzip.decompress(sent) == raw


def test_the_user_data_is_the_same_bytes_on_every_run_of_a_launch() -> None:
    # A repeated launch (same ClientToken) must repeat the request exactly: no gzip mtime.
    region = RegionConfig(ami=AMI, user_data=CLOUD_INIT)
    first = fleet_ec2.launch_request(node(), region, FLEET_ID, "rln-fleet")
    again = subprocess.run(
        [".venv/bin/python", "-c", _PRINT_USER_DATA, str(CLOUD_INIT)],
        capture_output=True, check=True, cwd=HOST_DIR.parent.parent,
    )  # fmt: skip
    assert first["UserData"] == again.stdout
    assert first["UserData"][4:8] == b"\0\0\0\0"  # gzip's MTIME field


_PRINT_USER_DATA = (
    "import sys; from pathlib import Path; from jobs.user_data import compressed_user_data;"
    " sys.stdout.buffer.write(compressed_user_data(Path(sys.argv[1])))"
)


def test_an_encrypted_root_volume_when_the_region_asks(moto: MotoServer) -> None:
    region = RegionConfig(ami=AMI, root_volume=RootVolume(size_gib=30))
    [mapping] = fleet_ec2.launch_request(node(), region, FLEET_ID, "rln-fleet")[
        "BlockDeviceMappings"
    ]
    assert mapping["DeviceName"] == "/dev/xvda" and mapping["Ebs"]["Encrypted"] is True
    instance_id, ec2 = launched(moto, region)
    filters = [{"Name": "attachment.instance-id", "Values": [instance_id]}]
    volumes = ec2.describe_volumes(Filters=filters)["Volumes"]
    assert [(v["Encrypted"], v["Size"]) for v in volumes] == [(True, 30)]
    # Without it the launch leaves the volumes to the AMI (the golden image is encrypted).
    assert "BlockDeviceMappings" not in fleet_ec2.launch_request(
        node(), RegionConfig(ami=AMI), "f", "t"
    )


def test_user_data_that_cannot_be_sent_is_refused_with_the_settings(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.yaml"
    with pytest.raises(ValidationError, match=r"user data file .*nothing.yaml.*No such file"):
        RegionConfig(ami=AMI, user_data=missing)
    big = tmp_path / "big.yaml"
    big.write_bytes(os.urandom(20_000))  # random bytes do not shrink
    with pytest.raises(ValidationError, match=r"big.yaml.* bytes gzip-compressed; EC2 takes"):
        RegionConfig(ami=AMI, user_data=big)


def test_cloud_init_accepts_the_user_data() -> None:
    """scripts/setup installs cloud-init: a missing one fails here rather than skip."""
    done = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(CLOUD_INIT)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_subnet_has_a_launch_of_its_own() -> None:
    """EC2 answers a ClientToken repeated with another subnet with
    IdempotentParameterMismatch: each subnet's launch has its token; the first subnet's is
    the token launches had before there were subnets to try."""
    region = RegionConfig(ami=AMI, subnet_ids=["subnet-aaaaaaaa", "subnet-bbbbbbbb"])
    first = fleet_ec2.launch_request(node(), region, FLEET_ID, "rln-fleet")
    second = fleet_ec2.launch_request(node(), region, FLEET_ID, "rln-fleet", subnet_slot=1)
    assert (first["SubnetId"], second["SubnetId"]) == ("subnet-aaaaaaaa", "subnet-bbbbbbbb")
    assert first["ClientToken"] == fleet_ec2.client_token(FLEET_ID, node().id, 0)
    assert second["ClientToken"] == f"{first['ClientToken']}-s1"
    assert len(second["ClientToken"]) <= 64
    assert "SubnetId" not in fleet_ec2.launch_request(node(), RegionConfig(ami=AMI), "f", "t")


@dataclass
class _Tools:
    cloud: fleet_ec2.Ec2Cloud | None
    fleet_id: str = FLEET_ID
    settings: StepSettings = field(default_factory=StepSettings)


@dataclass
class _Replacing:
    """The part of a step's context the instance step's look-up of a replaced node uses."""

    node: NodeSnapshot
    tools: _Tools
    notes: list[str] = field(default_factory=list)
    recorded: list[Launch] = field(default_factory=list)

    def note(self, event: str, detail: str) -> None:
        self.notes.append(detail)

    def launches(self) -> list[Launch]:
        return self.recorded


def test_a_replacement_terminates_the_earlier_generations_instances(moto: MotoServer) -> None:
    """A replaced node's instances of earlier launch generations (found by tag, told apart
    by their ClientToken) are terminated; the current generation's launch is kept."""
    settings = StepSettings(aws_endpoint_url=moto.url, regions={REGION: RegionConfig(ami=AMI)})
    cloud = fleet_ec2.Ec2Cloud(settings, FLEET_ID)
    old = cloud.launch(replace(node(), launch_generation=0))
    new = cloud.launch(replace(node(), launch_generation=1))
    context = _Replacing(replace(node(), launch_generation=1), _Tools(cloud))
    found = cloud.find_instances(REGION, 1)
    assert {i.client_token for i in found} == {f"{FLEET_ID}-1-0", f"{FLEET_ID}-1-1"}
    kept = instance_step._end_earlier_generations(cast(StepContext, context), found)
    assert [i.id for i in kept] == [new.id]
    assert cloud.describe(REGION, old.id).state in ("shutting-down", "terminated")  # type: ignore[union-attr]
    assert cloud.describe(REGION, new.id).state == "running"  # type: ignore[union-attr]
    assert context.notes == [f"instance {old.id} of an earlier launch terminated"
                             " (the node's host was replaced)"]  # fmt: skip


def test_a_replacement_waits_while_an_earlier_launch_may_still_make_an_instance() -> None:
    in_flight = Launch(0, REGION, f"{FLEET_ID}-1-0", instance_id=None, in_flight=True)
    context = _Replacing(replace(node(), launch_generation=1), _Tools(None), recorded=[in_flight])
    outcome = instance_step.ensure_instance(cast(StepContext, context))
    assert isinstance(outcome, Wait) and "in flight" in outcome.reason


def test_a_batch_is_one_request_tagged_per_node_by_launch_index(moto: MotoServer) -> None:
    """One RunInstances for three nodes with the batch's token; CreateTags gives each
    instance its node's tags by AmiLaunchIndex; before that, each node's launch finds
    its instance by the batch token and its index (made_by), the others' never."""
    from jobs.registry import LaunchBatch

    settings = StepSettings(aws_endpoint_url=moto.url, regions={REGION: RegionConfig(ami=AMI)})
    cloud = fleet_ec2.Ec2Cloud(settings, FLEET_ID)
    batch = LaunchBatch(f"{FLEET_ID}-b1", REGION, "t3.small", 0, None, (7, 8, 9),
                        ("n7", "n8", "n9"))  # fmt: skip
    instances = cloud.launch_batch(batch)
    assert [i.launch_index for i in instances] == [0, 1, 2]
    assert len(moto.log.calls) == 1
    assert all(i.node_id() is None and i.fleet_id() == FLEET_ID for i in instances)
    for index, node_id in enumerate(batch.node_ids):
        recorded = Launch(0, REGION, f"{FLEET_ID}-{node_id}-0", None, True,
                          batch_token=batch.client_token, launch_index=index)  # fmt: skip
        [made] = fleet_ec2.made_by(cloud, FLEET_ID, node_id, recorded)
        assert made.id == instances[index].id
    assert cloud.launch_batch(batch) == instances  # repeated: the same reservation
    cloud.tag_batch(batch, instances)
    for index, node_id in enumerate(batch.node_ids):
        [tagged] = cloud.find_instances(REGION, node_id)
        assert tagged.id == instances[index].id
        assert tagged.tags["Name"] == f"n{node_id}"
    unfulfilled = Launch(0, REGION, "t", None, False, batch_token=batch.client_token,
                         launch_index=2, unfulfilled=True)  # fmt: skip
    assert fleet_ec2.made_by(cloud, FLEET_ID, 9, unfulfilled) == []


def test_a_batch_of_one_carries_its_nodes_tags_from_the_first_moment(moto: MotoServer) -> None:
    """Nothing to match by launch index: the node's own tags go in the request, so a
    worker killed right after the call leaves an instance the node's, as a launch of its
    own would (found by tests/test_launch_races.py with batches on)."""
    from jobs.registry import LaunchBatch

    settings = StepSettings(aws_endpoint_url=moto.url, regions={REGION: RegionConfig(ami=AMI)})
    cloud = fleet_ec2.Ec2Cloud(settings, FLEET_ID)
    [instance] = cloud.launch_batch(LaunchBatch(f"{FLEET_ID}-b2", REGION, "t3.small", 0, None,
                                                (7,), ("n7",)))  # fmt: skip
    assert (instance.node_id(), instance.fleet_id(), instance.tags["Name"]) == (7, FLEET_ID, "n7")


def test_terminate_many_is_one_call_and_survives_an_instance_ec2_forgot(
    moto: MotoServer,
) -> None:
    settings = StepSettings(aws_endpoint_url=moto.url, regions={REGION: RegionConfig(ami=AMI)})
    cloud = fleet_ec2.Ec2Cloud(settings, FLEET_ID)
    ids = [cloud.launch(node(n)).id for n in (1, 2, 3)]
    cloud.terminate_many(REGION, ids[:2])
    assert [cloud.describe(REGION, i).state for i in ids] == [  # type: ignore[union-attr]
        "terminated", "terminated", "running"]  # fmt: skip
    moto.log.forget_terminated_seconds = 0.0  # EC2 forgot the first two
    cloud.terminate_many(REGION, ids)  # NotFound for the forgotten: the rest one by one
    # Terminated, so forgotten at once too (a running one would still be described).
    assert cloud.describe(REGION, ids[2]) is None
