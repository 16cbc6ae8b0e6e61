"""The `fleet` command line, run as a real process against the test database."""

import json
import signal
import subprocess
import sys
from collections.abc import Callable

import psycopg
import pytest
import redis
from alembic.script import ScriptDirectory
from rq import Queue
from sqlalchemy import create_engine

import migrations
from models.secrets import KeyRing, Secret, store_once
from models.session import sqlalchemy_url
from tests.conftest import add_nodes, fetch, wait_until
from worker.settings import FleetSettings

Fleet = Callable[..., subprocess.CompletedProcess[str]]


def snapshot(db_url: str) -> list[object]:
    return [
        fetch(db_url, "SELECT * FROM nodes ORDER BY id"),
        fetch(db_url, "SELECT * FROM node_history ORDER BY id"),
    ]


def assert_refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, never a traceback
    assert lines[0].startswith("error: ")
    assert message in lines[0]


def test_db_upgrade_is_safe_to_repeat(fleet: Fleet, db_url: str) -> None:
    result = fleet("db", "upgrade")
    assert result.returncode == 0, result.stderr
    head = ScriptDirectory.from_config(migrations.alembic_config(db_url)).get_current_head()
    assert fetch(db_url, "SELECT version_num FROM alembic_version") == [(head,)]


def test_db_upgrade_can_create_the_database(
    fleet: Fleet, fleet_env: dict[str, str], db_url: str
) -> None:
    fresh = db_url.rsplit("/", 1)[0] + "/" + db_url.rsplit("/", 1)[1] + "_fresh"
    owner_env = {k: v for k, v in fleet_env.items() if k != "FLEET_OWNER_DATABASE_URL"}
    env = {**owner_env, "FLEET_DATABASE_URL": fresh}
    run = [sys.executable, "-m", "worker", "db", "upgrade", "--create"]
    first = subprocess.run(run, env=env, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert "database created" in first.stdout
    again = subprocess.run(run, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "created" not in again.stdout
    assert fetch(fresh, "SELECT count(*) FROM node_states") == [(11,)]
    with psycopg.connect(db_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {fresh.rsplit('/', 1)[1]} WITH (FORCE)")


def test_create_request_list_show(fleet: Fleet, db_url: str) -> None:
    created = fleet("node", "create", "alice-1", "--owner", "alice", "--version", "0.9.1")
    assert created.returncode == 0, created.stderr
    assert "alice-1 created in state new" in created.stdout
    started = fleet("node", "create", "bob-1", "--owner", "bob", "--start")
    assert "bob-1 created in state instance" in started.stdout

    moved = fleet("node", "request", "alice-1", "instance")
    assert moved.returncode == 0, moved.stderr
    assert fetch(db_url, "SELECT state FROM nodes WHERE name = 'alice-1'") == [("instance",)]

    listed = json.loads(fleet("node", "list", "--json").stdout)
    assert [(n["name"], n["state"], n["owner"]) for n in listed] == [
        ("alice-1", "instance", "alice"),
        ("bob-1", "instance", "bob"),
    ]
    assert "alice-1" in fleet("node", "list").stdout
    assert json.loads(fleet("node", "list", "--state", "new", "--json").stdout) == []

    shown = json.loads(fleet("node", "show", "alice-1", "--json").stdout)
    assert shown["node"]["current_version"] == "0.9.1"
    assert [(h["event"], h["from_state"], h["to_state"]) for h in shown["history"]] == [
        ("create", None, "new"),
        ("transition", "new", "instance"),
    ]
    assert shown["history"][1]["actor"].startswith("fleet-cli:")
    table = fleet("node", "show", "alice-1").stdout
    assert "history" in table and "transition" in table


def test_update_takes_a_target_version(fleet: Fleet, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as connection:
        add_nodes(db_url, ["upd-1"], state="new")
        connection.execute("SET session_replication_role = replica")
        connection.execute("UPDATE nodes SET state = 'live' WHERE name = 'upd-1'")
    assert_refused(
        fleet("node", "request", "upd-1", "update", "--version", "0.10.0"),
        "release 0.10.0 is not known",
    )
    added = fleet("release", "add", "0.10.0", "s3://releases/rln-0.10.0.tar.gz", "ab" * 32)
    assert added.returncode == 0, added.stderr
    result = fleet("node", "request", "upd-1", "update", "--version", "0.10.0")
    assert result.returncode == 0, result.stderr
    assert fetch(db_url, "SELECT state, target_version FROM nodes") == [("update", "0.10.0")]


def test_held_nodes_are_listed_and_retried(fleet: Fleet, db_url: str) -> None:
    add_nodes(db_url, ["stuck-1", "fine-1"])
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE nodes SET held_at = now(), attempts = 5, last_error = 'boom'"
            " WHERE name = 'stuck-1'"
        )
    held = json.loads(fleet("node", "list", "--held", "--json").stdout)
    assert [n["name"] for n in held] == ["stuck-1"]
    result = fleet("node", "retry", "stuck-1")
    assert result.returncode == 0, result.stderr
    assert fetch(db_url, "SELECT held, attempts FROM nodes WHERE name = 'stuck-1'") == [(False, 0)]
    events = fetch(db_url, "SELECT event, error FROM node_history WHERE event = 'release'")
    assert events == [("release", "boom")]


def test_status_counts_nodes_per_state(fleet: Fleet, db_url: str) -> None:
    add_nodes(db_url, ["s-1", "s-2"])
    add_nodes(db_url, ["s-3"], state="new")
    rows = {r["state"]: r for r in json.loads(fleet("status", "--json").stdout)}
    assert list(rows)[:3] == ["new", "instance", "key"]
    assert (rows["instance"]["nodes"], rows["instance"]["due"]) == (2, 2)
    assert rows["new"]["nodes"] == 1
    assert "instance" in fleet("status").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("node", "create", "Bad_Name"), "bad name 'Bad_Name'"),
        (("node", "create", "ok-1", "--region", "mars"), "bad region 'mars'"),
        (("node", "create", "ok-1", "--network", "moon"), "network"),
        (("node", "create", "ok-1", "--version", "latest"), "bad version 'latest'"),
        (("node", "create", "taken"), "a node named 'taken' already exists"),
        (("node", "request", "ghost", "instance"), "no node named 'ghost'"),
        (("node", "request", "taken", "live"), "illegal transition new -> live"),
        (("node", "request", "taken", "sideways"), "unknown state 'sideways'"),
        (("node", "request", "taken", "new"), "already in new"),
        (("node", "request", "taken", "update", "--version", "1.0.0"), "update"),
        (("node", "request", "taken", "instance", "--version", "1.0.0"), "target version only"),
        (("node", "request", "taken", "destroy", "--version", "x.y"), "bad version 'x.y'"),
        (("node", "show", "ghost"), "no node named 'ghost'"),
        (("node", "replace", "ghost"), "no node named 'ghost'"),
        (("node", "replace", "taken", "--accept-channel-loss"), "only a node that ran"),
        (("node", "retry", "taken"), "node 'taken' is not held"),
        (("node", "retry", "ghost"), "no node named 'ghost'"),
        (("node", "list", "--state", "sideways"), "unknown state 'sideways'"),
    ],
)
def test_bad_input_is_refused_with_one_line_and_changes_nothing(
    fleet: Fleet, db_url: str, args: tuple[str, ...], message: str
) -> None:
    add_nodes(db_url, ["taken"], state="new")
    before = snapshot(db_url)
    assert_refused(fleet(*args), message)
    assert snapshot(db_url) == before


