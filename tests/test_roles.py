"""Least privilege, tried as a hostile app would: every write of what the fleet observed
or keeps for itself is refused by Postgres, whatever the session calls itself; an owner's
login sees and moves only its owner's nodes; a login reaches its own database only; the
fleet's processes refuse to run as a superuser or with another role's login."""

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from sqlalchemy.engine import make_url

import migrations
from models.logins import FleetRole
from sim.services import Services, admin_execute, database_url
from tests.conftest import TEMPLATE, fetch, role_url

Fleet = Callable[..., subprocess.CompletedProcess[str]]
WORKER_NAME = "fleet-worker:forged:1:abcdef"
INSUFFICIENT_PRIVILEGE = "42501"

# What an app must never do, each with what must stay as it was.
FORBIDDEN_FOR_APPS = {
    "redirect the address": "UPDATE nodes SET address = '203.0.113.9'",
    "clear the host key pin": "UPDATE nodes SET ssh_host_key = NULL",
    "adopt an instance": "UPDATE nodes SET instance_id = 'i-0123456789abcdef0'",
    "forge a lease": "UPDATE nodes SET lease_owner = 'fleet-worker:forged:1:abcdef',"
    " lease_expires_at = now() + interval '1 hour'",
    "release a hold": "UPDATE nodes SET held_at = NULL",
    "reset attempts": "UPDATE nodes SET attempts = 0",
    "replay a step run": "UPDATE nodes SET step_run = 0",
    "take another owner's node": "UPDATE nodes SET owner = 'mallory'",
    "change the node pubkey": "UPDATE nodes SET node_pubkey = '02' || repeat('a', 64)",
    "forget the wallet": "UPDATE nodes SET wallet_initialised_at = NULL",
    "read ciphertext": "SELECT * FROM node_secrets",
    "delete a mnemonic": "DELETE FROM node_secrets",
    "plant a secret": "INSERT INTO node_secrets (node_id, kind, key_id, nonce, ciphertext)"
    " SELECT id, 'mnemonic', 'k1', '\\x00', '\\x00' FROM nodes",
    "switch the triggers off": "ALTER TABLE nodes DISABLE TRIGGER ALL",
    "drop the lifecycle rule": "DROP TRIGGER nodes_check_transition ON nodes",
    "write history": "INSERT INTO node_history (node_id, event, to_state, actor, attempt)"
    " SELECT id, 'create', 'live', 'x', 0 FROM nodes",
    "add an edge": "INSERT INTO node_edges VALUES ('new', 'live', 'app')",
    "spend the launch budget": "UPDATE launch_budget SET tokens = 0",
    "replace the fleet id": "UPDATE fleet_identity SET fleet_id = repeat('0', 32)",
    "make a login": "SELECT fleet_create_login('evil', 'worker', NULL, 'x')",
    "heal a node": "SELECT fleet_heal_node(id, 'wallet', 'x', 9, interval '1h') FROM nodes",
    "hold a node as the watch": "SELECT fleet_watch_hold(id, 'x') FROM nodes",
    "forge health": "UPDATE node_health SET status = 'ok'",
    "create a table": "CREATE TABLE shadow (id int)",
}


