"""The dispatcher: turn every due row into one RQ job.

It LISTENs for the triggers' notifications (fast path) and also sweeps on an interval,
because notifications are lost while it is down. Each sweep first takes back rows whose
lease expired (a dead worker) without waiting for RQ's own abandoned-job cleanup."""

import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, get_args

import psycopg
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, Row
from sqlalchemy.exc import DBAPIError, OperationalError

from jobs.ec2 import Ec2Cloud, UnknownRegion
from models.identity import fleet_id
from models.launch_pauses import pauses_in_force
from models.queries import query
from models.session import engine_for
from worker import metrics
from worker.identity import process_name
from worker.queue import DueStep, StepQueue
from worker.reconcile import FindingKind, FleetMarks, hold_missing, reconcile, terminate_orphans
from worker.settings import FleetSettings

log = structlog.get_logger()

CHANNEL = "fleet_due"
# The longest the loop blocks before it looks at its stop flag again.
MAX_BLOCK_SECONDS = 0.5
RECONNECT_SECONDS = 1.0
# Under load every transition notifies; sweeping after each one kept the dispatcher busy
# re-reading its own backlog. Sweeps come at most this often, so one serves many
# notifications; on an idle fleet the first notification is still served at once.
MIN_SWEEP_GAP_SECONDS = 0.02
# Leases last tens of seconds: looking for expired ones on every sweep bought nothing.
LEASE_CHECK_SECONDS = 1.0
# Rollouts move on a step per node at most every few seconds: a turn a second is plenty.
ROLLOUT_TURN_SECONDS = 1.0
# A login without the rollout grant (42501), or not the dispatcher's role (FL030).
ROLLOUTS_REFUSED = frozenset({"42501", "FL030"})


@dataclass(frozen=True)
class SweepReport:
    due: int
    enqueued: int
    expired_leases: int


