"""The watch's decisions, without Postgres or hosts: what each status leads to, and the
status list is the database's."""

import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import fetch
from watch.health import HEALS, STATUSES, Heal, Hold, Limits, Observation, decide

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
LIMITS = Limits(unreachable_hold=timedelta(minutes=15))


@pytest.mark.parametrize(
    ("status", "expected"),
    [("locked", Heal("wallet", "locked: x")), ("daemon_down", Heal("start", "daemon_down: x")),
     ("instance_stopped", Heal("instance", "instance_stopped: x")),
     ("wrong_pubkey", Hold("health watch: wrong pubkey: x")),
     ("wrong_network", Hold("health watch: wrong network: x")),
     ("instance_gone", Hold("health watch: instance gone: x")),
     ("ok", None), ("chain_stalled", None), ("error", None)],
)  # fmt: skip
def test_each_status_has_its_outcome(status: str, expected: object) -> None:
    assert decide(Observation(status, "x"), NOW, NOW, LIMITS) == expected  # type: ignore[arg-type]


def test_unreachable_is_held_only_after_its_limit() -> None:
    seen = Observation("unreachable", "no SSH session")
    assert decide(seen, NOW - timedelta(minutes=14), NOW, LIMITS) is None
    held = decide(seen, NOW - timedelta(minutes=15), NOW, LIMITS)
    assert held == Hold("health watch: unreachable since 2026-12-02 11:45:00 UTC: no SSH session")


def test_the_statuses_are_the_databases(db_url: str) -> None:
    [(check,)] = fetch(
        db_url,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conname = 'node_health_status_known'",
    )
    assert set(re.findall(r"'([a-z_]+)'::text", str(check))) == set(STATUSES)


def test_every_heal_is_a_watch_edge(db_url: str) -> None:
    edges = fetch(db_url, "SELECT to_state FROM node_edges WHERE actor = 'watch'"
                  " AND from_state = 'live'")  # fmt: skip
    assert {to for (to,) in edges} == set(HEALS.values())
