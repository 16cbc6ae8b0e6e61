"""Rollouts: a release across a selection of nodes, batch by batch, within an unavailability
and a failure budget (migrations/sql/0007_rollouts.sql; the rules in functions.sql:
fleet_start_rollout, fleet_steer_rollout, fleet_advance_rollouts). A rollout is rows, so
it survives every restart; the dispatcher drives it once a second."""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models.errors import BadInput, refusal
from models.formats import problem
from models.queries import QueryName, query

# SQLSTATEs of the rollout functions (migrations/sql/functions.sql).
ROLLOUT_REFUSED = {"FL030", "FL031", "FL032", "FL033", "FL034", "FL035"}
WHERE_KEYS = ("state", "region", "owner")
BATCH = re.compile(r"^(?P<count>[1-9][0-9]{0,5})(?P<percent>%?)$")
Action = Literal["pause", "resume", "abort"]


class RolloutRefused(BadInput):
    """A refusal of fleet_start_rollout / fleet_steer_rollout, with its SQLSTATE (FL030
    not allowed, FL031 no such release, FL032 no node chosen, FL033 no such rollout, FL034
    finished already, FL035 unknown action), so that the API can answer each clearly."""

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class Failure:
    node_id: int
    name: str
    batch: int | None
    error: str
    at: datetime


@dataclass(frozen=True)
class Selection:
    state: str | None = None
    region: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class RolloutPlan:
    to_version: str
    where: Selection
    batch: int | None  # nodes per batch, or
    batch_percent: int | None  # a percentage of the chosen nodes
    max_unavailable: int | None
    max_failures: int


@dataclass(frozen=True)
class RolloutProgress:
    id: int
    to_version: str
    status: str
    paused_reason: str | None
    batch_size: int
    max_unavailable: int
    max_failures: int
    batches_started: int
    where_state: str | None
    where_region: str | None
    where_owner: str | None
    nodes: int
    pending: int
    updating: int
    starting: int
    done: int
    failed: int
    skipped: int
    requested_by: str
    created_at: datetime
    updated_at: datetime

    @property
    def batches(self) -> int:
        return math.ceil(self.nodes / max(1, min(self.batch_size, self.max_unavailable)))

    @classmethod
    def of(cls, row: Row[Any]) -> "RolloutProgress":
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


def parse_where(text: str | None) -> Selection:
    """`state=live,region=eu-west-1,owner=shop`: each key once, each value checked."""
    if not text:
        return Selection()
    found: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in WHERE_KEYS or key in found or not value:
            raise BadInput(
                f"--where: bad term {part!r}: use state=live|stopped, region=R, owner=O,"
                " comma separated, each once"
            )
        found[key] = value
    if found.get("state", "live") not in ("live", "stopped"):
        raise BadInput(f"--where: state must be live or stopped, not {found['state']!r}")
    if "region" in found and (message := problem("region", found["region"])):
        raise BadInput(f"--where: {message}")
    return Selection(found.get("state"), found.get("region"), found.get("owner"))


def parse_batch(text: str) -> tuple[int | None, int | None]:
    """`10` nodes per batch, or `10%` of the chosen nodes: (count, percent)."""
    match = BATCH.match(text)
    if match is None or (match["percent"] and int(match["count"]) > 100):
        raise BadInput(f"--batch: {text!r} is not a node count (10) or a percentage (10%)")
    count = int(match["count"])
    return (None, count) if match["percent"] else (count, None)


def start_rollout(session: Session, plan: RolloutPlan) -> int:
    if message := problem("version", plan.to_version):
        raise BadInput(message)
    params = {
        "version": plan.to_version, "only_state": plan.where.state,
        "only_region": plan.where.region, "only_owner": plan.where.owner,
        "batch": plan.batch, "batch_percent": plan.batch_percent,
        "unavailable": plan.max_unavailable, "failures": plan.max_failures,
    }  # fmt: skip
    return int(_answer(session, "start_rollout", params))


def steer_rollout(session: Session, rollout: int, action: Action, reason: str) -> str:
    params = {"rollout": rollout, "action": action, "reason": reason}
    return str(_answer(session, "steer_rollout", params))


def progress(
    connection: Connection | Session, rollout: int | None, limit: int = 20
) -> list[RolloutProgress]:
    rows = connection.execute(query("rollout_progress"), {"rollout": rollout, "limit": limit})
    return [RolloutProgress.of(row) for row in rows]


def failures(connection: Connection | Session, rollout: int, limit: int = 100) -> list[Failure]:
    """The rollout's failed nodes, the first first, with their causes."""
    rows = connection.execute(query("rollout_failures"), {"rollout": rollout, "limit": limit})
    return [Failure(row.node_id, row.name, row.batch, row.error or "", row.at) for row in rows]


def _answer(session: Session, name: QueryName, params: Mapping[str, object]) -> Any:
    """The function's one answer; its refusals as one line of bad input."""
    try:
        return session.execute(query(name), params).scalar_one()
    except DBAPIError as exc:
        if (message := refusal(exc, ROLLOUT_REFUSED)) is None:
            raise
        raise RolloutRefused(message, str(getattr(exc.orig, "sqlstate", ""))) from None