class Dispatcher:
    def __init__(self, config: FleetSettings, redis: Redis) -> None:
        self.config = config
        self.name = process_name("dispatcher")
        self.engine: Engine = engine_for(config.database_url, self.name)
        self._gauges_at = 0.0
        self._rollouts_at = -math.inf
        # A rollout is running: wake for its turn even when nothing notifies (a node that
        # reaches stopped or live, the watch's probe) instead of at the next sweep.
        self._rolling = False
        self._pause_regions: set[str] = set()
        self.steps = StepQueue(
            redis,
            config.queue_name,
            config.step_timeout_seconds,
            config.lease_seconds,
            recheck_seconds=config.sweep_interval_seconds,
        )
        self._leases_checked_at = -math.inf

    def sweep(self, *, expire_leases: bool = True) -> SweepReport:
        expired = self._expire_leases() if expire_leases else []
        with self.engine.begin() as connection:
            due = connection.execute(
                query("due_nodes"), {"limit": self.config.dispatch_batch}
            ).all()
        enqueued = sum(self.steps.enqueue(DueStep(r.id, r.state, r.step_run)) for r in due)
        if enqueued:
            log.info("dispatched", enqueued=enqueued, due=len(due))
        metrics.ENQUEUED.inc(enqueued)
        self._update_gauges()
        self._drive_rollouts()
        return SweepReport(due=len(due), enqueued=enqueued, expired_leases=len(expired))

    def _expire_leases(self) -> list[Row[Any]]:
        self._leases_checked_at = time.monotonic()
        with self.engine.begin() as connection:
            expired = connection.execute(
                query("expire_leases"), {"max_attempts": self.config.max_attempts}
            ).all()
        for row in expired:
            log.warning("lease expired", node_id=row.id, state=row.state, held=row.held)
        metrics.EXPIRED_LEASES.inc(len(expired))
        return list(expired)

    def _update_gauges(self) -> None:
        """Nodes per state and launch pauses for Prometheus, at most once a second
        whatever the sweep rate."""
        if time.monotonic() - self._gauges_at < 1.0:
            return
        self._gauges_at = time.monotonic()
        with self.engine.connect() as connection:
            rows = connection.execute(query("fleet_counts")).all()
            pauses = pauses_in_force(connection)
        for row in rows:
            metrics.NODES.labels(row.state).set(row.nodes)
            metrics.HELD.labels(row.state).set(row.held)
            metrics.DUE.labels(row.state).set(row.due)
        paused = {(p.region, p.kind) for p in pauses}
        # A region that was paused keeps its series (at 0) even if no longer configured.
        self._pause_regions |= set(self.config.regions) | {region for region, _ in paused}
        for region in sorted(self._pause_regions):
            for kind in metrics.PAUSE_KINDS:
                metrics.LAUNCHES_PAUSED.labels(region, kind).set(int((region, kind) in paused))

    def _drive_rollouts(self) -> None:
        """One turn of every running rollout (fleet_advance_rollouts), once a second."""
        # A sweep a turn apart may come a hair early: it still turns.
        if time.monotonic() - self._rollouts_at < ROLLOUT_TURN_SECONDS - MIN_SWEEP_GAP_SECONDS:
            return
        self._rollouts_at = time.monotonic()
        try:
            with self.engine.begin() as connection:
                moved = connection.execute(query("advance_rollouts")).scalar_one()
                self._rolling = bool(connection.execute(query("rollouts_running")).scalar_one())
        except DBAPIError as exc:
            # A login that may not drive rollouts (no grant, not the dispatcher's role) must
            # not stop dispatching; anything else (a lost connection) is the loop's to handle.
            if getattr(exc.orig, "sqlstate", None) not in ROLLOUTS_REFUSED:
                raise
            log.error("rollouts did not move", error=str(exc.orig).splitlines()[0])
            return
        if moved:
            log.info("rollouts moved nodes", moved=moved)

    def reconcile(self) -> None:
        """Report what cloud and rows disagree on; hold rows whose instance is gone;
        terminate orphans of destroyed or unknown nodes (never another fleet's)."""
        with self.engine.connect() as connection:
            fleet = fleet_id(connection)
        cloud = Ec2Cloud(self.config, fleet)
        marks = FleetMarks(fleet, self.config.fleet_tag)
        findings = reconcile(self.engine, cloud, marks, list(self.config.regions))
        for finding in findings:
            log.warning("reconcile finding", **asdict(finding))
        metrics.RECONCILE_FINDINGS.set(len(findings))
        for kind in get_args(FindingKind):
            metrics.RECONCILE_KINDS.labels(kind).set(sum(f.kind == kind for f in findings))
        held = hold_missing(self.engine, findings)
        if held:
            log.warning("held nodes whose instance is gone", held=held)
        if self.config.reconcile_fix_orphans:
            for instance_id in terminate_orphans(self.engine, cloud, findings):
                log.warning("reconcile terminated an orphan", instance_id=instance_id)
                metrics.RECONCILE_TERMINATED.inc()
        log.info("reconciled", findings=len(findings), held=held)

    def _reconcile_safely(self) -> None:
        """A reconcile that EC2 refuses or cannot answer is reported and tried again at
        the next interval; dispatching goes on."""
        try:
            self.reconcile()
        except (BotoCoreError, ClientError, UnknownRegion) as exc:
            metrics.RECONCILE_FAILED.inc()
            log.error("reconcile failed", error=str(exc).splitlines()[0])

    def seconds_until_next_due(self) -> float:
        with self.engine.begin() as connection:
            seconds = connection.execute(query("next_wakeup")).scalar_one()
        return self.config.sweep_interval_seconds if seconds is None else max(0.0, seconds)

    def run(self, stop: threading.Event) -> None:
        """Dispatch until stop is set. A lost database or Redis is waited out, not fatal:
        the next sweep after reconnecting catches up with everything missed."""
        while not stop.is_set():
            try:
                self._listen_and_dispatch(stop)
            except (OperationalError, psycopg.OperationalError, RedisError) as exc:
                log.error("dispatcher lost a service; retrying", error=str(exc).splitlines()[0])
                stop.wait(RECONNECT_SECONDS)

    def _listen_and_dispatch(self, stop: threading.Event) -> None:
        with psycopg.connect(
            _libpq_url(self.config.database_url), autocommit=True, application_name=self.name
        ) as listener:
            if self.config.listen:
                listener.execute(f"LISTEN {CHANNEL}")
            log.info("dispatcher running", name=self.name, listen=self.config.listen)
            self._loop(listener, stop)

    def _loop(self, listener: psycopg.Connection, stop: threading.Event) -> None:
        next_sweep = 0.0
        last_sweep = -math.inf
        next_reconcile = time.monotonic() + self.config.reconcile_interval_seconds
        notified = False
        while not stop.is_set():
            if self.config.reconcile_interval_seconds and time.monotonic() >= next_reconcile:
                self._reconcile_safely()
                next_reconcile = time.monotonic() + self.config.reconcile_interval_seconds
            if notified or time.monotonic() >= next_sweep:
                stop.wait(last_sweep + MIN_SWEEP_GAP_SECONDS - time.monotonic())
                leases_due = time.monotonic() - self._leases_checked_at >= LEASE_CHECK_SECONDS
                report = self.sweep(expire_leases=leases_due)
                last_sweep = time.monotonic()
                # A full batch that queued something new: more rows are due right now. A
                # full batch of runs queued before waits for the workers to drain them.
                more = report.due >= self.config.dispatch_batch and report.enqueued > 0
                next_sweep = time.monotonic() + (0.0 if more else self._pause())
            block = min(MAX_BLOCK_SECONDS, max(0.0, next_sweep - time.monotonic()))
            notified = _wait_for_notice(listener, block)

    def _pause(self) -> float:
        pause = min(self.config.sweep_interval_seconds, self.seconds_until_next_due())
        return min(pause, ROLLOUT_TURN_SECONDS) if self._rolling else pause


def _wait_for_notice(listener: psycopg.Connection, timeout: float) -> bool:
    """Block until a notification or the timeout; then drain whatever else is pending,
    since one sweep serves them all."""
    got = any(True for _ in listener.notifies(timeout=timeout, stop_after=1))
    if got:
        for _ in listener.notifies(timeout=0.0):
            pass
    return got


def _libpq_url(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)
