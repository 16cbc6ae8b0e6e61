"""The rollout routes (admins only): start, list, show and steer rollouts through the same
SQL functions as `fleet rollout` (models/rollouts.py); the dispatcher drives them."""

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Final, Literal, TypeVar

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from api.auth import Principal
from api.deps import App, Caller, acting, reading
from api.errors import ApiProblem, Forbidden, documented
from api.schemas import MAX_PAGE, Region, Version
from models import formats, rollouts
from models.rollouts import Action, RolloutPlan, RolloutProgress, RolloutRefused, Selection

# What 404 and 409 mean here (documented() says it for nodes).
MEANINGS: Final = {
    404: "No such rollout",
    409: "The rollout is finished already, or no node is left to roll out",
}


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    found = documented(*statuses)
    for status, meaning in MEANINGS.items():
        if status in found:
            found[status] = found[status] | {"description": meaning}
    return found


router = APIRouter(prefix="/rollouts", tags=["rollouts"], responses=answers(401, 403, 429, 503))

MAX_ROLLOUT_ID: Final = 2**63 - 1
RolloutId = Annotated[int, Path(ge=1, le=MAX_ROLLOUT_ID, description="The rollout's id")]
Status = Literal["running", "paused", "aborted", "done"]
Answer = TypeVar("Answer")
Reason = Annotated[str, Field(min_length=1, max_length=1000, description="Why, for the record")]

# The rollout functions' SQLSTATEs (migrations/sql/functions.sql) as HTTP answers.
REFUSALS: Final[dict[str, tuple[int, str, str]]] = {
    "FL030": (403, "forbidden", "Forbidden"),
    "FL031": (422, "unknown-release", "Unknown release"),
    "FL032": (409, "no-nodes", "No node to roll out"),
    "FL033": (404, "rollout-not-found", "Rollout not found"),
    "FL034": (409, "rollout-finished", "Rollout finished"),
    "FL035": (422, "invalid-request", "Invalid request"),
}


