"""The simulated EC2 keeps the promises of EC2 that the fleet relies on."""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from sim.aws import LaunchLog, MotoServer
from sim.services import free_port

REGION = "eu-west-1"


@pytest.fixture
def ec2() -> Iterator[Any]:
    server = MotoServer("127.0.0.1", free_port(), LaunchLog())
    server.start()
    try:
        yield boto3.client(
            "ec2", region_name=REGION, endpoint_url=server.url,
            aws_access_key_id="sim", aws_secret_access_key="sim",
        )  # fmt: skip
    finally:
        server.stop()


def launch(ec2: Any, token: str) -> str:
    answer = ec2.run_instances(
        ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=1, ClientToken=token,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "t", "Value": token}]}],
    )  # fmt: skip
    return str(answer["Instances"][0]["InstanceId"])


def all_instances(ec2: Any) -> list[str]:
    pages = ec2.get_paginator("describe_instances").paginate()
    return [i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]]


def test_a_repeated_client_token_launches_nothing_more(ec2: Any) -> None:
    first = launch(ec2, "node-1")
    assert launch(ec2, "node-1") == first
    other = launch(ec2, "node-2")
    assert other != first
    assert sorted(all_instances(ec2)) == sorted([first, other])


def test_tagging_while_describing_by_tag_never_fails(ec2: Any) -> None:
    # Unserialised, moto fails some of these describes with "dictionary changed size
    # during iteration" (its tag index is changed while a tag filter walks it).
    instances = [launch(ec2, f"node-{n}") for n in range(20)]

    def tag(n: int) -> None:
        # A new key each time grows moto's tag index (at most 50 tags per instance).
        ec2.create_tags(Resources=instances, Tags=[{"Key": f"extra-{n}", "Value": "x"}])

    def describe(_: int) -> None:
        ec2.describe_instances(Filters=[{"Name": "tag:t", "Values": ["node-3"]}])

    with ThreadPoolExecutor(16) as pool:
        calls = [pool.submit(work, n) for n in range(45) for work in (tag, describe, describe)]
        errors = [call.exception() for call in calls if call.exception() is not None]
    assert errors == []
    assert sorted(all_instances(ec2)) == sorted(instances)


def test_a_terminated_instance_is_forgotten_as_ec2_forgets_it() -> None:
    """EC2 forgets a terminated instance about an hour after it ended (moto never does):
    gone from every listing, and naming it answers InvalidInstanceID.NotFound."""
    log = LaunchLog(forget_terminated_seconds=0.5)
    server = MotoServer("127.0.0.1", free_port(), log)
    server.start()
    try:
        ec2 = boto3.client(
            "ec2", region_name=REGION, endpoint_url=server.url,
            aws_access_key_id="sim", aws_secret_access_key="sim",
        )  # fmt: skip
        ended, kept = launch(ec2, "node-1"), launch(ec2, "node-2")
        ec2.terminate_instances(InstanceIds=[ended])
        [shown] = ec2.describe_instances(InstanceIds=[ended])["Reservations"]
        assert shown["Instances"][0]["State"]["Name"] == "terminated"  # for a while
        time.sleep(0.6)
        for action, ids in (
            ("describe_instances", [ended]),
            ("describe_instances", [kept, ended]),
            ("terminate_instances", [ended]),
            ("start_instances", [ended]),
        ):
            with pytest.raises(ClientError) as refused:
                getattr(ec2, action)(InstanceIds=ids)
            assert refused.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
        assert all_instances(ec2) == [kept]
        by_token = [{"Name": "client-token", "Values": ["node-1"]}]
        assert ec2.describe_instances(Filters=by_token)["Reservations"] == []
        by_tag = [{"Name": "tag:t", "Values": ["node-1", "node-2"]}]
        [left] = ec2.describe_instances(Filters=by_tag)["Reservations"]
        assert [i["InstanceId"] for i in left["Instances"]] == [kept]
    finally:
        server.stop()


def test_run_instances_launches_max_count_each_at_its_launch_index_and_fewer_when_told() -> None:
    """EC2 launches up to MaxCount (moto alone launches MinCount), numbered by
    AmiLaunchIndex; the partial fulfilment knob launches fewer; the token replays all."""
    log = LaunchLog()
    server = MotoServer("127.0.0.1", free_port(), log)
    server.start()
    try:
        ec2 = boto3.client(
            "ec2", region_name=REGION, endpoint_url=server.url,
            aws_access_key_id="sim", aws_secret_access_key="sim",
        )  # fmt: skip

        def batch(token: str) -> list[tuple[str, int]]:
            answer = ec2.run_instances(
                ImageId="ami-0123456789abcdef0", MinCount=1, MaxCount=3, ClientToken=token
            )
            return [(i["InstanceId"], i["AmiLaunchIndex"]) for i in answer["Instances"]]

        full = batch("batch-1")
        assert [index for _, index in full] == [0, 1, 2]
        log.fulfil_at_most = 2
        assert [index for _, index in batch("batch-2")] == [0, 1]
        assert batch("batch-1") == full  # replayed by its token, nothing more launched
        assert len(all_instances(ec2)) == 5
        assert log.launched_instances == 5
        log.fulfil_at_most = 0  # fewer than MinCount: refused, as EC2 without room
        with pytest.raises(ClientError, match="InsufficientInstanceCapacity"):
            batch("batch-3")
    finally:
        server.stop()
