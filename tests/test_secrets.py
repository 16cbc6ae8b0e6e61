"""Secrets at rest: sealed with AES-GCM, bound to their row, rotatable, never replaced."""

import base64
import os

import psycopg
import pytest
from sqlalchemy import create_engine

from models import secrets
from models.errors import BadInput
from models.secrets import KeyRing, Secret
from models.session import sqlalchemy_url
from tests.conftest import add_nodes, fetch

KEY_A = base64.b64encode(os.urandom(32)).decode()
KEY_B = base64.b64encode(os.urandom(32)).decode()


def test_a_secret_does_not_print_itself() -> None:
    secret = Secret("correct horse battery staple")
    assert "horse" not in repr(secret) and "horse" not in str(secret) and "horse" not in f"{secret}"
    assert secret.reveal() == "correct horse battery staple"


@pytest.mark.parametrize(
    ("spec", "active", "message"),
    [
        (f"a:{KEY_A}", "b", "active secret key 'b' is not in the key ring"),
        ("a:not base64!", "a", "secret key 'a' is not base64"),
        (f"a:{base64.b64encode(b'short').decode()}", "a", "must be 32 bytes"),
        ("", "", r"no secret keys configured \(FLEET_SECRET_KEYS\)"),
        (f"a:{KEY_A}", "", r"no active secret key configured \(FLEET_SECRET_KEY_ID\)"),
        (f"a:{KEY_A},{KEY_B}", "a", "entry 2 is not key_id:base64"),  # a key without its id
        (f"a:{KEY_A},a:{KEY_B}", "a", "secret key 'a' appears twice"),
    ],
)
def test_bad_key_rings_are_refused(spec: str, active: str, message: str) -> None:
    with pytest.raises(BadInput, match=message) as refused:
        KeyRing.parse(spec, active)
    assert KEY_A not in str(refused.value) and KEY_B not in str(refused.value)


def test_sealed_secrets_open_only_on_their_own_row() -> None:
    ring = KeyRing.parse(f"a:{KEY_A}", "a")
    key_id, nonce, sealed = ring.seal(7, "mnemonic", Secret("abandon " * 23 + "art"))
    assert b"abandon" not in sealed
    assert ring.open(7, "mnemonic", key_id, nonce, sealed).reveal().startswith("abandon")
    with pytest.raises(secrets.SecretError, match="tampered or misplaced"):
        ring.open(8, "mnemonic", key_id, nonce, sealed)  # copied onto another node
    with pytest.raises(secrets.SecretError, match="tampered or misplaced"):
        ring.open(7, "wallet_password", key_id, nonce, sealed)
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    with pytest.raises(secrets.SecretError):
        ring.open(7, "mnemonic", key_id, nonce, flipped)


def test_rotation_keeps_old_secrets_readable() -> None:
    old = KeyRing.parse(f"a:{KEY_A}", "a")
    sealed_with_a = old.seal(1, "wallet_password", Secret("pw-one"))
    rotated = KeyRing.parse(f"a:{KEY_A},b:{KEY_B}", "b")
    assert rotated.open(1, "wallet_password", *sealed_with_a).reveal() == "pw-one"
    assert rotated.seal(1, "wallet_password", Secret("pw-two"))[0] == "b"
    without_a = KeyRing.parse(f"b:{KEY_B}", "b")
    with pytest.raises(secrets.SecretError, match="unknown key 'a'"):
        without_a.open(1, "wallet_password", *sealed_with_a)


def test_the_first_stored_secret_wins_and_only_ciphertext_is_stored(db_url: str) -> None:
    [node_id] = add_nodes(db_url, ["vault"])
    ring = KeyRing.parse(f"a:{KEY_A}", "a")
    engine = create_engine(sqlalchemy_url(db_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        first = secrets.store_once(connection, ring, node_id, "mnemonic", Secret("first words"))
        second = secrets.store_once(connection, ring, node_id, "mnemonic", Secret("other words"))
        assert first.reveal() == second.reveal() == "first words"
        assert secrets.load(connection, ring, node_id, "api_root_key") is None
    engine.dispose()
    with psycopg.connect(db_url) as connection:
        dump = str(connection.execute("SELECT * FROM node_secrets").fetchall())
    assert "first words" not in dump
    assert fetch(db_url, "SELECT kind, key_id FROM node_secrets") == [("mnemonic", "a")]
