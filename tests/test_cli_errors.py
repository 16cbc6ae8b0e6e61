"""`fleet` never answers with a traceback: each failure the operator can act on is one
`error:` line, exit 2 for bad input or configuration, 1 for a service that does not
answer or is not ready. Every case runs the real command line against the test's
Postgres and Redis."""

import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import create_engine

from models.secrets import KeyRing, Secret, new_key, store_once
from models.session import sqlalchemy_url
from sim.services import Services, admin_execute, database_url
from tests.conftest import add_nodes, fetch, role_url

PASSWORD = "hunter2-not-for-eyes"
Args = tuple[str | bytes, ...]


def run(env: dict[str, str], *args: str | bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def assert_one_error(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, never a traceback
    assert lines[0].startswith("error: "), result.stderr
    assert message in lines[0], result.stderr
    assert result.returncode == code, result
    assert PASSWORD not in result.stdout + result.stderr


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def role_env(fleet_env: dict[str, str], db_url: str) -> dict[str, dict[str, str]]:
    """The environment of each process the cases run, with its own login."""
    return {
        role: {**fleet_env, "FLEET_DATABASE_URL": role_url(db_url, role)}
        for role in ("operator", "worker", "dispatcher", "api")
    }


BAD_SETTINGS: list[tuple[str, dict[str, str], Args, str]] = [
    ("operator", {"FLEET_DATABASE_URL": f"mysql://fleet:{PASSWORD}@db.example/fleet"},
     ("node", "list"), "FLEET_DATABASE_URL: mysql:// is not supported"),
    ("operator", {"FLEET_DATABASE_URL": f"postgresql://fleet:{PASSWORD}@db.example:5x/fleet"},
     ("node", "list"), "FLEET_DATABASE_URL: not a database URL"),
    ("operator", {"FLEET_OWNER_DATABASE_URL": f"postgres//fleet:{PASSWORD}@db/fleet"},
     ("db", "upgrade"), "FLEET_OWNER_DATABASE_URL: not a database URL"),
    ("worker", {"FLEET_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:63x9/0"},
     ("worker", "--burst"), "FLEET_REDIS_URL: not a Redis URL"),
    ("dispatcher", {"FLEET_REDIS_URL": f"http://:{PASSWORD}@127.0.0.1/0"},
     ("dispatcher",), "FLEET_REDIS_URL: not a Redis URL"),
    ("operator", {"FLEET_LEASE_SECONDS": "soon"},
     ("node", "list"), "FLEET_LEASE_SECONDS: Input should be a valid number"),
    ("worker", {"FLEET_LEASE_SECONDS": "-1"},
     ("worker", "--burst"), "FLEET_LEASE_SECONDS: Input should be greater than 0"),
    ("worker", {"FLEET_LOG_FORMAT": "xml"}, ("worker", "--burst"), "FLEET_LOG_FORMAT:"),
    ("worker", {"FLEET_LOG_LEVEL": "loud"}, ("worker", "--burst"), "FLEET_LOG_LEVEL:"),
    ("operator", {"FLEET_REGIONS": '{"eu-west-1": '},
     ("reconcile",), "FLEET_REGIONS: not valid JSON"),
    ("operator", {"FLEET_REGIONS": '{"eu-west-1": {}}'},
     ("reconcile",), "FLEET_REGIONS: eu-west-1.ami: Field required"),
    ("worker", {"FLEET_STEP_MODULES": "jobs.no_such_steps"},
     ("worker", "--burst"), "FLEET_STEP_MODULES: cannot import jobs.no_such_steps"),
    ("api", {"FLEET_API_OIDC_ISSUER": "https://issuer.example"},
     ("api", "--port", "99999"), "--port must be 0 to 65535, not 99999"),
    ("api", {}, ("api",), "FLEET_API_OIDC_ISSUER: Field required"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("role", "overrides", "args", "message"), BAD_SETTINGS, ids=[c[3] for c in BAD_SETTINGS]
)
def test_bad_settings_are_one_line_and_exit_2(
    role_env: dict[str, dict[str, str]],
    role: str,
    overrides: dict[str, str],
    args: Args,
    message: str,
) -> None:
    assert_one_error(run({**role_env[role], **overrides}, *args), 2, message)


@pytest.mark.parametrize(
    "args",
    [
        ("node", "create", b"new-\xff"),
        ("node", "request", b"taken\xff", "instance"),
        ("node", "request", "taken", b"destroy\xfe"),
        ("node", "show", b"\xfftaken"),
        ("node", "retry", b"taken\xc3"),
        ("node", "secrets", b"taken\x80"),
    ],
)
def test_names_that_are_not_utf8_are_refused_before_anything_runs(
    fleet_env: dict[str, str], operator_env: dict[str, str], db_url: str, args: Args
) -> None:
    add_nodes(db_url, ["taken"], state="new")
    before = fetch(db_url, "SELECT * FROM node_history ORDER BY id")
    assert_one_error(run(operator_env, *args), 2, "is not valid UTF-8")
    assert fetch(db_url, "SELECT * FROM node_history ORDER BY id") == before


def test_the_api_on_a_port_in_use_ends_with_one_error_line(
    role_env: dict[str, dict[str, str]],
) -> None:
    env = {**role_env["api"], "FLEET_API_OIDC_ISSUER": "https://issuer.example"}
    env["FLEET_API_OIDC_AUDIENCE"] = "fleet"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run(env, "api", "--port", str(port))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    # uvicorn's own line says why; the last says what the fleet could not do.
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: the API cannot listen on 127.0.0.1:{port}: see the log line above"


def test_an_unreachable_database_names_host_and_port_but_not_the_password(
    fleet_env: dict[str, str],
) -> None:
    port = closed_port()
    env = {**fleet_env, "FLEET_DATABASE_URL": f"postgresql://fleet:{PASSWORD}@127.0.0.1:{port}/x"}
    result = run(env, "node", "list")
    assert_one_error(result, 1, "cannot reach the database")
    assert f"port {port}" in result.stderr


@pytest.fixture
def unmigrated_url(services: Services) -> Iterator[str]:
    name = f"fleet_empty_{uuid.uuid4().hex[:12]}"
    admin_execute(services.postgres_url, f"CREATE DATABASE {name}")
    try:
        yield database_url(services.postgres_url, name)
    finally:
        admin_execute(services.postgres_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.parametrize("args", [("node", "list"), ("status",), ("node", "show", "n-1")])
def test_an_unmigrated_database_says_run_fleet_db_upgrade(
    fleet_env: dict[str, str], unmigrated_url: str, args: Args
) -> None:
    env = {**fleet_env, "FLEET_DATABASE_URL": unmigrated_url}
    assert_one_error(run(env, *args), 1, "the database is not migrated")
    assert "run fleet db upgrade" in run(env, *args).stderr


def test_unreachable_redis_is_one_line_and_exit_1(role_env: dict[str, dict[str, str]]) -> None:
    env = {**role_env["worker"], "FLEET_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}
    assert_one_error(run(env, "worker", "--burst"), 1, "cannot reach Redis")


def test_reconcile_with_aws_unreachable_is_one_line_and_exit_1(
    role_env: dict[str, dict[str, str]],
) -> None:
    env = {
        **role_env["operator"],
        "FLEET_REGIONS": '{"eu-west-1": {"ami": "ami-12345678"}}',
        "FLEET_AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
        "FLEET_EC2_MAX_RETRIES": "1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": PASSWORD,
    }
    assert_one_error(run(env, "reconcile"), 1, "cannot reach AWS")


class Vault:
    """Two secrets of node `keeper`, sealed under key k1."""

    def __init__(self, db_url: str, env: dict[str, str]) -> None:
        self.db_url = db_url
        self.key = f"k1:{new_key()}"
        [self.node_id] = add_nodes(db_url, ["keeper"])
        ring = KeyRing.parse(self.key, "k1")
        engine = create_engine(sqlalchemy_url(db_url), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            store_once(connection, ring, self.node_id, "wallet_password", Secret(PASSWORD))
            store_once(connection, ring, self.node_id, "mnemonic", Secret("abandon " * 11))
        engine.dispose()
        self.env = {**env, "FLEET_SECRET_KEYS": self.key, "FLEET_SECRET_KEY_ID": "k1"}

    def reveal(self, **overrides: str) -> subprocess.CompletedProcess[str]:
        return run({**self.env, **overrides}, "node", "secrets", "keeper", "--reveal")


@pytest.fixture
def vault(db_url: str, operator_env: dict[str, str]) -> Vault:
    return Vault(db_url, operator_env)


def test_reveal_prints_every_secret_when_all_open(vault: Vault) -> None:
    result = vault.reveal()
    assert result.returncode == 0, result.stderr
    assert f"wallet_password: {PASSWORD}" in result.stdout
    assert "mnemonic: abandon" in result.stdout


def test_reveal_prints_nothing_when_one_secret_is_tampered_with(vault: Vault) -> None:
    with psycopg.connect(vault.db_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE node_secrets SET ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0)"
            " # 1) WHERE kind = 'mnemonic'"
        )
    result = vault.reveal()
    assert result.stdout == ""
    assert_one_error(result, 1, "mnemonic does not open with key 'k1': tampered")
    assert "wallet_password" not in result.stderr


def test_reveal_prints_nothing_when_the_key_is_dropped(vault: Vault) -> None:
    result = vault.reveal(FLEET_SECRET_KEYS=f"k2:{new_key()}", FLEET_SECRET_KEY_ID="k2")
    assert result.stdout == ""
    assert_one_error(result, 1, "secrets do not open, none revealed")
    assert "wallet_password is sealed with unknown key 'k1'" in result.stderr
    assert "mnemonic is sealed with unknown key 'k1'" in result.stderr


def test_reveal_prints_nothing_with_a_wrong_key_under_the_right_id(vault: Vault) -> None:
    result = vault.reveal(FLEET_SECRET_KEYS=f"k1:{new_key()}")
    assert result.stdout == ""
    assert_one_error(result, 1, "wallet_password does not open with key 'k1'")
    assert vault.key.split(":")[1] not in result.stderr


USAGE_ERRORS: list[tuple[Args, str]] = [
    (("node", "show"), "Missing argument 'name'. (see fleet node show --help)"),
    (("node", "create", "a", "--bogus"), "No such option: --bogus (see fleet node create --help)"),
    (("nonsense",), "No such command 'nonsense'. (see fleet --help)"),
    (("api", "--port", "many"), "Invalid value for '--port'"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS)
def test_a_usage_error_is_one_line_too(
    role_env: dict[str, dict[str, str]], args: Args, message: str
) -> None:
    """typer's own answer is a box of several lines: the fleet says it in one."""
    assert_one_error(run(role_env["operator"], *args), 2, message)