def held_live_node(db_url: str, name: str = "wallet-1", owner: str = "alice") -> int:
    """A live node with everything an attacker wants: an address, a pin, a lease-free
    row, a stored secret; held, so that releasing the hold is a visible change."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        [(node_id,)] = connection.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network)"
            " VALUES (%s, %s, 'eu-west-1', 't3.small', 'regtest') RETURNING id",
            (name, owner),
        ).fetchall()
        connection.execute("SET session_replication_role = replica")
        connection.execute(
            "UPDATE nodes SET state = 'live', address = '127.0.0.9', instance_id = 'i-00000001',"
            " ssh_host_key = 'ssh-ed25519 AAAA', node_pubkey = '03' || repeat('b', 64),"
            " held_at = now(), attempts = 3, step_run = 7, wallet_initialised_at = now()"
            " WHERE id = %s",
            (node_id,),
        )
        connection.execute("SET session_replication_role = DEFAULT")
        connection.execute(
            "INSERT INTO node_secrets (node_id, kind, key_id, nonce, ciphertext)"
            " VALUES (%s, 'mnemonic', 'k1', '\\x01', '\\x02')",
            (node_id,),
        )
    return int(node_id)


def snapshot(db_url: str) -> list[tuple[object, ...]]:
    return fetch(db_url, "SELECT * FROM nodes ORDER BY id") + fetch(
        db_url, "SELECT * FROM node_secrets ORDER BY node_id, kind"
    )


@pytest.fixture
def owner_login(fleet: Fleet, db_url: str) -> Iterator[str]:
    """A login bound to owner alice, made with the real `fleet db create-login`."""
    name = f"alice_{uuid.uuid4().hex[:8]}"
    made = fleet("db", "create-login", name, "--role", "app", "--owner", "alice")
    assert made.returncode == 0, made.stderr
    assert "shown once" in made.stderr
    yield made.stdout.strip()
    dropped = fleet("db", "drop-login", name)
    assert dropped.returncode == 0, dropped.stderr
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(made.stdout.strip()).close()


@pytest.mark.parametrize("attack", sorted(FORBIDDEN_FOR_APPS))
@pytest.mark.parametrize("role", ["app", "api", "reader"])
def test_apps_cannot_touch_what_the_fleet_keeps(
    db_url: str, logins: dict[FleetRole, str], role: FleetRole, attack: str
) -> None:
    held_live_node(db_url)
    before = snapshot(db_url)
    url = role_url(db_url, role)
    # The session even names itself like a worker: application_name authorises nothing.
    with (
        psycopg.connect(url, autocommit=True, application_name=WORKER_NAME) as app,
        pytest.raises(psycopg.Error) as refused,
    ):
        app.execute(FORBIDDEN_FOR_APPS[attack])
    assert refused.value.sqlstate == INSUFFICIENT_PRIVILEGE, str(refused.value)
    assert snapshot(db_url) == before


def test_an_owner_login_cannot_touch_what_the_fleet_keeps(owner_login: str, db_url: str) -> None:
    held_live_node(db_url)
    before = snapshot(db_url)
    for attack, statement in FORBIDDEN_FOR_APPS.items():
        with (
            psycopg.connect(owner_login, autocommit=True) as app,
            pytest.raises(psycopg.Error) as e,
        ):
            app.execute(statement)
        assert e.value.sqlstate == INSUFFICIENT_PRIVILEGE, attack
    assert snapshot(db_url) == before


def test_an_app_asks_for_nodes_and_moves(db_url: str, logins: dict[FleetRole, str]) -> None:
    node_id = held_live_node(db_url)
    with psycopg.connect(role_url(db_url, "app"), autocommit=True) as app:
        [(new_id,)] = app.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network, state)"
            " VALUES ('fresh-1', 'alice', 'eu-west-1', 't3.small', 'regtest', 'instance')"
            " RETURNING id"
        ).fetchall()
        assert app.execute("SELECT fleet_retry_node('wallet-1')").fetchall() == [(node_id,)]
        app.execute("UPDATE nodes SET state = 'stop' WHERE id = %s", (node_id,))
        assert app.execute("SELECT count(*) FROM fleet_nodes").fetchall() == [(2,)]
        assert app.execute("SELECT count(*) FROM node_history").fetchall()[0][0] >= 3
    rows = fetch(db_url, "SELECT id, state, held FROM nodes ORDER BY id")
    assert rows == [(node_id, "stop", False), (new_id, "instance", False)]
    logged = fetch(db_url, "SELECT DISTINCT login FROM node_history WHERE node_id = %s", new_id)
    assert logged == [(make_url(role_url(db_url, "app")).username,)]


def test_an_insert_cannot_set_what_the_fleet_observes(db_url: str) -> None:
    """Even the owner's INSERT is a request: observed facts and bookkeeping start empty."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network, state, address,"
            " instance_id, step_run, attempts, next_attempt_at, created_at, lease_owner,"
            " lease_expires_at, held_at, wallet_initialised_at)"
            " VALUES ('sneaky', 'o', 'eu-west-1', 't3.small', 'regtest', 'instance', '1.2.3.4',"
            " 'i-00000042', 9223372036854775807, 4, 'infinity', '1970-01-01', 'w', now(), now(),"
            " now())"
        )
    [row] = fetch(
        db_url,
        "SELECT address, instance_id, step_run, attempts, next_attempt_at <= now(),"
        " created_at > now() - interval '1 minute', lease_owner, held, wallet_initialised_at"
        " FROM nodes",
    )
    assert row == (None, None, 0, 0, True, True, None, False, None)


