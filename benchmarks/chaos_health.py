"""The chaos run's live-node faults, for the health watch: while the lifecycle runs, the
harness reboots some live hosts, crashes some daemons (they stay down), stops some
instances from outside and kills some hosts for good, each on a node that is live and
seen ok at that moment. Nobody acts on them but the watch: every node not on a dead host
must come back live by itself, and every dead one be held with its cause. For each fault
the harness times detection (fault -> the watch's heal row, or for a dead host the
status it was seen in) and heal (fault -> live and seen ok again)."""

import random
import statistics
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import psycopg

from sim.cloud import SimCloud

Kind = Literal["reboot", "crash", "stop_instance", "dead_host"]
# The watch heals these by itself; a dead host is held for the operator's replace.
HEALED: frozenset[Kind] = frozenset({"reboot", "crash", "stop_instance"})
# A dead host's node is held with one of these (the watch's "health watch: instance gone"
# or "health watch: unreachable since", or a step's NodeUnreachable).
DEAD_CAUSES = ("instance gone", "unreachable")
INJECT_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class FaultRates:
    """Shares of the nodes each fault strikes (each node at most one fault); any share
    above 0 strikes at least one node, so a small run has some of each."""

    reboot: float = 0.10
    crash: float = 0.05
    stop_instance: float = 0.02
    dead_host: float = 0.02

    def counts(self, nodes: int) -> dict[Kind, int]:
        shares: dict[Kind, float] = {"reboot": self.reboot, "crash": self.crash,
                                     "stop_instance": self.stop_instance,
                                     "dead_host": self.dead_host}  # fmt: skip
        return {kind: max(1, round(share * nodes)) if share > 0 else 0
                for kind, share in shares.items()}  # fmt: skip


@dataclass
class Fault:
    node: str
    kind: Kind
    phase: str  # the phase of the lifecycle during which it is made ("live" or "start")
    at: datetime | None = None  # when it was made
    detected: float | None = None  # seconds from `at`
    healed: float | None = None  # seconds from `at`
    outcome: str = ""  # "healed", "held: <error>" (once resolved)


def stops_instances(cloud: SimCloud) -> bool:
    """Whether this simulator can stop an instance from outside (another branch adds it)."""
    return callable(getattr(cloud, "stop_from_outside", None))


def plan_faults(
    names: list[str], rates: FaultRates, rng: random.Random, cloud: SimCloud
) -> list[Fault]:
    """Which node gets which fault, and when: healed faults alternate between the first
    climb to live and the start after the update; hosts die during the first (so they
    are held before anyone asks them to stop)."""
    counts = rates.counts(len(names))
    if not stops_instances(cloud):
        counts["stop_instance"] = 0
    if sum(counts.values()) > len(names):
        raise SystemExit(f"chaos: {sum(counts.values())} faults for {len(names)} nodes")
    chosen = iter(rng.sample(names, sum(counts.values())))
    faults: list[Fault] = []
    for kind, count in counts.items():
        for _ in range(count):
            phase = "live" if kind == "dead_host" or len(faults) % 2 == 0 else "start"
            faults.append(Fault(next(chosen), kind, phase))
    return faults


@dataclass
class LiveFaults:
    """The planned faults, and the phase whose faults may be made now."""

    cloud: SimCloud
    db_url: str
    faults: list[Fault]
    phase: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def dead(self) -> list[str]:
        return [f.node for f in self.faults if f.kind == "dead_host"]

    def open(self, phase: str) -> None:
        with self.lock:
            self.phase = phase

    def inject_due(self) -> None:
        """Make each fault of the open phase on its node once it is live and seen ok."""
        with self.lock:
            waiting = {f.node: f for f in self.faults if f.phase == self.phase and f.at is None}
        if not waiting:
            return
        with psycopg.connect(self.db_url, autocommit=True) as db:
            ready = db.execute(
                "SELECT n.name, n.instance_id FROM nodes n JOIN node_health h ON h.node_id = n.id"
                " WHERE n.name = ANY(%s) AND n.state = 'live' AND NOT n.held"
                " AND n.lease_owner IS NULL AND h.status = 'ok'",
                (list(waiting),),
            ).fetchall()
        for name, instance_id in ready:
            if instance_id in self.cloud.hosts:
                try:
                    self._make(waiting[name], instance_id)
                except Exception as exc:  # noqa: BLE001  # the check reports it, by name
                    waiting[name].outcome = f"not made: {type(exc).__name__}: {exc}"

    def _make(self, fault: Fault, instance_id: str) -> None:
        fault.at = datetime.now(UTC)
        host = self.cloud.host_of(instance_id)
        if fault.kind == "reboot":
            self.cloud.run(host.reboot())
        elif fault.kind == "crash":
            self.cloud.run(host.crash())
        elif fault.kind == "dead_host":
            self.cloud.run(host.power_off())
        else:
            getattr(self.cloud, "stop_from_outside")(instance_id)  # noqa: B009  # see stops_instances

    def settled(self, db: psycopg.Connection, phase: str) -> bool:
        """Every fault of the phase was made and is resolved: healed (live, a heal row
        after it, seen ok since) or held. Times each as it resolves."""
        mine = [f for f in self.faults if f.phase == phase]
        for fault in mine:
            if fault.at is not None and not fault.outcome:
                self._resolve(db, fault)
        return all(f.outcome for f in mine)

    def _resolve(self, db: psycopg.Connection, fault: Fault) -> None:
        assert fault.at is not None
        row = db.execute(
            "SELECT n.state, n.held, n.last_error, h.status, h.since,"
            " (SELECT min(at) FROM node_history WHERE node_id = n.id AND event = 'heal'"
            "  AND at >= %s) FROM nodes n LEFT JOIN node_health h ON h.node_id = n.id"
            " WHERE n.name = %s",
            (fault.at, fault.node),
        ).fetchone()
        assert row is not None
        state, held, error, status, since, healed_at = row
        if healed_at is not None:
            fault.detected = (healed_at - fault.at).total_seconds()
        elif status not in (None, "ok") and since is not None and since >= fault.at:
            fault.detected = (since - fault.at).total_seconds()
        if held:
            fault.outcome = f"held: {error}"
        elif healed_at is not None and state == "live" and status == "ok" and since >= healed_at:
            fault.healed = (since - fault.at).total_seconds()
            fault.outcome = "healed"


@contextmanager
def injecting(faults: LiveFaults) -> Iterator[None]:
    """Make the open phase's faults as their nodes become live, until the run ends."""
    stop = threading.Event()

    def inject() -> None:
        while not stop.wait(INJECT_POLL_SECONDS):
            try:
                faults.inject_due()
            except psycopg.OperationalError:
                continue  # Postgres is being restarted

    thread = threading.Thread(target=inject, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    if len(values) == 1:
        return f"p50 {values[0]:.1f}s p99 {values[0]:.1f}s"
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {statistics.median(values):.1f}s p99 {cuts[98]:.1f}s"


def tally(faults: list[Fault]) -> str:
    kinds: list[Kind] = ["reboot", "crash", "stop_instance", "dead_host"]
    return ", ".join(f"{sum(f.kind == k for f in faults)} {k}" for k in kinds)
