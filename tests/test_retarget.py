"""A new target for an update in progress. `UPDATE nodes SET state = 'update',
target_version = ...` on a node already updating used to answer UPDATE 1 while the worker
installed the old target and then cleared the new one, leaving nothing in the history.
Now the database refuses it, naming the target being installed, unless the update is
held (nothing runs): then the new target restarts the step and the history says so."""

import subprocess
from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import fetch, role_url
from tests.test_schema import WORKER, put_in_state

Fleet = Callable[..., subprocess.CompletedProcess[str]]
RETARGET = "UPDATE nodes SET state = 'update', target_version = '1.1.0' WHERE id = %s"


def updating_node(db_url: str) -> int:
    """A node in update to 1.0.0 (asked for by an app), with 1.1.0 also a known release."""
    with psycopg.connect(db_url, autocommit=True) as owner:
        node_id = put_in_state(owner, "upd", "stopped")
        owner.execute(
            "INSERT INTO releases (version, artifact_url, sha256)"
            " VALUES ('1.1.0', 's3://releases/1.1.0.tar.gz', repeat('b', 64))"
        )
    with psycopg.connect(role_url(db_url, "app"), autocommit=True) as app:
        app.execute(
            "UPDATE nodes SET state = 'update', target_version = '1.0.0' WHERE id = %s",
            (node_id,),
        )
    return node_id


def row(db_url: str, node_id: int) -> tuple[object, ...]:
    [found] = fetch(
        db_url,
        "SELECT state, target_version, held, attempts, lease_owner, step_run FROM nodes"
        " WHERE id = %s",
        node_id,
    )
    return found


def history(db_url: str, node_id: int) -> list[tuple[object, ...]]:
    return fetch(
        db_url,
        "SELECT event, from_state, to_state, detail FROM node_history"
        " WHERE node_id = %s AND event IN ('note', 'release') ORDER BY id",
        node_id,
    )


def refused(db_url: str, node_id: int) -> str:
    app = role_url(db_url, "app")
    with psycopg.connect(app, autocommit=True) as c, pytest.raises(psycopg.Error) as error:
        c.execute(RETARGET, (node_id,))
    assert error.value.sqlstate == "FL004"
    return str(error.value).splitlines()[0]


def test_a_new_target_for_a_due_update_is_refused_naming_the_running_one(db_url: str) -> None:
    node_id = updating_node(db_url)
    before = row(db_url, node_id)
    assert refused(db_url, node_id) == (
        "node upd is already updating to 1.0.0: ask for 1.1.0 once it is stopped"
    )
    assert row(db_url, node_id) == before
    assert history(db_url, node_id) == []


def test_a_new_target_for_a_leased_update_is_refused(db_url: str) -> None:
    node_id = updating_node(db_url)
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(
            "UPDATE nodes SET lease_owner = %s, lease_expires_at = now() + interval '1 minute',"
            " step_run = step_run + 1 WHERE id = %s",
            (WORKER, node_id),
        )
    before = row(db_url, node_id)
    assert "already updating to 1.0.0" in refused(db_url, node_id)
    assert row(db_url, node_id) == before


def test_the_same_target_again_changes_nothing(db_url: str) -> None:
    node_id = updating_node(db_url)
    before = row(db_url, node_id)
    with psycopg.connect(role_url(db_url, "app"), autocommit=True) as app:
        app.execute(
            "UPDATE nodes SET state = 'update', target_version = '1.0.0' WHERE id = %s",
            (node_id,),
        )
    assert row(db_url, node_id) == before


def test_a_held_update_takes_a_new_target_and_starts_again(db_url: str) -> None:
    """A held update runs nothing, so a new target cannot be lost: it releases the hold
    and the step runs afresh for it; the history notes the change and the release."""
    node_id = updating_node(db_url)
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(
            "UPDATE nodes SET held_at = now(), attempts = 5,"
            " last_error = 'checksum mismatch for 1.0.0' WHERE id = %s",
            (node_id,),
        )
    with psycopg.connect(role_url(db_url, "app"), autocommit=True) as app:
        assert app.execute(RETARGET, (node_id,)).rowcount == 1
    state, target, held, attempts, lease, _ = row(db_url, node_id)
    assert (state, target, held, attempts, lease) == ("update", "1.1.0", False, 0, None)
    assert history(db_url, node_id) == [
        ("note", "update", "update", "target version 1.0.0 -> 1.1.0"),
        ("release", "update", "update", None),
    ]


def test_the_command_line_retargets_only_a_held_update(db_url: str, fleet: Fleet) -> None:
    node_id = updating_node(db_url)
    with psycopg.connect(db_url, autocommit=True) as owner:
        name = owner.execute("SELECT name FROM nodes WHERE id = %s", (node_id,)).fetchone()
    assert name is not None
    running = fleet("node", "request", name[0], "update", "--version", "1.1.0")
    assert running.returncode == 2 and running.stdout == "", running
    assert running.stderr == (
        "error: node upd is already updating to 1.0.0: ask for 1.1.0 once it is stopped\n"
    )
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute("UPDATE nodes SET held_at = now() WHERE id = %s", (node_id,))
    held = fleet("node", "request", name[0], "update", "--version", "1.1.0")
    assert held.returncode == 0, held
    assert row(db_url, node_id)[:3] == ("update", "1.1.0", False)
