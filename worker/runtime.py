"""The worker runtime: claim a step's lease, run its handler outside any transaction,
then settle the outcome with a guarded UPDATE. `run_step` is the RQ job function; its
arguments are ids only, never secrets."""

import importlib
import random
import threading
import time
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Literal

import structlog
from sqlalchemy import Connection, Engine, Row, func, update
from sqlalchemy.exc import DBAPIError

from jobs.ec2 import client_token
from jobs.ec2_errors import is_throttled
from jobs.host import HostConnections
from jobs.outcomes import Done, Fail, HoldNode, Outcome, Wait
from jobs.registry import (
    Launch,
    LaunchBatch,
    NodeFacts,
    NodeSnapshot,
    Replacement,
    ReplacementOutcome,
    StepRegistry,
    UnknownStep,
    steps,
)
from jobs.toolbox import Toolbox
from models import secrets
from models.backups import BackupRecord, backup_this_stay
from models.errors import BadInput
from models.identity import fleet_id
from models.launch_pauses import LaunchPause
from models.queries import query
from models.releases import Release, find_release
from models.secrets import Secret, SecretKind
from models.session import statement_engine_for
from models.states import NEXT_STATE, WorkState, is_work_state
from models.tables import NodeRow
from models.wallet_reinits import WalletReinit, open_reinit, record_progress
from worker import metrics
from worker.identity import process_name
from worker.lease import LeaseKeeper
from worker.settings import FleetSettings, settings

log = structlog.get_logger()

RunResult = Literal["skipped", "done", "wait", "error", "held", "lost"]
MAX_ERROR_LENGTH = 500
# Set by a warm shutdown (SIGTERM): the step in hand finishes, its chain does not go on.
CHAIN_STOP = threading.Event()


