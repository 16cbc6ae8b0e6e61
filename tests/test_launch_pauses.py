"""EC2's capacity and quota refusals through the simulated EC2 API: no room in one subnet
(zone) tries the region's next subnet; no room in any pauses the node's launch, longer
after each round, never held by the wait limit; the account's quota pauses every launch
of the region (the others make no RunInstances call), visible in `fleet status` and as
fleet_launches_paused."""

import json
import subprocess
import time
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from jobs.config import RegionConfig
from sim.aws import LaunchCall
from tests.conftest import add_nodes, fetch, wait_until
from tests.simulation import REGION, Simulation
from tests.test_lifecycle import reach, request
from tests.test_step_faults import StartWorker
from worker.dispatcher import Dispatcher

Fleet = Callable[..., subprocess.CompletedProcess[str]]


def with_subnets(simulation: Simulation, pause: float, max_pause: float) -> dict[str, str]:
    """Two subnets in two zones of the region, and the fleet's settings naming both."""
    ec2 = simulation.cloud.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{n}.0/24", AvailabilityZone=f"{REGION}{z}")[
            "Subnet"
        ]["SubnetId"]
        for n, z in enumerate("ab")
    ]
    regions = json.loads(simulation.env["FLEET_REGIONS"])
    regions[REGION]["subnet_ids"] = subnets
    return simulation.env | {
        "FLEET_REGIONS": json.dumps(regions),
        "FLEET_EC2_PAUSE_SECONDS": str(pause),
        "FLEET_EC2_PAUSE_MAX_SECONDS": str(max_pause),
    }


def subnets_of(env: dict[str, str]) -> list[str]:
    return list(json.loads(env["FLEET_REGIONS"])[REGION]["subnet_ids"])


def refused(calls: list[LaunchCall]) -> list[LaunchCall]:
    return [c for c in calls if c.outcome == "refused"]


