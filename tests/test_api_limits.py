"""What the API bounds and hides, against the real API over HTTP with a real database:
owners' names that cannot collide, bounded bodies, fields and pages, configured regions
and instance types, and events that name no worker, process or lease."""

import hashlib
from collections.abc import Iterator
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
