"""The IAM policies of deploy/iam/ are enough, and enforced: a node goes through its whole
lifecycle with workers signing as an IAM user that has only fleet-worker.json, and hosts
whose S3 calls sign as one with only fleet-host.json, against a moto that checks every
request (sim/iam_aws.py, its own process). Take one action away and its step is refused.

moto checks actions, and S3 resources; it checks EC2 requests against the resource "*"
and no condition keys (sim/iam_aws.py says so in full). So the policies are given to moto
with each EC2 ARN widened to "*": the actions are exactly the files', the tag, IMDSv2,
encryption and PassRole conditions are AWS's to enforce (deploy/iam/README.md)."""

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError

from models.logins import FleetRole
from sim.iam_aws import EnforcingMotoServer
from sim.services import free_port
from tests.conftest import add_nodes, fetch, held_with, role_url, wait_until
from tests.simulation import (
    BACKUP_BUCKET,
    REGION,
    RELEASE,
    Simulation,
    release_sha256,
    simulated,
)
from tests.test_lifecycle import StartWorker, reach, request
from worker.dispatcher import Dispatcher
from worker.settings import FleetSettings

POLICIES = Path(__file__).resolve().parent.parent / "deploy" / "iam"
ACCOUNT = "123456789012"  # moto's
HOST_ROLE = "rln-host"
Policy = dict[str, Any]
Keys = tuple[str, str]


@pytest.fixture
def aws() -> Iterator[EnforcingMotoServer]:
    server = EnforcingMotoServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def policy(name: str, fleet_id: str) -> Policy:
    """A policy file with its placeholders filled as an operator would (README)."""
    text = (POLICIES / f"{name}.json").read_text()
    for placeholder, value in {
        "ACCOUNT_ID": ACCOUNT, "FLEET_ID": fleet_id, "HOST_ROLE": HOST_ROLE,
        "BACKUP_BUCKET": BACKUP_BUCKET, "BACKUP_PREFIX": "backups",
        "RELEASE_BUCKET": "releases", "RELEASE_PREFIX": "rln-",
    }.items():  # fmt: skip
        text = text.replace(f"<{placeholder}>", value)
    assert "<" not in text, f"{name}.json has a placeholder the README does not name"
    document: Policy = json.loads(text)
    return document


def as_moto_checks_it(document: Policy) -> Policy:
    """The same actions, each EC2 ARN widened to "*": moto matches EC2 requests against
    the resource "*" only, so a statement naming EC2 ARNs would never apply there."""
    statements = []
    for statement in document["Statement"]:
        resources = statement.get("Resource", [])
        resources = [resources] if isinstance(resources, str) else resources
        ec2 = any(r.startswith("arn:aws:ec2:") for r in resources)
        statements.append(statement | {"Resource": "*"} if ec2 else statement)
    return document | {"Statement": statements}


def without(document: Policy, action: str) -> Policy:
    statements = []
    for statement in document["Statement"]:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        kept = [a for a in actions if a != action]
        if kept:
            statements.append(statement | {"Action": kept})
    assert statements != document["Statement"], f"no statement allows {action}"
    return document | {"Statement": statements}


def admin(aws: EnforcingMotoServer, service: str) -> Any:
    return client(aws, service, aws.credentials)


def client(aws: EnforcingMotoServer, service: str, keys: Keys) -> Any:
    return boto3.client(
        service, region_name=REGION, endpoint_url=aws.url,
        aws_access_key_id=keys[0], aws_secret_access_key=keys[1],
    )  # fmt: skip


def iam_user(aws: EnforcingMotoServer, name: str, document: Policy) -> Keys:
    iam = admin(aws, "iam")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def host_instance_profile(aws: EnforcingMotoServer, fleet_id: str) -> None:
    """The role and instance profile the launches name (the hosts' keys stand for them:
    moto hands no instance-profile credentials to the simulated hosts)."""
    iam = admin(aws, "iam")
    trust = (POLICIES / "fleet-host-trust.json").read_text()
    iam.create_role(RoleName=HOST_ROLE, AssumeRolePolicyDocument=trust)
    iam.put_role_policy(
        RoleName=HOST_ROLE, PolicyName=HOST_ROLE,
        PolicyDocument=json.dumps(policy("fleet-host", fleet_id)),
    )  # fmt: skip
    iam.create_instance_profile(InstanceProfileName=HOST_ROLE)
    iam.add_role_to_instance_profile(InstanceProfileName=HOST_ROLE, RoleName=HOST_ROLE)


def fleet_id_of(db_url: str) -> str:
    [(fleet_id,)] = fetch(db_url, "SELECT fleet_id FROM fleet_identity")
    return str(fleet_id)


