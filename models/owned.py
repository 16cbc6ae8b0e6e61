"""Node commands scoped to an owner, for the HTTP API (api/).

An owner sees and moves only its own nodes; an admin sees all. Another owner's node is
reported exactly like a missing one. Every change of state still goes through
models/nodes.py, so the database's lifecycle rules decide what is legal.

Node names are unique across the fleet (they name instances and backups), which would
let one owner probe for another's names. So an owner's name gets a suffix derived from
the owner: 128 bits of the owner's SHA-256 in lowercase base32 ("alice-1" becomes
"alice-1-<26 characters>"). Owners pick names independently and a taken name can only be
one's own; two owners sharing a suffix would take a 2^64 search to find. Nodes named
before this got 32 bits (8 hex digits), which two subjects could share; they keep that
name, and it still counts as theirs.
"""

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import nodes
from models.errors import BadInput, FleetError, IllegalTransition
from models.formats import problem
from models.queries import query
from models.states import NodeState
from models.tables import HistoryRow, IdempotencyKeyRow, NodeRow, ReleaseRow

OWNER_TAG_BYTES: Final = 16
OWNER_TAG_LENGTH: Final = 26  # 128 bits, 5 to a base32 character
LEGACY_TAG_LENGTH: Final = 8
# Room left for an owner's own name: the fleet-wide name is at most 63 characters.
MAX_OWNER_NAME_LENGTH: Final = 63 - OWNER_TAG_LENGTH - 1
# Nodes that hold (or are getting) an instance: what the per-owner limit counts.
ACTIVE_STATES: Final[frozenset[str]] = frozenset(
    {"instance", "key", "start", "wallet", "live", "stop", "stopped", "update"}
)

Action = Literal["start", "stop", "update", "destroy"]


@dataclass(frozen=True)
class Viewer:
    """Who asks: the owner (the token's subject) and whether it may see every node."""

    owner: str
    admin: bool = False


@dataclass(frozen=True)
class Limits:
    max_active: int
    max_nodes: int


class NoSuchNode(FleetError):
    def __init__(self, node_id: int) -> None:
        super().__init__(f"no node with id {node_id}")


class RefusedTransition(IllegalTransition):
    """A move the lifecycle does not allow; carries both states for the API's answer."""

    def __init__(self, current: str, requested: str, message: str) -> None:
        super().__init__(message)
        self.current = current
        self.requested = requested


class NotHeld(FleetError):
    def __init__(self, row: NodeRow) -> None:
        super().__init__(f"node {row.name} is not held (it is in {row.state}): nothing to retry")
        self.current = row.state


class OverLimit(FleetError):
    pass


class NameTaken(FleetError):
    pass


class UnknownRelease(FleetError):
    pass


def owner_tag(owner: str) -> str:
    digest = hashlib.sha256(owner.encode()).digest()[:OWNER_TAG_BYTES]
    return base64.b32encode(digest).decode().rstrip("=").lower()


def legacy_tag(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:LEGACY_TAG_LENGTH]


def fleet_name(owner: str, name: str) -> str:
    """The fleet-wide name of an owner's node called name."""
    return f"{name}-{owner_tag(owner)}"


def owner_name(row: NodeRow) -> str:
    """The name as its owner gave it (nodes made outside the API keep their name)."""
    for tag in (owner_tag(row.owner), legacy_tag(row.owner)):
        if row.name.endswith(f"-{tag}"):
            return row.name.removesuffix(f"-{tag}")
    return row.name


def act_as(session: Session, actor: str) -> None:
    session.execute(query("act_as"), {"actor": actor})


def lock_owner(session: Session, owner: str) -> None:
    session.execute(query("lock_owner"), {"owner": owner})


def find_owned(
    session: Session, viewer: Viewer, node_id: int, *, for_update: bool = False
) -> NodeRow:
    statement = select(NodeRow).where(NodeRow.id == node_id)
    if not viewer.admin:
        statement = statement.where(NodeRow.owner == viewer.owner)
    if for_update:
        # A worker cannot move the row between our reading its state and our request.
        statement = statement.with_for_update()
    row = session.scalar(statement)
    if row is None:
        raise NoSuchNode(node_id)
    return row


def list_owned(
    session: Session,
    viewer: Viewer,
    *,
    limit: int,
    after: int = 0,
    state: NodeState | None = None,
    held: bool | None = None,
) -> Sequence[NodeRow]:
    """Up to limit nodes with ids above after, in id order (a stable keyset page)."""
    statement = select(NodeRow).where(NodeRow.id > after).order_by(NodeRow.id).limit(limit)
    if not viewer.admin:
        statement = statement.where(NodeRow.owner == viewer.owner)
    if state is not None:
        statement = statement.where(NodeRow.state == state)
    if held is not None:
        statement = statement.where(NodeRow.held == held)
    return session.scalars(statement).all()


