"""The migrations build the schema the code expects, and the database enforces the
lifecycle on its own: every pair of states is tried directly in SQL."""

import itertools
import json
import re

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from models import formats
from models.logins import FleetRole
from models.queries import query
from models.session import sqlalchemy_url
from models.states import ALL_STATES, NEXT_STATE, WORK_STATES
from models.tables import Base
from tests.conftest import fetch, role_url

APP_EDGES = {("new", "instance"), ("live", "stop"), ("stopped", "start"), ("live", "update"),
             ("stopped", "update"), ("live", "wallet")} | {
    (state, "destroy") for state in ALL_STATES if state not in ("destroy", "destroyed")
}  # fmt: skip
WORKER_EDGES = {("instance", "key"), ("key", "start"), ("start", "wallet"), ("wallet", "live"),
                ("stop", "stopped"), ("update", "stopped"), ("destroy", "destroyed")}  # fmt: skip
# The health watch's heals: only from live, only through fleet_heal_node().
WATCH_EDGES = {("live", "wallet"), ("live", "start"), ("live", "instance")}
# A replacement of a dead host: only through fleet_request_replace (tests/test_replace_sql.py).
REPLACE_EDGES = {(state, "instance") for state in
                 ("live", "stopped", "key", "start", "wallet", "stop", "update")}  # fmt: skip
WORKER = "fleet-worker:test:1:abcdef"


def put_in_state(connection: psycopg.Connection, name: str, state: str) -> int:
    """Test setup only: place a row in any state with the triggers switched off."""
    connection.execute(
        "INSERT INTO releases (version, artifact_url, sha256)"
        " VALUES ('1.0.0', 's3://releases/1.0.0.tar.gz', repeat('a', 64)) ON CONFLICT DO NOTHING"
    )
    row = connection.execute(
        "INSERT INTO nodes (name, owner, region, instance_type, network, target_version)"
        " VALUES (%s, 'tester', 'eu-west-1', 't3.small', 'regtest', '1.0.0') RETURNING id",
        (name,),
    ).fetchone()
    assert row is not None
    connection.execute("SET session_replication_role = replica")
    connection.execute("UPDATE nodes SET state = %s WHERE id = %s", (state, row[0]))
    connection.execute("SET session_replication_role = DEFAULT")
    return int(row[0])


def test_every_pair_of_states(db_url: str, logins: dict[FleetRole, str]) -> None:
    """Each of the 121 pairs, asked by an app (that even names itself like a worker) and,
    for worker edges, taken by a worker login holding the lease; for watch edges, healed
    by the watch's login through fleet_heal_node, which refuses every other pair."""
    app_url, worker_url = role_url(db_url, "app"), role_url(db_url, "worker")
    with (
        psycopg.connect(db_url, autocommit=True) as owner,
        psycopg.connect(app_url, autocommit=True, application_name=WORKER) as app,
        psycopg.connect(worker_url, autocommit=True, application_name=WORKER) as worker,
        psycopg.connect(role_url(db_url, "watch"), autocommit=True) as watch,
    ):
        for number, (before, after) in enumerate(itertools.product(ALL_STATES, ALL_STATES)):
            node_id = put_in_state(owner, f"pair-{number}", before)
            owner.execute(
                "UPDATE nodes SET lease_owner = %s, lease_expires_at = now() + interval '1m'"
                " WHERE id = %s",
                (WORKER, node_id),
            )
            history_before = fetch(db_url, "SELECT count(*) FROM node_history")
            taker = _take_pair(owner, app, worker, watch, node_id, before, after)
            allowed = taker is not None
            state = fetch(db_url, "SELECT state FROM nodes WHERE id = %s", node_id)[0][0]
            assert state == (after if allowed else before), (before, after)
            new_history = fetch(
                db_url,
                "SELECT event, from_state, to_state, login FROM node_history"
                " WHERE node_id = %s AND event = 'transition'",
                node_id,
            )
            # A row's "change" to the state it is in is not a transition: no history.
            expected = [("transition", before, after, _login(taker))] if taker else []
            assert new_history == expected
            heals = 1 if taker and (before, after) in WATCH_EDGES - APP_EDGES else 0
            assert fetch(db_url, "SELECT count(*) FROM node_history")[0][0] == (
                history_before[0][0] + (1 if allowed else 0) + heals
            )


