"""Key retirement: `fleet secrets reseal` moves every secret to the active key, safe to
interrupt, rerun and run twice at once; `fleet secrets status` says when a key can go."""

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Set
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine

from models import reseal, secrets
from models.secrets import KeyRing, Secret, SecretKind
from models.session import sqlalchemy_url
from tests.conftest import add_nodes, fetch, wait_until

OLD_KEY = base64.b64encode(os.urandom(32)).decode()
NEW_KEY = base64.b64encode(os.urandom(32)).decode()
LOST_KEY = base64.b64encode(os.urandom(32)).decode()
OLD_RING = KeyRing.parse(f"old:{OLD_KEY}", "old")
ROTATED_RING = KeyRing.parse(f"old:{OLD_KEY},new:{NEW_KEY}", "new")
ROTATED = {"FLEET_SECRET_KEYS": f"old:{OLD_KEY},new:{NEW_KEY}", "FLEET_SECRET_KEY_ID": "new"}
NEW_ONLY = {"FLEET_SECRET_KEYS": f"new:{NEW_KEY}", "FLEET_SECRET_KEY_ID": "new"}
KINDS: tuple[SecretKind, ...] = ("api_root_key", "mnemonic", "wallet_password")

Run = Callable[..., subprocess.CompletedProcess[str]]


