"""Batched launches (jobs/steps/batching.py): one RunInstances for several nodes, each
node's launch recorded before the call, so that a worker dying at any line of it leaves
exactly one instance per node (counted in the simulated EC2 by tag); partial
fulfilment; the region's launch budget; destroy during a batch; batched terminate."""

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jobs.registry import Launch
from jobs.steps.batching import batch_token, in_batch, may_lead
from tests.conftest import add_nodes, fetch, wait_until
from tests.simulation import Simulation
from tests.test_launch_races import RUNNING, launch_in_flight, launch_over
from tests.test_lifecycle import reach, request
from worker.dispatcher import Dispatcher

StartWorker = Callable[..., subprocess.Popen[bytes]]
CRASH_POINTS = ["recorded", "launched", "answered", "tagged"]


def batched(simulation: Simulation, size: int = 10, **more: str) -> dict[str, str]:
    return simulation.env | {"FLEET_LAUNCH_BATCH_MAX": str(size)} | more


def launched_past_instance(db_url: str, node_ids: list[int], timeout: float = 60) -> None:
    def past() -> bool:
        rows = fetch(db_url, "SELECT state, held, last_error FROM nodes WHERE id = ANY(%s)",
                     node_ids)  # fmt: skip
        assert not any(held for _, held, _ in rows), rows
        return all(state != "instance" for state, _, _ in rows)

    wait_until(past, timeout, "every node launched")


def one_instance_each(simulation: Simulation, node_ids: list[int]) -> None:
    for node_id in node_ids:
        found = simulation.instances_of(node_id)
        assert len(found) == 1, (node_id, found)
    # Nothing else was made: no untagged instance of a batch is left behind.
    assert len(simulation.instances()) == len(node_ids)


def run_instances_calls(simulation: Simulation) -> list[str]:
    return [c.outcome for c in simulation.cloud.launches.calls]


