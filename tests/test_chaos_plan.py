"""The chaos run's plan of live-node faults (benchmarks/chaos_health.py), without a cloud:
the shares of the issue, each node struck at most once, some of each in a small run,
dead hosts while nodes first climb to live, no stopped instance on a simulator that
cannot stop one."""

import random
from typing import Any, cast

from benchmarks.chaos_health import FaultRates, percentiles, plan_faults
from sim.cloud import SimCloud


class CanStop:
    def stop_from_outside(self, instance_id: str) -> None: ...


def plan(nodes: int, rates: FaultRates, cloud: Any) -> list[Any]:
    names = [f"n{i}" for i in range(nodes)]
    return plan_faults(names, rates, random.Random(1), cast(SimCloud, cloud))


def test_the_full_run_strikes_the_shares_of_the_issue_each_node_once() -> None:
    faults = plan(200, FaultRates(), CanStop())
    kinds = [f.kind for f in faults]
    assert (kinds.count("reboot"), kinds.count("crash")) == (20, 10)
    assert (kinds.count("stop_instance"), kinds.count("dead_host")) == (4, 4)
    assert len({f.node for f in faults}) == len(faults)
    assert {f.phase for f in faults if f.kind == "dead_host"} == {"live"}
    assert {f.phase for f in faults} == {"live", "start"}


def test_a_small_run_has_some_of_each_and_none_the_simulator_cannot_make() -> None:
    assert {f.kind for f in plan(8, FaultRates(), CanStop())} == {
        "reboot", "crash", "stop_instance", "dead_host"
    }  # fmt: skip
    assert "stop_instance" not in {f.kind for f in plan(8, FaultRates(), object())}


def test_percentiles() -> None:
    assert percentiles([]) == "none"
    assert percentiles([2.0]) == "p50 2.0s p99 2.0s"
    assert percentiles([float(n) for n in range(1, 101)]) == "p50 50.5s p99 99.0s"