class Vault:
    """The secrets a test stored: what each row must still open to, and what no
    command may ever print (with the keys)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.values: dict[tuple[int, SecretKind], str] = {}

    def store(self, ring: KeyRing, node_ids: list[int]) -> None:
        with self.engine.connect() as connection:
            for node_id in node_ids:
                for kind in KINDS:
                    value = f"{kind}-{uuid.uuid4().hex}"
                    secrets.store_once(connection, ring, node_id, kind, Secret(value))
                    self.values[node_id, kind] = value

    def assert_not_in(self, text: str) -> None:
        # A count, not the values: the test's own report must not print them either.
        printed = sum(v in text for v in [OLD_KEY, NEW_KEY, LOST_KEY, *self.values.values()])
        assert printed == 0, f"{printed} secret(s) or key(s) appear in the command's output"

    def assert_all_open(self, ring: KeyRing, *, but: Set[tuple[int, str]] = frozenset()) -> None:
        with self.engine.connect() as connection:
            for (node_id, kind), value in self.values.items():
                if (node_id, kind) not in but:
                    opened = secrets.load(connection, ring, node_id, kind)
                    assert opened is not None and opened.reveal() == value, (node_id, kind)


@pytest.fixture
def vault(db_url: str) -> Iterator[Vault]:
    engine = create_engine(sqlalchemy_url(db_url), isolation_level="AUTOCOMMIT")
    yield Vault(engine)
    engine.dispose()


@pytest.fixture
def run(operator_env: dict[str, str], vault: Vault) -> Run:
    """`fleet` with the rotated key ring (or `keys`); its output may hold no secret unless
    the command is to reveal them."""

    def run_fleet(
        *args: str, keys: dict[str, str] = ROTATED, reveals: bool = False
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "worker", *args],
            env={**operator_env, **keys}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if not reveals:
            vault.assert_not_in(result.stdout + result.stderr)
        return result

    return run_fleet


def key_ids(db_url: str) -> list[str]:
    return [k for (k,) in fetch(db_url, "SELECT key_id FROM node_secrets ORDER BY node_id, kind")]


def raw_rows(db_url: str) -> list[tuple[Any, ...]]:
    return fetch(db_url, "SELECT * FROM node_secrets ORDER BY node_id, kind")


def assert_error_line(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, never a traceback
    assert lines[0].startswith("error: ") and message in lines[0], lines


@contextmanager
def row_locked(db_url: str, node_id: int, kind: str) -> Iterator[None]:
    """Hold one secret's row lock, so a reseal blocks right at that row's UPDATE."""
    with psycopg.connect(db_url) as connection:
        connection.execute(
            "SELECT 1 FROM node_secrets WHERE node_id = %s AND kind = %s FOR UPDATE",
            (node_id, kind),
        )
        yield
        connection.rollback()


def reseals_waiting(db_url: str) -> int:
    [(waiting,)] = fetch(
        db_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND starts_with(application_name, 'fleet-cli:')",
    )
    return int(waiting)


def start_reseal(operator_env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "secrets", "reseal", *args],
        env={**operator_env, **ROTATED}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


NEW_RING = KeyRing.parse(f"new:{NEW_KEY}", "new")


@pytest.mark.slow
def test_after_a_reseal_the_old_key_can_leave_the_ring(run: Run, vault: Vault, db_url: str) -> None:
    old_nodes = add_nodes(db_url, ["vault-1", "vault-2"])
    vault.store(OLD_RING, old_nodes)
    vault.store(ROTATED_RING, add_nodes(db_url, ["vault-3"]))

    status = json.loads(run("secrets", "status", "--json").stdout)
    assert status == [
        {"key_id": "new", "secrets": 3, "in_ring": True, "standing": "active"},
        {"key_id": "old", "secrets": 6, "in_ring": True, "standing": "needed"},
    ]
    before = raw_rows(db_url)
    dry = run("secrets", "reseal", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would reseal 6 secret(s) under key new: 6 from old" in dry.stdout
    assert "already under key new: 3" in dry.stdout and "nothing changed" in dry.stdout
    assert raw_rows(db_url) == before

    done = run("secrets", "reseal", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["resealed"], summary["already_active"]) == ({"old": 6}, 3)
    assert (summary["unopenable"], summary["left"], summary["changed_meanwhile"]) == ([], 0, 0)
    assert set(key_ids(db_url)) == {"new"}
    again = run("secrets", "reseal")
    assert "resealed 0 secret(s)" in again.stdout and "already under key new: 9" in again.stdout
    listed = run("secrets", "status").stdout
    assert "old" in listed and "can be removed from the ring" in listed

    # The old key goes: every secret still opens, bound to its own row as before.
    vault.assert_all_open(NEW_RING)
    revealed = run("node", "secrets", "vault-1", "--reveal", keys=NEW_ONLY, reveals=True)
    assert revealed.returncode == 0, revealed.stderr
    for kind in KINDS:
        assert f"{kind}: {vault.values[old_nodes[0], kind]}" in revealed.stdout
    assert json.loads(run("secrets", "status", "--json", keys=NEW_ONLY).stdout) == [
        {"key_id": "new", "secrets": 9, "in_ring": True, "standing": "active"}
    ]


def test_a_partial_reseal_is_finished_by_a_rerun(run: Run, vault: Vault, db_url: str) -> None:
    vault.store(OLD_RING, add_nodes(db_url, ["part-1", "part-2"]))
    report = reseal.ResealReport("new", dry_run=False)
    reseal.reseal(vault.engine, ROTATED_RING, report, limit=2)
    assert (report.resealed, report.left) == ({"old": 2}, 4)
    assert key_ids(db_url) == ["new", "new", "old", "old", "old", "old"]
    vault.assert_all_open(ROTATED_RING)

    assert_error_line(run("secrets", "reseal", "--limit", "0"), 2, "--limit must be at least 1")
    one_more = run("secrets", "reseal", "--limit", "1")
    assert "resealed 1 secret(s)" in one_more.stdout and "left for a rerun: 3" in one_more.stdout
    rerun = json.loads(run("secrets", "reseal", "--json").stdout)
    assert (rerun["resealed"], rerun["already_active"], rerun["left"]) == ({"old": 3}, 3, 0)
    vault.assert_all_open(NEW_RING)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT])
def test_a_reseal_stopped_in_the_middle_loses_nothing(
    stop: signal.Signals, run: Run, vault: Vault, operator_env: dict[str, str], db_url: str
) -> None:
    node_ids = add_nodes(db_url, ["cut-1", "cut-2"])
    vault.store(OLD_RING, node_ids)
    with row_locked(db_url, node_ids[1], "api_root_key"):  # the 4th row in the run's order
        process = start_reseal(operator_env)
        wait_until(lambda: reseals_waiting(db_url) == 1, 30, "the reseal waits at row 4")
        process.send_signal(stop)
        stdout, stderr = process.communicate(timeout=30)
    vault.assert_not_in(stdout + stderr)
    if stop == signal.SIGINT:
        stopped = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        assert_error_line(stopped, 130, "interrupted; run `fleet secrets reseal` again")
        assert "resealed 3 secret(s)" in stdout and "left for a rerun: 3" in stdout
    else:
        assert process.returncode == -signal.SIGKILL
    assert key_ids(db_url) == ["new"] * 3 + ["old"] * 3
    vault.assert_all_open(ROTATED_RING)

    rerun = json.loads(run("secrets", "reseal", "--json").stdout)
    assert (rerun["resealed"], rerun["already_active"]) == ({"old": 3}, 3)
    vault.assert_all_open(NEW_RING)


def test_two_reseals_at_once_change_each_secret_once(
    vault: Vault, operator_env: dict[str, str], db_url: str
) -> None:
    node_ids = add_nodes(db_url, [f"twin-{n}" for n in range(8)])
    vault.store(OLD_RING, node_ids)
    # Both runs read the first row's old seal and wait at its UPDATE, then race on.
    with row_locked(db_url, node_ids[0], "api_root_key"):
        runs = [start_reseal(operator_env, "--json") for _ in range(2)]
        wait_until(lambda: reseals_waiting(db_url) == 2, 30, "both reseals wait at row 1")
    outputs = [process.communicate(timeout=60) for process in runs]
    for process, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert process.returncode == 0, stderr
        vault.assert_not_in(stdout + stderr)
    summaries = [json.loads(stdout) for stdout, _ in outputs]
    assert sum(s["resealed"].get("old", 0) for s in summaries) == len(vault.values)
    assert sum(s["changed_meanwhile"] for s in summaries) >= 1
    assert set(key_ids(db_url)) == {"new"}
    vault.assert_all_open(NEW_RING)


def test_a_secret_that_does_not_open_is_reported_and_left_as_it_was(
    run: Run, vault: Vault, db_url: str
) -> None:
    good, tampered, orphaned = add_nodes(db_url, ["good-1", "tampered-1", "orphaned-1"])
    vault.store(OLD_RING, [good, tampered])
    vault.store(KeyRing.parse(f"lost:{LOST_KEY}", "lost"), [orphaned])
    flip_one_bit = "set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1)"
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute(
            f"UPDATE node_secrets SET ciphertext = {flip_one_bit}"
            " WHERE node_id = %s AND kind = 'mnemonic'",
            (tampered,),
        )
    broken = "SELECT * FROM node_secrets WHERE (node_id = %s AND kind = 'mnemonic') OR node_id = %s"
    before = fetch(db_url, broken + " ORDER BY node_id, kind", tampered, orphaned)

    for args in (["--dry-run"], []):
        result = run("secrets", "reseal", *args)
        assert_error_line(result, 1, "4 secret(s) did not open and were left as they were")
        assert "node tampered-1 mnemonic: does not open with key 'old': tampered" in result.stdout
        for kind in KINDS:
            assert (
                f"node orphaned-1 {kind}: sealed with key 'lost', which is not in" in result.stdout
            )
    assert "resealed 5 secret(s) under key new: 5 from old" in result.stdout
    assert fetch(db_url, broken + " ORDER BY node_id, kind", tampered, orphaned) == before
    unopenable = {(tampered, "mnemonic"), *((orphaned, kind) for kind in KINDS)}
    vault.assert_all_open(NEW_RING, but=unopenable)

    as_json = run("secrets", "reseal", "--json")
    assert as_json.returncode == 1
    reported = {(u["node"], u["kind"]) for u in json.loads(as_json.stdout)["unopenable"]}
    assert reported == {("tampered-1", "mnemonic"), *(("orphaned-1", kind) for kind in KINDS)}
    status = json.loads(run("secrets", "status", "--json").stdout)
    assert {"key_id": "lost", "secrets": 3, "in_ring": False, "standing": "missing"} in status


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"FLEET_SECRET_KEYS": "", "FLEET_SECRET_KEY_ID": ""}, "no secret keys configured"),
        ({"FLEET_SECRET_KEYS": "old:not base64!", "FLEET_SECRET_KEY_ID": "old"}, "not base64"),
        ({"FLEET_SECRET_KEYS": NEW_KEY, "FLEET_SECRET_KEY_ID": "new"}, "is not key_id:base64"),
        ({"FLEET_SECRET_KEYS": f"new:{NEW_KEY}", "FLEET_SECRET_KEY_ID": ""}, "FLEET_SECRET_KEY_ID"),
        ({"FLEET_SECRET_KEYS": f"new:{NEW_KEY}", "FLEET_SECRET_KEY_ID": "old"}, "not in the key"),
    ],
)
@pytest.mark.parametrize("command", ["reseal", "status"])
def test_a_bad_key_ring_is_one_error_line(
    command: str, keys: dict[str, str], message: str, run: Run, vault: Vault, db_url: str
) -> None:
    vault.store(OLD_RING, add_nodes(db_url, ["kept-1"]))
    before = raw_rows(db_url)
    assert_error_line(run("secrets", command, keys=keys), 2, message)
    assert raw_rows(db_url) == before
