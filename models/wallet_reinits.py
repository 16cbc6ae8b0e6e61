"""Re-initialising a wallet after an update across a wallet-format break: the
operator's request (`fleet node update NAME --to V --reinitialise-wallet`) and what
workers read and record of it. Upstream's documented recovery for a wallet a release
cannot read (CorruptedMnemonic): initialise it again from the mnemonic, which brings the
on-chain funds back and loses the channel state; so it happens only when an operator
asked for it, for that node and release, and the request is kept as the trail."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models.errors import BadInput, IllegalTransition, refusal
from models.formats import problem
from models.nodes import find_node, request_state, retry_node
from models.queries import query
from models.tables import NodeRow

# SQLSTATEs of fleet_request_wallet_reinit (migrations/sql/functions.sql).
REINIT_REFUSED = {"FL020", "FL021"}


@dataclass(frozen=True)
class WalletReinit:
    id: int
    to_version: str
    requested_by: str
    requested_at: datetime
    moved_aside_to: str | None  # set once the host agent moved the old files aside


def request_update(session: Session, name: str, version: str, reinitialise: bool) -> NodeRow:
    """Update a node to a release; with `reinitialise`, also ask for its wallet to be
    re-initialised from the stored mnemonic should that release not read it. A node
    already held for exactly this (an update held at a wallet-format break, or a wallet
    step held at CorruptedMnemonic under that release) is released instead of moved."""
    if message := problem("version", version):
        raise BadInput(message)
    row = find_node(session, name)
    if not reinitialise:
        return request_state(session, name, "update", version)
    if row.state == "wallet" and row.current_version not in (None, version):
        raise BadInput(
            f"node {name!r} runs {row.current_version}: its wallet is re-initialised for"
            f" that release (--to {row.current_version})"
        )
    _record_request(session, name, version)
    held_for_it = row.held and (
        (row.state == "update" and row.target_version == version) or row.state == "wallet"
    )
    if held_for_it:
        return retry_node(session, name)
    if row.state == "wallet":
        raise IllegalTransition(
            f"node {name!r} is in wallet and not held: its wallet step runs already"
        )
    return request_state(session, name, "update", version)


def _record_request(session: Session, name: str, version: str) -> None:
    try:
        session.execute(query("request_wallet_reinit"), {"name": name, "version": version})
    except DBAPIError as exc:
        if (message := refusal(exc, REINIT_REFUSED)) is None:
            raise
        raise BadInput(message) from None


def open_reinit(connection: Connection, node_id: int, version: str) -> WalletReinit | None:
    row = connection.execute(
        query("open_wallet_reinit"), {"node_id": node_id, "version": version}
    ).first()
    if row is None:
        return None
    return WalletReinit(row.id, row.to_version, row.requested_by, row.requested_at,
                        row.moved_aside_to)  # fmt: skip


def record_progress(
    connection: Connection, request_id: int, worker: str, moved_aside_to: str | None, done: bool
) -> bool:
    """Where the old files went, or that it is done; False when the worker lost the row."""
    params = {"request_id": request_id, "worker": worker,
              "moved_aside_to": moved_aside_to, "done": done}  # fmt: skip
    return connection.execute(query("wallet_reinit_progress"), params).first() is not None
