"""What the API bounds and hides, against the real API over HTTP with a real database:
owners' names that cannot collide, bounded bodies, fields and pages, configured regions
and instance types, and events that name no worker, process or lease."""

import hashlib
import re
import select
import socket
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from sim.oidc import Issuer, running_issuer
from tests.api_support import RunningApi, assert_problem, running_api, settings_for
from tests.conftest import fetch


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


def raw_exchange(url: str, head: str, chunks: Iterable[bytes] = ()) -> tuple[int, bytes]:
    """Send head and then chunks on a plain socket until the server answers; the answer's
    status and body. A plain socket, so the test decides exactly what goes on the wire."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # answered: stop sending
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        header, _, body = received.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: *(\d+)", header, re.I).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += sock.recv(65536)
        return int(header.split()[1]), body


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
