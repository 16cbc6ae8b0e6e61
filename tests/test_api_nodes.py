"""The node routes over real HTTP against a real database: ownership, the lifecycle's
rules, idempotent creation, limits, validation and rate limiting."""

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from sim.oidc import Issuer, running_issuer
from tests.api_support import RunningApi, assert_problem, running_api, settings_for
from tests.conftest import fetch, role_url

RELEASE = "0.10.0"
PUBKEY = "02" + "ab" * 32


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


@pytest.fixture
def bob(api: RunningApi) -> Iterator[httpx.Client]:
    with api.as_("bob") as client:
        yield client


def create(client: httpx.Client, name: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/nodes", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/nodes/{body['id']}"
    return dict(body)


def snapshot(db_url: str, node_id: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The row and its history, to show that a refused request changed nothing."""
    row = fetch(db_url, "SELECT * FROM nodes WHERE id = %s", node_id)
    history = fetch(db_url, "SELECT * FROM node_history WHERE node_id = %s ORDER BY id", node_id)
    return row, history


def work(db_url: str, node_id: int, *states: str, **columns: str) -> None:
    """Move a node along worker edges as a worker would: a worker login holding the row's
    lease."""
    worker_url = role_url(db_url, "worker")
    with psycopg.connect(worker_url, autocommit=True, application_name="test-worker") as worker:
        for state in states:
            worker.execute(
                "UPDATE nodes SET lease_owner = 'test-worker',"
                " lease_expires_at = now() + interval '1 minute' WHERE id = %s",
                (node_id,),
            )
            worker.execute("UPDATE nodes SET state = %s WHERE id = %s", (state, node_id))
        for column, value in columns.items():
            worker.execute(f"UPDATE nodes SET {column} = %s WHERE id = %s", (value, node_id))


def add_release(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO releases (version, artifact_url, sha256) VALUES (%s, %s, %s)",
            (RELEASE, f"s3://releases/rln-{RELEASE}.tar.gz", "0" * 64),
        )


# --- creating and reading -----------------------------------------------------------------


def test_a_node_is_created_in_new_and_shown_to_its_owner(alice: httpx.Client, db_url: str) -> None:
    node = create(alice, "alpha", region="us-east-2", instance_type="t3.medium")
    assert node["name"] == "alpha" and node["fleet_name"].startswith("alpha-")
    assert (node["state"], node["step"], node["owner"]) == ("new", None, "alice")
    assert (node["region"], node["instance_type"], node["network"]) == (
        "us-east-2",
        "t3.medium",
        "regtest",
    )
    assert alice.get(f"/nodes/{node['id']}").json() == node
    [event] = alice.get(f"/nodes/{node['id']}/events").json()["items"]
    assert (event["event"], event["to_state"], event["actor"]) == ("create", "new", "api")
    # The history names the caller, so operators can tell who asked.
    assert fetch(db_url, "SELECT actor FROM node_history") == [("fleet-api:alice",)]


def test_start_true_asks_for_the_instance_at_once(alice: httpx.Client) -> None:
    node = create(alice, "alpha", start=True)
    assert (node["state"], node["step"], node["held"]) == ("instance", "due", False)


def test_a_live_node_shows_its_address_and_pubkey_but_nothing_internal(
    alice: httpx.Client, db_url: str
) -> None:
    node = create(alice, "alpha", start=True)
    work(db_url, node["id"], "key", "start", address="127.0.0.9", node_pubkey=PUBKEY)
    assert alice.get(f"/nodes/{node['id']}").json()["address"] is None, "only once live"
    work(db_url, node["id"], "wallet", "live", instance_id="i-0123456789abcdef0")
    shown = alice.get(f"/nodes/{node['id']}").json()
    assert (shown["state"], shown["address"], shown["node_pubkey"]) == ("live", "127.0.0.9", PUBKEY)
    for internal in ("instance_id", "lease_owner", "lease_expires_at", "step_run", "held_at"):
        assert internal not in shown
    assert "i-0123456789abcdef0" not in alice.get(f"/nodes/{node['id']}/events").text
    assert "test-worker" not in alice.get(f"/nodes/{node['id']}/events").text


def test_the_list_pages_by_cursor_and_filters_by_state(alice: httpx.Client) -> None:
    ids = [create(alice, f"n{i}", start=i % 2 == 0)["id"] for i in range(5)]
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = alice.get("/nodes", params=params).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (ids, 3)
    started = alice.get("/nodes", params={"state": "instance"}).json()["items"]
    assert [n["id"] for n in started] == ids[0::2]
    assert alice.get("/nodes", params={"held": True}).json()["items"] == []


# --- owners -------------------------------------------------------------------------------


def test_another_owners_node_is_indistinguishable_from_a_missing_one(
    api: RunningApi, alice: httpx.Client, bob: httpx.Client, db_url: str
) -> None:
    add_release(db_url)
    theirs = create(alice, "alpha", start=True)["id"]
    create(alice, "bravo")
    missing = theirs + 1000
    before = snapshot(db_url, theirs)
    requests: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/nodes/{}", None),
        ("GET", "/nodes/{}/events", None),
        *[("POST", f"/nodes/{{}}/{a}", None) for a in ("start", "stop", "destroy", "retry")],
        ("POST", "/nodes/{}/update", {"version": RELEASE}),
    ]
    for method, path, body in requests:
        other = bob.request(method, path.format(theirs), json=body)
        absent = bob.request(method, path.format(missing), json=body)
        assert_problem(other, 404)
        assert other.json() == {
            k: v.replace(str(missing), str(theirs)) if isinstance(v, str) else v
            for k, v in absent.json().items()
        }, path
        assert _headers(other) == _headers(absent), path
    assert snapshot(db_url, theirs) == before
    assert bob.get("/nodes").json() == {"items": [], "next_cursor": None}
    assert bob.get("/nodes", params={"state": "instance"}).json()["items"] == []
    # The same name is free for bob: names do not reveal other owners' nodes either.
    assert create(bob, "alpha")["fleet_name"] != alice.get(f"/nodes/{theirs}").json()["fleet_name"]
    with api.as_("root", **{"cognito:groups": ["fleet-admins"]}) as admin:
        assert {n["owner"] for n in admin.get("/nodes").json()["items"]} == {"alice", "bob"}
        assert admin.get(f"/nodes/{theirs}").status_code == 200


def _headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in {"date", "content-length"}}


def test_idempotency_keys_are_per_owner(alice: httpx.Client, bob: httpx.Client) -> None:
    headers = {"Idempotency-Key": "same-key"}
    first = alice.post("/nodes", json={"name": "alpha"}, headers=headers)
    other = bob.post("/nodes", json={"name": "alpha"}, headers=headers)
    assert (first.status_code, other.status_code) == (201, 201)
    assert first.json()["owner"] == "alice" and other.json()["owner"] == "bob"


# --- the lifecycle's rules ----------------------------------------------------------------


def test_illegal_transitions_are_409_naming_both_states_and_change_nothing(
    alice: httpx.Client, db_url: str
) -> None:
    add_release(db_url)
    node = create(alice, "alpha")["id"]
    refusals = [("stop", None, "new", "stop"), ("update", {"version": RELEASE}, "new", "update")]
    for action, body, current, requested in refusals:
        before = snapshot(db_url, node)
        response = alice.post(f"/nodes/{node}/{action}", json=body)
        problem = assert_problem(response, 409)
        assert (problem["current_state"], problem["requested_state"]) == (current, requested)
        assert current in problem["detail"] and requested in problem["detail"]
        assert snapshot(db_url, node) == before
    assert alice.post(f"/nodes/{node}/start").json()["state"] == "instance"
    before = snapshot(db_url, node)
    problem = assert_problem(alice.post(f"/nodes/{node}/start"), 409)
    assert (problem["current_state"], problem["requested_state"]) == ("instance", "start")
    problem = assert_problem(alice.post(f"/nodes/{node}/retry"), 409)
    assert problem["type"].endswith(":not-held")
    assert snapshot(db_url, node) == before


def test_the_app_edges_work_through_the_api(alice: httpx.Client, db_url: str) -> None:
    add_release(db_url)
    node = create(alice, "alpha", start=True)["id"]
    work(db_url, node, "key", "start", "wallet", "live")
    assert alice.post(f"/nodes/{node}/stop").json()["state"] == "stop"
    work(db_url, node, "stopped")
    unknown = assert_problem(alice.post(f"/nodes/{node}/update", json={"version": "9.9.9"}), 422)
    assert "9.9.9" in unknown["detail"]
    updated = alice.post(f"/nodes/{node}/update", json={"version": RELEASE}).json()
    assert (updated["state"], updated["target_version"]) == ("update", RELEASE)
    work(db_url, node, "stopped")
    assert alice.post(f"/nodes/{node}/start").json()["state"] == "start"
    assert alice.post(f"/nodes/{node}/destroy").json()["state"] == "destroy"
    work(db_url, node, "destroyed")
    problem = assert_problem(alice.post(f"/nodes/{node}/destroy"), 409)
    assert (problem["current_state"], problem["requested_state"]) == ("destroyed", "destroy")
    actors = [e["actor"] for e in alice.get(f"/nodes/{node}/events").json()["items"]]
    assert set(actors) == {"api", "operator"}  # the test's "worker" is not a fleet process


def test_a_held_node_is_retried(alice: httpx.Client, db_url: str) -> None:
    node = create(alice, "alpha", start=True)["id"]
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE nodes SET held_at = now(), attempts = 3, last_error = 'boom' WHERE id = %s",
            (node,),
        )
    shown = alice.get(f"/nodes/{node}").json()
    assert (shown["step"], shown["attempts"], shown["last_error"]) == ("held", 3, "boom")
    retried = alice.post(f"/nodes/{node}/retry").json()
    assert (retried["held"], retried["attempts"], retried["step"]) == (False, 0, "due")


# --- idempotent creation ------------------------------------------------------------------


def test_a_retried_create_gets_the_first_answer_and_no_second_node(
    alice: httpx.Client, db_url: str
) -> None:
    headers = {"Idempotency-Key": "create-alpha-1"}
    first = alice.post("/nodes", json={"name": "alpha", "start": True}, headers=headers)
    # Same request, written differently: key order and an explicit default.
    again = alice.post(
        "/nodes", json={"start": True, "name": "alpha", "version": None}, headers=headers
    )
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert fetch(db_url, "SELECT count(*) FROM nodes") == [(1,)]
    changed = alice.post("/nodes", json={"name": "bravo"}, headers=headers)
    assert assert_problem(changed, 422)["type"].endswith(":idempotency-key-reused")
    assert fetch(db_url, "SELECT count(*) FROM nodes") == [(1,)]


def test_concurrent_retries_with_one_key_create_one_node(alice: httpx.Client, db_url: str) -> None:
    answers: list[httpx.Response] = []

    def post() -> None:
        answers.append(
            alice.post("/nodes", json={"name": "alpha"}, headers={"Idempotency-Key": "race"})
        )

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [201] * 4
    assert len({a.content for a in answers}) == 1
    assert fetch(db_url, "SELECT count(*) FROM nodes") == [(1,)]


def test_a_refused_create_is_not_remembered(alice: httpx.Client) -> None:
    create(alice, "alpha")
    headers = {"Idempotency-Key": "k"}
    taken = alice.post("/nodes", json={"name": "alpha"}, headers=headers)
    assert assert_problem(taken, 409)["type"].endswith(":name-taken")
    assert alice.post("/nodes", json={"name": "alpha"}, headers=headers).status_code == 409


# --- limits and validation ----------------------------------------------------------------


def test_the_per_owner_limits(db_url: str, issuer: Issuer) -> None:
    settings = settings_for(
        db_url, issuer, api_max_live_nodes_per_owner=1, api_max_nodes_per_owner=3
    )
    with running_api(settings, issuer) as api, api.as_("alice") as alice:
        first = create(alice, "n1", start=True)["id"]
        over = assert_problem(alice.post("/nodes", json={"name": "n2", "start": True}), 409)
        assert over["type"].endswith(":node-limit")
        second = create(alice, "n2")["id"]
        before = snapshot(db_url, second)
        assert_problem(alice.post(f"/nodes/{second}/start"), 409)
        assert snapshot(db_url, second) == before
        create(alice, "n3")
        assert_problem(alice.post("/nodes", json={"name": "n4"}), 409)
        alice.post(f"/nodes/{first}/destroy").raise_for_status()
        assert alice.post(f"/nodes/{second}/start").json()["state"] == "instance"
        with api.as_("bob") as bob:
            create(bob, "n1", start=True)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"name": "Alpha!"}, "body.name"),
        ({"name": "a" * 60}, "body.name"),
        ({"name": "alpha", "version": "latest"}, "body.version"),
        ({"name": "alpha", "network": "bitcoin"}, "body.network"),
        ({"name": "alpha", "region": "mars"}, "body.region"),
        ({"name": "alpha", "owner": "bob"}, "body.owner"),
        ({}, "body.name"),
    ],
)
def test_bad_bodies_are_clear_422s(alice: httpx.Client, body: dict[str, Any], where: str) -> None:
    problem = assert_problem(alice.post("/nodes", json=body), 422)
    assert where in {error["location"] for error in problem["errors"]}, problem
    assert where in problem["detail"]


def test_a_network_without_a_chain_backend_is_refused(
    alice: httpx.Client, db_url: str, issuer: Issuer
) -> None:
    # The test API serves regtest only (settings_for): signet has no chain backend.
    problem = assert_problem(alice.post("/nodes", json={"name": "sig", "network": "signet"}), 422)
    assert "no chain backend for network 'signet'" in problem["detail"], problem
    assert fetch(db_url, "SELECT count(*) FROM nodes") == [(0,)]
    # The default network is a setting, and refused the same way when it has no backend.
    settings = settings_for(db_url, issuer, default_network="testnet")
    with running_api(settings, issuer) as other, other.as_("alice") as client:
        problem = assert_problem(client.post("/nodes", json={"name": "dflt"}), 422)
        assert "no chain backend for network 'testnet'" in problem["detail"], problem
    settings = settings_for(db_url, issuer, default_network="testnet", chain={"testnet": {}})
    with running_api(settings, issuer) as other, other.as_("alice") as client:
        assert create(client, "dflt")["network"] == "testnet"


def test_bad_parameters_are_422s(alice: httpx.Client) -> None:
    for path in ("/nodes/0", "/nodes/x", f"/nodes/{2**63}", "/nodes/-1/events"):
        assert_problem(alice.get(path), 422)
    for params in ({"limit": 0}, {"limit": 101}, {"cursor": "abc"}, {"state": "flying"}):
        assert_problem(alice.get("/nodes", params=params), 422)
    typo = assert_problem(alice.get("/nodes", params={"stat": "live"}), 422)["detail"]
    assert "stat" in typo
    rule = assert_problem(alice.post("/nodes", json={"name": "Alpha"}), 422)["detail"]
    assert "lowercase letters" in rule
    assert_problem(alice.post("/nodes", json={"name": "a1"}, headers={"Idempotency-Key": ""}), 422)


def test_an_unknown_route_is_a_problem_too(alice: httpx.Client) -> None:
    assert_problem(alice.get("/nope"), 404)
    assert_problem(alice.delete("/nodes"), 405)


# --- rate limiting and operations ---------------------------------------------------------


def test_requests_beyond_the_subjects_rate_are_429(db_url: str, issuer: Issuer) -> None:
    settings = settings_for(db_url, issuer, api_rate_limit_per_minute=1, api_rate_limit_burst=3)
    with running_api(settings, issuer) as api, api.as_("alice") as alice:
        assert [alice.get("/nodes").status_code for _ in range(3)] == [200] * 3
        limited = alice.get("/nodes")
        assert_problem(limited, 429)
        assert int(limited.headers["retry-after"]) >= 1
        with api.as_("bob") as bob:
            assert bob.get("/nodes").status_code == 200


def test_health_and_metrics_need_no_token_and_name_routes_not_ids(
    api: RunningApi, alice: httpx.Client
) -> None:
    assert api.http.get("/healthz").json() == {"status": "ok"}
    node = create(alice, "alpha")["id"]
    alice.get(f"/nodes/{node}").raise_for_status()
    metrics = api.http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert (
        'fleet_api_requests_total{method="GET",route="/nodes/{node_id}",status="200"} 1.0'
        in metrics.text
    )
    assert f"/nodes/{node}" not in metrics.text


def test_a_live_node_shows_its_health_and_heals_in_its_events(
    alice: httpx.Client, db_url: str
) -> None:
    """What the watch saw and did, as the owner may see it: no AWS ids, no processes."""
    node = create(alice, "alpha", start=True)
    work(db_url, node["id"], "key", "start", address="127.0.0.9", node_pubkey=PUBKEY)
    work(db_url, node["id"], "wallet", "live", instance_id="i-0123456789abcdef0")
    assert alice.get(f"/nodes/{node['id']}").json()["health"] is None, "not probed yet"
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute(
            "INSERT INTO node_health (node_id, status, detail, since, last_probe)"
            " VALUES (%s, 'instance_stopped', 'EC2 says i-0123456789abcdef0 is stopped',"
            " now(), now())",
            (node["id"],),
        )
        owner.execute(
            "INSERT INTO node_history (node_id, event, from_state, to_state, actor, attempt,"
            " detail) VALUES (%s, 'heal', 'live', 'instance', 'fleet-watch:h:1:ab', 0,"
            " 'instance_stopped: EC2 says i-0123456789abcdef0 is stopped')",
            (node["id"],),
        )
    health = alice.get(f"/nodes/{node['id']}").json()["health"]
    assert health["status"] == "instance_stopped"
    assert "i-0123456789abcdef0" not in health["detail"]
    events = alice.get(f"/nodes/{node['id']}/events")
    assert events.status_code == 200, events.text
    [heal] = [e for e in events.json()["items"] if e["event"] == "heal"]
    assert (heal["actor"], heal["to_state"]) == ("fleet", "instance")
    assert heal["detail"].startswith("instance_stopped: ") and "i-0123" not in heal["detail"]


# --- replacing a dead host (admins only) ------------------------------------------------------


def ran_and_stopped(alice: httpx.Client, db_url: str, name: str, backed_up: bool) -> int:
    node_id = int(create(alice, name)["id"])
    work(db_url, node_id, "instance", "key", "start", "wallet", "live", node_pubkey=PUBKEY)
    work(db_url, node_id, "stop")
    if backed_up:  # as the stop step notes it, the node locked
        with psycopg.connect(db_url, autocommit=True) as owner:
            owner.execute(
                "INSERT INTO node_history (node_id, event, to_state, actor, attempt, detail)"
                " VALUES (%s, 'backup', 'stop', 'test', 0, %s)",
                (node_id, f"s3://b/backups/alice/{name}/x size=3 sha256={'ab' * 32}"),
            )
    work(db_url, node_id, "stopped")
    return node_id


def test_replace_is_for_admins_only(alice: httpx.Client, db_url: str) -> None:
    node_id = ran_and_stopped(alice, db_url, "mine", backed_up=True)
    before = snapshot(db_url, node_id)
    body = assert_problem(alice.post(f"/nodes/{node_id}/replace"), 403)
    assert body["detail"] == "only an admin replaces a node's host"
    assert snapshot(db_url, node_id) == before


def test_an_admin_replaces_from_a_clean_backup_or_with_consent(
    api: RunningApi, alice: httpx.Client, db_url: str
) -> None:
    clean = ran_and_stopped(alice, db_url, "clean", backed_up=True)
    unsafe = ran_and_stopped(alice, db_url, "unsafe", backed_up=False)
    with api.as_("root", **{"cognito:groups": ["fleet-admins"]}) as admin:
        answer = admin.post(f"/nodes/{clean}/replace")
        assert answer.status_code == 200, answer.text
        assert answer.json()["state"] == "instance"
        before = snapshot(db_url, unsafe)
        body = assert_problem(admin.post(f"/nodes/{unsafe}/replace", json={}), 409)
        assert "no backup taken while it was locked and never unlocked since" in body["detail"]
        assert snapshot(db_url, unsafe) == before
        assert_problem(admin.post(f"/nodes/{unsafe}/replace", json={"accept": True}), 422)
        answer = admin.post(f"/nodes/{unsafe}/replace", json={"accept_channel_loss": True})
        assert answer.status_code == 200, answer.text
    rows = fetch(db_url, "SELECT node_id, backup_id IS NOT NULL, accept_channel_loss"
                 " FROM node_replacements ORDER BY node_id")  # fmt: skip
    assert rows == [(clean, True, False), (unsafe, False, True)]
    [(actor,)] = fetch(db_url, "SELECT actor FROM node_history WHERE node_id = %s"
                       " AND event = 'note'", unsafe)  # fmt: skip
    assert "root" in actor
