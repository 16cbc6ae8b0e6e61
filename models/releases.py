"""Releases the fleet may install: a version, an artifact URL and its SHA-256."""

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.errors import BadInput
from models.formats import problem
from models.tables import ReleaseRow

SHA256 = r"^[0-9a-f]{64}$"


@dataclass(frozen=True)
class Release:
    version: str
    artifact_url: str
    sha256: str


def add_release(session: Session, version: str, artifact_url: str, sha256: str) -> Release:
    if message := problem("version", version):
        raise BadInput(message)
    if message := problem("artifact_url", artifact_url):
        raise BadInput(message)
    if not re.fullmatch(SHA256, sha256):
        raise BadInput(f"bad sha256 {sha256!r}: 64 lowercase hex characters")
    session.add(ReleaseRow(version=version, artifact_url=artifact_url, sha256=sha256))
    try:
        session.flush()
    except IntegrityError:
        raise BadInput(f"release {version} is already known") from None
    return Release(version, artifact_url, sha256)


def list_releases(session: Session) -> Sequence[Release]:
    rows = session.scalars(select(ReleaseRow).order_by(ReleaseRow.created_at))
    return [Release(r.version, r.artifact_url, r.sha256) for r in rows]


def find_release(connection: Connection, version: str) -> Release | None:
    row = connection.execute(
        select(ReleaseRow.version, ReleaseRow.artifact_url, ReleaseRow.sha256).where(
            ReleaseRow.version == version
        )
    ).first()
    return None if row is None else Release(row.version, row.artifact_url, row.sha256)
