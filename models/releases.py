"""Releases the fleet may install: a version, an artifact URL, its SHA-256, and the
format of the wallets it opens (upstream's release of 2026-08-01 reads no wallet an
earlier release wrote: format 1 before it, 2 from it on)."""

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
# The releases table's CHECK (migrations/sql/0007_wallet_format.sql).
WALLET_FORMATS = range(1, 1001)
# Every release before upstream's of 2026-08-01 (and every release added without one).
FIRST_WALLET_FORMAT = 1


@dataclass(frozen=True)
class Release:
    version: str
    artifact_url: str
    sha256: str
    wallet_format: int = FIRST_WALLET_FORMAT


def add_release(
    session: Session,
    version: str,
    artifact_url: str,
    sha256: str,
    wallet_format: int = FIRST_WALLET_FORMAT,
) -> Release:
    if message := problem("version", version):
        raise BadInput(message)
    if message := problem("artifact_url", artifact_url):
        raise BadInput(message)
    if not re.fullmatch(SHA256, sha256):
        raise BadInput(f"bad sha256 {sha256!r}: 64 lowercase hex characters")
    if wallet_format not in WALLET_FORMATS:
        raise BadInput(f"bad wallet format {wallet_format}: an integer from 1 to 1000")
    row = ReleaseRow(
        version=version, artifact_url=artifact_url, sha256=sha256, wallet_format=wallet_format
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise BadInput(f"release {version} is already known") from None
    return Release(version, artifact_url, sha256, wallet_format)


def list_releases(session: Session) -> Sequence[Release]:
    rows = session.scalars(select(ReleaseRow).order_by(ReleaseRow.created_at))
    return [Release(r.version, r.artifact_url, r.sha256, r.wallet_format) for r in rows]


def find_release(connection: Connection, version: str) -> Release | None:
    row = connection.execute(
        select(
            ReleaseRow.version, ReleaseRow.artifact_url, ReleaseRow.sha256, ReleaseRow.wallet_format
        ).where(ReleaseRow.version == version)
    ).first()
    if row is None:
        return None
    return Release(row.version, row.artifact_url, row.sha256, row.wallet_format)