def test_a_worker_edge_cannot_be_requested(fleet: Fleet, db_url: str) -> None:
    add_nodes(db_url, ["mid-1"])
    assert_refused(fleet("node", "request", "mid-1", "key"), "taken by the worker")


@pytest.mark.parametrize(
    ("state", "asked", "message"),
    [("stopped", "instance", "is a replacement of its host: ask for it with `fleet node replace`"),
     ("live", "start", "is a heal of the health watch")],
)  # fmt: skip
def test_edges_of_other_actors_are_refused_in_one_line(
    fleet: Fleet, db_url: str, state: str, asked: str, message: str
) -> None:
    [node_id] = add_nodes(db_url, ["other-1"], state="new")
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute("SET session_replication_role = replica")
        owner.execute("UPDATE nodes SET state = %s WHERE id = %s", (state, node_id))
    before = snapshot(db_url)
    assert_refused(fleet("node", "request", "other-1", asked), message)
    assert snapshot(db_url) == before


def test_usage_errors_exit_2(fleet: Fleet) -> None:
    result = fleet("node", "request", "only-a-name")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_an_unreachable_database_is_one_line(fleet: Fleet, fleet_env: dict[str, str]) -> None:
    env = {**fleet_env, "FLEET_DATABASE_URL": "postgresql://postgres@127.0.0.1:9/none"}
    result = subprocess.run(
        [sys.executable, "-m", "worker", "node", "list"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: cannot reach the database")


def test_worker_burst_runs_the_queue_dry_and_exits(fleet_env: dict[str, str], db_url: str) -> None:
    add_nodes(db_url, ["ok-burst"])
    burst = [sys.executable, "-m", "worker", "worker", "--burst"]
    # Nothing queued yet: exits at once.
    assert subprocess.run(burst, env=fleet_env, timeout=60, check=False).returncode == 0
    assert fetch(db_url, "SELECT state FROM nodes") == [("instance",)]


def test_dispatcher_runs_until_sigterm(
    fleet_env: dict[str, str], dispatcher_config: FleetSettings, db_url: str
) -> None:
    add_nodes(db_url, ["ok-d"])
    env = {**fleet_env, "FLEET_DATABASE_URL": dispatcher_config.database_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "dispatcher"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    queue = Queue(fleet_env["FLEET_QUEUE_NAME"], connection=redis.Redis.from_url(
        fleet_env["FLEET_REDIS_URL"]))  # fmt: skip
    # Start-up time varies with the machine's load; the job is the sign it is running.
    wait_until(lambda: queue.count == 1, 60, "the dispatcher queued the node's step")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert queue.count == 1


def test_releases_are_added_and_listed(fleet: Fleet) -> None:
    sha = "cd" * 32
    assert fleet("release", "add", "0.11.0", "s3://releases/rln-0.11.0.tar.gz", sha).returncode == 0
    added = fleet("release", "add", "0.12.0", "s3://releases/rln-0.12.0.tar.gz", sha,
                  "--wallet-format", "2")  # fmt: skip
    assert added.returncode == 0, added
    listed = json.loads(fleet("release", "list", "--json").stdout)
    assert listed == [
        {"version": "0.11.0", "artifact_url": "s3://releases/rln-0.11.0.tar.gz", "sha256": sha,
         "wallet_format": 1},
        {"version": "0.12.0", "artifact_url": "s3://releases/rln-0.12.0.tar.gz", "sha256": sha,
         "wallet_format": 2},
    ]  # fmt: skip
    assert_refused(fleet("release", "add", "0.11.0", "s3://releases/x", sha), "already known")
    assert_refused(
        fleet("release", "add", "0.13.0", "s3://releases/x", sha, "--wallet-format", "0"),
        "bad wallet format 0",
    )
    assert_refused(fleet("release", "add", "0.12.0", "ftp://r/x", sha), "bad artifact URL")
    assert_refused(fleet("release", "add", "0.12.0", "s3://releases/x", "abc"), "bad sha256")


def test_secrets_are_listed_and_revealed_only_on_request(
    fleet: Fleet, fleet_env: dict[str, str], db_url: str
) -> None:
    key_line = fleet("new-secret-key").stdout.strip()
    key_id = key_line.split(":", 1)[0]
    [node_id] = add_nodes(db_url, ["keeper"])
    ring = KeyRing.parse(key_line, key_id)
    engine = create_engine(sqlalchemy_url(db_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        store_once(connection, ring, node_id, "wallet_password", Secret("hunter2-hunter2"))
    engine.dispose()
    env = {**fleet_env, "FLEET_SECRET_KEYS": key_line, "FLEET_SECRET_KEY_ID": key_id}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    listed = run("node", "secrets", "keeper")
    assert "wallet_password" in listed.stdout and "hunter2" not in listed.stdout
    revealed = run("node", "secrets", "keeper", "--reveal")
    assert "wallet_password: hunter2-hunter2" in revealed.stdout
    assert "revealing the secrets of node keeper" in revealed.stderr


def test_status_and_show_say_what_the_watch_saw(fleet: Fleet, db_url: str) -> None:
    [healthy, locked, _] = add_nodes(db_url, ["h-ok", "h-locked", "h-new"], state="new")
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute("SET session_replication_role = replica")  # place rows in live
        owner.execute("UPDATE nodes SET state = 'live'")
        owner.execute("SET session_replication_role = DEFAULT")
        for node_id, status in ((healthy, "ok"), (locked, "locked")):
            owner.execute(
                "INSERT INTO node_health (node_id, status, detail, since, last_probe)"
                " VALUES (%s, %s, 'seen', now(), now())",
                (node_id, status),
            )
    rows = {r["state"]: r for r in json.loads(fleet("status", "--json").stdout)}
    assert rows["live"]["health"] == {"locked": 1, "ok": 1, "unprobed": 1}
    assert "live nodes by health: locked 1, ok 1, unprobed 1" in fleet("status").stdout
    shown = fleet("node", "show", "h-locked")
    assert "health: locked since " in shown.stdout and ": seen" in shown.stdout
    assert (
        json.loads(fleet("node", "show", "h-ok", "--json").stdout)["node"]["health"]["status"]
        == "ok"
    )
    assert "health:" not in fleet("node", "show", "h-new").stdout
