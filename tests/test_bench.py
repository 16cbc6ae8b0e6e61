"""The benchmarks' code paths still run: `benchmarks.run` with tiny sizes against the
tests' Postgres and Redis. Nothing here is timed; the figures at these sizes mean
nothing. The one figure-free fact checked is that the due-work query's plan reads the
partial index (and, for the watch, that every rebooted node was healed)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sim.services import Services
from tests.conftest import REPO

# About 30 s on an idle machine; several times that when other work shares the 2 cores.
BENCH_TIMEOUT_SECONDS = 280
TINY = [
    "--only", "overhead", "latency", "scale",
    "--nodes", "15", "--workers", "1", "--rounds", "1",
    "--latency-rows", "4", "--latency-interval-ms", "20",
    "--scale-rows", "2000", "--query-runs", "5", "--rss-steps", "40",
]  # fmt: skip


def run_bench(
    services: Services, tmp_path: Path, sizes: list[str] = TINY
) -> tuple[dict[str, Any], str, str]:
    out, markdown = tmp_path / "bench.json", tmp_path / "bench.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    env |= {
        "FLEET_TEST_DATABASE_URL": services.postgres_url,
        "FLEET_TEST_REDIS_URL": services.redis_url,
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "benchmarks.run", *sizes, "--out", str(out),
               "--markdown", str(markdown)]  # fmt: skip
    done = subprocess.run(
        command,
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), markdown.read_text(), done.stdout


@pytest.mark.slow
@pytest.mark.timeout(BENCH_TIMEOUT_SECONDS + 20)
def test_bench_runs_and_reports(services: Services, tmp_path: Path) -> None:
    record, markdown, printed = run_bench(services, tmp_path)

    figures = {f["measurement"]: f for f in reversed(record["figures"])}
    assert set(figures) == {"overhead", "latency", "scale"}
    for figure in record["figures"]:
        assert {"name", "value", "reference", "ratio", "target", "verdict"} <= set(figure)
        assert figure["verdict"] in {"met", "NOT MET", "info"}
    assert record["machine"]["load_average_at_start"]

    overhead = record["details"]["overhead"]
    assert {"workers", "dispatcher", "redis", "all"} <= set(overhead["fleet_cpu_ms_per_step"])
    assert {"workers", "redis", "all"} <= set(overhead["rq_cpu_ms_per_job"])
    assert "workers" in overhead["workers_only_cpu_ms_per_step"]

    latency = record["details"]["latency"]
    assert len(latency["sizes"]) == 3 and latency["notified"]["p99_ms"] >= 0

    query = record["details"]["scale"]["due_query"]
    assert "nodes_due" in query["indexes"], query["plan"]

    # The Markdown holds exactly what was printed, beside the command that printed it.
    shown = printed.strip().split("\n\nJSON: ")[0]
    assert "CPU ms per step" in shown
    assert shown in markdown
    assert "./scripts/bench --only overhead latency scale" in markdown


WATCH_TINY = [
    "--only", "watch", "--watch-nodes", "4", "--watch-interval", "1.5", "--watch-windows", "2",
    "--watch-reboots", "2", "--watch-reference-probes", "2",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(BENCH_TIMEOUT_SECONDS + 20)
def test_watch_bench_runs_and_reports(services: Services, tmp_path: Path) -> None:
    record, markdown, printed = run_bench(services, tmp_path, WATCH_TINY)

    names = [f["name"] for f in record["figures"]]
    assert {f["measurement"] for f in record["figures"]} == {"watch"}
    assert any(n.startswith("watch CPU per probe, 4 nodes") for n in names), names
    assert any(n.startswith("watch detection p99, 2 reboots") for n in names), names
    watch = record["details"]["watch"]
    assert watch["steady"]["probes"] > 0 and watch["steady"]["cpu_ms_per_probe"] > 0
    assert watch["reference"]["probes"] == 2 and watch["reference"]["cpu_ms_per_probe"] > 0
    # Every rebooted node was found locked and healed: one latency each.
    assert len(watch["detection"]["latency_seconds"]) == 2
    assert watch["statuses_after_steady"] == {"ok": 4}
    assert "fresh paramiko SSH per API call" in printed
    assert "./scripts/bench --only watch" in markdown


ROLLOUT_TINY = [
    "--only", "rollout", "--rollout-nodes", "4", "--rollout-batch-percent", "50",
    "--rollout-workers", "2", "--rollout-watch-interval", "1", "--boot-seconds", "2",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(BENCH_TIMEOUT_SECONDS + 20)
def test_rollout_bench_runs_and_reports(services: Services, tmp_path: Path) -> None:
    record, markdown, printed = run_bench(services, tmp_path, ROLLOUT_TINY)

    assert {f["measurement"] for f in record["figures"]} == {"rollout"}
    [timed, down] = record["figures"]
    assert timed["name"].startswith("rollout, 4 live nodes, batch 50%"), timed
    assert timed["reference"] > 0 and timed["ratio"] > 0
    rollout = record["details"]["rollout"]
    assert (rollout["batches"], rollout["batch_size"], rollout["max_unavailable"]) == (2, 2, 2)
    assert len(rollout["slowest_step_path_per_batch_seconds"]) == 2
    # Never more nodes down than max-unavailable, from the history (and some were down).
    assert down["value"] == 2 and down["verdict"] == "met", down
    assert "./scripts/bench --only rollout" in markdown and "floor" in printed


MAKESPAN_TINY = [
    "--only", "makespan", "--makespan-nodes", "6", "--makespan-large-nodes", "0",
    "--makespan-workers", "2", "--makespan-batch", "4", "--boot-seconds", "2",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(BENCH_TIMEOUT_SECONDS + 20)
def test_makespan_bench_runs_both_ways_and_reports(services: Services, tmp_path: Path) -> None:
    record, _, printed = run_bench(services, tmp_path, MAKESPAN_TINY)

    assert {f["measurement"] for f in record["figures"]} == {"makespan_6"}
    [batched, before, cpu] = record["figures"]
    assert batched["name"].endswith("batched launches") and batched["reference"] > 2, batched
    assert before["reference"] == batched["value"], "one launch per call beside the batched"
    assert cpu["unit"] == "ms" and cpu["value"] > 0 and cpu["reference"] > 0
    runs = record["details"]["makespan_6"]["runs"]
    # Batches of 4: 6 nodes in two RunInstances (more if EC2 gave fewer); one each before.
    assert 2 <= runs["batched"]["run_instances_calls"].get("launched", 0) < 6, runs["batched"]
    assert runs["one at a time"]["run_instances_calls"].get("launched") == 6
    assert "makespan_6 batched: seconds in state" in printed
