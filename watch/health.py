"""What a probe can find (the node_health.status list of migrations/sql/0007_watch.sql,
checked equal by tests/test_watch_decide.py) and what the watch does about it."""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal, TypeGuard, get_args

Status = Literal[
    "ok",
    "locked",
    "daemon_down",
    "unreachable",
    "instance_stopped",
    "instance_gone",
    "wrong_pubkey",
    "wrong_network",
    "chain_stalled",
    "error",
]
STATUSES: Final[tuple[Status, ...]] = get_args(Status)


def is_status(value: object) -> TypeGuard[Status]:
    return value in STATUSES


# The heal of each status that has one: the watch edge out of live (node_edges, actor
# 'watch'). The worker's steps from there on bring the node back to live.
HEALS: Final[dict[Status, str]] = {
    "locked": "wallet",  # unlock (the wallet step never re-initialises a wallet that ran)
    "daemon_down": "start",  # start the daemon, then unlock
    "instance_stopped": "instance",  # start the instance, then the node
}
# Never healed: a node that answers as another node or on another chain may be a hijack
# or a misconfiguration; an instance that is gone needs the operator's replace.
HOLDS_AT_ONCE: Final = frozenset({"wrong_pubkey", "wrong_network", "instance_gone"})


@dataclass(frozen=True)
class Observation:
    status: Status
    detail: str
    height: int | None = None


@dataclass(frozen=True)
class Heal:
    to_state: str
    cause: str


@dataclass(frozen=True)
class Hold:
    cause: str


Verdict = Heal | Hold | None


@dataclass(frozen=True)
class Limits:
    unreachable_hold: timedelta  # unreachable this long (EC2 says running): held


def decide(seen: Observation, since: datetime, now: datetime, limits: Limits) -> Verdict:
    """What to do about a live node that was seen so, in this status since `since`."""
    if seen.status in HEALS:
        return Heal(HEALS[seen.status], f"{seen.status}: {seen.detail}")
    if seen.status in HOLDS_AT_ONCE:
        return Hold(f"health watch: {seen.status.replace('_', ' ')}: {seen.detail}")
    if seen.status == "unreachable" and now - since >= limits.unreachable_hold:
        return Hold(f"health watch: unreachable since {since:%Y-%m-%d %H:%M:%S} UTC: {seen.detail}")
    return None
