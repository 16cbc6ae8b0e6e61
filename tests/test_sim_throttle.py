"""The simulated EC2 throttles as AWS documents ("Request throttling for the Amazon EC2
API": token buckets per account, region and action; RunInstances and TerminateInstances
also by instances), and the fleet rides it out: botocore retries RequestLimitExceeded, and
a step that still gets it waits instead of failing an attempt."""

import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from sim.aws import LaunchLog, MotoServer
from sim.ec2_limits import BucketSize, Ec2Limits, Ec2Throttle
from sim.services import free_port
from tests.conftest import add_nodes, fetch
from tests.simulation import Simulation
from tests.test_lifecycle import reach
from worker.dispatcher import Dispatcher

AMI = "ami-0123456789abcdef0"
StartWorker = Callable[..., subprocess.Popen[bytes]]
FILTERED = {"Filter.1.Name": ["tag-key"], "Filter.1.Value.1": ["x"]}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def admitted(throttle: Ec2Throttle, calls: int, action: str, **form: list[str]) -> int:
    return sum(throttle.admit("eu-west-1", action, form) for _ in range(calls))


def test_the_buckets_hold_and_refill_as_aws_documents() -> None:
    clock = Clock()
    throttle = Ec2Throttle(Ec2Limits(), clock)
    # Non-mutating (a filtered DescribeInstances): 100, then 20 a second.
    assert admitted(throttle, 101, "DescribeInstances", **FILTERED) == 100
    clock.now += 1.0
    assert admitted(throttle, 21, "DescribeInstances", **FILTERED) == 20
    # Unfiltered and unpaginated DescribeInstances: a bucket of its own, 50, then 10 a second.
    assert admitted(throttle, 51, "DescribeInstances") == 50
    clock.now += 1.0
    assert admitted(throttle, 11, "DescribeInstances") == 10
    # RunInstances' own request bucket: 5, then 2 a second.
    assert admitted(throttle, 6, "RunInstances", MaxCount=["1"]) == 5
    clock.now += 1.0
    assert admitted(throttle, 3, "RunInstances", MaxCount=["1"]) == 2
    # A mutating action without a bucket of its own (StopInstances): 50, then 5 a second.
    assert admitted(throttle, 51, "StopInstances") == 50
    clock.now += 1.0
    assert admitted(throttle, 6, "StopInstances") == 5
    # Full buckets stay full: an idle minute adds nothing past the capacity.
    clock.now += 60.0
    assert admitted(throttle, 101, "DescribeInstances", **FILTERED) == 100
    assert throttle.refused[("eu-west-1", "DescribeInstances")] == 5
    assert throttle.refused[("eu-west-1", "RunInstances")] == 2


def test_the_resource_buckets_count_instances_not_calls() -> None:
    clock = Clock()
    throttle = Ec2Throttle(Ec2Limits(), clock)
    one = {"MaxCount": ["600"], "MinCount": ["1"]}
    assert throttle.admit("eu-west-1", "RunInstances", one)  # 400 instances left
    assert not throttle.admit("eu-west-1", "RunInstances", one)  # refused: costs nothing
    assert throttle.tokens("eu-west-1", "resource", "RunInstances") == 400
    assert throttle.admit("eu-west-1", "RunInstances", {"MaxCount": ["400"]})
    clock.now += 1.0  # 2 instances a second
    assert throttle.admit("eu-west-1", "RunInstances", {"MaxCount": ["2"]})
    assert not throttle.admit("eu-west-1", "RunInstances", {"MaxCount": ["1"]})
    # TerminateInstances: by the ids named, 1000, then 20 a second.
    ids = {f"InstanceId.{n}": [f"i-{n}"] for n in range(1, 1001)}
    assert throttle.admit("eu-west-1", "TerminateInstances", ids)
    assert not throttle.admit("eu-west-1", "TerminateInstances", {"InstanceId.1": ["i-1"]})
    clock.now += 1.0
    twenty = {f"InstanceId.{n}": [f"i-{n}"] for n in range(1, 21)}
    assert throttle.admit("eu-west-1", "TerminateInstances", twenty)
    assert throttle.refused_total(action="RunInstances") == 2
    assert throttle.refused_total(action="TerminateInstances") == 1


@pytest.fixture
def throttled_moto() -> Iterator[MotoServer]:
    # Tiny buckets that barely refill: what a test does in a second is what they allow.
    limits = Ec2Limits(capacity_scale=0.04, refill_scale=0.001)
    server = MotoServer("127.0.0.1", free_port(), LaunchLog(throttle=Ec2Throttle(limits)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ec2(server: MotoServer, region: str, attempts: int = 1, key: str = "sim") -> Any:
    """A client that does not retry (one attempt), so each throttle is seen."""
    config = Config(retries={"mode": "standard", "total_max_attempts": attempts})
    return boto3.client(
        "ec2", region_name=region, endpoint_url=server.url, config=config,
        aws_access_key_id=key, aws_secret_access_key="sim",
    )  # fmt: skip


def describe(client: Any) -> None:
    client.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["running"]}])