@pytest.mark.slow
def test_no_capacity_in_one_subnet_launches_in_the_next_at_once(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    env = with_subnets(simulation, pause=30.0, max_pause=60.0)
    first, second = subnets_of(env)
    launches = simulation.cloud.launches
    launches.refuse_with = "InsufficientInstanceCapacity"
    launches.refuse_in_subnets = frozenset({first})
    [node_id] = add_nodes(db_url, ["roomless"])
    start_worker(env=env)
    started = time.monotonic()
    reach(db_url, [node_id], "live")
    # No pause (30 s) between the refusal and the launch in the other zone.
    assert time.monotonic() - started < 20
    assert [(c.subnet_id, c.outcome) for c in launches.calls] == [
        (first, "refused"), (second, "launched"),
    ]  # fmt: skip
    [instance] = simulation.instances_of(node_id)
    assert instance["SubnetId"] == second
    tokens = [c.client_token for c in launches.calls]
    assert tokens[0] != tokens[1]  # one token per subnet: no IdempotentParameterMismatch
    [(attempts,)] = fetch(db_url, "SELECT attempts FROM nodes WHERE id = %s", node_id)
    assert attempts == 0


@pytest.mark.slow
def test_no_capacity_anywhere_pauses_longer_each_round_and_is_never_held(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    env = with_subnets(simulation, pause=0.4, max_pause=1.6)
    env |= {"FLEET_WAIT_LIMIT_SECONDS": "3"}
    launches = simulation.cloud.launches
    launches.refuse_with = "InsufficientInstanceCapacity"
    [node_id] = add_nodes(db_url, ["full"])
    start_worker(env=env)
    # Rounds of both subnets, pauses 0.4, 0.8, 1.6, 1.6: past the 3 s wait limit.
    wait_until(lambda: len(refused(launches.calls)) >= 10, 40, "five rounds of refusals")
    calls = refused(launches.calls)[:10]
    assert [c.subnet_id for c in calls] == subnets_of(env) * 5
    gaps = [calls[i + 1].at - calls[i].at for i in range(1, 9, 2)]  # between rounds
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert 1.5 <= gaps[3] < 3.0, gaps  # capped at FLEET_EC2_PAUSE_MAX_SECONDS
    within = [calls[i + 1].at - calls[i].at for i in range(0, 10, 2)]  # the next subnet
    assert max(within) < gaps[0], within
    [(held, attempts)] = fetch(db_url, "SELECT held, attempts FROM nodes WHERE id = %s", node_id)
    assert (held, attempts) == (False, 0)
    launches.refuse_with = None
    reach(db_url, [node_id], "live")
    assert len(simulation.instances_of(node_id)) == 1


@pytest.mark.slow
def test_a_node_paused_for_capacity_is_destroyed_without_waiting_for_its_launch(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    """A refused launch made nothing: it is not in flight, and destroy does not wait out
    its call's deadline (minutes: FLEET_EC2_MAX_RETRIES x ...) for an instance that
    cannot come."""
    env = with_subnets(simulation, pause=60.0, max_pause=60.0)
    launches = simulation.cloud.launches
    launches.refuse_with = "InsufficientInstanceCapacity"
    [node_id] = add_nodes(db_url, ["no-room"])
    start_worker(env=env)
    wait_until(lambda: len(refused(launches.calls)) == 2, 30, "both subnets refuse")
    started = time.monotonic()
    request(db_url, [node_id], "destroy")
    reach(db_url, [node_id], "destroyed", timeout=30)
    assert time.monotonic() - started < 20
    assert simulation.instances_of(node_id) == []


def paused_gauge(region: str) -> float | None:
    labels = {"region": region, "kind": "quota"}
    return REGISTRY.get_sample_value("fleet_launches_paused", labels)


@pytest.mark.slow
def test_a_quota_pauses_every_launch_in_the_region(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    fleet: Fleet,
) -> None:
    env = simulation.env | {
        "FLEET_EC2_PAUSE_SECONDS": "4",  # a quota pauses twice that: 8 s
        "FLEET_WAIT_LIMIT_SECONDS": "2",
    }
    launches = simulation.cloud.launches
    launches.refuse_with = "VcpuLimitExceeded"
    [first] = add_nodes(db_url, ["quota-1"])
    start_worker(env=env)
    wait_until(
        lambda: fetch(db_url, "SELECT count(*) FROM launch_pauses") == [(1,)],
        30,
        "the quota refuses the first launch and the region pauses",
    )
    assert launches.refused == 1
    [(kind, code, refusals)] = fetch(db_url, "SELECT kind, code, refusals FROM launch_pauses")
    assert (kind, code, refusals) == ("quota", "VcpuLimitExceeded", 1)
    [second] = add_nodes(db_url, ["quota-2"])
    wait_until(
        lambda: (
            fetch(db_url, "SELECT next_attempt_at > now() FROM nodes WHERE id = %s", second)
            == [(True,)]
        ),
        10,
        "the region's second node waits",
    )
    assert len(launches.calls) == 1  # the second node asked EC2 nothing

    status = fleet("status")
    assert status.returncode == 0, status.stderr
    expected = (
        f"launches paused in {REGION}: QUOTA (VcpuLimitExceeded: simulated VcpuLimitExceeded)"
        " until "
    )
    assert expected in status.stdout, status.stdout
    wait_until(lambda: paused_gauge(REGION) == 1, 5, "fleet_launches_paused is 1")

    launches.refuse_with = None
    reach(db_url, [first, second], "live", timeout=60)  # the wait limit held neither
    # Only the first node was ever refused (again, if its pause ended before the quota
    # was lifted): the second asked EC2 only once the pause was over.
    assert {c.client_token.split("-")[1] for c in refused(launches.calls)} == {str(first)}
    assert fetch(db_url, "SELECT count(*) FROM launch_pauses") == [(0,)]
    assert "launches paused" not in fleet("status").stdout
    wait_until(lambda: paused_gauge(REGION) == 0, 5, "fleet_launches_paused is 0 again")


def test_a_region_takes_a_list_of_subnets_or_the_one_of_older_settings() -> None:
    old = RegionConfig(ami="ami-1", subnet_id="subnet-0123456789abcdef0")
    assert old.subnets() == ["subnet-0123456789abcdef0"]
    listed = RegionConfig(ami="ami-1", subnet_ids=["subnet-aaaaaaaa", "subnet-bbbbbbbb"])
    assert listed.subnets() == ["subnet-aaaaaaaa", "subnet-bbbbbbbb"]
    assert RegionConfig(ami="ami-1").subnets() == [None]
    for bad, message in (
        ({"subnet_id": "subnet-aaaaaaaa", "subnet_ids": ["subnet-bbbbbbbb"]}, "not both"),
        ({"subnet_ids": ["subnet-aaaaaaaa", "subnet-aaaaaaaa"]}, "twice"),
        ({"subnet_ids": ["sg-aaaaaaaa"]}, "subnet id"),
    ):
        with pytest.raises(ValueError, match=message):
            RegionConfig.model_validate({"ami": "ami-1", **bad})
