"""What the API bounds and hides, against the real API over HTTP with a real database:
owners' names that cannot collide, bounded bodies, fields and pages, configured regions
and instance types, and events that name no worker, process or lease."""

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import create_engine

from api.settings import ApiSettings
from models.formats import MAX_LENGTH, problem
from models.owner_text import for_owner
from models.placement import DEFAULT_INSTANCE_TYPES
from models.queries import query
from models.session import sqlalchemy_url
from sim.oidc import AUDIENCE, Issuer, running_issuer
from tests.api_support import (
    RunningApi,
    assert_problem,
    raw_exchange,
    running_api,
    settings_for,
)
from tests.conftest import REPO, fetch, role_url, wait_until

Fleet = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with running_issuer() as found:
        yield found


@pytest.fixture
def api(db_url: str, issuer: Issuer) -> Iterator[RunningApi]:
    with running_api(settings_for(db_url, issuer), issuer) as running:
        yield running


@pytest.fixture
def alice(api: RunningApi) -> Iterator[httpx.Client]:
    with api.as_("alice") as client:
        yield client


def create(client: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/nodes", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


# --- owners' names --------------------------------------------------------------------------


def test_owners_whose_short_hashes_agree_have_their_own_names(api: RunningApi) -> None:
    one, two = "user-20491", "user-32057"
    # The first 32 bits of their hashes agree: the suffix the fleet once gave names.
    assert hashlib.sha256(one.encode()).digest()[:4] == hashlib.sha256(two.encode()).digest()[:4]
    with api.as_(one) as first, api.as_(two) as second:
        mine, theirs = create(first, "wallet-a"), create(second, "wallet-a")
        assert mine["name"] == theirs["name"] == "wallet-a"
        assert mine["fleet_name"] != theirs["fleet_name"]
        assert [n["id"] for n in first.get("/nodes").json()["items"]] == [mine["id"]]
        again = first.post("/nodes", json={"name": "wallet-a"})
        assert assert_problem(again, 409)["detail"] == "you already have a node named 'wallet-a'"


def test_a_node_named_the_old_way_keeps_its_name(alice: httpx.Client, db_url: str) -> None:
    old = "wallet-b-" + hashlib.sha256(b"alice").hexdigest()[:8]
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO nodes (name, owner, region, instance_type, network)"
            " VALUES (%s, 'alice', 'eu-west-1', 't3.small', 'regtest')",
            (old,),
        )
    listed = alice.get("/nodes").json()["items"]
    assert [(n["name"], n["fleet_name"]) for n in listed] == [("wallet-b", old)]
    again = alice.post("/nodes", json={"name": "wallet-b"})
    assert assert_problem(again, 409)["detail"] == "you already have a node named 'wallet-b'"
    assert fetch(db_url, "SELECT count(*) FROM nodes") == [(1,)]


# --- request bodies -------------------------------------------------------------------------

MIB = 1024 * 1024


