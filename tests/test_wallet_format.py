"""Releases know their wallet format: an update across a break is refused before anything
is stopped or installed, unless an operator asked for the documented recovery, which the
wallet step then carries out at CorruptedMnemonic (old files moved aside on the host, a
new wallet from the stored mnemonic). Real Postgres with each role's login, `fleet`
processes, moto, SSH to the simulated hosts and the simulated daemon over HTTP."""

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from sim.host import SimHost, artifact_wallet_format
from sim.rln_daemon import wallet_format_of
from tests.conftest import fetch, held_with, role_url
from tests.simulation import RELEASE, Simulation, release_sha256
from tests.test_lifecycle import reach, request, stored_mnemonic
from worker.dispatcher import Dispatcher

StartWorker = Callable[..., subprocess.Popen[bytes]]
Fleet = Callable[..., subprocess.CompletedProcess[str]]

NEW = "0.11.0"
# The release of upstream's break: its daemon reads and writes wallet format 2.
NEW_ARTIFACT = b"rgb-lightning-node 0.11.0 (simulated release artifact, wallet-format=2)"
REINITIALISED = (
    "wallet re-initialised from the stored mnemonic after an update across a wallet-format"
    " break: on-chain funds recovered, channel state lost"
)


def add_releases(simulation: Simulation, db_url: str) -> None:
    """0.10.0 of wallet format 1, and 0.11.0 of format 2 (its artifact says so)."""
    simulation.cloud.client("s3").put_object(
        Bucket="releases", Key=f"rln-{NEW}.tar.gz", Body=NEW_ARTIFACT
    )
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(
            "INSERT INTO releases (version, artifact_url, sha256, wallet_format)"
            " VALUES (%s, %s, %s, 1), (%s, %s, %s, 2)",
            (RELEASE, f"s3://releases/rln-{RELEASE}.tar.gz", release_sha256(),
             NEW, f"s3://releases/rln-{NEW}.tar.gz", hashlib.sha256(NEW_ARTIFACT).hexdigest()),
        )  # fmt: skip


def add_node(db_url: str, name: str, version: str | None) -> int:
    with psycopg.connect(db_url, autocommit=True) as app:
        [(node_id,)] = app.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network, current_version,"
            " state) VALUES (%s, 'tester', 'eu-west-1', 't3.small', 'regtest', %s, 'instance')"
            " RETURNING id",
            (name, version),
        ).fetchall()
    return int(node_id)


def pubkey(db_url: str, node_id: int) -> str:
    [(found,)] = fetch(db_url, "SELECT node_pubkey FROM nodes WHERE id = %s", node_id)
    return str(found)


def notes(db_url: str, node_id: int) -> list[str]:
    rows = fetch(
        db_url,
        "SELECT detail FROM node_history WHERE node_id = %s AND event = 'note' ORDER BY id",
        node_id,
    )
    return [str(detail) for (detail,) in rows]


def asides(host: SimHost) -> list[Path]:
    return sorted(host.disk.path("/var/lib").glob("rln-aside-*"))


def assert_reinitialised(simulation: Simulation, db_url: str, node_id: int, old: str) -> None:
    """The node is live on the new release with the wallet of the stored mnemonic (the
    same node key), the old files kept aside, and the loss said in its history."""
    host = simulation.host(node_id)
    assert host.version == NEW and host.daemon is not None and host.daemon.unlocked
    assert pubkey(db_url, node_id) == old == host.daemon.node_pubkey
    assert host.disk.mnemonic == stored_mnemonic(simulation, db_url, node_id)
    assert host.disk.init_calls == 2  # the first wallet's, and the re-initialisation's
    assert host.disk.wallet_format == 2
    [aside] = asides(host)
    assert wallet_format_of((aside / "mnemonic").read_bytes()) == 1
    assert (aside / ".ldk" / "channel_manager").is_file()  # the channel state, kept
    assert any(note.startswith(REINITIALISED) and aside.name in note
               for note in notes(db_url, node_id))  # fmt: skip
    [(done, by)] = fetch(
        db_url, "SELECT done_at IS NOT NULL, requested_by FROM wallet_reinits WHERE node_id = %s",
        node_id,
    )  # fmt: skip
    assert done and by.startswith("fleet_t")  # the session's operator login


@pytest.mark.slow
def test_an_update_across_a_break_holds_before_anything_and_goes_on_when_asked(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    fleet: Fleet,
) -> None:
    add_releases(simulation, db_url)
    node_id = add_node(db_url, "carol", RELEASE)
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    host, first_key = simulation.host(node_id), pubkey(db_url, node_id)
    backups = simulation.backups()

    request(db_url, [node_id], "update", NEW)
    error, attempts = held_with(db_url, node_id)
    assert error == (
        f"update of node carol from {RELEASE} (wallet format 1) to {NEW} (wallet format 2)"
        f" crosses a wallet-format break: {NEW} cannot open the wallet {RELEASE} wrote;"
        " nothing was stopped or installed. Update to a release of format 1, or"
        " re-initialise the wallet from the stored mnemonic (on-chain funds come back,"
        f" channel state does not): fleet node update carol --to {NEW} --reinitialise-wallet"
    )
    assert attempts <= 1  # held at once, not retried
    # Held before anything: the old release runs on, unlocked, and was not even backed up.
    assert host.version == RELEASE and host.daemon is not None and host.daemon.unlocked
    assert simulation.backups() == backups and asides(host) == []

    asked = fleet("node", "update", "carol", "--to", NEW, "--reinitialise-wallet")
    assert asked.returncode == 0, asked
    assert "channel state will be lost" in asked.stderr
    reach(db_url, [node_id], "stopped")
    assert host.version == NEW
    request(db_url, [node_id], "start")
    reach(db_url, [node_id], "live")
    assert_reinitialised(simulation, db_url, node_id, first_key)