def worker_env(simulation: Simulation, keys: Keys) -> dict[str, str]:
    regions = json.loads(simulation.env["FLEET_REGIONS"])
    regions[REGION]["iam_instance_profile"] = HOST_ROLE
    return simulation.env | {
        "AWS_ACCESS_KEY_ID": keys[0],
        "AWS_SECRET_ACCESS_KEY": keys[1],
        "FLEET_REGIONS": json.dumps(regions),
    }


def add_release(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as app:
        app.execute(
            "INSERT INTO releases (version, artifact_url, sha256) VALUES (%s, %s, %s)",
            (RELEASE, f"s3://releases/rln-{RELEASE}.tar.gz", release_sha256()),
        )


@pytest.mark.slow
def test_the_lifecycle_needs_nothing_beyond_the_policies(
    aws: EnforcingMotoServer,
    config: FleetSettings,
    db_url: str,
    tmp_path: Path,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
) -> None:
    fleet_id = fleet_id_of(db_url)
    worker_keys = iam_user(aws, "fleet-worker", as_moto_checks_it(policy("fleet-worker", fleet_id)))
    host_keys = iam_user(aws, "rln-host", as_moto_checks_it(policy("fleet-host", fleet_id)))
    host_instance_profile(aws, fleet_id)
    add_release(db_url)
    with simulated(config, tmp_path, aws, host_keys) as simulation:
        [node] = add_nodes(db_url, ["alpha"])
        start_worker(env=worker_env(simulation, worker_keys))
        reach(db_url, [node], "live")
        request(db_url, [node], "stop")
        reach(db_url, [node], "stopped")
        request(db_url, [node], "update", RELEASE)
        reach(db_url, [node], "stopped")
        assert simulation.host(node).version == RELEASE  # fetched with the host's keys
        request(db_url, [node], "destroy")
        reach(db_url, [node], "destroyed")
        assert {i["State"]["Name"] for i in simulation.instances()} == {"terminated"}  # type: ignore[index]
        assert (
            len(simulation.backups()) == 1
        )  # stop's, with the host's keys (destroy found it stopped)


@pytest.mark.slow
def test_the_watch_needs_nothing_beyond_its_policy(
    aws: EnforcingMotoServer,
    config: FleetSettings,
    db_url: str,
    tmp_path: Path,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    logins: dict[FleetRole, str],
) -> None:
    """A live node whose instance was terminated from outside: the watch, signing with
    only fleet-watch.json, asks EC2 and holds the node as gone."""
    fleet_id = fleet_id_of(db_url)
    worker_keys = iam_user(aws, "fleet-worker", as_moto_checks_it(policy("fleet-worker", fleet_id)))
    watch_keys = iam_user(aws, "fleet-watch", as_moto_checks_it(policy("fleet-watch", fleet_id)))
    host_keys = iam_user(aws, "rln-host", as_moto_checks_it(policy("fleet-host", fleet_id)))
    host_instance_profile(aws, fleet_id)
    with simulated(config, tmp_path, aws, host_keys) as simulation:
        [node] = add_nodes(db_url, ["watched"])
        start_worker(env=worker_env(simulation, worker_keys))
        reach(db_url, [node], "live")
        [(instance_id,)] = fetch(db_url, "SELECT instance_id FROM nodes WHERE id = %s", node)
        admin(aws, "ec2").terminate_instances(InstanceIds=[instance_id])
        env = worker_env(simulation, watch_keys) | {
            "FLEET_DATABASE_URL": role_url(db_url, "watch"),
            "FLEET_WATCH_INTERVAL_SECONDS": "0.5",
            "FLEET_WATCH_REFRESH_SECONDS": "0.3",
        }
        watch = subprocess.Popen([sys.executable, "-m", "worker", "watch"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            error, _ = held_with(db_url, node, timeout=30)
        finally:
            watch.terminate()
            watch.wait(timeout=15)
        assert error.startswith("health watch: instance gone: EC2 says "), error


def test_keys_are_checked_against_the_policies(aws: EnforcingMotoServer, db_url: str) -> None:
    fleet_id = fleet_id_of(db_url)
    worker = iam_user(aws, "fleet-worker", as_moto_checks_it(policy("fleet-worker", fleet_id)))
    host = iam_user(aws, "rln-host", as_moto_checks_it(policy("fleet-host", fleet_id)))
    s3 = admin(aws, "s3")
    for bucket in (BACKUP_BUCKET, "releases"):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket="releases", Key="rln-1.tar.gz", Body=b"release")
    s3.put_object(Bucket="releases", Key="private/notes", Body=b"not a release")
    host_s3 = client(aws, "s3", host)
    host_s3.put_object(Bucket=BACKUP_BUCKET, Key="backups/o/n/n-1.rlnbackup", Body=b"b")
    assert host_s3.get_object(Bucket="releases", Key="rln-1.tar.gz")["Body"].read() == b"release"
    refused: list[Callable[[], object]] = [
        lambda: host_s3.put_object(Bucket=BACKUP_BUCKET, Key="elsewhere/x", Body=b"b"),
        lambda: host_s3.get_object(Bucket=BACKUP_BUCKET, Key="backups/o/n/n-1.rlnbackup"),
        lambda: host_s3.delete_object(Bucket=BACKUP_BUCKET, Key="backups/o/n/n-1.rlnbackup"),
        lambda: host_s3.get_object(Bucket="releases", Key="private/notes"),
        lambda: host_s3.list_objects_v2(Bucket=BACKUP_BUCKET),
        lambda: client(aws, "ec2", host).describe_instances(),
        lambda: client(aws, "s3", worker).list_objects_v2(Bucket=BACKUP_BUCKET),
        lambda: client(aws, "ec2", worker).create_key_pair(KeyName="mine"),
        lambda: client(aws, "iam", worker).list_users(),
    ]
    for call in refused:
        with pytest.raises(ClientError) as denied:
            call()
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
    assert client(aws, "ec2", worker).describe_instances()["Reservations"] == []
    with pytest.raises(ClientError, match="AuthFailure"):
        client(aws, "ec2", ("made-up", "keys")).describe_instances()


def test_a_worker_whose_policy_lacks_run_instances_is_refused(
    aws: EnforcingMotoServer,
    config: FleetSettings,
    db_url: str,
    tmp_path: Path,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
) -> None:
    fleet_id = fleet_id_of(db_url)
    lacking = without(policy("fleet-worker", fleet_id), "ec2:RunInstances")
    worker_keys = iam_user(aws, "fleet-worker", as_moto_checks_it(lacking))
    host_instance_profile(aws, fleet_id)
    with simulated(config, tmp_path, aws) as simulation:
        [node] = add_nodes(db_url, ["alpha"])
        start_worker(env=worker_env(simulation, worker_keys))

        def refused() -> bool:
            [(error,)] = fetch(db_url, "SELECT last_error FROM nodes WHERE id = %s", node)
            return error is not None

        wait_until(refused, 60, "the instance step fails")
        [(state, error)] = fetch(db_url, "SELECT state, last_error FROM nodes WHERE id = %s", node)
        assert state == "instance"
        assert "AccessDenied" in error and "ec2:RunInstances" in error, error
        assert simulation.instances() == []


def statements(name: str) -> dict[str, Policy]:
    return {s["Sid"]: s for s in policy(name, "f" * 32)["Statement"]}


def test_the_policies_carry_the_scopes_only_aws_checks() -> None:
    # moto ignores these (module docstring); their presence is checked here instead.
    worker = statements("fleet-worker")
    fleet_tag = {"aws:RequestTag/rln-fleet:fleet-id": "f" * 32}
    instance = worker["LaunchOnlyThisFleetsImdsv2Instances"]["Condition"]["StringEquals"]
    assert instance == fleet_tag | {"ec2:MetadataHttpTokens": "required"}
    volume = worker["LaunchOnlyThisFleetsEncryptedVolumes"]["Condition"]
    assert volume == {"StringEquals": fleet_tag, "Bool": {"ec2:Encrypted": "true"}}
    terminate = worker["TerminateOnlyThisFleetsInstances"]["Condition"]["StringEquals"]
    assert terminate == {"ec2:ResourceTag/rln-fleet:fleet-id": "f" * 32}
    start = worker["StartOnlyThisFleetsInstances"]["Condition"]["StringEquals"]
    assert start == terminate
    tags = worker["TagOnlyWhileLaunching"]["Condition"]["StringEquals"]
    assert tags == {"ec2:CreateAction": "RunInstances"}
    pass_role = worker["PassOnlyTheHostRoleToEc2"]
    assert pass_role["Resource"] == f"arn:aws:iam::{ACCOUNT}:role/{HOST_ROLE}"
    assert pass_role["Condition"]["StringEquals"] == {"iam:PassedToService": "ec2.amazonaws.com"}
    # Only what EC2 cannot scope by resource is allowed on "*".
    for name in ("fleet-worker", "fleet-dispatcher", "fleet-operator", "fleet-host", "fleet-watch"):
        for statement in statements(name).values():
            assert statement["Effect"] == "Allow" and "*" not in str(statement["Action"])
            if statement["Resource"] == "*":
                assert statement["Action"] == "ec2:DescribeInstances", (name, statement)
