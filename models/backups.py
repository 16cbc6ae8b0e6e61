"""A backup as the node's history records it: where it went in S3, its size and its
SHA-256, as the worker verified them in S3 before the host's copy was removed. The
history line's format has one home, here: the stop, update and destroy steps write it,
`fleet node backups` reads it."""

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Self

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from models.queries import query

_DETAIL = re.compile(
    r"^s3://(?P<bucket>[^/\s]+)/(?P<key>\S+) size=(?P<size>\d+) sha256=(?P<sha256>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class BackupRecord:
    bucket: str
    key: str
    size: int
    sha256: str

    def detail(self) -> str:
        return f"s3://{self.bucket}/{self.key} size={self.size} sha256={self.sha256}"

    @classmethod
    def parse(cls, detail: str) -> Self | None:
        """None for a line the fleet wrote before it verified backups (a bare URI)."""
        found = _DETAIL.match(detail)
        if found is None:
            return None
        return cls(found["bucket"], found["key"], int(found["size"]), found["sha256"])


@dataclass(frozen=True)
class NodeBackup:
    at: datetime
    record: BackupRecord


def node_backups(session: Session, node_id: int) -> list[NodeBackup]:
    """The node's verified backups, oldest first."""
    rows = session.execute(query("node_backups"), {"node_id": node_id}).all()
    found = [(at, BackupRecord.parse(detail)) for at, detail in rows]
    return [NodeBackup(at, record) for at, record in found if record is not None]


def backup_this_stay(connection: Connection, node_id: int, state: str) -> BackupRecord | None:
    """The verified backup taken since the node last entered `state`, if any."""
    detail = connection.execute(
        query("backup_this_stay"), {"node_id": node_id, "state": state}
    ).scalar()
    return None if detail is None else BackupRecord.parse(detail)
