"""Prometheus metrics: what a worker and a dispatcher serve over HTTP."""

import subprocess
import sys
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sim.services import free_port
from tests.conftest import add_nodes, fetch, role_url, wait_until
from worker.dispatcher import Dispatcher

StartWorker = Callable[..., subprocess.Popen[bytes]]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_worker_serves_step_metrics(
    db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    port = free_port()
    node_ids = add_nodes(db_url, ["ok-m1", "ok-m2", "fail-m3"])
    start_worker(env={"FLEET_WORKER_METRICS_PORT": str(port)})
    wait_until(
        lambda: (
            fetch(db_url, "SELECT count(*) FROM nodes WHERE state = 'live'") == [(2,)]
            and fetch(db_url, "SELECT held FROM nodes WHERE id = %s", node_ids[2]) == [(True,)]
        ),
        60,
        "two nodes live and one held",
    )
    samples = scrape(port)
    done = ("fleet_step_outcomes_total", (("result", "done"), ("state", "instance")))
    assert samples[done] == 2
    assert samples[("fleet_step_outcomes_total", (("result", "error"), ("state", "instance")))] == 2
    assert samples[("fleet_step_outcomes_total", (("result", "held"), ("state", "instance")))] == 1
    assert samples[("fleet_step_duration_seconds_count", (("state", "wallet"),))] == 2
    assert samples[("fleet_dispatch_latency_seconds_count", (("state", "key"),))] == 2


def test_the_dispatcher_serves_nodes_per_state(fleet_env: dict[str, str], db_url: str) -> None:
    fleet_env = {**fleet_env, "FLEET_DATABASE_URL": role_url(db_url, "dispatcher")}
    add_nodes(db_url, ["ok-d1", "ok-d2"])
    add_nodes(db_url, ["ok-d3"], state="new")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "dispatcher"],
        env={**fleet_env, "FLEET_METRICS_PORT": str(port)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                samples = scrape(port)
                if samples.get(("fleet_nodes", (("state", "instance"),))) == 2:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "no dispatcher metrics"
            time.sleep(0.2)
        assert samples[("fleet_nodes", (("state", "new"),))] == 1
        assert samples[("fleet_jobs_enqueued_total", ())] == 2
    finally:
        process.terminate()
        process.wait(timeout=10)
