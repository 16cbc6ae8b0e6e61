"""EC2's errors by kind, through the simulated EC2 API (moto behind the simulator's
front, answering RunInstances with EC2's own error codes): a capacity blip or a quota
waits without spending attempts, a bad AMI holds at once after one call, and an instance
EC2 no longer knows counts as gone."""

import psycopg
import pytest

from jobs.ec2_errors import classify
from tests.conftest import add_nodes, fetch, held_with, wait_until
from tests.simulation import Simulation
from tests.test_lifecycle import reach, request
from tests.test_step_faults import StartWorker
from worker.dispatcher import Dispatcher

FAST_PAUSE = {"FLEET_EC2_PAUSE_SECONDS": "0.3"}


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


def test_a_node_whose_instance_ec2_forgot_is_destroyed(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    """EC2 forgets a terminated instance after about an hour (moto never does): the id
    the row names then answers InvalidInstanceID.NotFound, which means gone."""
    [node_id] = add_nodes(db_url, ["forgotten"])
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    [(instance_id,)] = fetch(db_url, "SELECT instance_id FROM nodes WHERE id = %s", node_id)
    simulation.cloud.client("ec2").terminate_instances(InstanceIds=[instance_id])
    with psycopg.connect(db_url, autocommit=True) as owner:  # what EC2 shows an hour later
        owner.execute("SET session_replication_role = replica")
        owner.execute(
            "UPDATE nodes SET instance_id = 'i-0fffffffffffffff0' WHERE id = %s", (node_id,)
        )
    request(db_url, [node_id], "destroy")
    reach(db_url, [node_id], "destroyed")


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
        "RequestLimitExceeded": None,  # botocore's retries handle throttling
    }
