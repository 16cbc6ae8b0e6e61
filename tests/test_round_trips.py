"""What a node costs its host after boot, counted where it lands: the simulated sshd
counts the SSH connections opened to it (each one a key exchange), the host agent the
commands it ran, the daemon the API calls it got through the tunnel. A step chain (one
job: key -> start -> wallet, worker/runtime.py) opens one SSH connection to the host,
shared by its agent commands and its API calls, however many of those it makes."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import add_nodes, wait_until
from tests.simulation import Simulation
from tests.test_lifecycle import StartWorker, reach
from worker.dispatcher import Dispatcher

# The steps that reach the host, in chain order (instance only talks to EC2).
HOST_STEPS = ("key", "start", "wallet")


@dataclass(frozen=True)
class HostCost:
    handshakes: int  # SSH connections the host accepted
    agent_commands: int
    api_calls: int  # through the tunnel
    host_chains: int  # jobs that ran at least one of the host's steps


def host_chains(log: Path, node_id: int) -> int:
    """How many jobs ran host steps for the node, from the workers' `step settled` lines:
    each settle of a host step starts a job's host work unless the host step before it
    chained into it (key -> start, start -> wallet)."""
    settled = [
        line
        for line in map(json.loads, log.read_text().splitlines())
        if line.get("event") == "step settled" and line.get("node_id") == node_id
    ]
    runs = [line for line in settled if line["state"] in HOST_STEPS]
    chained_on = [line for line in runs if line["chained"] and line["state"] != "wallet"]
    return len(runs) - len(chained_on)


@pytest.mark.slow
def test_a_node_opens_one_ssh_connection_per_step_chain_from_boot_to_live(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    node_ids = add_nodes(db_url, ["trips-1", "trips-2"])
    log = tmp_path / "worker.log"
    worker = start_worker(
        env=simulation.env | {"FLEET_LOG_FORMAT": "json", "FLEET_LOG_LEVEL": "INFO"}, log=log
    )
    reach(db_url, node_ids, "live")
    # No job's connection outlives it: the worker, still running, holds none open.
    wait_until(
        lambda: all(simulation.host(n).open_ssh_connections == 0 for n in node_ids),
        10,
        "the jobs' SSH connections closed",
    )
    worker.terminate()  # its last lines written
    worker.wait(timeout=30)
    costs = {}
    for node_id in node_ids:
        host = simulation.host(node_id)
        costs[node_id] = HostCost(
            host.ssh_handshakes, len(host.commands), host.traffic.tunnelled,
            host_chains(log, node_id),
        )  # fmt: skip
    print("\nper node, boot to live:", costs)
    for cost in costs.values():
        assert cost.host_chains >= 1
        # set-root-key, set-network, start at the least; /nodeinfo (start), then
        # /unlock, /init, /unlock, /networkinfo, /nodeinfo (wallet).
        assert cost.agent_commands >= 3 and cost.api_calls >= 6
        assert cost.handshakes <= cost.host_chains, cost