def test_one_run_instances_launches_a_batch_one_instance_per_node(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    node_ids = add_nodes(db_url, [f"batch-{n}" for n in range(6)])
    start_worker(env=batched(simulation))
    launched_past_instance(db_url, node_ids)
    one_instance_each(simulation, node_ids)
    # The first node's step claimed the others: fewer calls than nodes (one, unless the
    # dispatcher's queue let a second leader in first).
    assert run_instances_calls(simulation).count("launched") <= 2
    rows = fetch(db_url, "SELECT batch_token, launch_index, instance_id FROM node_launches"
                 " WHERE node_id = ANY(%s)", node_ids)  # fmt: skip
    assert all(token is not None and instance is not None for token, _, instance in rows)
    # Every node's row names its instance, the one EC2 launched at its index.
    for node_id in node_ids:
        [(row_instance,)] = fetch(db_url, "SELECT instance_id FROM nodes WHERE id = %s", node_id)
        assert row_instance == simulation.instances_of(node_id)[0]["InstanceId"]


def test_partial_fulfilment_puts_the_rest_in_the_next_batch(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    simulation.cloud.launches.fulfil_at_most = 2
    node_ids = add_nodes(db_url, [f"partial-{n}" for n in range(5)])
    start_worker(env=batched(simulation))
    launched_past_instance(db_url, node_ids)
    one_instance_each(simulation, node_ids)
    batches = fetch(db_url, "SELECT cardinality(node_ids), fulfilled FROM launch_batches"
                    " ORDER BY id")  # fmt: skip
    assert all(fulfilled is not None and fulfilled <= 2 for _, fulfilled in batches), batches
    assert any(size > fulfilled for size, fulfilled in batches), batches  # some were partial
    assert sum(fulfilled for _, fulfilled in batches) == len(node_ids)


def test_the_region_resource_bucket_caps_each_batch(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    """Two instances in the bucket and one more every half second: no batch is larger
    than what the bucket held, and the launches keep to the bucket's rate."""
    env = batched(simulation, FLEET_EC2_RESOURCE_BURST="2", FLEET_EC2_RESOURCE_RATE="2")
    node_ids = add_nodes(db_url, [f"budget-{n}" for n in range(6)])
    start_worker(env=env)
    launched_past_instance(db_url, node_ids)
    one_instance_each(simulation, node_ids)
    sizes = [size for (size,) in fetch(db_url, "SELECT cardinality(node_ids) FROM launch_batches")]
    assert max(sizes) <= 2 and sum(sizes) == 6, sizes
    made = sorted(simulation.cloud.launches.launched_at)
    # 6 instances from a bucket of 2 refilled at 2/s: at least 2 s from first to last.
    assert made[-1] - made[0] >= 1.5


def test_throttled_batches_are_repeated_by_their_token_one_instance_per_node(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    """Half of the RunInstances calls are throttled (RequestLimitExceeded): botocore
    retries them, and a batch repeated by its token still makes one instance per node."""
    simulation.cloud.launches.throttle_rate = 0.5
    simulation.cloud.launches.rng.seed(12)
    node_ids = add_nodes(db_url, [f"throttled-{n}" for n in range(5)])
    start_worker(env=batched(simulation, size=2))
    launched_past_instance(db_url, node_ids, timeout=90)
    one_instance_each(simulation, node_ids)
    assert simulation.cloud.launches.throttled >= 1


@pytest.mark.parametrize(
    "point", [pytest.param(p, marks=[] if p == "launched" else [pytest.mark.slow])
              for p in CRASH_POINTS],
)  # fmt: skip
def test_a_worker_killed_at_each_line_of_a_batch_leaves_one_instance_per_node(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    tmp_path: Path,
    point: str,
) -> None:
    env = batched(simulation) | {
        "FLEET_STEP_MODULES": "jobs.steps,tests.crash_batch",
        "FLEET_TEST_CRASH_DIR": str(tmp_path),
        "FLEET_TEST_CRASH_AT": point,
    }
    node_ids = add_nodes(db_url, [f"crash-{point}-{n}" for n in range(4)])
    doomed = start_worker(env=env)
    wait_until(lambda: doomed.poll() is not None, 60, f"the worker dies at {point}")
    assert (tmp_path / f"batch-{point}").exists()
    start_worker(env=env)  # takes over once the dead worker's lease expires
    launched_past_instance(db_url, node_ids, timeout=90)
    one_instance_each(simulation, node_ids)
    launched = run_instances_calls(simulation).count("launched")
    assert launched <= 2, simulation.cloud.launches.calls


def test_destroy_of_a_node_whose_batch_is_in_flight_ends_its_instance(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    simulation.cloud.launches.launch_delay_seconds = 4.0
    node_ids = add_nodes(db_url, [f"racer-{n}" for n in range(3)])
    env = batched(simulation)
    start_worker(env=env)
    start_worker(env=env)  # one launches the batch, the other runs destroy
    launch_in_flight(simulation)
    leaving = node_ids[-1]
    request(db_url, [leaving], "destroy")
    launch_over(simulation)
    reach(db_url, [leaving], "destroyed", timeout=90)
    staying = node_ids[:-1]
    launched_past_instance(db_url, staying)
    for node_id in staying:
        assert len(simulation.instances_of(node_id)) == 1
    alive = [i for i in simulation.instances() if i["State"]["Name"] in RUNNING]  # type: ignore[index]
    assert len(alive) == len(staying)


# Unit tests of who may batch, with a fake context.


@dataclass
class FakeNode:
    launch_generation: int = 0


@dataclass
class FakeContext:
    node: FakeNode = field(default_factory=FakeNode)
    recorded: list[Launch] = field(default_factory=list)

    def launches(self) -> list[Launch]:
        return self.recorded


def launch(**fields: Any) -> Launch:
    base: dict[str, Any] = {"generation": 0, "region": "eu-west-1", "client_token": "t",
                            "instance_id": None, "in_flight": False}  # fmt: skip
    return Launch(**(base | fields))


def test_a_first_launch_may_lead_a_batch_and_a_refused_or_replaced_one_may_not() -> None:
    assert may_lead(FakeContext())  # type: ignore[arg-type]
    unfulfilled = launch(batch_token="b", launch_index=3, unfulfilled=True)
    assert may_lead(FakeContext(recorded=[unfulfilled]))  # type: ignore[arg-type]
    refused = launch(batch_token="b", launch_index=0, unfulfilled=True, refusals=1)
    assert not may_lead(FakeContext(recorded=[refused]))  # type: ignore[arg-type]
    alone = launch()
    assert not may_lead(FakeContext(recorded=[alone]))  # type: ignore[arg-type]
    assert not may_lead(FakeContext(node=FakeNode(launch_generation=1)))  # type: ignore[arg-type]


def test_a_node_in_a_recorded_batch_goes_on_with_it_never_alone() -> None:
    mine = launch(batch_token="b1", launch_index=2)
    assert in_batch(FakeContext(recorded=[mine])) == mine  # type: ignore[arg-type]
    gone = launch(batch_token="b1", launch_index=2, unfulfilled=True)
    assert in_batch(FakeContext(recorded=[gone])) is None  # type: ignore[arg-type]
    earlier = launch(generation=0, batch_token="b0", launch_index=0)
    later = FakeContext(node=FakeNode(launch_generation=1), recorded=[earlier])
    assert in_batch(later) is None  # type: ignore[arg-type]


def test_a_batch_token_fits_ec2s_limit_and_is_never_repeated() -> None:
    tokens = {batch_token("f" * 32) for _ in range(1000)}
    assert len(tokens) == 1000
    assert max(len(t) for t in tokens) <= 64
