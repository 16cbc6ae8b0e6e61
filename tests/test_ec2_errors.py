"""EC2's errors by kind, through the simulated EC2 API (moto behind the simulator's
front, answering RunInstances with EC2's own error codes): a capacity blip or a quota
waits without spending attempts, a bad AMI holds at once after one call, and an instance
EC2 no longer knows counts as gone."""

import json

import psycopg
import pytest
from botocore.exceptions import ClientError

from jobs.ec2_errors import classify
from tests.conftest import add_nodes, fetch, held_with, wait_until
from tests.simulation import Simulation
from tests.test_lifecycle import reach, request
from tests.test_reconcile import reconcile
from tests.test_step_faults import StartWorker
from worker.dispatcher import Dispatcher

# Doubling capped at 1 s: six refusals in seconds, not the 40 s of 0.6 * 2**k.
FAST_PAUSE = {"FLEET_EC2_PAUSE_SECONDS": "0.3", "FLEET_EC2_PAUSE_MAX_SECONDS": "1"}
FORGET_SECONDS = 0.5  # the simulator's stand-in for EC2's hour


@pytest.mark.parametrize("code", ["InsufficientInstanceCapacity", "VcpuLimitExceeded"])
def test_capacity_and_quota_wait_without_spending_attempts(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    code: str,
) -> None:
    launches = simulation.cloud.launches
    launches.refuse_with = code
    [node_id] = add_nodes(db_url, ["paused"])
    start_worker(env=simulation.env | FAST_PAUSE)
    wait_until(lambda: launches.refused >= 6, 30, f"the fleet asks again after {code}")
    [(held, attempts)] = fetch(db_url, "SELECT held, attempts FROM nodes WHERE id = %s", node_id)
    assert (held, attempts) == (False, 0)
    launches.refuse_with = None
    reach(db_url, [node_id], "live")
    assert len(simulation.instances_of(node_id)) == 1


@pytest.mark.parametrize("code", ["InvalidAMIID.NotFound", "UnauthorizedOperation"])
def test_a_launch_that_can_never_succeed_holds_at_once_with_awss_words(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    code: str,
) -> None:
    simulation.cloud.launches.refuse_with = code
    [node_id] = add_nodes(db_url, ["refused"])
    start_worker(env=simulation.env)
    error, attempts = held_with(db_url, node_id)
    assert error.endswith(f"launch refused: EC2 {code}: simulated {code}")
    assert attempts <= 1
    assert simulation.cloud.launches.refused == 1


def forget_terminated(simulation: Simulation, instance_id: str) -> None:
    """Terminate the instance from outside and wait until EC2 has forgotten it (the
    simulator's hour: FORGET_SECONDS)."""
    ec2 = simulation.cloud.client("ec2")
    simulation.cloud.launches.forget_terminated_seconds = FORGET_SECONDS
    ec2.terminate_instances(InstanceIds=[instance_id])

    def forgotten() -> bool:
        try:
            ec2.describe_instances(InstanceIds=[instance_id])
        except ClientError as exc:
            return str(exc.response["Error"]["Code"]) == "InvalidInstanceID.NotFound"
        return False

    wait_until(forgotten, 10, f"EC2 forgets {instance_id}")


def place(db_url: str, node_id: int, state: str) -> None:
    """Put the row in a state as the schema owner (no edge leads there yet: the health
    watch's are the lead's), due now and not held."""
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute("SET session_replication_role = replica")
        owner.execute(
            "UPDATE nodes SET state = %s, next_attempt_at = now(), attempts = 0,"
            " held_at = NULL, last_error = NULL WHERE id = %s",
            (state, node_id),
        )


def instance_of(db_url: str, node_id: int) -> str:
    [(instance_id,)] = fetch(db_url, "SELECT instance_id FROM nodes WHERE id = %s", node_id)
    return str(instance_id)


def test_a_node_whose_instance_ec2_forgot_is_destroyed(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    """EC2 forgets a terminated instance after about an hour (moto never does): the id
    the row names then answers InvalidInstanceID.NotFound, which means gone, and neither
    its tag nor its launch's ClientToken shows it any more."""
    [node_id] = add_nodes(db_url, ["forgotten"])
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    forget_terminated(simulation, instance_of(db_url, node_id))
    request(db_url, [node_id], "destroy")
    reach(db_url, [node_id], "destroyed")


def test_the_instance_step_holds_a_node_whose_instance_ec2_forgot(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    """Not by tag, not by its launch's token, not by id: the instance of this launch
    generation is gone. Launching again with its token could only bring the old answer
    back (EC2 replays a token), so an operator decides; reconcile says the same."""
    [node_id] = add_nodes(db_url, ["vanished"])
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    instance_id = instance_of(db_url, node_id)
    forget_terminated(simulation, instance_id)
    calls = len(simulation.cloud.launches.calls)
    result = reconcile(simulation, "--json")
    assert result.returncode == 0, result.stderr
    [finding] = json.loads(result.stdout)["findings"]
    assert (finding["kind"], finding["instance_id"]) == ("missing", instance_id)
    place(db_url, node_id, "instance")  # released from reconcile's hold: the step decides
    error, _ = held_with(db_url, node_id)
    assert error.endswith(
        f"instance {instance_id} of node vanished is gone: EC2 no longer knows it"
        " (terminated over an hour ago)"
    ), error
    assert len(simulation.cloud.launches.calls) == calls  # nothing launched again


def test_the_kinds_are_read_from_the_error_code() -> None:
    from botocore.exceptions import ClientError

    def refused(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}}, "RunInstances")

    kinds = {code: getattr(classify(refused(code)), "kind", None) for code in (
        "InsufficientInstanceCapacity", "InstanceLimitExceeded", "IdempotentParameterMismatch",
        "InvalidInstanceID.NotFound", "RequestLimitExceeded",
    )}  # fmt: skip
    assert kinds == {
        "InsufficientInstanceCapacity": "capacity",
        "InstanceLimitExceeded": "quota",
        "IdempotentParameterMismatch": "permanent",
        "InvalidInstanceID.NotFound": "gone",
        "RequestLimitExceeded": "throttled",  # retried by botocore, then a Wait
    }
