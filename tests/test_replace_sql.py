"""fleet_request_replace as the database decides it: which backup is clean, the refusal
without one, the states that may be replaced, who may ask, and that the 'replace' edges
are taken only through it. Each node's past is written as rows (its history as the
triggers and steps would have written it)."""

from collections.abc import Iterator

import psycopg
import pytest

from models.logins import FleetRole
from tests.conftest import add_nodes, fetch, role_url

PUBKEY = "02" + "ab" * 32
SHA = "cd" * 32


@pytest.fixture
def owner(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


def ran(owner: psycopg.Connection, db_url: str, name: str, state: str, held: bool = False) -> int:
    """A node that ran (pubkey recorded, host known), now in `state`; no history yet."""
    [node_id] = add_nodes(db_url, [name], state="new")
    owner.execute("SET session_replication_role = replica")  # the past, not a transition
    owner.execute(
        "UPDATE nodes SET state = %s, node_pubkey = %s, instance_id = 'i-0123456789abcdef0',"
        " address = '127.0.0.9', ssh_host_key = 'ssh-ed25519 AAAA',"
        " held_at = CASE WHEN %s THEN now() END WHERE id = %s",
        (state, PUBKEY, held, node_id),
    )
    owner.execute("DELETE FROM node_history WHERE node_id = %s", (node_id,))
    owner.execute("SET session_replication_role = origin")
    return node_id


def past(owner: psycopg.Connection, node_id: int, *events: tuple[str, str]) -> list[int]:
    """History rows in order: ('transition', to_state) or ('backup', key)."""
    ids = []
    for event, what in events:
        detail = f"s3://b/backups/t/{what} size=10 sha256={SHA}" if event == "backup" else None
        to_state = "stop" if event == "backup" else what
        row = owner.execute(
            "INSERT INTO node_history (node_id, event, to_state, actor, attempt, detail)"
            " VALUES (%s, %s, %s, 'test', 0, %s) RETURNING id",
            (node_id, event, to_state, detail),
        ).fetchone()
        assert row is not None
        ids.append(int(row[0]))
    return ids


def replace(
    db_url: str, name: str, accept: bool = False, role: FleetRole = "operator"
) -> tuple[object, ...]:
    with psycopg.connect(role_url(db_url, role), autocommit=True) as connection:
        row = connection.execute(
            "SELECT node_id, generation, backup FROM fleet_request_replace(%s, %s)", (name, accept)
        ).fetchone()
        assert row is not None
        return tuple(row)


def refused(
    db_url: str, name: str, sqlstate: str, accept: bool = False, role: FleetRole = "operator"
) -> str:
    with pytest.raises(psycopg.Error) as caught:
        replace(db_url, name, accept, role)
    assert caught.value.sqlstate == sqlstate, caught.value
    return str(caught.value.diag.message_primary)


def node(db_url: str, node_id: int) -> tuple[object, ...]:
    return tuple(fetch(
        db_url,
        "SELECT state, launch_generation, instance_id, address, ssh_host_key, held,"
        " node_pubkey FROM nodes WHERE id = %s",
        node_id,
    )[0])  # fmt: skip


def test_the_latest_backup_taken_locked_and_never_unlocked_since_is_chosen(
    owner: psycopg.Connection, db_url: str
) -> None:
    node_id = ran(owner, db_url, "clean", "stopped")
    past(owner, node_id, ("transition", "live"), ("backup", "one"), ("transition", "wallet"),
         ("transition", "live"), ("backup", "two"), ("transition", "stopped"))  # fmt: skip
    assert replace(db_url, "clean") == (node_id, 1, f"s3://b/backups/t/two size=10 sha256={SHA}")
    # A new host: the old one's id, address and key pin are forgotten; the node launches
    # anew (generation 1 is another ClientToken).
    assert node(db_url, node_id) == ("instance", 1, None, None, None, False, PUBKEY)
    [(generation, backup, accepted, done)] = fetch(
        db_url,
        "SELECT r.generation, h.detail, r.accept_channel_loss, r.done_at FROM node_replacements r"
        " JOIN node_history h ON h.id = r.backup_id WHERE r.node_id = %s",
        node_id,
    )
    assert (generation, accepted, done) == (1, False, None) and "/two " in backup
    notes = fetch(db_url, "SELECT detail, login FROM node_history WHERE node_id = %s"
                  " AND event = 'note'", node_id)  # fmt: skip
    assert len(notes) == 1 and "restored from the clean backup s3://b/backups/t/two" in notes[0][0]
    assert "operator" in notes[0][1]


@pytest.mark.parametrize("unlocked_again", ["wallet", "live"])
def test_a_backup_followed_by_an_unlock_is_not_restored(
    owner: psycopg.Connection, db_url: str, unlocked_again: str
) -> None:
    node_id = ran(owner, db_url, "unlocked", "live")
    past(owner, node_id, ("backup", "old"), ("transition", unlocked_again))
    message = refused(db_url, "unlocked", "FL040")
    assert "no backup taken while it was locked and never unlocked since" in message
    assert "penalty" in message and "accepting channel loss" in message
    assert node(db_url, node_id) == ("live", 0, "i-0123456789abcdef0", "127.0.0.9",
                                     "ssh-ed25519 AAAA", False, PUBKEY)  # fmt: skip
    assert fetch(db_url, "SELECT count(*) FROM node_replacements") == [(0,)]


def test_without_a_clean_backup_the_flag_asks_for_a_fresh_wallet_loudly(
    owner: psycopg.Connection, db_url: str
) -> None:
    node_id = ran(owner, db_url, "lost", "live")
    past(owner, node_id, ("backup", "old"), ("transition", "live"))
    assert replace(db_url, "lost", accept=True) == (node_id, 1, None)
    assert node(db_url, node_id)[:2] == ("instance", 1)
    [(backup, accepted)] = fetch(
        db_url, "SELECT backup_id, accept_channel_loss FROM node_replacements WHERE node_id = %s",
        node_id,
    )  # fmt: skip
    assert (backup, accepted) == (None, True)
    [(note,)] = fetch(db_url, "SELECT detail FROM node_history WHERE node_id = %s"
                      " AND event = 'note'", node_id)  # fmt: skip
    assert "CHANNEL LOSS" in note and "FRESH WALLET" in note


def test_a_verified_backup_line_only(owner: psycopg.Connection, db_url: str) -> None:
    """A bare URI (written before backups were verified) has no checksum to check."""
    node_id = ran(owner, db_url, "bare", "stopped")
    owner.execute(
        "INSERT INTO node_history (node_id, event, to_state, actor, attempt, detail)"
        " VALUES (%s, 'backup', 'stop', 'test', 0, 's3://b/old.rlnbackup')",
        (node_id,),
    )
    refused(db_url, "bare", "FL040")


@pytest.mark.parametrize(
    ("state", "held"),
    [("new", False), ("destroy", True), ("destroyed", False), ("start", False), ("stop", False)],
)
def test_states_that_are_not_replaced(
    owner: psycopg.Connection, db_url: str, state: str, held: bool
) -> None:
    node_id = ran(owner, db_url, "busy", state, held)
    past(owner, node_id, ("backup", "b"))
    refused(db_url, "busy", "FL041", accept=True)
    assert node(db_url, node_id)[:2] == (state, 0)


@pytest.mark.parametrize("state", ["instance", "key", "start", "wallet", "stop", "update"])
def test_a_held_work_state_is_replaced(owner: psycopg.Connection, db_url: str, state: str) -> None:
    node_id = ran(owner, db_url, "held", state, held=True)
    past(owner, node_id, ("backup", "b"))
    replace(db_url, "held")
    assert node(db_url, node_id)[:3] == ("instance", 1, None)
    assert node(db_url, node_id)[5] is False  # released


def test_a_node_that_never_ran_is_not_replaced(owner: psycopg.Connection, db_url: str) -> None:
    [node_id] = add_nodes(db_url, ["fresh"], state="new")
    refused(db_url, "fresh", "FL041", accept=True)
    assert refused(db_url, "nobody", "FL043") == "no node named nobody"
    assert node(db_url, node_id)[0] == "new"


def test_a_newer_request_supersedes_one_in_progress(owner: psycopg.Connection, db_url: str) -> None:
    node_id = ran(owner, db_url, "twice", "stopped")
    past(owner, node_id, ("backup", "b"))
    replace(db_url, "twice")
    owner.execute("UPDATE nodes SET held_at = now() WHERE id = %s", (node_id,))
    assert replace(db_url, "twice")[1] == 2
    rows = fetch(db_url, "SELECT generation, outcome FROM node_replacements WHERE node_id = %s"
                 " ORDER BY generation", node_id)  # fmt: skip
    assert rows == [(1, "superseded"), (2, None)]


@pytest.mark.parametrize("role", ["app", "reader", "worker", "watch"])
def test_only_operators_and_the_api_ask(
    owner: psycopg.Connection, db_url: str, role: FleetRole
) -> None:
    ran(owner, db_url, "mine", "stopped")
    refused(db_url, "mine", "42501", accept=True, role=role)  # no EXECUTE


def test_the_replace_edges_are_not_open_to_a_plain_update(
    owner: psycopg.Connection, db_url: str
) -> None:
    node_id = ran(owner, db_url, "sneaky", "stopped")
    for role in ("app", "operator"):
        with psycopg.connect(role_url(db_url, role), autocommit=True) as connection:
            with pytest.raises(psycopg.Error) as caught:
                connection.execute("UPDATE nodes SET state = 'instance' WHERE id = %s", (node_id,))
            assert caught.value.sqlstate == "FL041"
    assert node(db_url, node_id)[0] == "stopped"