def test_an_owner_login_sees_and_moves_only_its_owners_nodes(owner_login: str, db_url: str) -> None:
    alice = held_live_node(db_url, "alice-1", "alice")
    bob = held_live_node(db_url, "bob-1", "bob")
    with psycopg.connect(owner_login, autocommit=True) as app:
        assert app.execute("SELECT id FROM nodes").fetchall() == [(alice,)]
        assert app.execute("SELECT name FROM fleet_nodes").fetchall() == [("alice-1",)]
        assert {r[0] for r in app.execute("SELECT node_id FROM node_history")} == {alice}
        live = app.execute("SELECT nodes FROM fleet_status WHERE state = 'live'").fetchall()
        assert live == [(1,)]
        moved = app.execute("UPDATE nodes SET state = 'stop' WHERE id = %s", (bob,))
        assert moved.rowcount == 0
        assert app.execute("SELECT fleet_retry_node('bob-1')").fetchall() == [(None,)]
        with pytest.raises(psycopg.Error) as refused:
            app.execute(
                "INSERT INTO nodes (name, owner, region, instance_type, network)"
                " VALUES ('planted', 'bob', 'eu-west-1', 't3.small', 'regtest')"
            )
        assert refused.value.sqlstate == INSUFFICIENT_PRIVILEGE  # row-level security
        assert app.execute("SELECT fleet_retry_node('alice-1')").fetchall() == [(alice,)]
    assert fetch(db_url, "SELECT name, state, held FROM nodes ORDER BY id") == [
        ("alice-1", "live", False),
        ("bob-1", "live", True),
    ]


def test_a_login_reaches_its_own_database_only(
    owner_login: str, db_url: str, logins: dict[FleetRole, str]
) -> None:
    """Roles are cluster-wide: a second fleet's database in the same cluster (migrated
    here from scratch, after the template) admits none of this fleet's logins."""
    other = f"fleet_other_{uuid.uuid4().hex[:8]}"
    admin = db_url.rsplit("/", 1)[0] + "/postgres"
    admin_execute(admin, f"CREATE DATABASE {other}")
    try:
        migrations.upgrade(database_url(admin, other))
        # Each migrated database is a fleet of its own (the template was migrated too).
        ids = "SELECT fleet_id FROM fleet_identity"
        assert fetch(database_url(admin, other), ids) != fetch(database_url(admin, TEMPLATE), ids)
        for url in (owner_login, role_url(db_url, "worker")):
            elsewhere = make_url(url).set(database=other).render_as_string(hide_password=False)
            with pytest.raises(psycopg.OperationalError) as refused:
                psycopg.connect(elsewhere).close()
            assert "permission denied for database" in str(refused.value)
        # Created here, the login still works here.
        psycopg.connect(owner_login).close()
        # Even let in by a CONNECT grant nobody meant, another fleet's logins get nothing:
        # row-level security asks this database's own list of logins.
        other_url = database_url(admin, other)
        with psycopg.connect(other_url, autocommit=True) as owner:
            owner.execute(
                "INSERT INTO nodes (name, owner, region, instance_type, network)"
                " VALUES ('alice-9', 'alice', 'eu-west-1', 't3.small', 'regtest')"
            )
            owner.execute(
                "INSERT INTO node_secrets (node_id, kind, key_id, nonce, ciphertext)"
                " SELECT id, 'mnemonic', 'k1', '\\x01', '\\x02' FROM nodes"
            )
            owner.execute("SET session_replication_role = replica")
            owner.execute("UPDATE nodes SET state = 'instance', lease_owner = 'w',"
                          " lease_expires_at = now() + interval '1 hour'")  # fmt: skip
            for url in (owner_login, role_url(db_url, "worker")):
                login = make_url(url).username
                owner.execute(f"GRANT CONNECT ON DATABASE {other} TO {login}")
        stray_worker = make_url(role_url(db_url, "worker")).set(database=other)
        with psycopg.connect(
            stray_worker.render_as_string(hide_password=False), autocommit=True
        ) as stray:
            assert stray.execute("SELECT count(*) FROM nodes").fetchall() == [(0,)]
            assert stray.execute("SELECT count(*) FROM node_secrets").fetchall() == [(0,)]
            stray.execute("UPDATE nodes SET state = 'key'")  # sees no row to move
        stray_app = make_url(owner_login).set(database=other)
        with psycopg.connect(stray_app.render_as_string(hide_password=False)) as stray:
            assert stray.execute("SELECT count(*) FROM fleet_nodes").fetchall() == [(0,)]
        assert fetch(other_url, "SELECT state FROM nodes") == [("instance",)]
    finally:
        admin_execute(admin, f"DROP DATABASE {other} WITH (FORCE)")


