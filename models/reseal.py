"""Key retirement: reseal every secret under the active key, so that old keys can leave
the key ring.

Each secret is resealed in its own short transaction, and the UPDATE replaces only the
seal it read (same key id and nonce). So a run can stop anywhere (Ctrl-C, a crash, a lost
connection) and a rerun finishes the rest; two runs at once never both change a row: the
later one finds the row changed and leaves it. The associated data (node id and kind)
stays the same, so a resealed secret is still bound to its row. A secret that does not
open is reported by node name and kind and left exactly as it is."""

from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import Connection, Engine

from models.queries import query
from models.secrets import SECRET_KINDS, KeyRing, SecretError, SecretKind

# What a key id is to the operator: sealing new secrets, still needed by old ones,
# removable from the ring, or missing from it (its secrets do not open).
KeyStanding = Literal["active", "needed", "retirable", "missing"]


@dataclass(frozen=True)
class SealedRow:
    node_id: int
    node_name: str
    kind: SecretKind
    key_id: str


@dataclass(frozen=True)
class Unopenable:
    node: str
    kind: SecretKind
    key_id: str
    reason: str


@dataclass(frozen=True)
class Resealed:
    old_key_id: str


@dataclass(frozen=True)
class ChangedMeanwhile:
    """Another run (or writer) changed the row after it was listed: left to it."""


Outcome = Resealed | Unopenable | ChangedMeanwhile


@dataclass
class ResealReport:
    """What a run did (or, dry, would do). Filled in row by row, each once its transaction
    has committed, so an interrupted run still tells truly how far it got."""

    active_key: str
    dry_run: bool
    resealed: dict[str, int] = field(default_factory=dict)  # per old key id
    already_active: int = 0
    changed_meanwhile: int = 0
    unopenable: list[Unopenable] = field(default_factory=list)
    left: int = 0  # not reached yet (a limit or an interruption): a rerun does them

    def record(self, outcome: Outcome) -> None:
        self.left -= 1
        match outcome:
            case Resealed(old_key_id):
                self.resealed[old_key_id] = self.resealed.get(old_key_id, 0) + 1
            case Unopenable():
                self.unopenable.append(outcome)
            case ChangedMeanwhile():
                self.changed_meanwhile += 1


@dataclass(frozen=True)
class KeyUsage:
    key_id: str
    secrets: int
    in_ring: bool
    standing: KeyStanding


def sealed_rows(connection: Connection) -> list[SealedRow]:
    return [
        SealedRow(r.node_id, r.node_name, _kind(r.kind), r.key_id)
        for r in connection.execute(query("sealed_secrets"))
    ]


def reseal(
    engine: Engine, ring: KeyRing, report: ResealReport, limit: int | None = None
) -> ResealReport:
    """Reseal (at most `limit` of) the secrets not under the active key, into `report`."""
    with engine.connect() as connection:
        rows = sealed_rows(connection)
    pending = [row for row in rows if row.key_id != ring.active]
    report.already_active += len(rows) - len(pending)
    report.left += len(pending)
    for row in pending[:limit]:
        with engine.begin() as connection:
            outcome = reseal_one(connection, ring, row, report.dry_run)
        report.record(outcome)
    return report


def reseal_one(connection: Connection, ring: KeyRing, row: SealedRow, dry_run: bool) -> Outcome:
    """Open the row's current seal and replace it with one under the active key."""
    where = {"node_id": row.node_id, "kind": row.kind}
    stored = connection.execute(query("load_secret"), where).first()
    if stored is None or stored.key_id == ring.active:
        return ChangedMeanwhile()
    old_key_id, old_nonce = stored.key_id, bytes(stored.nonce)
    try:
        secret = ring.open(row.node_id, row.kind, old_key_id, old_nonce, bytes(stored.ciphertext))
    except SecretError:
        return Unopenable(row.node_name, row.kind, old_key_id, _why_unopenable(ring, old_key_id))
    if dry_run:
        return Resealed(old_key_id)
    key_id, nonce, sealed = ring.seal(row.node_id, row.kind, secret)
    params = {"key_id": key_id, "nonce": nonce, "sealed": sealed}
    guard = {"old_key_id": old_key_id, "old_nonce": old_nonce}
    if connection.execute(query("reseal_secret"), where | params | guard).rowcount == 0:
        return ChangedMeanwhile()
    return Resealed(old_key_id)


def key_usage(connection: Connection, ring: KeyRing) -> list[KeyUsage]:
    """Per key id, in the database or the ring: how many secrets it seals, and its standing."""
    counts = {r.key_id: int(r.secrets) for r in connection.execute(query("secret_key_usage"))}
    usage = []
    for key_id in sorted(counts.keys() | ring.keys.keys()):
        sealed = counts.get(key_id, 0)
        usage.append(KeyUsage(key_id, sealed, key_id in ring.keys, _standing(ring, key_id, sealed)))
    return usage


def _standing(ring: KeyRing, key_id: str, secrets: int) -> KeyStanding:
    if key_id == ring.active:
        return "active"
    if key_id not in ring.keys:
        return "missing"
    return "needed" if secrets else "retirable"


def _why_unopenable(ring: KeyRing, key_id: str) -> str:
    # Says nothing of the value: only which key and whether the ring has it.
    if key_id not in ring.keys:
        return f"sealed with key {key_id!r}, which is not in FLEET_SECRET_KEYS"
    return f"does not open with key {key_id!r}: tampered or misplaced"


def _kind(value: str) -> SecretKind:
    for kind in SECRET_KINDS:
        if kind == value:
            return kind
    raise ValueError(f"unknown secret kind {value!r}")  # the table's CHECK forbids it
