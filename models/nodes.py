"""What apps and operators do with node rows: create, request a state, retry, look up.
The database enforces the rules; these functions turn its refusals into FleetErrors."""

from collections.abc import Collection, Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from sqlalchemy import insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from models.errors import BadInput, IllegalTransition, UnknownNode, refusal
from models.formats import Network, problem
from models.queries import query
from models.states import NodeState, is_state
from models.tables import HistoryRow, NodeRow

# SQLSTATEs raised by the lifecycle trigger (migrations/sql/functions.sql): an illegal
# move, a worker's edge, no target version, a busy update, a heal of the watch's, a
# replacement's edge.
TRANSITION_REFUSED = {"FL001", "FL002", "FL003", "FL004", "FL005", "FL041"}


class NodeSpec(BaseModel):
    """A new node as an app describes it."""

    model_config = ConfigDict(frozen=True)

    name: str
    owner: str
    region: str
    instance_type: str
    network: Network
    version: str | None = None
    start: bool = False

    @field_validator("name", "owner", "region", "instance_type")
    @classmethod
    def _well_formed(cls, value: str, info: object) -> str:
        field = getattr(info, "field_name", "")
        if message := problem(field, value):
            raise ValueError(message)
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        if value is not None and (message := problem("version", value)):
            raise ValueError(message)
        return value


class HealthRecord(BaseModel):
    """What the health watch last saw of a live node (node_health)."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    status: str
    detail: str
    since: datetime
    last_ok: datetime | None
    last_probe: datetime


class NodeRecord(BaseModel):
    """A node as the CLI's --json and the API show it: the row without lease internals."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: int
    name: str
    state: str
    held: bool
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    owner: str
    region: str
    instance_type: str
    network: str
    current_version: str | None
    target_version: str | None
    instance_id: str | None
    address: str | None
    node_pubkey: str | None
    lease_owner: str | None
    created_at: datetime
    updated_at: datetime
    health: HealthRecord | None


class HistoryEntry(BaseModel):
    """One line of a node's history."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    at: datetime
    event: str
    from_state: str | None
    to_state: str
    actor: str
    attempt: int
    error: str | None
    # What a note or a backup says (a backup's key, a wallet re-initialisation's loss).
    detail: str | None = None


def parse_spec(served_networks: Collection[str], **fields: object) -> NodeSpec:
    """A node the fleet can run: well formed, on a network it has a chain backend for
    (a node of any other network could never unlock)."""
    try:
        spec = NodeSpec.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise BadInput(message if message.startswith("bad ") else f"{where}: {message}") from None
    if spec.network not in served_networks:
        served = ", ".join(sorted(served_networks)) or "none"
        raise BadInput(
            f"no chain backend for network {spec.network!r}: this fleet serves {served}"
            " (FLEET_CHAIN)"
        )
    return spec


def create_node(session: Session, spec: NodeSpec) -> NodeRow:
    # The request columns only: an app's login may insert nothing else (the ORM's own
    # INSERT would name every column).
    request = insert(NodeRow).values(
        name=spec.name,
        owner=spec.owner,
        region=spec.region,
        instance_type=spec.instance_type,
        network=spec.network,
        current_version=spec.version,
        state="instance" if spec.start else "new",
    )
    try:
        node_id = session.execute(request.returning(NodeRow.id)).scalar_one()
    except IntegrityError as exc:
        constraint = _constraint(exc)
        if constraint == "nodes_name_key":
            raise BadInput(f"a node named {spec.name!r} already exists") from None
        raise BadInput(f"the database refused node {spec.name!r}: {constraint}") from None
    return session.get_one(NodeRow, node_id)


def find_node(session: Session, name: str) -> NodeRow:
    row = session.scalar(select(NodeRow).where(NodeRow.name == name))
    if row is None:
        raise UnknownNode(name)
    return row


def request_state(
    session: Session, name: str, state: str, target_version: str | None = None
) -> NodeRow:
    """Move a node as an app would. Only the database decides which moves are legal."""
    if not is_state(state):
        raise BadInput(f"unknown state {state!r}")
    if target_version is not None and (message := problem("version", target_version)):
        raise BadInput(message)
    if target_version is not None and state != "update":
        raise BadInput("a target version only goes with a request for update")
    row = find_node(session, name)
    # A new target for an update is the database's to judge (taken only while held).
    retarget = state == "update" and target_version not in (None, row.target_version)
    if row.state == state and not retarget:
        raise IllegalTransition(f"node {name!r} is already in {state}")
    row.state = state
    if target_version is not None:
        row.target_version = target_version
    try:
        session.flush()
    except IntegrityError as exc:
        if _constraint(exc) == "nodes_target_release":
            raise BadInput(
                f"release {target_version} is not known: add it with `fleet release add`"
            ) from None
        raise
    except DBAPIError as exc:
        if (message := refusal(exc, TRANSITION_REFUSED)) is None:
            raise
        raise IllegalTransition(message) from None
    session.refresh(row)
    return row


def retry_node(session: Session, name: str) -> NodeRow:
    row = find_node(session, name)
    if session.execute(query("retry_node"), {"name": name}).scalar() is None:
        raise BadInput(f"node {name!r} is not held")
    session.refresh(row)
    return row


def list_nodes(
    session: Session, state: NodeState | None = None, held: bool = False
) -> Sequence[NodeRow]:
    statement = select(NodeRow).order_by(NodeRow.name)
    if state is not None:
        statement = statement.where(NodeRow.state == state)
    if held:
        statement = statement.where(NodeRow.held)
    return session.scalars(statement).all()


def node_history(session: Session, node_id: int) -> list[HistoryEntry]:
    rows = session.scalars(
        select(HistoryRow).where(HistoryRow.node_id == node_id).order_by(HistoryRow.id)
    )
    return [HistoryEntry.model_validate(row) for row in rows]


def _constraint(exc: DBAPIError) -> str | None:
    return getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
