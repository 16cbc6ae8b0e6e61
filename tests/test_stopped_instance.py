"""An instance stopped outside the fleet (the console, a script) is started again by the
instance step, and the node comes back on the same host: the root volume survives a stop,
so the disk, the wallet and the SSH host key are the ones the fleet pinned; only the
address may change. The edge from live back to instance is the health watch's: here the
schema owner puts the row there; tests/test_watch.py has the watch take it."""

import pytest

from tests.conftest import add_nodes, fetch, wait_until
from tests.simulation import Simulation
from tests.test_ec2_errors import instance_of, place
from tests.test_lifecycle import reach
from tests.test_step_faults import StartWorker
from worker.dispatcher import Dispatcher


def state_of(simulation: Simulation, instance_id: str) -> str:
    ec2 = simulation.cloud.client("ec2")
    [reservation] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return str(reservation["Instances"][0]["State"]["Name"])


@pytest.mark.slow
def test_a_stopped_instance_is_started_and_the_node_comes_back(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    [node_id] = add_nodes(db_url, ["stopped-outside"])
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    instance_id = instance_of(db_url, node_id)
    host = simulation.cloud.host_of(instance_id)
    [(address, host_key)] = fetch(
        db_url, "SELECT address, ssh_host_key FROM nodes WHERE id = %s", node_id
    )
    simulation.cloud.stop_from_outside(instance_id)
    wait_until(lambda: instance_id in simulation.cloud.stopped, 10, "the host powers off")
    assert state_of(simulation, instance_id) == "stopped"
    assert host.daemon is None

    place(db_url, node_id, "instance")
    reach(db_url, [node_id], "live")
    assert state_of(simulation, instance_id) == "running"
    assert simulation.cloud.host_of(instance_id) is host  # the same disk and host key
    assert len(simulation.instances_of(node_id)) == 1  # started, not replaced
    [(new_address, pinned, attempts)] = fetch(
        db_url, "SELECT address, ssh_host_key, attempts FROM nodes WHERE id = %s", node_id
    )
    assert new_address == host.address != address  # the new address is the one recorded
    assert pinned == host_key
    assert attempts == 0
    notes = fetch(
        db_url, "SELECT detail FROM node_history WHERE node_id = %s AND event = 'note'", node_id
    )
    assert (f"instance {instance_id} was stopped outside the fleet: started it",) in notes
