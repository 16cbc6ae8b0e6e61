"""End to end: the real `fleet api` process takes a create with start: true, and real
workers bring the node to live through the simulated cloud. No response ever carries one
of the node's secrets."""

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from models.secrets import SECRET_KINDS, load
from models.session import sqlalchemy_url
from sim.oidc import AUDIENCE, Issuer, running_issuer
from tests.conftest import fetch, role_url, wait_until
from tests.simulation import REGION, Simulation
from tests.test_launch_races import (
    launch_in_flight,
    launch_over,
    nothing_left_running,
    ready_workers,
)
from worker.dispatcher import Dispatcher

StartWorker = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with running_issuer() as found:
        yield found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def fleet_api(simulation: Simulation, issuer: Issuer, tmp_path: Path) -> Iterator[str]:
    """`fleet api` as a process, configured only through its environment."""
    port = free_port()
    env = simulation.env | {
        "FLEET_DATABASE_URL": role_url(simulation.settings.owner_url(), "api"),
        "FLEET_API_OIDC_ISSUER": issuer.url,
        "FLEET_API_OIDC_AUDIENCE": AUDIENCE,
        "FLEET_DEFAULT_REGION": REGION,
        # The test polls every 50 ms, far above a person's rate.
        "FLEET_API_RATE_LIMIT_PER_MINUTE": "60000",
        "FLEET_API_RATE_LIMIT_BURST": "1000",
    }
    with open(tmp_path / "api.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "api", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url, process), 30, "fleet api answers /healthz")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _healthy(url: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "fleet api exited"
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_a_node_created_through_the_api_reaches_live(
    simulation: Simulation,
    issuer: Issuer,
    fleet_api: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
) -> None:
    token = issuer.token("e2e-user", exp=int(time.time()) + 600)
    answers: list[str] = []
    with httpx.Client(base_url=fleet_api, headers={"Authorization": f"Bearer {token}"}) as app:
        created = app.post(
            "/nodes", json={"name": "alpha", "start": True}, headers={"Idempotency-Key": "e2e"}
        )
        assert created.status_code == 201, created.text
        node_id = int(created.json()["id"])
        start_worker(env=simulation.env)

        def live() -> bool:
            shown = app.get(f"/nodes/{node_id}")
            answers.append(shown.text)
            assert shown.status_code == 200, shown.text
            assert shown.json()["step"] != "held", shown.text
            return bool(shown.json()["state"] == "live")

        wait_until(live, 60, "the node is live")
        node = app.get(f"/nodes/{node_id}").json()
        events = app.get(f"/nodes/{node_id}/events")
        answers += [created.text, events.text, app.get("/nodes").text]

    host = simulation.host(node_id)
    assert host.daemon is not None, "the node's service runs"
    assert (node["address"], node["node_pubkey"]) == (host.address, host.daemon.node_pubkey)
    assert len(simulation.instances_of(node_id)) == 1
    path = [(e["to_state"], e["actor"]) for e in events.json()["items"]]
    assert path == [
        ("instance", "api"),
        ("key", "fleet"),
        ("start", "fleet"),
        ("wallet", "fleet"),
        ("live", "fleet"),
    ]
    assert fetch(simulation.settings.database_url, "SELECT actor FROM node_history LIMIT 1") == [
        ("fleet-api:e2e-user",)
    ]
    secrets = _secrets(simulation, node_id)
    assert len(secrets) == len(SECRET_KINDS), "the node has all its secrets"
    for answer in answers:
        for secret in secrets:
            assert secret not in answer


def _secrets(simulation: Simulation, node_id: int) -> list[str]:
    """The node's secrets in clear."""
    engine = create_engine(sqlalchemy_url(simulation.settings.database_url))
    try:
        with engine.connect() as connection:
            found = [load(connection, simulation.ring, node_id, kind) for kind in SECRET_KINDS]
    finally:
        engine.dispose()
    return [secret.reveal() for secret in found if secret is not None]


@pytest.mark.slow
def test_destroy_through_the_api_during_the_launch_leaves_nothing_running(
    simulation: Simulation,
    issuer: Issuer,
    fleet_api: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
) -> None:
    """An API user creates with start: true and destroys while RunInstances is in flight."""
    simulation.cloud.launches.launch_delay_seconds = 6.0
    ready_workers(simulation, start_worker, 2)
    token = issuer.token("racer", exp=int(time.time()) + 600)
    with httpx.Client(base_url=fleet_api, headers={"Authorization": f"Bearer {token}"}) as app:
        created = app.post("/nodes", json={"name": "hasty", "start": True})
        assert created.status_code == 201, created.text
        node_id = int(created.json()["id"])
        launch_in_flight(simulation)
        destroy = app.post(f"/nodes/{node_id}/destroy")
        assert destroy.status_code < 300, destroy.text
        wait_until(
            lambda: app.get(f"/nodes/{node_id}").json()["state"] == "destroyed",
            60,
            "the node is destroyed",
        )
    launch_over(simulation)
    assert len(simulation.instances_of(node_id)) == 1
    nothing_left_running(simulation, node_id)
