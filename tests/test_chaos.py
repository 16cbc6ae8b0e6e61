"""The chaos run, small: the whole lifecycle while workers are SIGKILLed, Redis is flushed,
Postgres crashes and hosts die, with SSH and API failures injected (benchmarks/chaos.py;
./scripts/chaos runs the full size)."""

from pathlib import Path

import pytest

from benchmarks.chaos import Plan, run


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_fleet_survives_chaos(tmp_path: Path) -> None:
    plan = Plan(
        nodes=8,
        workers=3,
        failure_rate=0.1,
        kill_every=5.0,
        dead_hosts=1,
        settle_seconds=240,
    )
    checks = run(plan, tmp_path)
    report = "\n".join(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in checks)
    print(report)
    assert len(checks) == 8, report
    assert all(c.passed for c in checks), report