def _take_pair(
    owner: psycopg.Connection,
    app: psycopg.Connection,
    worker: psycopg.Connection,
    watch: psycopg.Connection,
    node_id: int,
    before: str,
    after: str,
) -> str | None:
    """Try the move as each actor; the URL of the login that took it, or None."""
    asked = "UPDATE nodes SET state = %s WHERE id = %s"
    heal = "SELECT fleet_heal_node(%s, %s, 'test', 100, interval '1 hour')"
    if (before, after) in APP_EDGES or before == after:
        app.execute(asked, (after, node_id))
        return _url_of(app) if before != after else None
    with pytest.raises(psycopg.Error) as refused:
        app.execute(asked, (after, node_id))
    if (before, after) in WORKER_EDGES:
        assert refused.value.sqlstate == "FL002"
        worker.execute(asked, (after, node_id))
        return _url_of(worker)
    if (before, after) in WATCH_EDGES:
        assert refused.value.sqlstate == "FL005"
        with pytest.raises(psycopg.Error) as by_worker:
            worker.execute(asked, (after, node_id))
        assert by_worker.value.sqlstate == "FL005"
        # A heal never takes a node from a worker that holds it.
        assert watch.execute(heal, (node_id, after)).fetchone() == (None,)
        owner.execute("UPDATE nodes SET lease_owner = NULL, lease_expires_at = NULL"
                      " WHERE id = %s", (node_id,))  # fmt: skip
        assert watch.execute(heal, (node_id, after)).fetchone() == ("healed",)
        return _url_of(watch)
    if (before, after) in REPLACE_EDGES:
        assert refused.value.sqlstate == "FL041"
        with pytest.raises(psycopg.Error) as by_worker:
            worker.execute(asked, (after, node_id))
        assert by_worker.value.sqlstate == "FL041"
        return None
    assert refused.value.sqlstate == "FL001"
    assert f"illegal transition {before} -> {after}" in str(refused.value)
    if before == "live":
        with pytest.raises(psycopg.Error) as healed:
            watch.execute(heal, (node_id, after))
        assert healed.value.sqlstate == "FL001"
    return None


def _url_of(connection: psycopg.Connection) -> str:
    return f"postgresql://{connection.info.user}@/"


def _login(url: str) -> str:
    return str(make_url(url).username)


def test_database_edges_are_the_designed_ones(db_url: str) -> None:
    edges = fetch(db_url, "SELECT from_state, to_state, actor FROM node_edges")
    assert {(a, b) for a, b, actor in edges if actor == "app"} == APP_EDGES
    assert {(a, b) for a, b, actor in edges if actor == "worker"} == WORKER_EDGES
    assert {(a, b) for a, b, actor in edges if actor == "watch"} == WATCH_EDGES
    assert {(a, b) for a, b in WORKER_EDGES} == set(NEXT_STATE.items())
    kinds = dict(fetch(db_url, "SELECT state, kind FROM node_states"))
    assert set(kinds) == set(ALL_STATES)
    assert {s for s, kind in kinds.items() if kind == "work"} == set(WORK_STATES)


def test_worker_edge_needs_a_worker_login_and_a_lease(
    db_url: str, logins: dict[FleetRole, str]
) -> None:
    """Role membership authorises a worker edge: not the owner (superusers are refused
    too), not an app, and not a worker on a row nobody leased."""
    worker_url = role_url(db_url, "worker")
    with psycopg.connect(db_url, autocommit=True, application_name=WORKER) as owner:
        node_id = put_in_state(owner, "leased", "instance")
        with (
            psycopg.connect(worker_url, autocommit=True) as worker,
            pytest.raises(psycopg.Error) as refused,
        ):
            worker.execute("UPDATE nodes SET state = 'key' WHERE id = %s", (node_id,))
        assert refused.value.sqlstate == "FL002"
        owner.execute(
            "UPDATE nodes SET lease_owner = %s, lease_expires_at = now() + interval '1m'"
            " WHERE id = %s",
            (WORKER, node_id),
        )
        with pytest.raises(psycopg.Error) as refused:
            owner.execute("UPDATE nodes SET state = 'key' WHERE id = %s", (node_id,))
        assert refused.value.sqlstate == "FL002"
    assert fetch(db_url, "SELECT state FROM nodes WHERE id = %s", node_id) == [("instance",)]


def lease_row(db_url: str, node_id: int) -> list[tuple[object, ...]]:
    return fetch(db_url, "SELECT state, lease_owner, step_run FROM nodes WHERE id = %s", node_id)


@pytest.mark.parametrize(
    ("start", "bump", "kept"),
    [("instance", 1, True), ("instance", 0, False), ("wallet", 1, False)],
)
def test_the_lease_holder_keeps_its_lease_only_when_it_claims_a_next_step(
    db_url: str, logins: dict[FleetRole, str], start: str, bump: int, kept: bool
) -> None:
    """The step chain: instance -> key with step_run + 1 keeps the lease; without the
    bump, or into a state with no work (wallet -> live), the row is freed."""
    holder = "fleet-worker:test:1:chain"
    worker_url = role_url(db_url, "worker")
    with psycopg.connect(db_url, autocommit=True) as connection:
        node_id = put_in_state(connection, f"chain-{start}-{bump}", start)
        connection.execute(
            "UPDATE nodes SET lease_owner = %s, lease_expires_at = now() + interval '1m'"
            " WHERE id = %s",
            (holder, node_id),
        )
    target = "key" if start == "instance" else "live"
    with psycopg.connect(worker_url, autocommit=True, application_name=holder) as worker:
        worker.execute(
            "UPDATE nodes SET state = %s, step_run = step_run + %s WHERE id = %s",
            (target, bump, node_id),
        )
    [(state, owner, step_run)] = lease_row(db_url, node_id)
    assert (state, owner, step_run) == (target, holder if kept else None, bump)