@pytest.mark.slow
def test_corrupted_mnemonic_without_a_request_holds_with_the_cause_and_the_way_out(
    simulation: Simulation,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    fleet: Fleet,
) -> None:
    """The image's release (0.9.0) is unknown to the fleet, so the update cannot tell
    the break: it goes on with a note, and the new release meets CorruptedMnemonic."""
    add_releases(simulation, db_url)
    node_id = add_node(db_url, "dave", None)
    start_worker(env=simulation.env)
    reach(db_url, [node_id], "live")
    first_key = pubkey(db_url, node_id)
    request(db_url, [node_id], "update", NEW)
    reach(db_url, [node_id], "stopped")
    assert any(n.startswith("installed release 0.9.0 is not known") for n in notes(db_url, node_id))

    request(db_url, [node_id], "start")
    error, attempts = held_with(db_url, node_id)
    assert error == (
        f"wallet of node dave cannot be read by {NEW} (CorruptedMnemonic): its files were"
        " written by a release of another wallet format; nothing was changed. Re-initialise"
        " it from the stored mnemonic (on-chain funds come back, channel state does not):"
        f" fleet node update dave --to {NEW} --reinitialise-wallet"
    )
    assert attempts <= 1  # held at once, not retried
    host = simulation.host(node_id)
    assert asides(host) == [] and host.disk.init_calls == 1

    asked = fleet("node", "update", "dave", "--to", NEW, "--reinitialise-wallet")
    assert asked.returncode == 0, asked
    reach(db_url, [node_id], "live")
    assert_reinitialised(simulation, db_url, node_id, first_key)
    shown = json.loads(fleet("node", "show", "dave", "--json").stdout)
    assert any(str(h["detail"]).startswith(REINITIALISED) for h in shown["history"])


def test_only_an_operator_may_ask_and_only_through_the_function(
    db_url: str, fleet: Fleet, fleet_env: dict[str, str]
) -> None:
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network)"
            " VALUES ('erin', 'tester', 'eu-west-1', 't3.small', 'regtest')"
        )
    for role in ("app", "api", "reader", "worker", "dispatcher"):
        with (
            psycopg.connect(role_url(db_url, role), autocommit=True) as login,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            login.execute("SELECT fleet_request_wallet_reinit('erin', '0.11.0')")
    with psycopg.connect(role_url(db_url, "operator"), autocommit=True) as operator:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            operator.execute(
                "INSERT INTO wallet_reinits (node_id, to_version, requested_by)"
                " SELECT id, '0.11.0', 'someone else' FROM nodes WHERE name = 'erin'"
            )
        operator.execute("SELECT fleet_request_wallet_reinit('erin', '0.11.0')")
        operator.execute("SELECT fleet_request_wallet_reinit('erin', '0.11.0')")  # renews
        with pytest.raises(psycopg.Error, match="no node named nobody") as refused:
            operator.execute("SELECT fleet_request_wallet_reinit('nobody', '0.11.0')")
        assert refused.value.sqlstate == "FL021"
    [(count, by)] = fetch(db_url, "SELECT count(*), min(requested_by) FROM wallet_reinits")
    assert count == 1 and by == str(psycopg.conninfo.conninfo_to_dict(
        role_url(db_url, "operator"))["user"])  # fmt: skip
    [(note,)] = fetch(db_url, "SELECT detail FROM node_history WHERE event = 'note' LIMIT 1")
    assert note.startswith("wallet re-initialisation from the stored mnemonic requested")

    app_cli = subprocess.run(
        [*fleet_command(), "node", "update", "erin", "--to", "0.11.0", "--reinitialise-wallet"],
        env={**fleet_env, "FLEET_DATABASE_URL": role_url(db_url, "app")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert app_cli.returncode == 2 and app_cli.stderr.startswith("error: the database login")
    assert app_cli.stderr.count("\n") == 1


def test_the_cli_names_what_is_wrong_in_one_line(db_url: str, fleet: Fleet) -> None:
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network)"
            " VALUES ('frank', 'tester', 'eu-west-1', 't3.small', 'regtest')"
        )
    cases = {
        ("node", "update", "nobody", "--to", "0.11.0"): "no node named 'nobody'",
        ("node", "update", "frank", "--to", "not-a-version"): "bad version",
        ("node", "update", "frank", "--to", "0.11.0"): "illegal transition new -> update",
        ("node", "update", "frank", "--to", "0.11.0", "--reinitialise-wallet"): "new -> update",
    }
    for args, message in cases.items():
        done = fleet(*args)
        assert done.returncode == 2, done
        assert done.stderr.startswith("error: ") and message in done.stderr, done
        assert done.stderr.count("\n") == 1
    # A refused move records no request either.
    assert fetch(db_url, "SELECT count(*) FROM wallet_reinits") == [(0,)]


def fleet_command() -> list[str]:
    return [sys.executable, "-m", "worker"]


def test_a_simulated_release_artifact_says_its_wallet_format() -> None:
    """The artifact the simulator installs names its daemon's format; none: the first."""
    assert artifact_wallet_format(NEW_ARTIFACT) == 2
    assert artifact_wallet_format(b"rgb-lightning-node 0.10.0 (simulated release artifact)") == 1
