"""What goes in and out of the API. Request fields follow the database's formats
(models/formats.py); responses never carry secrets, lease internals or instance ids."""

from datetime import datetime
from typing import Annotated, Final, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field

from models import formats
from models.formats import Network
from models.nodes import HistoryEntry
from models.owned import MAX_OWNER_NAME_LENGTH, owner_name
from models.owner_text import for_owner
from models.states import NodeState, is_state, is_work_state
from models.tables import NodeHealthRow, NodeRow

# formats.NAME, shortened by the owner suffix the fleet-wide name gets (models/owned.py).
NAME_PATTERN: Final = rf"^[a-z][a-z0-9-]{{0,{MAX_OWNER_NAME_LENGTH - 2}}}[a-z0-9]$"
NAME_RULE: Final = (
    f"2-{MAX_OWNER_NAME_LENGTH} characters: lowercase letters, digits and '-',"
    " starting with a letter"
)
IDEMPOTENCY_KEY_PATTERN: Final = r"^[!-~]{1,255}$"
# A cursor is the last id of a page; 18 digits stay inside bigint.
CURSOR_PATTERN: Final = r"^[0-9]{1,18}$"
MAX_PAGE: Final = 100
MAX_NODE_ID: Final = 2**63 - 1

Name = Annotated[str, Field(pattern=NAME_PATTERN, description=NAME_RULE, examples=["alice-1"])]
Region = Annotated[
    str,
    Field(
        max_length=formats.MAX_LENGTH["region"],
        pattern=formats.REGION,
        description=formats.RULES["region"][1] + ", one of the fleet's",
        examples=["eu-west-1"],
    ),
]
InstanceType = Annotated[
    str,
    Field(
        max_length=formats.MAX_LENGTH["instance_type"],
        pattern=formats.INSTANCE_TYPE,
        description=formats.RULES["instance_type"][1] + ", one the region offers",
        examples=["t3.small"],
    ),
]
Version = Annotated[
    str,
    Field(pattern=formats.VERSION, description=formats.RULES["version"][1], examples=["0.10.0"]),
]
Step = Literal["held", "running", "waiting", "due"]
Actor = Literal["fleet", "api", "operator"]
Event = Literal["create", "transition", "hold", "release", "backup", "note", "heal"]
HealthStatus = Literal["ok", "locked", "daemon_down", "unreachable", "instance_stopped",
                       "instance_gone", "wrong_pubkey", "wrong_network", "chain_stalled",
                       "error"]  # fmt: skip


class NodeCreate(BaseModel):
    """A new node. Unset region, instance type and network take the service's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    network: Network | None = None
    region: Region | None = None
    instance_type: InstanceType | None = None
    version: Version | None = Field(default=None, description="Release the node runs")
    start: bool = Field(default=False, description="Ask for its instance at once")


class NodeUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Version = Field(description="A release the fleet knows")


class NodeReplace(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    accept_channel_loss: bool = Field(
        default=False,
        description="With no backup taken while the node was locked and never unlocked"
        " since: a fresh wallet from the stored mnemonic (on-chain funds come back, every"
        " channel is lost). Without it such a replacement is refused",
    )


class NodeHealthOut(BaseModel):
    """What the fleet's health watch last saw of the live node."""

    status: HealthStatus
    detail: str
    since: datetime = Field(description="When the node entered this status")
    last_ok: datetime | None = Field(description="When it last answered healthy")
    last_probe: datetime

    @classmethod
    def of(cls, health: NodeHealthRow) -> "NodeHealthOut":
        return cls(
            status=cast(HealthStatus, health.status),
            detail=for_owner(health.detail) or "",
            since=health.since,
            last_ok=health.last_ok,
            last_probe=health.last_probe,
        )


class NodeOut(BaseModel):
    """A node as its owner sees it."""

    id: int
    name: str = Field(description="The name as the owner gave it")
    fleet_name: str = Field(description="The fleet-wide name operators see")
    owner: str
    state: NodeState
    step: Step | None = Field(
        description="In a work state: held (needs a retry), running, waiting (for its next"
        " attempt) or due; null in idle states"
    )
    held: bool
    attempts: int = Field(description="Failed attempts of the current step")
    last_error: str | None = Field(
        description="Why the last attempt failed, without the fleet's internals (workers,"
        " processes, AWS ids)"
    )
    next_attempt_at: datetime
    region: str
    instance_type: str
    network: Network
    current_version: str | None
    target_version: str | None
    address: str | None = Field(description="The host's address while the node is live")
    node_pubkey: str | None = Field(description="The node's public key while it is live")
    health: NodeHealthOut | None = Field(
        description="While it is live: what the health watch last saw (null: not probed yet)"
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: NodeRow, now: datetime) -> "NodeOut":
        live = row.state == "live"
        return cls(
            id=row.id,
            name=owner_name(row),
            fleet_name=row.name,
            owner=row.owner,
            state=as_state(row.state),
            step=step_of(row, now),
            held=row.held,
            attempts=row.attempts,
            last_error=for_owner(row.last_error),
            next_attempt_at=row.next_attempt_at,
            region=row.region,
            instance_type=row.instance_type,
            network=as_network(row.network),
            current_version=row.current_version,
            target_version=row.target_version,
            address=row.address if live else None,
            node_pubkey=row.node_pubkey if live else None,
            health=NodeHealthOut.of(row.health) if live and row.health is not None else None,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class NodePage(BaseModel):
    items: list[NodeOut]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at the end")


class EventOut(BaseModel):
    """One line of a node's history."""

    at: datetime
    event: Event
    from_state: NodeState | None
    to_state: NodeState
    actor: Actor = Field(
        description="fleet: a worker or dispatcher; api: a request to this API; operator:"
        " the command line or SQL"
    )
    attempt: int
    error: str | None
    detail: str | None = Field(description="A heal's cause, a backup's S3 object, a note")

    @classmethod
    def of(cls, entry: HistoryEntry) -> "EventOut":
        return cls(
            at=entry.at,
            event=as_event(entry.event),
            from_state=None if entry.from_state is None else as_state(entry.from_state),
            to_state=as_state(entry.to_state),
            actor=actor_of(entry.actor),
            attempt=entry.attempt,
            error=for_owner(entry.error),
            detail=for_owner(entry.detail),
        )


class EventList(BaseModel):
    items: list[EventOut]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at the end")


class Health(BaseModel):
    status: Literal["ok"]


def step_of(row: NodeRow, now: datetime) -> Step | None:
    if not is_work_state(row.state):
        return None
    if row.held:
        return "held"
    if row.lease_owner is not None:
        return "running"
    return "waiting" if row.next_attempt_at > now else "due"


def actor_of(actor: str) -> Actor:
    # Workers' and dispatchers' names carry host and pid: infrastructure, not the user's.
    if actor.startswith(("fleet-worker:", "fleet-dispatcher:", "fleet-watch:")):
        return "fleet"
    return "api" if actor.startswith("fleet-api") else "operator"


def as_state(value: str) -> NodeState:
    if not is_state(value):
        raise ValueError(f"unknown state {value!r} in the database")
    return value


def as_network(value: str) -> Network:
    if value not in get_args(Network):
        raise ValueError(f"unknown network {value!r} in the database")
    return cast(Network, value)


def as_event(value: str) -> Event:
    if value not in get_args(Event):
        raise ValueError(f"unknown event {value!r} in the database")
    return cast(Event, value)