@pytest.mark.parametrize(
    ("role", "statement"),
    [
        ("worker", "DELETE FROM node_secrets"),
        ("worker", "UPDATE node_secrets SET key_id = 'k2'"),
        ("worker", "UPDATE nodes SET owner = 'mallory'"),
        ("worker", "ALTER TABLE nodes DISABLE TRIGGER ALL"),
        ("dispatcher", "SELECT * FROM node_secrets"),
        ("dispatcher", "UPDATE nodes SET address = '203.0.113.9'"),
        ("operator", "DELETE FROM node_secrets"),
        ("operator", "UPDATE nodes SET address = '203.0.113.9'"),
        ("operator", "ALTER TABLE nodes DISABLE TRIGGER ALL"),
        ("watch", "UPDATE nodes SET state = 'wallet'"),
        ("watch", "UPDATE nodes SET held_at = NULL"),
        ("watch", "UPDATE nodes SET address = '203.0.113.9'"),
        (
            "watch",
            "INSERT INTO node_history (node_id, event, to_state, actor, attempt)"
            " SELECT id, 'heal', 'live', 'x', 0 FROM nodes",
        ),
        ("watch", "DELETE FROM node_health"),
        ("watch", "UPDATE node_secrets SET key_id = 'k2'"),
    ],
)
def test_each_process_has_only_what_it_needs(
    db_url: str, logins: dict[FleetRole, str], role: FleetRole, statement: str
) -> None:
    held_live_node(db_url)
    before = snapshot(db_url)
    with (
        psycopg.connect(role_url(db_url, role), autocommit=True) as session,
        pytest.raises(psycopg.Error) as refused,
    ):
        session.execute(statement)
    assert refused.value.sqlstate == INSUFFICIENT_PRIVILEGE
    assert snapshot(db_url) == before


