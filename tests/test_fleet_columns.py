"""The fleet's own columns are the fleet's: an INSERT cannot set them, no app login can
write step_run, their text is bounded, and a step whose claim the database refuses (here:
step_run at the bigint maximum, so step_run + 1 overflows) is counted and held at the
attempt limit with the reason, instead of failing its job forever."""

import psycopg
import pytest

from models.logins import FleetRole
from models.queries import query
from models.session import statement_engine_for
from tests.conftest import add_nodes, fetch, role_url
from worker.reconcile import NEEDS_INSTANCE
from worker.runtime import start_runtime
from worker.settings import FleetSettings

BIGINT_MAX = 9223372036854775807
NOT_WORKERS: tuple[FleetRole, ...] = ("app", "reader", "api", "operator", "dispatcher")


def test_an_insert_resets_every_fleet_column(db_url: str) -> None:
    """Finding: step_run at the bigint maximum, next_attempt_at 'infinity', a 5 MB
    last_error, a 1970 created_at. The insert trigger resets them all (it did so before
    this test was written: the test proves it for each)."""
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network, state, step_run,"
            " attempts, next_attempt_at, last_error, created_at, updated_at, held_at,"
            " lease_owner, lease_expires_at)"
            " VALUES ('sneaky', 'o', 'eu-west-1', 't3.small', 'regtest', 'instance', %s, 4,"
            " 'infinity', repeat('x', 5000000), '1970-01-01', '1970-01-01', now(), 'w',"
            " 'infinity')",
            (BIGINT_MAX,),
        )
    [row] = fetch(
        db_url,
        "SELECT step_run, attempts, next_attempt_at <= now(), last_error,"
        " created_at > now() - interval '1 minute', updated_at > now() - interval '1 minute',"
        " held, lease_owner, lease_expires_at FROM nodes",
    )
    assert row == (0, 0, True, None, True, True, False, None, None)


@pytest.mark.parametrize("role", NOT_WORKERS)
def test_only_workers_write_step_run(db_url: str, role: FleetRole) -> None:
    """So after the insert's reset only claims move it, one at a time: 2^63 claims is
    no risk in practice."""
    [node_id] = add_nodes(db_url, ["alpha"])
    with (
        psycopg.connect(role_url(db_url, role), autocommit=True) as login,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        login.execute("UPDATE nodes SET step_run = %s WHERE id = %s", (BIGINT_MAX, node_id))
    assert fetch(db_url, "SELECT step_run FROM nodes") == [(0,)]


def test_last_error_is_bounded(db_url: str) -> None:
    [node_id] = add_nodes(db_url, ["alpha"])
    operator = role_url(db_url, "operator")
    with (
        psycopg.connect(operator, autocommit=True) as login,
        pytest.raises(psycopg.errors.CheckViolation),
    ):
        login.execute("UPDATE nodes SET last_error = repeat('x', 1001) WHERE id = %s", (node_id,))
    # The fleet's own writes truncate to fit: reconcile's hold with a long reason.
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute("SET session_replication_role = replica")  # setup: straight to live
        owner.execute(
            "UPDATE nodes SET state = 'live', instance_id = 'i-0123456789abcdef0' WHERE id = %s",
            (node_id,),
        )
    engine = statement_engine_for(role_url(db_url, "dispatcher"), "test-dispatcher")
    params = {"node_id": node_id, "error": "y" * 5000, "states": list(NEEDS_INSTANCE),
              "instance_id": "i-0123456789abcdef0"}  # fmt: skip
    with engine.connect() as connection:
        held = connection.execute(query("hold_node"), params)
        assert held.first() is not None
    assert fetch(db_url, "SELECT char_length(last_error), held FROM nodes") == [(1000, True)]


def test_a_claim_the_database_refuses_is_held_after_the_attempt_limit(
    db_url: str, config: FleetSettings
) -> None:
    [node_id] = add_nodes(db_url, ["alpha"])
    with psycopg.connect(db_url, autocommit=True) as owner:
        # Only the schema owner can do this: a row whose claim overflows.
        owner.execute("UPDATE nodes SET step_run = %s WHERE id = %s", (BIGINT_MAX, node_id))
    # The claim fails before any handler: the fleet's own steps, which other tests'
    # imports may have registered in this process already (tests/steps.py would clash).
    runtime = start_runtime(config.model_copy(update={"step_modules": "jobs.steps"}))
    results = []
    for _ in range(config.max_attempts):
        results.append(runtime.run(node_id, "instance", BIGINT_MAX))
        with psycopg.connect(db_url, autocommit=True) as owner:  # due again at once
            owner.execute("UPDATE nodes SET next_attempt_at = now() WHERE id = %s", (node_id,))
    assert results == ["error"] * (config.max_attempts - 1) + ["held"]
    [(attempts, held, error, lease, step_run)] = fetch(
        db_url, "SELECT attempts, held, last_error, lease_owner, step_run FROM nodes"
    )
    assert (attempts, held, lease, step_run) == (config.max_attempts, True, None, BIGINT_MAX)
    assert error == "claim refused by the database: NumericValueOutOfRange: bigint out of range"
    assert fetch(db_url, "SELECT event, error FROM node_history WHERE event = 'hold'") == [
        ("hold", error)
    ]
    # Held: a further copy of the job claims nothing and counts nothing.
    assert runtime.run(node_id, "instance", BIGINT_MAX) == "skipped"
    assert fetch(db_url, "SELECT attempts FROM nodes") == [(config.max_attempts,)]
