"""POST /nodes: create a node, at most once per Idempotency-Key.

The first successful answer to a key is stored in the same transaction as the node, so
either both exist or neither does; a retry with that key gets the stored bytes back and
creates nothing. A refused request (a limit, a taken name) stores nothing: a retry is
judged again, which is what the caller wants once it has made room. The owner's advisory
lock serialises requests carrying the same key, so two concurrent retries cannot both
create.
"""

import hashlib
from datetime import UTC, datetime
from typing import Final

from fastapi import Response
from sqlalchemy.orm import Session

from api.auth import Principal
from api.deps import Services, acting
from api.errors import ApiProblem
from api.schemas import NodeCreate, NodeOut
from api.settings import ApiSettings
from models import nodes, owned
from models.errors import BadInput
from models.placement import placement_problem
from models.tables import IdempotencyKeyRow

CREATED: Final = 201
REPLAYED_HEADER: Final = "Idempotent-Replayed"


class KeyReused(ApiProblem):
    def __init__(self) -> None:
        super().__init__(
            422,
            "idempotency-key-reused",
            "Idempotency key reused",
            "this Idempotency-Key was first used with a different request: use a new key",
        )


def create(found: Services, caller: Principal, body: NodeCreate, key: str | None) -> Response:
    digest = request_hash(body)
    with acting(found, caller) as session:
        if key is not None:
            first = _first_answer(session, found, caller.subject, key)
            if first is not None:
                return _replay(first, digest)
        spec = spec_of(found.settings, caller.subject, body)
        row = owned.create_owned(session, spec, found.limits())
        content = NodeOut.of(row, datetime.now(UTC)).model_dump_json()
        if key is not None:
            remembered = IdempotencyKeyRow(
                owner=caller.subject,
                key=key,
                request_hash=digest,
                response_status=CREATED,
                response_body=content,
                node_id=row.id,
            )
            owned.remember(session, remembered, found.settings.api_idempotency_hours)
    return _json(CREATED, content, row.id)


def request_hash(body: NodeCreate) -> str:
    """The request as validated: key order, spacing and omitted defaults do not matter."""
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def spec_of(settings: ApiSettings, owner: str, body: NodeCreate) -> nodes.NodeSpec:
    spec = nodes.parse_spec(
        settings.chain.keys(),
        name=body.name,
        owner=owner,
        region=body.region or settings.default_region,
        instance_type=body.instance_type or settings.default_instance_type,
        network=body.network or settings.default_network,
        version=body.version,
        start=body.start,
    )
    if message := placement_problem(settings.offered(), spec.region, spec.instance_type):
        raise BadInput(message)
    return spec


def _first_answer(
    session: Session, found: Services, owner: str, key: str
) -> IdempotencyKeyRow | None:
    # Held until commit: a concurrent request with the same key waits here, then finds
    # this request's answer instead of creating a second node.
    owned.lock_owner(session, owner)
    return owned.remembered(session, owner, key, found.settings.api_idempotency_hours)


def _replay(first: IdempotencyKeyRow, digest: str) -> Response:
    if first.request_hash != digest:
        raise KeyReused()
    response = _json(first.response_status, first.response_body, first.node_id)
    response.headers[REPLAYED_HEADER] = "true"
    return response


def _json(status: int, content: str, node_id: int | None) -> Response:
    headers = {"Location": f"/nodes/{node_id}"} if node_id is not None else None
    return Response(content, status_code=status, media_type="application/json", headers=headers)