def test_an_app_edge_never_keeps_a_lease(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as connection:
        node_id = put_in_state(connection, "app-chain", "live")
        connection.execute(
            "UPDATE nodes SET lease_owner = 'w', lease_expires_at = now() + interval '1m'"
            " WHERE id = %s",
            (node_id,),
        )
        connection.execute(
            "UPDATE nodes SET state = 'stop', step_run = step_run + 1 WHERE id = %s", (node_id,)
        )
    assert lease_row(db_url, node_id)[0][1] is None


def test_update_needs_a_target_version(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as connection:
        node_id = put_in_state(connection, "upd", "live")
        connection.execute("UPDATE nodes SET target_version = NULL WHERE id = %s", (node_id,))
        with pytest.raises(psycopg.Error) as refused:
            connection.execute("UPDATE nodes SET state = 'update' WHERE id = %s", (node_id,))
        assert refused.value.sqlstate == "FL003"


def test_an_app_request_takes_the_row_from_a_busy_worker(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as connection:
        node_id = put_in_state(connection, "busy", "instance")
        connection.execute(
            "UPDATE nodes SET lease_owner = 'w', lease_expires_at = now() + interval '1m',"
            " attempts = 2, held_at = now() WHERE id = %s",
            (node_id,),
        )
        connection.execute("UPDATE nodes SET state = 'destroy' WHERE id = %s", (node_id,))
    row = fetch(db_url, "SELECT lease_owner, attempts, held FROM nodes WHERE id = %s", node_id)
    assert row == [(None, 0, False)]


@pytest.mark.parametrize(
    ("column", "value"),
    [("name", "Bad_Name"), ("name", "-x"), ("region", "europe"), ("network", "moon"),
     ("instance_type", "huge"), ("owner", "has space"), ("current_version", "one")],
)  # fmt: skip
def test_bad_values_are_refused(db_url: str, column: str, value: str) -> None:
    good = {"name": "fine", "owner": "o", "region": "eu-west-1", "instance_type": "t3.small",
            "network": "regtest", "current_version": "1.2.3"}  # fmt: skip
    row = {**good, column: value}
    with psycopg.connect(db_url, autocommit=True) as connection, pytest.raises(psycopg.Error) as e:
        connection.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network, current_version)"
            " VALUES (%(name)s, %(owner)s, %(region)s, %(instance_type)s, %(network)s,"
            " %(current_version)s)",
            row,
        )
    assert e.value.sqlstate == "23514"  # check_violation
    assert fetch(db_url, "SELECT count(*) FROM nodes") == [(0,)]


def test_a_node_starts_in_new_or_instance(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as connection, pytest.raises(psycopg.Error) as e:
        connection.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network, state)"
            " VALUES ('x1', 'o', 'eu-west-1', 't3.small', 'regtest', 'live')"
        )
    assert e.value.sqlstate == "FL001"


def test_python_formats_match_the_check_constraints(db_url: str) -> None:
    definitions = dict(
        fetch(db_url, "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint")
    )
    pairs = {"nodes_name_format": formats.NAME, "nodes_owner_format": formats.OWNER,
             "nodes_region_format": formats.REGION,
             "nodes_instance_type_format": formats.INSTANCE_TYPE,
             "nodes_current_version_format": formats.VERSION,
             "nodes_target_version_format": formats.VERSION}  # fmt: skip
    for constraint, pattern in pairs.items():
        assert f"'{pattern}'" in str(definitions[constraint]), constraint


def test_migrations_build_what_the_models_map(db_url: str) -> None:
    engine = create_engine(sqlalchemy_url(db_url))
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    ours = [
        d for d in differences if not any(t in str(d) for t in ("alembic_version", "test_effects"))
    ]
    assert ours == []


def test_due_index_lists_exactly_the_work_states(db_url: str) -> None:
    definition = fetch(db_url, "SELECT indexdef FROM pg_indexes WHERE indexname = 'nodes_due'")
    listed = re.findall(r"'(\w+)'::text", str(definition[0][0]))
    assert sorted(listed) == sorted(WORK_STATES)


def test_due_query_scans_only_the_partial_index(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network)"
            " SELECT 'n' || i, 'o', 'eu-west-1', 't3.small', 'regtest'"
            " FROM generate_series(1, 20000) i"
        )
        connection.execute("SET session_replication_role = replica")
        connection.execute(
            "UPDATE nodes SET state = CASE WHEN id % 100 = 0 THEN 'instance' ELSE 'live' END"
        )
        connection.execute("SET session_replication_role = DEFAULT")
        connection.execute("ANALYZE nodes")
        sql = query("due_nodes").text.replace(":limit", "1000")
        plan = connection.execute(f"EXPLAIN (FORMAT JSON) {sql}").fetchone()
    assert plan is not None
    text = json.dumps(plan[0])
    assert '"Index Name": "nodes_due"' in text
    assert "Seq Scan" not in text
