"""The rollout routes over real HTTP against a real database: admins only, the same rules
as `fleet rollout` (the SQL functions), each refusal a clear problem. The dispatcher's
turns and the steps' results are played by the test as in tests/test_rollouts.py."""

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from models.logins import FleetRole
from sim.oidc import Issuer, running_issuer
from tests.api_support import RunningApi, assert_problem, running_api, settings_for
from tests.conftest import fetch
from tests.test_rollouts import NEW, as_steps_would, place, states, turn

ADMIN = {"cognito:groups": ["fleet-admins"]}


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with running_issuer() as found:
        yield found


@pytest.fixture
def api(db_url: str, issuer: Issuer, logins: dict[FleetRole, str]) -> Iterator[RunningApi]:
    with running_api(settings_for(db_url, issuer), issuer) as running:
        yield running


@pytest.fixture
def admin(api: RunningApi) -> Iterator[httpx.Client]:
    with api.as_("root", **ADMIN) as client:
        yield client


def started(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    answer = admin.post("/rollouts", json={"to": NEW, **body})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_only_admins_see_or_drive_rollouts(
    api: RunningApi, admin: httpx.Client, db_url: str
) -> None:
    place(db_url, "n-1", "live")
    made = started(admin)["id"]
    with api.as_("alice") as alice:
        calls = [
            alice.post("/rollouts", json={"to": NEW}),
            alice.get("/rollouts"),
            alice.get(f"/rollouts/{made}"),
            *(alice.post(f"/rollouts/{made}/{action}") for action in ("pause", "resume", "abort")),
        ]
    for answer in calls:
        body = assert_problem(answer, 403)
        assert body["detail"] == "only an admin sees and drives rollouts"
    assert fetch(db_url, "SELECT id, status FROM rollouts") == [(made, "running")]


def test_an_admin_starts_watches_pauses_resumes_and_aborts(
    admin: httpx.Client, db_url: str
) -> None:
    ids = [place(db_url, f"live-{i}", "live") for i in range(4)]
    rest = place(db_url, "resting", "stopped")
    shown = started(
        admin, where={"state": "live", "region": "eu-west-1"}, batch="50%", max_unavailable=1
    )
    assert (shown["status"], shown["nodes"], shown["batch_size"], shown["max_unavailable"]) == (
        "running",
        4,
        2,
        1,
    )
    assert shown["where"] == {"state": "live", "region": "eu-west-1", "owner": None}
    assert (shown["batches"], shown["phases"]["pending"], shown["failures"]) == (4, 4, [])
    made = shown["id"]
    assert [r["id"] for r in admin.get("/rollouts").json()["items"]] == [made]
    turn(db_url)
    progress = admin.get(f"/rollouts/{made}").json()
    assert (progress["phases"]["updating"], progress["batches_started"]) == (1, 1)
    paused = admin.post(f"/rollouts/{made}/pause", json={"reason": "looking at the logs"})
    assert paused.status_code == 200, paused.text
    assert (paused.json()["status"], paused.json()["paused_reason"]) == (
        "paused",
        "looking at the logs",
    )
    as_steps_would(db_url, ids[0], "stopped", current_version=NEW)
    turn(db_url)
    assert states(db_url, ids) == ["stopped", "live", "live", "live"], "paused: nothing moves"
    resumed = admin.post(f"/rollouts/{made}/resume")
    assert (resumed.status_code, resumed.json()["status"]) == (200, "running")
    turn(db_url)
    assert states(db_url, ids)[0] == "start", "a live node goes back live"
    aborted = admin.post(f"/rollouts/{made}/abort").json()
    assert (aborted["status"], aborted["paused_reason"]) == ("aborted", "aborted by hand")
    assert aborted["phases"]["skipped"] == 4
    assert states(db_url, [*ids, rest])[1:] == ["live", "live", "live", "stopped"], "untouched"
    again = assert_problem(admin.post(f"/rollouts/{made}/resume"), 409)
    assert again["detail"] == f"rollout {made} is aborted: nothing to resume"


def test_failures_and_the_pause_cause_are_shown(admin: httpx.Client, db_url: str) -> None:
    ids = [place(db_url, f"f-{i}", "live") for i in range(3)]
    made = started(admin, batch=2)["id"]
    turn(db_url)
    with psycopg.connect(db_url, autocommit=True) as owner:
        owner.execute("UPDATE nodes SET held_at = now(), last_error = 'checksum mismatch'"
                      " WHERE id = %s", (ids[0],))  # fmt: skip
    turn(db_url)
    shown = admin.get(f"/rollouts/{made}").json()
    assert shown["status"] == "paused"
    assert shown["paused_reason"] == "1 nodes failed (budget 0): f-0: checksum mismatch"
    [failure] = shown["failures"]
    assert (failure["node_id"], failure["name"], failure["batch"], failure["error"]) == (
        ids[0],
        "f-0",
        1,
        "checksum mismatch",
    )
    assert shown["phases"] == {
        "pending": 1, "updating": 1, "starting": 0, "done": 0, "failed": 1, "skipped": 0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"to": "9.9.9"}, 422, "no release 9.9.9: add it first"),
        ({"to": "not a version"}, 422, "body.to: bad value"),
        ({"to": NEW, "batch": "150%"}, 422, "--batch: '150%'"),
        ({"to": NEW, "batch": "0"}, 422, "body.batch"),
        ({"to": NEW, "batch": "ten"}, 422, "body.batch"),
        ({"to": NEW, "where": {"state": "update"}}, 422, "body.where.state"),
        ({"to": NEW, "where": {"colour": "red"}}, 422, "body.where.colour"),
        ({"to": NEW, "max_unavailable": 0}, 422, "body.max_unavailable"),
        ({"to": NEW, "max_failures": -1}, 422, "body.max_failures"),
        ({"to": NEW, "where": {"owner": "nobody"}}, 409, "no node to roll out 2.0.0"),
    ],
)
def test_a_rollout_that_cannot_start_says_why_in_one_line(
    admin: httpx.Client, db_url: str, body: dict[str, Any], status: int, says: str
) -> None:
    place(db_url, "target", "live")
    problem = assert_problem(admin.post("/rollouts", json=body), status)
    assert says in problem["detail"] and "\n" not in problem["detail"], problem
    assert fetch(db_url, "SELECT count(*) FROM rollouts") == [(0,)]


def test_an_unknown_rollout_is_404(admin: httpx.Client) -> None:
    assert assert_problem(admin.get("/rollouts/77"), 404)["detail"] == "no rollout 77"
    for action in ("pause", "resume", "abort"):
        assert (
            assert_problem(admin.post(f"/rollouts/77/{action}"), 404)["detail"] == "no rollout 77"
        )
    assert_problem(admin.post("/rollouts/0/pause"), 422)