@dataclass
class RunningStep:
    """The StepContext a handler gets: the node, and what it may change, under its lease."""

    node: NodeSnapshot
    engine: Engine
    worker: str
    keeper: LeaseKeeper
    config: FleetSettings
    tools: Toolbox

    def record(self, facts: NodeFacts) -> bool:
        flags = ("clear_target_version", "wallet_initialised")
        values: dict[str, object] = {
            key: value
            for key, value in asdict(facts).items()
            if value is not None and key not in flags
        }
        if facts.clear_target_version:
            values["target_version"] = None
        if facts.wallet_initialised:
            values["wallet_initialised_at"] = func.coalesce(
                NodeRow.wallet_initialised_at, func.now()
            )
        if not values:
            return True
        statement = (
            update(NodeRow)
            .where(NodeRow.id == self.node.id, NodeRow.lease_owner == self.worker)
            .values(**values)
        )
        with self.engine.connect() as connection:
            return connection.execute(statement).rowcount == 1

    def lease_held(self) -> bool:
        return self.keeper.held()

    def secret(self, kind: SecretKind) -> Secret | None:
        with self.engine.connect() as connection:
            return secrets.load(connection, key_ring(self.config), self.node.id, kind)

    def keep_secret(self, kind: SecretKind, secret: Secret) -> Secret:
        with self.engine.connect() as connection:
            return secrets.store_once(connection, key_ring(self.config), self.node.id, kind, secret)

    def note(self, event: Literal["backup", "note"], detail: str) -> None:
        params = {"node_id": self.node.id, "worker": self.worker, "event": event, "detail": detail}
        with self.engine.connect() as connection:
            connection.execute(query("note_event"), params)

    def backup_this_stay(self) -> BackupRecord | None:
        with self.engine.connect() as connection:
            return backup_this_stay(connection, self.node.id, self.node.state)

    def release(self, version: str) -> Release | None:
        with self.engine.connect() as connection:
            return find_release(connection, version)

    def take_launch_token(self) -> float:
        params = {"rate": self.config.launch_rate, "burst": self.config.launch_burst}
        with self.engine.connect() as connection:
            granted, wait_seconds = connection.execute(query("take_launch_token"), params).one()
        return 0.0 if granted else max(float(wait_seconds), 0.05)

    def take_launch_instances(self, want: int) -> tuple[int, float]:
        c = self.config
        params = {
            "region": self.node.region,
            "want": want,
            "request_rate": c.ec2_request_rate,
            "request_burst": c.ec2_request_burst,
            "resource_rate": c.ec2_resource_rate,
            "resource_burst": c.ec2_resource_burst,
        }
        with self.engine.connect() as connection:
            connection.execute(query("ensure_launch_buckets"), params)
            answer = connection.execute(query("take_launch_buckets"), params).first()
        assert answer is not None  # both buckets exist: made just before
        granted, wait_seconds = int(answer.granted), float(answer.wait_seconds)
        return granted, 0.0 if granted else max(wait_seconds, 0.05)

    def claim_launch_batch(
        self, batch_token: str, more: int, subnet_slot: int, subnet_id: str | None
    ) -> LaunchBatch | None:
        node = self.node
        params: dict[str, Any] = {
            "node_id": node.id, "worker": self.worker, "region": node.region,
            "instance_type": node.instance_type, "more": more, "batch_token": batch_token,
            "subnet_slot": subnet_slot, "subnet_id": subnet_id,
            "call_seconds": self.config.launch_call_seconds(),
        }  # fmt: skip
        with self.engine.connect() as autocommit:
            connection = autocommit.execution_options(isolation_level="READ COMMITTED")
            with connection.begin():
                members = [row.id for row in connection.execute(query("batch_members"), params)]
                node_ids = [node.id, *members]
                fleet = self.tools.fleet_id
                tokens = [client_token(fleet, i, 0, subnet_slot) for i in node_ids]
                params |= {"node_ids": node_ids, "tokens": tokens}
                recorded = connection.execute(query("record_launch_batch"), params).first()
                if recorded is not None:
                    connection.execute(query("intend_batch_launches"), params)
                    hold = {**params, "node_ids": members}
                    connection.execute(query("hold_back_members"), hold)
            # What the claim did not use goes back into the bucket (all of it when the row
            # moved on: nothing is launched).
            unused = more - len(members) if recorded is not None else more + 1
            if unused > 0:
                refund = {"region": node.region, "count": unused,
                          "resource_burst": self.config.ec2_resource_burst}  # fmt: skip
                autocommit.execute(query("refund_launch_instances"), refund)
        return None if recorded is None else self.launch_batch(batch_token)

    def launch_batch(self, batch_token: str) -> LaunchBatch | None:
        with self.engine.connect() as connection:
            row = connection.execute(query("launch_batch"), {"batch_token": batch_token}).first()
        if row is None:
            return None
        return LaunchBatch(row.client_token, row.region, row.instance_type, row.subnet_slot,
                           row.subnet_id, tuple(row.node_ids), tuple(row.node_names))  # fmt: skip

    def batch_answered(self, batch: LaunchBatch, instance_ids: list[str]) -> None:
        params = {"batch_token": batch.client_token, "fulfilled": len(instance_ids),
                  "instance_ids": instance_ids}  # fmt: skip
        others = [i for i in batch.node_ids if i != self.node.id]
        with self.engine.connect() as connection:
            connection.execute(query("batch_answered"), params)
            connection.execute(query("wake_batch_members"), {"node_ids": others})

    def batch_refused(self, batch: LaunchBatch, code: str, counted: bool) -> None:
        params = {"batch_token": batch.client_token, "code": code, "counted": counted}
        others = [i for i in batch.node_ids if i != self.node.id]
        with self.engine.connect() as connection:
            connection.execute(query("batch_refused"), params)
            connection.execute(query("wake_batch_members"), {"node_ids": others})

    def intend_launch(
        self, client_token: str, subnet_slot: int = 0, subnet_id: str | None = None
    ) -> bool:
        params = {
            "node_id": self.node.id,
            "worker": self.worker,
            "client_token": client_token,
            "subnet_slot": subnet_slot,
            "subnet_id": subnet_id,
            "call_seconds": self.config.launch_call_seconds(),
        }
        with self.engine.connect() as connection:
            return connection.execute(query("intend_launch"), params).first() is not None

    def launch_refused(self, client_token: str, code: str, counted: bool) -> int:
        params = {"client_token": client_token, "code": code, "counted": counted}
        with self.engine.connect() as connection:
            refusals = connection.execute(query("launch_refused"), params).scalar()
        return int(refusals or 0)

    def launch_pause(self) -> LaunchPause | None:
        params = {"region": self.node.region}
        with self.engine.connect() as connection:
            row = connection.execute(query("launch_pause"), params).mappings().first()
        return None if row is None else LaunchPause(**row)

    def pause_launches(self, kind: str, code: str, message: str) -> LaunchPause:
        params = {
            "region": self.node.region,
            "kind": kind,
            "code": code,
            "message": message,
            "base_seconds": self.config.ec2_pause_seconds * 2,
            "max_seconds": self.config.ec2_pause_max_seconds,
        }
        with self.engine.connect() as connection:
            row = connection.execute(query("pause_launches"), params).mappings().one()
        return LaunchPause(**row)

    def resume_launches(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(query("resume_launches"), {"region": self.node.region})

    def launched(self, client_token: str, instance_id: str) -> None:
        params = {"client_token": client_token, "instance_id": instance_id}
        with self.engine.connect() as connection:
            connection.execute(query("launched"), params)

    def launches(self) -> list[Launch]:
        with self.engine.connect() as connection:
            rows = connection.execute(query("node_launches"), {"node_id": self.node.id})
            return [Launch(**row) for row in rows.mappings()]

    def current_state(self) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(query("node_state"), {"node_id": self.node.id}).scalar()

    def wallet_reinit(self, version: str) -> WalletReinit | None:
        with self.engine.connect() as connection:
            return open_reinit(connection, self.node.id, version)

    def wallet_reinit_progress(
        self, request_id: int, moved_aside_to: str | None = None, done: bool = False
    ) -> bool:
        with self.engine.connect() as connection:
            return record_progress(connection, request_id, self.worker, moved_aside_to, done)

    def replacement(self) -> Replacement | None:
        with self.engine.connect() as connection:
            row = connection.execute(query("replacement"), {"node_id": self.node.id}).first()
        if row is None:
            return None
        return Replacement(row.generation, row.backup, row.accept_channel_loss)

    def replacement_done(self, generation: int, outcome: ReplacementOutcome) -> bool:
        params = {"node_id": self.node.id, "generation": generation, "outcome": outcome,
                  "worker": self.worker}  # fmt: skip
        with self.engine.connect() as connection:
            return connection.execute(query("replacement_done"), params).first() is not None


def key_ring(config: FleetSettings) -> secrets.KeyRing:
    return _key_ring(config.secret_keys, config.secret_key_id)


@cache
def _key_ring(spec: str, active: str) -> secrets.KeyRing:
    if not spec:
        raise HoldNode("no secret keys configured: set FLEET_SECRET_KEYS and FLEET_SECRET_KEY_ID")
    try:
        return secrets.KeyRing.parse(spec, active)
    except BadInput as exc:
        raise HoldNode(f"secret keys misconfigured: {exc}") from None


class Runtime:
    def __init__(self, config: FleetSettings, registry: StepRegistry) -> None:
        self.config = config
        self.registry = registry
        self.worker = process_name("worker")
        self.engine = statement_engine_for(config.database_url, self.worker)
        self._tools: Toolbox | None = None

    @property
    def tools(self) -> Toolbox:
        """Built on first use: the fleet id comes from the database."""
        if self._tools is None:
            with self.engine.connect() as connection:
                self._tools = Toolbox.build(self.config, fleet_id(connection))
        return self._tools

    def run(self, node_id: int, state: str, step_run: int) -> RunResult:
        """Run the claimed step and then, while each step is done and the next state has
        work, the node's next steps under the same lease (the step chain): instance ->
        key -> start -> wallet costs one job, not four trips through the dispatcher."""
        if not is_work_state(state):
            log.error("job names no work state", node_id=node_id, state=state)
            return "skipped"
        try:
            step = self._claim(node_id, state, step_run)
        except DBAPIError as exc:
            return self._claim_refused(node_id, state, step_run, exc)
        if step is None:
            log.info(
                "step not claimed: already taken, done or no longer due",
                node_id=node_id,
                state=state,
                step_run=step_run,
                worker=self.worker,
            )
            return "skipped"
        result: RunResult = "skipped"
        # The chain's steps share one SSH connection per host, closed with the job.
        with (
            LeaseKeeper(self.engine, step.id, self.worker, self.config.lease_seconds) as keeper,
            HostConnections(self.config) as hosts,
        ):
            while step is not None:
                result, step = self._run_one(step, keeper, hosts)
        return result

    def _run_one(
        self, node: NodeSnapshot, keeper: LeaseKeeper, hosts: HostConnections
    ) -> tuple[RunResult, NodeSnapshot | None]:
        """One step: the handler, then its outcome settled. Returns the next step when
        the settle chained to it."""
        bound = log.bind(node_id=node.id, state=node.state, step_run=node.step_run,
                         worker=self.worker, attempt=node.attempts)  # fmt: skip
        bound.debug("step started")
        started = time.perf_counter()
        try:
            tools = self.tools.for_job(hosts)
            context = RunningStep(node, self.engine, self.worker, keeper, self.config, tools)
            outcome = self._call_handler(context)
        except BaseException:
            # Cold shutdown (SIGTERM twice, SIGINT): hand the step back right away
            # instead of leaving it to wait out its lease.
            self._give_back(node)
            bound.warning("step given back at shutdown")
            raise
        metrics.STEP_SECONDS.labels(node.state).observe(time.perf_counter() - started)
        if isinstance(outcome, Done):
            result, chained = self._finish(node)
        else:
            result, chained = self._settle(node, outcome), None
        metrics.OUTCOMES.labels(node.state, result).inc()
        bound.info("step settled", result=result, outcome=type(outcome).__name__,
                   chained=chained is not None)  # fmt: skip
        return result, chained

    def _claim(self, node_id: int, state: WorkState, step_run: int) -> NodeSnapshot | None:
        params: dict[str, object] = {
            "node_id": node_id,
            "state": state,
            "step_run": step_run,
            "worker": self.worker,
            "lease_seconds": self.config.lease_seconds,
        }
        with self.engine.connect() as connection:
            row = connection.execute(query("claim_step"), params).mappings().first()
        if row is None:
            return None
        fields = dict(row)
        metrics.DISPATCH_LATENCY.labels(state).observe(max(0.0, fields.pop("waited_seconds")))
        # The claim matched state = :state, so the row is in this work state.
        return _snapshot(fields, state)

    def _claim_refused(
        self, node_id: int, state: WorkState, step_run: int, exc: DBAPIError
    ) -> RunResult:
        """The claim raised. A lost connection is not the node's doing: the job fails
        and the row stays due. Anything else the database said about this row is a
        failed attempt, held at the limit like any step's failure."""
        if exc.connection_invalidated:
            raise exc
        error = f"claim refused by the database: {one_line_error(exc.orig or exc)}"
        params: dict[str, object] = {
            "node_id": node_id,
            "state": state,
            "step_run": step_run,
            "error": error[:MAX_ERROR_LENGTH],
            "max_attempts": self.config.max_attempts,
            "delay_seconds": self.backoff_seconds(0),
        }
        with self.engine.connect() as connection:
            counted = connection.execute(query("claim_refused"), params).first()
        log.warning("claim refused", node_id=node_id, state=state, step_run=step_run,
                    worker=self.worker, error=error)  # fmt: skip
        if counted is None:
            return "skipped"
        return "held" if counted.held else "error"

    def _call_handler(self, context: RunningStep) -> Outcome:
        try:
            handler = self.registry.handler_for(context.node.state)
        except UnknownStep as exc:
            return Fail(str(exc), hold=True)
        try:
            return handler(context)
        except (HoldNode, secrets.SecretError) as exc:
            return Fail(str(exc), hold=True)
        except Exception as exc:  # noqa: BLE001  # any failure of a step is an outcome
            if is_throttled(exc):
                return self._throttled(exc)
            return Fail(one_line_error(exc))

    def _throttled(self, exc: Exception) -> Wait:
        """EC2 throttled the step's call past botocore's own retries: run it again once
        the token bucket had time to refill. Not an attempt, never held: the node is
        fine, the account's request rate is not (jittered, so waiting steps spread out)."""
        seconds = self.config.backoff_base_seconds * random.uniform(1.0, 2.0)
        return Wait(seconds, f"EC2 throttled: {one_line_error(exc)}", limited=False)

    def _finish(self, node: NodeSnapshot) -> tuple[RunResult, NodeSnapshot | None]:
        """Advance the node; chain to its next step unless the worker is stopping."""
        next_state = NEXT_STATE[node.state]
        params: dict[str, object] = {
            "node_id": node.id,
            "state": node.state,
            "worker": self.worker,
            "next_state": next_state,
            "chain": is_work_state(next_state) and not CHAIN_STOP.is_set(),
            "lease_seconds": self.config.lease_seconds,
        }
        with self.engine.connect() as connection:
            row = connection.execute(query("finish_step"), params).mappings().first()
        if row is None:
            return "lost", None
        fields = dict(row)
        if not fields.pop("chained") or not is_work_state(next_state):
            return "done", None
        # The chained step starts as soon as its row changed: no dispatch in between.
        metrics.DISPATCH_LATENCY.labels(next_state).observe(0.0)
        return "done", _snapshot(fields, next_state)

    def _settle(self, node: NodeSnapshot, outcome: Wait | Fail) -> RunResult:
        guard: dict[str, object] = {"node_id": node.id, "state": node.state, "worker": self.worker}
        with self.engine.connect() as connection:
            match outcome:
                case Wait(seconds=seconds, reason=reason, limited=limited):
                    # A launch pause (EC2's capacity, the account's quota) can last hours:
                    # never held for it. The limit is for what should have happened by now.
                    limit = self.config.wait_limit_seconds if limited else 0.0
                    error = f"gave up after waiting {limit:g} s in {node.state}: {reason}"
                    waited = self._postpone(connection, node, seconds, limit or None, error)
                    if waited is None:
                        return "lost"
                    return "held" if waited.gave_up else "wait"
                case Fail(error=error, hold=hold):
                    params = {
                        **guard,
                        "error": error[:MAX_ERROR_LENGTH],
                        "hold": hold,
                        "max_attempts": self.config.max_attempts,
                        "delay_seconds": self.backoff_seconds(node.attempts),
                    }
                    failed = connection.execute(query("fail_step"), params).first()
                    if failed is None:
                        return "lost"
                    return "held" if failed.held else "error"

    def _give_back(self, node: NodeSnapshot) -> None:
        """Release the row at once (cold shutdown). Never a hold: not the node's fault."""
        with self.engine.connect() as connection:
            self._postpone(connection, node, 0.0, None, "")

    def _postpone(
        self,
        connection: Connection,
        node: NodeSnapshot,
        delay_seconds: float,
        wait_limit_seconds: float | None,
        give_up_error: str,
    ) -> Row[Any] | None:
        params = {
            "node_id": node.id,
            "state": node.state,
            "worker": self.worker,
            "delay_seconds": delay_seconds,
            "wait_limit_seconds": wait_limit_seconds,
            "give_up_error": give_up_error[:MAX_ERROR_LENGTH],
        }
        return connection.execute(query("postpone_step"), params).first()

    def backoff_seconds(self, attempts: int) -> float:
        """Exponential, capped, with jitter in the upper half so that the delay after
        attempt n+1 is never shorter than after attempt n."""
        exponential = self.config.backoff_base_seconds * 2.0**attempts
        ceiling = min(self.config.backoff_max_seconds, exponential)
        return ceiling * random.uniform(0.5, 1.0)


def _snapshot(fields: dict[str, Any], state: WorkState) -> NodeSnapshot:
    """The node as a claim (or a chained finish) returned it, typed by the state it
    is known to be in."""
    return NodeSnapshot(**{**fields, "state": state})


def one_line_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class _ThisProcess:
    runtime: Runtime | None = None


def start_runtime(config: FleetSettings) -> Runtime:
    """This process's runtime, with the step modules it is configured with loaded."""
    for module in config.step_module_names():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            # A typo in FLEET_STEP_MODULES, or a module missing from this image.
            raise BadInput(f"FLEET_STEP_MODULES: cannot import {module}: {exc}") from None
    _ThisProcess.runtime = Runtime(config, steps)
    return _ThisProcess.runtime


def run_step(node_id: int, state: str, step_run: int) -> RunResult:
    """The RQ job: one run of one node's step."""
    runtime = _ThisProcess.runtime or start_runtime(settings())
    return runtime.run(node_id, state, step_run)
