"""The chaos run, small: the whole lifecycle while workers are SIGKILLed, Redis is flushed,
Postgres crashes, live hosts reboot, daemons crash, instances are stopped from outside and
hosts die, with SSH and API failures injected and the health watch running, then a rollout
(paused and resumed) and a second one aborted midway (benchmarks/chaos.py; ./scripts/chaos
runs the full size)."""

from pathlib import Path

import pytest

from benchmarks.chaos import Plan, run
from benchmarks.chaos_health import FaultRates


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_fleet_survives_chaos(tmp_path: Path) -> None:
    plan = Plan(
        nodes=10,
        workers=3,
        failure_rate=0.1,
        kill_every=5.0,
        # At least one of each: two reboots, one crash, one stopped instance, one dead host.
        faults=FaultRates(reboot=0.2, crash=0.1, stop_instance=0.1, dead_host=0.1),
        settle_seconds=240,
        watch_interval=1.0,
    )
    checks = run(plan, tmp_path)
    report = "\n".join(f"[{'PASS' if c.passed else 'FAIL'}] {c.name}: {c.detail}" for c in checks)
    print(report)
    assert len(checks) == 16, report
    assert all(c.passed for c in checks), report