def owned_history(
    session: Session, viewer: Viewer, node_id: int, *, limit: int, after: int = 0
) -> Sequence[HistoryRow]:
    """Up to limit lines of the node's history with ids above after, in order."""
    row = find_owned(session, viewer, node_id)
    statement = (
        select(HistoryRow)
        .where(HistoryRow.node_id == row.id, HistoryRow.id > after)
        .order_by(HistoryRow.id)
        .limit(limit)
    )
    return session.scalars(statement).all()


def create_owned(session: Session, spec: nodes.NodeSpec, limits: Limits) -> NodeRow:
    """Create spec's node under its owner's suffixed name, within the owner's limits."""
    full_name = fleet_name(spec.owner, spec.name)
    if message := problem("name", full_name):
        raise BadInput(message)
    lock_owner(session, spec.owner)
    names = (full_name, f"{spec.name}-{legacy_tag(spec.owner)}")
    mine = select(NodeRow.id).where(NodeRow.owner == spec.owner, NodeRow.name.in_(names))
    if session.scalar(mine) is not None:
        raise NameTaken(f"you already have a node named {spec.name!r}")
    # Another owner holds it only if an operator made that name by hand.
    if session.scalar(select(NodeRow.id).where(NodeRow.name == full_name)) is not None:
        raise NameTaken(f"the name {spec.name!r} is not available")
    active, kept = _counts(session, spec.owner)
    if kept >= limits.max_nodes:
        raise OverLimit(
            f"owner has {kept} nodes that are not destroyed (limit {limits.max_nodes}):"
            " destroy one first"
        )
    if spec.start:
        _check_active(active, limits)
    return nodes.create_node(session, spec.model_copy(update={"name": full_name}))


def request_owned(
    session: Session,
    viewer: Viewer,
    node_id: int,
    action: Action,
    limits: Limits,
    target_version: str | None = None,
) -> NodeRow:
    row = find_owned(session, viewer, node_id, for_update=True)
    current = row.state
    target = target_state(action, current)
    if current == target:
        raise RefusedTransition(
            current,
            target,
            f"illegal transition {current} -> {target} for node {row.name}: it is already there",
        )
    if target_version is not None and session.get(ReleaseRow, target_version) is None:
        raise UnknownRelease(f"release {target_version} is not known to the fleet")
    if target in ACTIVE_STATES and current not in ACTIVE_STATES:
        lock_owner(session, row.owner)
        _check_active(_counts(session, row.owner)[0], limits)
    try:
        return nodes.request_state(session, row.name, target, target_version)
    except IllegalTransition as exc:
        raise RefusedTransition(current, target, str(exc)) from None


def target_state(action: Action, current: str) -> NodeState:
    """The state an action asks for: start means instance for a node that never ran."""
    if action == "start":
        return "instance" if current == "new" else "start"
    return action


def retry_owned(session: Session, viewer: Viewer, node_id: int) -> NodeRow:
    row = find_owned(session, viewer, node_id, for_update=True)
    if not row.held:
        raise NotHeld(row)
    return nodes.retry_node(session, row.name)


def remembered(
    session: Session, owner: str, key: str, retention_hours: int
) -> IdempotencyKeyRow | None:
    """The first answer for an owner's key, unless it is older than the retention (a retry
    that late is a new request)."""
    age = func.now() - func.make_interval(0, 0, 0, 0, retention_hours)
    return session.scalar(
        select(IdempotencyKeyRow).where(
            IdempotencyKeyRow.owner == owner,
            IdempotencyKeyRow.key == key,
            IdempotencyKeyRow.created_at >= age,
        )
    )


def remember(session: Session, row: IdempotencyKeyRow, retention_hours: int) -> None:
    """Keep the first answer for a key; the owner's expired keys go at the same time."""
    session.execute(
        query("forget_idempotency_keys"), {"owner": row.owner, "hours": retention_hours}
    )
    session.add(row)
    session.flush()


def _counts(session: Session, owner: str) -> tuple[int, int]:
    counted = session.execute(query("owner_node_counts"), {"owner": owner}).one()
    return int(counted.active), int(counted.kept)


def _check_active(active: int, limits: Limits) -> None:
    if active >= limits.max_active:
        raise OverLimit(
            f"owner has {active} nodes running or on their way (limit {limits.max_active}):"
            " destroy one first"
        )
