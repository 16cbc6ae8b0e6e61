"""Replacing a dead host (`fleet node replace`, the API's replace for admins). The rules
are the database's (fleet_request_replace in migrations/sql/functions.sql): which states
may be replaced, which backup is clean, the refusal without one. This module asks and
turns its refusals into one line each."""

from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models.backups import BackupRecord
from models.errors import IllegalTransition, UnknownNode, refusal
from models.queries import query

# SQLSTATEs of fleet_request_replace: no clean backup, a state that is not replaced, a
# login that may not, no such node.
NO_CLEAN_BACKUP = "FL040"
REPLACE_REFUSED = {NO_CLEAN_BACKUP, "FL041", "FL042"}
NO_SUCH_NODE = "FL043"


class ReplaceRefused(IllegalTransition):
    """The database refused the replacement; the message says why."""


@dataclass(frozen=True)
class ReplaceRequest:
    node_id: int
    generation: int
    # The clean backup the wallet step restores; None: a fresh wallet from the stored
    # mnemonic, the channels lost (asked for explicitly).
    backup: BackupRecord | None


def request_replace(session: Session, name: str, accept_channel_loss: bool) -> ReplaceRequest:
    params = {"name": name, "accept_channel_loss": accept_channel_loss}
    try:
        row = session.execute(query("request_replace"), params).one()
    except DBAPIError as exc:
        if refusal(exc, {NO_SUCH_NODE}) is not None:
            raise UnknownNode(name) from None
        if (message := refusal(exc, REPLACE_REFUSED)) is None:
            raise
        raise ReplaceRefused(message) from None
    backup = None if row.backup is None else BackupRecord.parse(row.backup)
    return ReplaceRequest(int(row.node_id), int(row.generation), backup)
