"""The node routes. Each resolves the caller's own node (another owner's node is "not
found", exactly like a missing one) and leaves every rule to models/ and the database."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from pydantic import BaseModel, ConfigDict

from api import creating
from api.auth import Principal
from api.deps import App, Caller, Services, acting, reading
from api.errors import Forbidden, documented
from api.paging import fitting
from api.schemas import (
    CURSOR_PATTERN,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_NODE_ID,
    MAX_PAGE,
    EventList,
    EventOut,
    NodeCreate,
    NodeOut,
    NodePage,
    NodeReplace,
    NodeUpdate,
)
from models import owned, replace
from models.nodes import HistoryEntry
from models.states import NodeState

router = APIRouter(prefix="/nodes", tags=["nodes"], responses=documented(401, 429, 503))

NodeId = Annotated[int, Path(ge=1, le=MAX_NODE_ID, description="The node's id")]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="A retry with the same key and body gets the first answer back and"
        " creates nothing; the same key with another body is refused",
    ),
]
Cursor = Annotated[
    str | None,
    Query(pattern=CURSOR_PATTERN, description="next_cursor of the previous page"),
]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Nodes per page")]


@router.post(
    "",
    status_code=201,
    response_model=NodeOut,
    responses=documented(400, 409, 413, 422),
    summary="Create",
)
def create_node(
    body: NodeCreate, caller: Caller, app: App, idempotency_key: IdempotencyKey = None
) -> Response:
    """A node in new, or with `start: true` on its way to live."""
    return creating.create(app, caller, body, idempotency_key)


class ListFilter(BaseModel):
    # An unknown parameter is refused, not ignored: `?stat=live` listing every node
    # would look like an answer to the question that was meant.
    model_config = ConfigDict(extra="forbid")

    state: NodeState | None = None
    held: bool | None = None
    cursor: Cursor = None
    limit: PageSize = 50


@router.get("", responses=documented(422), summary="List your nodes")
def list_nodes(caller: Caller, app: App, query: Annotated[ListFilter, Query()]) -> NodePage:
    """Your nodes in id order (an admin's: everyone's), a page at a time."""
    with reading(app) as session:
        after = int(query.cursor or 0)
        rows = owned.list_owned(
            session,
            caller.viewer(),
            limit=query.limit + 1,
            after=after,
            state=query.state,
            held=query.held,
        )
    now = datetime.now(UTC)
    items = fitting([NodeOut.of(row, now) for row in rows[: query.limit]], app.page_bytes())
    more = len(rows) > len(items)
    return NodePage(items=items, next_cursor=str(items[-1].id) if more else None)


@router.get("/{node_id}", responses=documented(404, 422), summary="Show a node")
def show_node(node_id: NodeId, caller: Caller, app: App) -> NodeOut:
    with reading(app) as session:
        row = owned.find_owned(session, caller.viewer(), node_id)
        return NodeOut.of(row, datetime.now(UTC))


class EventFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cursor: Cursor = None
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Events per page")] = MAX_PAGE


@router.get("/{node_id}/events", responses=documented(404, 422), summary="A node's history")
def node_events(
    node_id: NodeId, caller: Caller, app: App, query: Annotated[EventFilter, Query()]
) -> EventList:
    """Oldest first, a page at a time."""
    with reading(app) as session:
        rows = owned.owned_history(
            session, caller.viewer(), node_id, limit=query.limit + 1, after=int(query.cursor or 0)
        )
    events = [EventOut.of(HistoryEntry.model_validate(row)) for row in rows[: query.limit]]
    items = fitting(events, app.page_bytes())
    more = len(rows) > len(items)
    return EventList(items=items, next_cursor=str(rows[len(items) - 1].id) if more else None)


TRANSITION_ERRORS = documented(404, 409, 422)


@router.post("/{node_id}/start", responses=TRANSITION_ERRORS, summary="Start")
def start_node(node_id: NodeId, caller: Caller, app: App) -> NodeOut:
    """From new: ask for its instance. From stopped: start it again."""
    return _request(app, caller, node_id, "start")


@router.post("/{node_id}/stop", responses=TRANSITION_ERRORS, summary="Stop")
def stop_node(node_id: NodeId, caller: Caller, app: App) -> NodeOut:
    """A live node: lock its wallet, back it up and stop it."""
    return _request(app, caller, node_id, "stop")


@router.post("/{node_id}/update", responses=documented(400, 404, 409, 413, 422), summary="Update")
def update_node(node_id: NodeId, body: NodeUpdate, caller: Caller, app: App) -> NodeOut:
    """A live or stopped node: install a release the fleet knows; it ends stopped."""
    return _request(app, caller, node_id, "update", body.version)


@router.post("/{node_id}/destroy", responses=TRANSITION_ERRORS, summary="Destroy")
def destroy_node(node_id: NodeId, caller: Caller, app: App) -> NodeOut:
    """Back it up if it answers and terminate its instance. Its secrets are kept."""
    return _request(app, caller, node_id, "destroy")


@router.post("/{node_id}/retry", responses=TRANSITION_ERRORS, summary="Retry")
def retry_node(node_id: NodeId, caller: Caller, app: App) -> NodeOut:
    """A held node: try its step again."""
    with acting(app, caller) as session:
        row = owned.retry_owned(session, caller.viewer(), node_id)
        return NodeOut.of(row, datetime.now(UTC))


@router.post(
    "/{node_id}/replace",
    responses=documented(400, 403, 404, 409, 413, 422),
    summary="Replace its host (admins)",
)
def replace_node(
    node_id: NodeId, caller: Caller, app: App, body: NodeReplace | None = None
) -> NodeOut:
    """A new instance for a node whose host is gone (the old one terminated if it still
    exists), its wallet restored from the latest backup taken while it was locked and
    never unlocked since: restoring an older Lightning state can lose funds. Without such
    a backup, refused unless `accept_channel_loss`. Admins only."""
    if not caller.admin:
        raise Forbidden("only an admin replaces a node's host")
    accept = body is not None and body.accept_channel_loss
    with acting(app, caller) as session:
        row = owned.find_owned(session, caller.viewer(), node_id, for_update=True)
        replace.request_replace(session, row.name, accept)
        session.refresh(row)
        return NodeOut.of(row, datetime.now(UTC))


def _request(
    app: Services,
    caller: Principal,
    node_id: int,
    action: owned.Action,
    version: str | None = None,
) -> NodeOut:
    with acting(app, caller) as session:
        row = owned.request_owned(session, caller.viewer(), node_id, action, app.limits(), version)
        return NodeOut.of(row, datetime.now(UTC))