@pytest.mark.parametrize(
    ("process", "login", "says"),
    [
        ("worker", "owner", "connects as superuser"),
        ("worker", "app", "not a fleet_worker"),
        ("dispatcher", "worker", "not a fleet_dispatcher"),
        ("dispatcher", "owner", "connects as superuser"),
        ("watch", "worker", "not a fleet_watch"),
        ("watch", "owner", "connects as superuser"),
    ],
)
def test_processes_refuse_other_logins(
    fleet_env: dict[str, str],
    db_url: str,
    logins: dict[FleetRole, str],
    process: str,
    login: str,
    says: str,
) -> None:
    url = db_url if login == "owner" else role_url(db_url, login)  # type: ignore[arg-type]
    result = subprocess.run(
        [sys.executable, "-m", "worker", process, *(["--burst"] if process == "worker" else [])],
        env={**fleet_env, "FLEET_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and says in line
    assert "fleet db create-login" in line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["Bad-Name", "--role", "app"], "bad login name"),
        (["ok_name", "--role", "root"], "unknown role 'root'"),
        (["ok_name", "--role", "worker", "--owner", "alice"], "--owner goes with"),
        (["ok_name", "--role", "app", "--owner", "has space"], "bad owner"),
        (["postgres", "--role", "app"], "already exists"),
    ],
)
def test_create_login_refuses_bad_input(fleet: Fleet, args: list[str], says: str) -> None:
    result = fleet("db", "create-login", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and says in line


@pytest.mark.parametrize("name", ["postgres", "nobody_here"])
def test_drop_login_takes_only_logins_it_made(fleet: Fleet, name: str) -> None:
    result = fleet("db", "drop-login", name)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line == f"error: no login named {name} was made for this database"


def test_a_made_login_connects_as_itself_with_its_role(owner_login: str) -> None:
    with psycopg.connect(owner_login) as connection:
        [(login, member, owner)] = connection.execute(
            "SELECT session_user, pg_has_role(session_user, 'fleet_app', 'MEMBER'),"
            " fleet_login_owner()"
        ).fetchall()
    assert (login, member, owner) == (make_url(owner_login).username, True, "alice")


def test_the_rules_files_can_be_applied_again_without_change(db_url: str) -> None:
    """functions.sql and privileges.sql are the one home of the rules in force: applying
    them again to a migrated database changes no function, trigger, grant or policy."""

    def rules() -> list[tuple[object, ...]]:
        return fetch(
            db_url,
            "SELECT 'function', p.proname, pg_get_functiondef(p.oid), p.proacl::text"
            " FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'public'"
            " UNION ALL SELECT 'trigger', tgname, pg_get_triggerdef(oid), NULL FROM pg_trigger"
            " WHERE NOT tgisinternal"
            " UNION ALL SELECT 'table', relname, relrowsecurity::text, relacl::text FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relname <> 'test_effects'"
            " UNION ALL SELECT 'policy', policyname, qual, roles::text FROM pg_policies"
            " ORDER BY 1, 2",
        )

    before = rules()
    sql = migrations.MIGRATIONS_DIR / "sql"
    with psycopg.connect(db_url, autocommit=True) as connection:
        for name in ("functions.sql", "privileges.sql"):
            connection.execute((sql / name).read_text())
    assert rules() == before


def test_a_deployment_keeps_its_own_password_and_can_run_create_login_again(
    fleet: Fleet, operator_env: dict[str, str], db_url: str
) -> None:
    """compose's migrate service: --password-env, and --if-missing on every start. The
    password reaches Postgres only as a SCRAM verifier and is never printed."""
    name, password = f"deploy_{uuid.uuid4().hex[:8]}", "s3cret-" + uuid.uuid4().hex
    command = [sys.executable, "-m", "worker", "db", "create-login", name, "--role", "worker",
               "--password-env", "DEPLOY_DB_PASSWORD", "--if-missing"]  # fmt: skip
    env = {**operator_env, "DEPLOY_DB_PASSWORD": password}
    for _ in range(2):
        made = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert made.returncode == 0, made.stderr
        assert password not in made.stdout + made.stderr
    assert "left as it is" in made.stderr
    [(stored,)] = fetch(db_url, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", name)
    assert stored.startswith("SCRAM-SHA-256$4096:") and password not in stored
    other_role = [*command[:7], "dispatcher", *command[8:]]
    refused = subprocess.run(other_role, env=env, capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "already exists" in refused.stderr
    unset = subprocess.run(command, env=operator_env, capture_output=True, text=True, check=False)
    assert unset.returncode == 2 and "DEPLOY_DB_PASSWORD" in unset.stderr
    assert fleet("db", "drop-login", name).returncode == 0


def test_a_database_made_by_an_older_version_gets_the_roles(services: Services) -> None:
    """`fleet db upgrade` of a fleet from before the roles: its live node keeps everything,
    counts as initialised (its mnemonic is never replaced), and apps are refused as here."""
    name = f"fleet_old_{uuid.uuid4().hex[:8]}"
    admin_execute(services.postgres_url, f"CREATE DATABASE {name}")
    url = database_url(services.postgres_url, name)
    try:
        migrations.upgrade(url, "0004_step_chain")
        with psycopg.connect(url, autocommit=True) as old:
            old.execute(
                "INSERT INTO nodes (name, owner, region, instance_type, network)"
                " VALUES ('old-1', 'o', 'eu-west-1', 't3.small', 'regtest')"
            )
            old.execute("SET session_replication_role = replica")
            old.execute("UPDATE nodes SET state = 'live', node_pubkey = '02' || repeat('c', 64)")
        migrations.upgrade(url)
        [(state, initialised)] = fetch(
            url, "SELECT state, wallet_initialised_at IS NOT NULL FROM nodes"
        )
        assert (state, initialised) == ("live", True)
        assert fetch(url, "SELECT count(*) FROM fleet_identity") == [(1,)]
        with psycopg.connect(url, autocommit=True) as owner:
            owner.execute("SELECT fleet_create_login('old_app_login', 'app', NULL, 'x')")
        app_url = make_url(url).set(username="old_app_login").render_as_string(False)
        with psycopg.connect(app_url, autocommit=True) as app, pytest.raises(psycopg.Error) as e:
            app.execute("UPDATE nodes SET address = '203.0.113.9'")
        assert e.value.sqlstate == INSUFFICIENT_PRIVILEGE
    finally:
        admin_execute(services.postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin_execute(services.postgres_url, "DROP ROLE IF EXISTS old_app_login")


def test_the_watch_reads_only_the_api_root_key(db_url: str, logins: dict[FleetRole, str]) -> None:
    """It signs read-only probe tokens with the root key; a wallet password or a
    mnemonic is never within its reach, not even as ciphertext."""
    node_id = held_live_node(db_url)
    with psycopg.connect(db_url, autocommit=True) as owner:
        for kind in ("api_root_key", "mnemonic", "wallet_password"):
            owner.execute(
                "INSERT INTO node_secrets (node_id, kind, key_id, nonce, ciphertext)"
                " VALUES (%s, %s, 'k1', '\\x00', '\\x00') ON CONFLICT DO NOTHING",
                (node_id, kind),
            )
    with psycopg.connect(role_url(db_url, "watch"), autocommit=True) as watch:
        kinds = watch.execute("SELECT DISTINCT kind FROM node_secrets").fetchall()
    assert kinds == [("api_root_key",)]
