"""CPU seconds spent by each part of a run (fleet processes, Postgres, Redis, the harness),
so that a rate can be explained by where the machine's cores went, not only reported.

Read from /proc (user + system time) and Redis' INFO; all on this machine, since the
benchmarks only talk over loopback. Postgres is counted as a whole server (the postmaster,
its live children and the children it has reaped) when the run started it itself; a
given server may serve others too, so it is not counted then."""

import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from sim.services import Services

TICKS = os.sysconf("SC_CLK_TCK")
CpuSnapshot = dict[str, float]


def process_seconds(pid: int, *, with_children: bool = False) -> float:
    """User + system CPU seconds of a live process (0.0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # The command name (field 2) may hold spaces; the fields after it are plain numbers.
    fields = stat.rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    ticks = utime + stime + (cutime + cstime if with_children else 0)
    return ticks / TICKS


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


@dataclass
class CpuMeter:
    """Snapshots of CPU seconds per part; the difference of two is what a window cost."""

    services: Services
    # A process that has exited keeps the last reading it gave (a burst worker may end
    # just before the last snapshot), so that a difference never goes negative.
    _last: dict[int, float] = field(default_factory=dict)

    def snapshot(self, groups: Mapping[str, Sequence[int]]) -> CpuSnapshot:
        found = {role: sum(self._seconds(pid) for pid in pids) for role, pids in groups.items()}
        found["redis"] = self._redis_seconds()
        found["harness"] = _own_seconds()
        postgres = self._postgres_seconds()
        if postgres is not None:
            found["postgres"] = postgres
        return found

    def _seconds(self, pid: int) -> float:
        self._last[pid] = max(self._last.get(pid, 0.0), process_seconds(pid))
        return self._last[pid]

    def _redis_seconds(self) -> float:
        info = redis.Redis.from_url(self.services.redis_url).info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def _postgres_seconds(self) -> float | None:
        local = self.services.local_postgres
        if local is None:
            return None
        postmaster = int((local.data / "postmaster.pid").read_text().split()[0])
        own = process_seconds(postmaster, with_children=True)
        return own + sum(process_seconds(pid) for pid in children(postmaster))


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_unit_ms(before: CpuSnapshot, after: CpuSnapshot, units: float) -> dict[str, float]:
    """Milliseconds of CPU per unit of work (a step, a job), per part and in all."""
    spent = {part: after[part] - before[part] for part in after if part in before}
    spent["all"] = sum(spent.values())
    return {part: round(seconds * 1000 / units, 3) for part, seconds in spent.items()}