class RolloutWhere(BaseModel):
    """Which nodes (unset: any). Only live or stopped, unheld nodes on another release and
    in no other rollout are ever chosen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: Literal["live", "stopped"] | None = None
    region: Region | None = None
    owner: str | None = Field(default=None, pattern=formats.OWNER, description="Their owner")


class RolloutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    to: Version = Field(description="The release to roll out (one the fleet knows)")
    where: RolloutWhere = Field(default_factory=RolloutWhere)
    batch: str = Field(
        default="1",
        pattern=rollouts.BATCH.pattern,
        description="Nodes per batch: a count (10) or a percentage of the chosen nodes (10%)",
        examples=["10", "10%"],
    )
    max_unavailable: int | None = Field(
        default=None, ge=1, le=1_000_000, description="At most this many nodes down at once"
        " (default: the batch)"
    )  # fmt: skip
    max_failures: int = Field(
        default=0, ge=0, le=1_000_000, description="Failures allowed before it pauses"
    )


class RolloutSteer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason | None = None


class Phases(BaseModel):
    """How many of its nodes are in each phase."""

    pending: int
    updating: int
    starting: int
    done: int
    failed: int
    skipped: int


class FailureOut(BaseModel):
    node_id: int
    name: str = Field(description="The node's fleet-wide name")
    batch: int | None
    error: str = Field(description="Why it failed: its hold's cause, or where it was moved")
    at: datetime


class RolloutOut(BaseModel):
    id: int
    to_version: str
    status: Status
    paused_reason: str | None = Field(description="Why it paused (its failures) or was aborted")
    where: RolloutWhere
    batch_size: int
    max_unavailable: int
    max_failures: int
    batches_started: int
    batches: int
    nodes: int
    phases: Phases
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, shown: RolloutProgress) -> "RolloutOut":
        return cls(
            id=shown.id,
            to_version=shown.to_version,
            status=_status(shown.status),
            paused_reason=shown.paused_reason,
            where=RolloutWhere(
                state=_where_state(shown.where_state),
                region=shown.where_region,
                owner=shown.where_owner,
            ),
            batch_size=shown.batch_size,
            max_unavailable=shown.max_unavailable,
            max_failures=shown.max_failures,
            batches_started=shown.batches_started,
            batches=shown.batches,
            nodes=shown.nodes,
            phases=Phases(
                pending=shown.pending,
                updating=shown.updating,
                starting=shown.starting,
                done=shown.done,
                failed=shown.failed,
                skipped=shown.skipped,
            ),
            created_at=shown.created_at,
            updated_at=shown.updated_at,
        )


class RolloutDetail(RolloutOut):
    failures: list[FailureOut] = Field(
        description="Its failed nodes, the first first (100 at most)"
    )


class RolloutList(BaseModel):
    items: list[RolloutOut] = Field(description="The latest first")


@router.post("", status_code=201, responses=answers(400, 409, 413, 422), summary="Start")
def start_rollout(body: RolloutCreate, caller: Caller, app: App) -> RolloutDetail:
    """Choose the nodes now and roll the release across them batch by batch: each batch
    updated, started again if it was live, and healthy before the next begins."""
    _admin(caller)
    count, percent = rollouts.parse_batch(body.batch)
    where = Selection(body.where.state, body.where.region, body.where.owner)
    plan = RolloutPlan(body.to, where, count, percent, body.max_unavailable, body.max_failures)
    with acting(app, caller) as session:
        made = _refusing(lambda: rollouts.start_rollout(session, plan))
        return _detail(session, made)


@router.get("", responses=answers(422), summary="List rollouts")
def list_rollouts(
    caller: Caller,
    app: App,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="How many")] = 20,
) -> RolloutList:
    _admin(caller)
    with reading(app) as session:
        return RolloutList(
            items=[RolloutOut.of(p) for p in rollouts.progress(session, None, limit)]
        )


@router.get("/{rollout_id}", responses=answers(404, 422), summary="Show a rollout")
def show_rollout(rollout_id: RolloutId, caller: Caller, app: App) -> RolloutDetail:
    """Its progress: nodes per phase, its failures and why it paused."""
    _admin(caller)
    with reading(app) as session:
        return _detail(session, rollout_id)


STEER_ERRORS = answers(400, 404, 409, 413, 422)


@router.post("/{rollout_id}/pause", responses=STEER_ERRORS, summary="Pause")
def pause_rollout(
    rollout_id: RolloutId, caller: Caller, app: App, body: RolloutSteer | None = None
) -> RolloutDetail:
    """No new batch begins; nodes in flight finish their step."""
    return _steer(app, caller, rollout_id, "pause", _reason(body, "paused by hand"))


@router.post("/{rollout_id}/resume", responses=STEER_ERRORS, summary="Resume")
def resume_rollout(rollout_id: RolloutId, caller: Caller, app: App) -> RolloutDetail:
    """Go on; the failures seen so far no longer count against the budget."""
    return _steer(app, caller, rollout_id, "resume", "")


@router.post("/{rollout_id}/abort", responses=STEER_ERRORS, summary="Abort")
def abort_rollout(
    rollout_id: RolloutId, caller: Caller, app: App, body: RolloutSteer | None = None
) -> RolloutDetail:
    """End it: nodes whose update began finish it (and end stopped), nodes not reached are
    never touched."""
    return _steer(app, caller, rollout_id, "abort", _reason(body, "aborted by hand"))


def _steer(
    app: App, caller: Principal, rollout_id: int, action: Action, reason: str
) -> RolloutDetail:
    _admin(caller)
    with acting(app, caller) as session:
        _refusing(lambda: rollouts.steer_rollout(session, rollout_id, action, reason))
        return _detail(session, rollout_id)


def _detail(session: Session, rollout_id: int) -> RolloutDetail:
    found = rollouts.progress(session, rollout_id, limit=1)
    if not found:
        raise ApiProblem(404, "rollout-not-found", "Rollout not found", f"no rollout {rollout_id}")
    failed = [
        FailureOut(node_id=f.node_id, name=f.name, batch=f.batch, error=f.error, at=f.at)
        for f in rollouts.failures(session, rollout_id)
    ]
    return RolloutDetail(**RolloutOut.of(found[0]).model_dump(), failures=failed)


def _refusing(call: Callable[[], Answer]) -> Answer:
    """The call's answer; a refusal of the rollout functions as its clear problem."""
    try:
        return call()
    except RolloutRefused as exc:
        status, kind, title = REFUSALS.get(
            exc.sqlstate, (422, "invalid-request", "Invalid request")
        )
        raise ApiProblem(status, kind, title, str(exc)) from None


def _admin(caller: Principal) -> None:
    if not caller.admin:
        raise Forbidden("only an admin sees and drives rollouts")


def _reason(body: RolloutSteer | None, default: str) -> str:
    return body.reason if body is not None and body.reason else default


def _status(value: str) -> Status:
    if value not in ("running", "paused", "aborted", "done"):
        raise ValueError(f"unknown rollout status {value!r} in the database")
    return value  # type: ignore[return-value]


def _where_state(value: str | None) -> Literal["live", "stopped"] | None:
    if value not in (None, "live", "stopped"):
        raise ValueError(f"unknown rollout selection state {value!r} in the database")
    return value  # type: ignore[return-value]