def test_over_a_bucket_ec2_answers_request_limit_exceeded_per_region(
    throttled_moto: MotoServer,
) -> None:
    ireland, virginia = ec2(throttled_moto, "eu-west-1"), ec2(throttled_moto, "us-east-1")
    for _ in range(4):  # the non-mutating bucket: 100 x 0.04
        describe(ireland)
    with pytest.raises(ClientError) as refused:
        describe(ireland)
    error = refused.value.response
    assert error["Error"]["Code"] == "RequestLimitExceeded"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
    for _ in range(4):  # another region's buckets are its own
        describe(virginia)
    # The simulator's own look-ups take no tokens and are never refused.
    inspector = ec2(throttled_moto, "eu-west-1", key=MotoServer.inspector_credentials[0])
    for _ in range(10):
        describe(inspector)
    throttle = throttled_moto.log.throttle
    assert throttle is not None
    assert throttle.refused == {("eu-west-1", "DescribeInstances"): 1}
    assert throttle.admitted_total("eu-west-1") == 4
    assert throttle.admitted_total("us-east-1") == 4


def test_a_refused_launch_takes_no_instances_and_is_logged(throttled_moto: MotoServer) -> None:
    client = ec2(throttled_moto, "eu-west-1")
    # RunInstances: request bucket 5 x 0.04 -> 1 token, resource bucket 1000 x 0.04 -> 40.
    with pytest.raises(ClientError) as refused:
        client.run_instances(ImageId=AMI, MinCount=1, MaxCount=41)  # more than the bucket
    assert refused.value.response["Error"]["Code"] == "RequestLimitExceeded"
    throttle = throttled_moto.log.throttle
    assert throttle is not None
    assert throttle.tokens("eu-west-1", "resource", "RunInstances") == pytest.approx(40, abs=0.1)
    assert throttled_moto.log.throttled == 1
    assert [c.outcome for c in throttled_moto.log.calls] == ["throttled"]
    assert throttled_moto.log.launched_at == []


def test_botocore_retries_a_throttled_call_until_the_bucket_refilled() -> None:
    """The fleet's clients (standard retry mode) back off and get through once the bucket
    has a token again: one refused answer, then the call's own answer."""
    limits = Ec2Limits(actions={"RunInstances": BucketSize(1, 1)})
    server = MotoServer("127.0.0.1", free_port(), LaunchLog(throttle=Ec2Throttle(limits)))
    server.start()
    try:
        client = ec2(server, "eu-west-1", attempts=9)
        client.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)
        started = time.monotonic()
        answer = client.run_instances(ImageId=AMI, MinCount=1, MaxCount=1)
        assert answer["ResponseMetadata"]["RetryAttempts"] >= 1
        assert time.monotonic() - started < 20
        assert server.log.throttle is not None
        assert server.log.throttle.refused_total(action="RunInstances") >= 1
        assert len(server.log.launched_at) == 2
    finally:
        server.stop()


def tight(simulation: Simulation) -> Ec2Throttle:
    """Buckets a fiftieth of AWS's, refilling at a quarter of its rates: RunInstances
    one call and then one every 2 s; describing one instance one call, then 2.5 a second."""
    throttle = Ec2Throttle(Ec2Limits(capacity_scale=0.02, refill_scale=0.25))
    simulation.cloud.launches.throttle = throttle
    return throttle


@pytest.mark.slow  # a few nodes through the simulator: the second tier (scripts/test)
@pytest.mark.parametrize("botocore_retries", [8, 1])
def test_a_fleet_under_tight_buckets_goes_live_retrying_what_was_throttled(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    botocore_retries: int,
) -> None:
    """With botocore's retries (FLEET_EC2_MAX_RETRIES=8, the default) the throttled
    answers are retried inside the call; with one retry most reach the step, which waits
    and runs again: either way every node goes live, none held, one instance each."""
    throttle = tight(simulation)
    env = simulation.env | {"FLEET_EC2_MAX_RETRIES": str(botocore_retries)}
    node_ids = add_nodes(db_url, [f"paced-{i}" for i in range(3)])
    for _ in range(3):
        start_worker(env=env)
    reach(db_url, node_ids, "live", timeout=120)
    assert throttle.refused_total("eu-west-1") > 0  # the buckets did bite
    assert all(len(simulation.instances_of(n)) == 1 for n in node_ids)
    assert len(simulation.cloud.launches.launched_at) == len(node_ids)
    rows = fetch(db_url, "SELECT held, attempts FROM nodes WHERE id = ANY(%s)", node_ids)
    assert rows == [(False, 0)] * len(node_ids)


@pytest.mark.slow  # eight nodes through the simulator: the second tier (scripts/test)
def test_a_well_paced_fleet_gets_few_throttled_answers_from_aws_buckets(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    """AWS's own bucket sizes (the simulated cloud's default) and the fleet's default
    launch budget (2 a second, 5 at once: RunInstances' request bucket): few answers are
    RequestLimitExceeded. Not none: the budget grants a token some milliseconds before its
    RunInstances reaches EC2, so calls granted a refill apart can arrive closer together."""
    throttle = simulation.cloud.launches.throttle
    assert throttle is not None and throttle.limits == Ec2Limits()
    env = simulation.env | {"FLEET_LAUNCH_RATE": "2", "FLEET_LAUNCH_BURST": "5"}
    node_ids = add_nodes(db_url, [f"paced-{i}" for i in range(8)])
    for _ in range(3):
        start_worker(env=env)
    reach(db_url, node_ids, "live", timeout=120)
    assert throttle.admitted_total(action="RunInstances") == len(node_ids)
    assert throttle.refused_total(action="RunInstances") <= 2, dict(throttle.refused)
    assert throttle.refused_total() <= 4, dict(throttle.refused)
