"""Node secrets at rest: AES-256-GCM under a key ring from configuration.

Each ciphertext is stored with the id of the key that sealed it, so keys can be rotated
(new secrets use the active key; old ones still open with theirs). The node id and the
kind are bound in as associated data: a ciphertext copied onto another row won't open.
A secret, once stored, is never replaced: the first mnemonic is the one that recovers
funds, so a step that runs twice gets the stored value back instead of writing its own."""

import base64
import binascii
import os
from dataclasses import dataclass
from typing import Literal, get_args

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection

from models.errors import BadInput
from models.queries import query

SecretKind = Literal["api_root_key", "wallet_password", "mnemonic"]
SECRET_KINDS: tuple[SecretKind, ...] = get_args(SecretKind)
KEY_BYTES = 32
NONCE_BYTES = 12


class Secret:
    """A secret value that does not print itself: logs and tracebacks show ***."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SecretError(Exception):
    """A secret could not be opened (unknown key id, or the data was tampered with).
    The reason names the key id, never anything of the value."""

    def __init__(self, node_id: int, kind: SecretKind, reason: str) -> None:
        super().__init__(f"{kind} of node {node_id} {reason}")
        self.kind = kind
        self.reason = reason


class SecretsDoNotOpen(Exception):
    """Some of a node's secrets do not open: each kind with why."""

    def __init__(self, failed: dict[SecretKind, str]) -> None:
        super().__init__("; ".join(f"{kind} {reason}" for kind, reason in failed.items()))
        self.failed = failed


@dataclass(frozen=True)
class KeyRing:
    keys: dict[str, bytes]
    active: str

    @classmethod
    def parse(cls, spec: str, active: str) -> "KeyRing":
        """spec: comma-separated `key_id:base64-of-32-bytes`; active: the id that seals."""
        keys: dict[str, bytes] = {}
        for number, entry in enumerate(filter(None, (p.strip() for p in spec.split(","))), 1):
            key_id, colon, encoded = entry.partition(":")
            if not colon or not key_id:
                # Never echo the entry: without its id, it may be the key itself.
                raise BadInput(f"FLEET_SECRET_KEYS entry {number} is not key_id:base64")
            if key_id in keys:
                raise BadInput(f"secret key {key_id!r} appears twice in FLEET_SECRET_KEYS")
            try:
                key = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise BadInput(f"secret key {key_id!r} is not base64") from None
            if len(key) != KEY_BYTES:
                raise BadInput(f"secret key {key_id!r} must be {KEY_BYTES} bytes")
            keys[key_id] = key
        if not keys:
            raise BadInput("no secret keys configured (FLEET_SECRET_KEYS)")
        if not active:
            raise BadInput("no active secret key configured (FLEET_SECRET_KEY_ID)")
        if active not in keys:
            raise BadInput(f"the active secret key {active!r} is not in the key ring")
        return cls(keys, active)

    def seal(self, node_id: int, kind: SecretKind, secret: Secret) -> tuple[str, bytes, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.keys[self.active]).encrypt(
            nonce, secret.reveal().encode(), _bound_to(node_id, kind)
        )
        return self.active, nonce, sealed

    def open(
        self, node_id: int, kind: SecretKind, key_id: str, nonce: bytes, sealed: bytes
    ) -> Secret:
        key = self.keys.get(key_id)
        if key is None:
            raise SecretError(
                node_id, kind, f"is sealed with unknown key {key_id!r} (not in FLEET_SECRET_KEYS)"
            )
        try:
            plain = AESGCM(key).decrypt(nonce, sealed, _bound_to(node_id, kind))
        except InvalidTag:
            raise SecretError(
                node_id,
                kind,
                f"does not open with key {key_id!r}: tampered or misplaced,"
                " or that id names another key than the one that sealed it",
            ) from None
        return Secret(plain.decode())


def new_key() -> str:
    """A fresh key for FLEET_SECRET_KEYS (base64)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def _bound_to(node_id: int, kind: SecretKind) -> bytes:
    return f"rln-fleet:{node_id}:{kind}".encode()


def store_once(
    connection: Connection, ring: KeyRing, node_id: int, kind: SecretKind, secret: Secret
) -> Secret:
    """Store the secret unless one of this kind exists; return the one that is stored."""
    key_id, nonce, sealed = ring.seal(node_id, kind, secret)
    connection.execute(
        query("store_secret"),
        {"node_id": node_id, "kind": kind, "key_id": key_id, "nonce": nonce, "sealed": sealed},
    )
    stored = load(connection, ring, node_id, kind)
    assert stored is not None  # just inserted, or already there
    return stored


def load(connection: Connection, ring: KeyRing, node_id: int, kind: SecretKind) -> Secret | None:
    row = connection.execute(query("load_secret"), {"node_id": node_id, "kind": kind}).first()
    if row is None:
        return None
    return ring.open(node_id, kind, row.key_id, bytes(row.nonce), bytes(row.ciphertext))


def open_all(connection: Connection, ring: KeyRing, node_id: int) -> dict[SecretKind, Secret]:
    """Every stored secret of the node, or SecretsDoNotOpen naming each one that does not:
    all or nothing, so that a recovery never works from half the secrets."""
    opened: dict[SecretKind, Secret] = {}
    failed: dict[SecretKind, str] = {}
    for kind in SECRET_KINDS:
        try:
            if (value := load(connection, ring, node_id, kind)) is not None:
                opened[kind] = value
        except SecretError as exc:
            failed[kind] = exc.reason
    if failed:
        raise SecretsDoNotOpen(failed)
    return opened