def chunked(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """total bytes of JSON-ish filler in chunked transfer coding, without holding them."""
    piece = f"{size:x}\r\n".encode() + b"a" * size + b"\r\n"
    for _ in range(total // size):
        yield piece
    yield b"0\r\n\r\n"


def test_a_declared_oversized_body_is_refused_before_it_is_sent(api: RunningApi) -> None:
    head = (
        "POST /nodes HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        f"Content-Length: {30 * MIB}\r\n\r\n"
    )
    # No token and not one byte of the body: the answer comes from the cap alone.
    status, body = raw_exchange(api.url, head)
    assert status == 413, body
    assert b"larger than 16384 bytes" in body


def test_a_streamed_body_is_cut_off_at_the_cap_with_little_memory(api: RunningApi) -> None:
    head = (
        "POST /nodes HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    # The server runs in this process: what it allocates shows here.
    tracemalloc.start()
    try:
        started = time.monotonic()
        status, body = raw_exchange(api.url, head, chunked(30 * MIB))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 413, body
    assert peak < 4 * MIB, f"{peak / MIB:.1f} MiB at the peak"
    assert time.monotonic() - started < 5


def test_a_body_within_the_cap_is_served(alice: httpx.Client) -> None:
    # Padding inside the cap reaches validation: the cap is on bytes, not on the request.
    response = alice.post("/nodes", content=b'{"name": "alpha"}' + b" " * 15_000,
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 201, response.text


# --- fields: lengths, regions, instance types -------------------------------------------------


def sized(column: str, length: int) -> str:
    """A well-formed value of column with exactly length characters."""
    match column:
        case "region":
            return "eu-" + "a" * (length - 5) + "-1"
        case "instance_type":
            return "t" + "3" * (length - 7) + ".small"
        case _:
            return "a" * length


@pytest.mark.parametrize("column", sorted(MAX_LENGTH))
def test_the_databases_bound_is_the_pythons(db_url: str, column: str) -> None:
    longest = MAX_LENGTH[column]
    good = {"name": "fine", "owner": "o", "region": "eu-west-1", "instance_type": "t3.small"}
    insert = (
        "INSERT INTO nodes (name, owner, region, instance_type, network)"
        " VALUES (%(name)s, %(owner)s, %(region)s, %(instance_type)s, 'regtest')"
    )
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute(insert, {**good, column: sized(column, longest)})
        with pytest.raises(psycopg.Error) as refused:
            connection.execute(
                insert, {**good, "name": "other", column: sized(column, longest + 1)}
            )
    assert refused.value.sqlstate == "23514"  # check_violation
    assert problem(column, sized(column, longest)) is None
    assert problem(column, sized(column, longest + 1)) is not None


def test_the_length_checks_name_the_pythons_bounds(db_url: str) -> None:
    for column in ("region", "instance_type"):
        found = fetch(
            db_url,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
            f"nodes_{column}_length",
        )
        assert found == [(f"CHECK ((char_length({column}) <= {MAX_LENGTH[column]}))",)]


@pytest.mark.parametrize("field", ["region", "instance_type"])
def test_an_overlong_field_is_a_short_422_and_stored_nowhere(
    alice: httpx.Client, db_url: str, field: str
) -> None:
    response = alice.post("/nodes", json={"name": "alpha", field: sized(field, 10_000)})
    body = assert_problem(response, 422)
    assert f"at most {MAX_LENGTH[field]} characters" in body["detail"]
    assert len(response.content) < 1000  # the value is not echoed back
    assert fetch(db_url, "SELECT count(*) FROM nodes") == [(0,)]


REGIONS = {
    "eu-west-1": {"ami": "ami-0123456789abcdef0"},
    "us-east-1": {"ami": "ami-0123456789abcdef1", "instance_types": ["t3.micro"]},
}


def test_the_api_reads_the_workers_regions(issuer: Issuer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_REGIONS", json.dumps(REGIONS))
    settings = ApiSettings(_env_file=None, api_oidc_issuer=issuer.url, api_oidc_audience="a")
    assert {region: offer.instance_types for region, offer in settings.offered().items()} == {
        "eu-west-1": DEFAULT_INSTANCE_TYPES,
        "us-east-1": ("t3.micro",),
    }


@pytest.fixture
def placed(db_url: str, issuer: Issuer) -> Iterator[httpx.Client]:
    """alice on an API with the regions above."""
    settings = settings_for(db_url, issuer, regions=REGIONS)
    with running_api(settings, issuer) as running, running.as_("alice") as client:
        yield client


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"instance_type": "p5.48xlarge"},
      "instance type 'p5.48xlarge' is not offered in eu-west-1: t3.small, t3.medium"),
     ({"region": "ap-south-1"},
      "region 'ap-south-1' is not one of the fleet's regions: eu-west-1, us-east-1"),
     ({"region": "us-east-1"}, "instance type 't3.small' is not offered in us-east-1: t3.micro")],
)  # fmt: skip
def test_only_configured_regions_and_offered_types_are_created(
    placed: httpx.Client, db_url: str, fields: dict[str, str], message: str
) -> None:
    refused = placed.post("/nodes", json={"name": "alpha", "start": True, **fields})
    assert assert_problem(refused, 422)["detail"] == message
    assert fetch(db_url, "SELECT count(*) FROM nodes") == [(0,)]


def test_an_offered_type_in_a_configured_region_is_created(placed: httpx.Client) -> None:
    node = create(placed, "alpha", region="us-east-1", instance_type="t3.micro")
    assert (node["region"], node["instance_type"]) == ("us-east-1", "t3.micro")
    assert create(placed, "bravo", instance_type="t3.medium")["region"] == "eu-west-1"


def test_the_api_refuses_defaults_it_does_not_offer(db_url: str, issuer: Issuer) -> None:
    with pytest.raises(ValueError, match=re.escape("'t3.small' is not offered in us-east-1")):
        settings_for(db_url, issuer, regions=REGIONS, default_region="us-east-1")


def test_the_command_line_refuses_what_the_region_does_not_offer(fleet: Fleet, db_url: str) -> None:
    result = fleet("node", "create", "gpu", "--instance-type", "p5.48xlarge")
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "instance type 'p5.48xlarge' is not offered in" in lines[0], lines
    result = fleet("node", "create", "far", "--region", "ap-south-1")
    assert "region 'ap-south-1' is not one of the fleet's regions" in result.stderr, result
    assert fetch(db_url, "SELECT count(*) FROM nodes") == [(0,)]
    assert fleet("node", "create", "fine", "--instance-type", "t3.medium").returncode == 0


# --- what owners see ----------------------------------------------------------------------------

WORKER = "fleet-worker:ip-10-0-0-7:4242:c0ffee"
INTERNALS = ("ip-10-0-0-7", "4242", "c0ffee", "fleet-worker", "i-0123456789abcdef0")


def test_owners_see_no_workers_processes_or_instance_ids(
    alice: httpx.Client, db_url: str, fleet: Fleet
) -> None:
    node = create(alice, "alpha", start=True)
    # A worker takes the step and dies: the dispatcher takes its lease back and, with one
    # attempt allowed, holds the node (models/sql/expire_leases.sql as the fleet runs it).
    with psycopg.connect(role_url(db_url, "worker"), autocommit=True, application_name=WORKER) as w:
        w.execute(
            "UPDATE nodes SET lease_owner = %s, lease_expires_at = now() - interval '1 second'"
            " WHERE id = %s",
            (WORKER, node["id"]),
        )
    dispatcher = create_engine(sqlalchemy_url(role_url(db_url, "dispatcher")))
    with dispatcher.begin() as connection:
        assert connection.execute(query("expire_leases"), {"max_attempts": 1}).all()
    dispatcher.dispose()
    shown = alice.get(f"/nodes/{node['id']}").json()
    events = alice.get(f"/nodes/{node['id']}/events").json()["items"]
    assert shown["held"] and events[-1]["event"] == "hold"
    assert (
        shown["last_error"]
        == events[-1]["error"]
        == ("the step was interrupted: its worker stopped")
    )
    # A step's own error naming the instance (jobs/steps/instance.py) reads neutrally too.
    fleet("node", "retry", node["fleet_name"])
    with psycopg.connect(role_url(db_url, "worker"), autocommit=True, application_name=WORKER) as w:
        w.execute(
            "UPDATE nodes SET held_at = now(), last_error = %s WHERE id = %s",
            (
                f"instance i-0123456789abcdef0 of node {node['fleet_name']} is terminated",
                node["id"],
            ),
        )
    shown = alice.get(f"/nodes/{node['id']}").json()
    assert (
        shown["last_error"] == f"instance <aws resource> of node {node['fleet_name']} is terminated"
    )
    answers = alice.get(f"/nodes/{node['id']}").text + alice.get(f"/nodes/{node['id']}/events").text
    assert [word for word in INTERNALS if word in answers] == []
    # Operators keep every detail.
    errors = fetch(db_url, "SELECT error FROM node_history WHERE error IS NOT NULL ORDER BY id")
    assert WORKER in errors[0][0] and "i-0123456789abcdef0" in str(
        fetch(db_url, "SELECT last_error FROM nodes")
    )
    shown_to_operator = fleet("node", "show", node["fleet_name"])
    assert shown_to_operator.returncode == 0, shown_to_operator
    assert "i-0123456789abcdef0" in shown_to_operator.stdout


def test_an_owners_own_words_are_left_alone() -> None:
    said = "node wallet-i-deadbeef00-x failed: ssh to 203.0.113.5 timed out"
    assert for_owner(said) == said


# --- the rate limit, shared ---------------------------------------------------------------------


@contextmanager
def api_process(db_url: str, issuer: Issuer, log: Path, **env: str) -> Iterator[str]:
    """`fleet api` as its own process, configured only through its environment."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")} | {
        "PYTHONPATH": str(REPO),
        "FLEET_DATABASE_URL": role_url(db_url, "api"),
        "FLEET_API_OIDC_ISSUER": issuer.url,
        "FLEET_API_OIDC_AUDIENCE": AUDIENCE,
        **{f"FLEET_{name.upper()}": value for name, value in env.items()},
    }
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "api", "--port", str(port)],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url, process), 30, "fleet api answers /healthz")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(url: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "fleet api exited"
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_the_rate_limit_holds_across_api_processes(
    db_url: str, issuer: Issuer, redis_url: str, tmp_path: Path
) -> None:
    shared = {
        "api_rate_limit_storage": redis_url,
        "api_rate_limit_key_prefix": f"test-{uuid.uuid4().hex}",
        "api_rate_limit_per_minute": "1",
        "api_rate_limit_burst": "4",
    }
    with (
        api_process(db_url, issuer, tmp_path / "one.log", **shared) as one,
        api_process(db_url, issuer, tmp_path / "two.log", **shared) as two,
    ):
        alice = {"Authorization": f"Bearer {issuer.token('alice')}"}
        statuses = [httpx.get(f"{url}/nodes", headers=alice).status_code for url in [one, two] * 3]
        assert statuses == [200] * 4 + [429] * 2
        bob = {"Authorization": f"Bearer {issuer.token('bob')}"}
        assert httpx.get(f"{two}/nodes", headers=bob).status_code == 200


def test_without_its_store_the_rate_limit_refuses(db_url: str, issuer: Issuer) -> None:
    # Port 1 on loopback: nothing listens there.
    settings = settings_for(db_url, issuer, api_rate_limit_storage="redis://127.0.0.1:1/0")
    with running_api(settings, issuer) as api, api.as_("alice") as alice:
        body = assert_problem(alice.get("/nodes"), 503)
        assert body["detail"] == "the rate limiter's store does not answer"


# --- pages bounded in bytes -----------------------------------------------------------------

PAGE_BYTES = 4096


def test_a_page_of_nodes_stops_at_the_byte_budget(db_url: str, issuer: Issuer) -> None:
    settings = settings_for(db_url, issuer, api_max_page_bytes=PAGE_BYTES)
    with running_api(settings, issuer) as api, api.as_("alice") as alice:
        made = [create(alice, f"node-{i}")["id"] for i in range(20)]
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 100} | ({"cursor": cursor} if cursor else {})
            response = alice.get("/nodes", params=params)
            assert response.status_code == 200 and len(response.content) <= PAGE_BYTES
            page = response.json()
            seen += [n["id"] for n in page["items"]]
            pages += 1
            if (cursor := page["next_cursor"]) is None:
                break
    assert seen == made and pages > 1


def test_a_page_of_events_stops_at_the_byte_budget(db_url: str, issuer: Issuer) -> None:
    settings = settings_for(db_url, issuer, api_max_page_bytes=PAGE_BYTES)
    with running_api(settings, issuer) as api, api.as_("alice") as alice:
        node = create(alice, "alpha", start=True)
        with psycopg.connect(role_url(db_url, "worker"), autocommit=True) as worker:
            for attempt in range(8):
                worker.execute(
                    "UPDATE nodes SET held_at = now(), last_error = %s WHERE id = %s",
                    (f"attempt {attempt}: " + "x" * 900, node["id"]),
                )
                assert alice.post(f"/nodes/{node['id']}/retry").status_code == 200
        everything = fetch(db_url, "SELECT count(*) FROM node_history")[0][0]
        seen: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, str] = {"cursor": cursor} if cursor else {}
            response = alice.get(f"/nodes/{node['id']}/events", params=params)
            assert response.status_code == 200 and len(response.content) <= PAGE_BYTES
            page = response.json()
            assert page["items"], page
            seen += page["items"]
            if (cursor := page["next_cursor"]) is None:
                break
    assert len(seen) == everything == 17  # create, then a hold and a release each time
    assert [e["event"] for e in seen[:3]] == ["create", "hold", "release"]
