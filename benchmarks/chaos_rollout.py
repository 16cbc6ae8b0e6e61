"""The chaos run's rollout phase (benchmarks/chaos.py): a release rolled across the fleet
by the dispatcher, batch 10%, while workers are SIGKILLed and SSH and API calls fail; a
pause and a resume by hand in the middle; then a second, small rollout aborted midway.
Everything an operator does goes through the rollout functions with the operator's login,
as `fleet rollout` does. The checks read the rows and the node history.

- every selected node ends on the new release and where it was before (live or stopped),
  or held with its cause;
- max-unavailable is never exceeded: from the history, the most nodes of the rollout that
  were live before it and were not live at one moment, a node held after a failure
  included (it is as unavailable as one being updated: the rollout leaves it its place);
- a paused rollout begins no batch, and goes on when resumed;
- the aborted rollout: nodes it updated stay updated (stopped if their update was under
  way), the others are untouched (same release, same state, no change in the history)."""

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from benchmarks.rollout import most_down
from sim.cloud import SimCloud

ROLLOUT_RELEASE = "0.11.0"
ABORT_RELEASE = "0.11.1"
# A share of the nodes stopped before the rollout: stopped ones must stay stopped.
STOPPED_SHARE = 5  # every fifth node
PAUSE_AT_BATCH = 2
PAUSED_SECONDS = 4.0


# A condition on a rollout's (status, batches started, nodes in flight).
Done = Callable[[str, int, int], bool]


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class RolloutRun:
    """What the phase did, for its checks."""

    rollout: int = 0
    aborted: int = 0
    before: dict[str, str] = field(default_factory=dict)  # name -> state before the rollout
    paused_batches: tuple[int, int] = (0, 0)  # batches started when paused, and when resumed
    resumed_batches: int = 0  # batches started at the end
    abort_before: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    aborted_at: datetime | None = None


def add_releases(db_url: str, cloud: SimCloud) -> None:
    """Two more releases, their artifacts in the simulated S3 (the update step checks them)."""
    s3 = cloud.client("s3")
    with psycopg.connect(db_url, autocommit=True) as db:
        for version in (ROLLOUT_RELEASE, ABORT_RELEASE):
            artifact = f"rgb-lightning-node {version} (chaos release artifact)".encode()
            s3.put_object(Bucket="releases", Key=f"rln-{version}.tar.gz", Body=artifact)
            db.execute(
                "INSERT INTO releases (version, artifact_url, sha256) VALUES (%s, %s, %s)",
                (
                    version,
                    f"s3://releases/rln-{version}.tar.gz",
                    hashlib.sha256(artifact).hexdigest(),
                ),
            )


@contextmanager
def connected(db_url: str) -> Iterator[psycopg.Connection]:
    for _ in range(120):
        try:
            connection = psycopg.connect(db_url, autocommit=True)
            break
        except psycopg.OperationalError:
            time.sleep(0.5)
    else:
        raise SystemExit("chaos: cannot reach Postgres")
    with connection:
        yield connection


def start(operator_url: str, version: str, state: str | None, batch: int | None,
          percent: int | None, unavailable: int | None, failures: int) -> int:  # fmt: skip
    with connected(operator_url) as db:
        [(made,)] = db.execute(
            "SELECT fleet_start_rollout(%s, %s, NULL, NULL, %s, %s, %s, %s)",
            (version, state, batch, percent, unavailable, failures),
        ).fetchall()
    return int(made)


def steer(operator_url: str, rollout: int, action: str, reason: str) -> str:
    with connected(operator_url) as db:
        [(status,)] = db.execute(
            "SELECT fleet_steer_rollout(%s, %s, %s)", (rollout, action, reason)
        ).fetchall()
    return str(status)


def status(db_url: str, rollout: int) -> tuple[str, int, int]:
    """Its status, batches started, and nodes in flight: of its batch, still in their
    step (a paused rollout lets them finish it, and moves them no further)."""
    with connected(db_url) as db:
        [(found, batches, flight)] = db.execute(
            "SELECT r.status, r.batches_started, count(rn.node_id) FILTER"
            " (WHERE rn.phase IN ('updating', 'starting')"
            "  AND n.state IN ('update', 'start', 'wallet') AND NOT n.held)"
            " FROM rollouts r LEFT JOIN rollout_nodes rn ON rn.rollout_id = r.id"
            " LEFT JOIN nodes n ON n.id = rn.node_id"
            " WHERE r.id = %s GROUP BY r.id",
            (rollout,),
        ).fetchall()
    return str(found), int(batches), int(flight)


def wait_for(db_url: str, rollout: int, done: Done, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(*status(db_url, rollout)):
            return
        time.sleep(0.5)
    raise SystemExit(f"chaos: rollout {rollout}: {what} not in {timeout:.0f}s: "
                     f"{status(db_url, rollout)}")  # fmt: skip


def roll(db_url: str, operator_url: str, targets: dict[str, str], timeout: float) -> RolloutRun:
    """The main rollout (batch 10%, all the fleet's eligible nodes), paused and resumed by
    hand once its second batch began; returns when it is done."""
    run = RolloutRun(before=dict(targets))
    nodes = len(targets)
    # Failures are counted, not paused for: the run checks where every node ends.
    run.rollout = start(operator_url, ROLLOUT_RELEASE, None, None, 10, None, nodes)
    wait_for(db_url, run.rollout, (lambda s, b, f: b >= PAUSE_AT_BATCH or s == "done"),
             timeout, f"batch {PAUSE_AT_BATCH}")  # fmt: skip
    if status(db_url, run.rollout)[0] == "running":
        steer(operator_url, run.rollout, "pause", "chaos: paused by hand")
        # Nodes in flight finish their step (and wait there); no new batch may begin.
        wait_for(db_url, run.rollout, (lambda s, b, f: f == 0), timeout, "the batch's steps")
        paused = status(db_url, run.rollout)[1]
        time.sleep(PAUSED_SECONDS)
        after = status(db_url, run.rollout)
        run.paused_batches = (paused, after[1])
        steer(operator_url, run.rollout, "resume", "")
    wait_for(db_url, run.rollout, (lambda s, b, f: s == "done"), timeout, "done")
    run.resumed_batches = status(db_url, run.rollout)[1]
    return run


def abort_midway(
    db_url: str, operator_url: str, targets: dict[str, str], run: RolloutRun, timeout: float
) -> None:
    """A small rollout of the live nodes, aborted once its second batch began. Nodes whose
    update began end stopped on its release (their target becomes stopped)."""
    with connected(db_url) as db:
        rows = db.execute(
            "SELECT name, state, current_version FROM nodes WHERE NOT held"
        ).fetchall()
    run.abort_before = {str(name): (str(state), version) for name, state, version in rows}
    live = sum(1 for state, _ in run.abort_before.values() if state == "live")
    batch = max(1, live // 20)
    run.aborted = start(operator_url, ABORT_RELEASE, "live", batch, None, None, live)
    wait_for(db_url, run.aborted, (lambda s, b, f: b >= 2 or s == "done"), timeout,
             "its second batch")  # fmt: skip
    steer(operator_url, run.aborted, "abort", "chaos: aborted midway")
    with connected(db_url) as db:
        [(run.aborted_at,)] = db.execute(
            "SELECT updated_at FROM rollouts WHERE id = %s", (run.aborted,)
        ).fetchall()
        updating = db.execute(
            "SELECT n.name FROM rollout_nodes rn JOIN nodes n ON n.id = rn.node_id"
            " WHERE rn.rollout_id = %s AND rn.error = 'rollout aborted during its updating'",
            (run.aborted,),
        ).fetchall()
    for (name,) in updating:
        targets[str(name)] = "stopped"


Member = tuple[int, str, str, str, str | None, bool, str | None]  # rollout_nodes + nodes


def members(db: psycopg.Connection, rollout: int) -> list[Member]:
    rows = db.execute(
        "SELECT n.id, n.name, rn.phase, n.state, n.current_version, n.held, n.last_error"
        " FROM rollout_nodes rn JOIN nodes n ON n.id = rn.node_id WHERE rn.rollout_id = %s",
        (rollout,),
    ).fetchall()
    return [tuple(row) for row in rows]


def rollout_checks(db_url: str, run: RolloutRun) -> list[Check]:
    """The main rollout's checks, once it is done and settled (before the next moves on)."""
    with connected(db_url) as db:
        chosen = members(db, run.rollout)
        [(limit, began, ended)] = db.execute(
            "SELECT r.max_unavailable, r.created_at, max(rn.phase_at) FROM rollouts r"
            " JOIN rollout_nodes rn ON rn.rollout_id = r.id WHERE r.id = %s GROUP BY r.id",
            (run.rollout,),
        ).fetchall()
        was_live = [node_id for node_id, name, *_ in chosen if run.before[name] == "live"]
        history = db.execute(
            "SELECT node_id, to_state, at FROM node_history WHERE node_id = ANY(%s)"
            " AND event = 'transition' AND at >= %s AND at <= %s ORDER BY id",
            (was_live, began, ended),
        ).fetchall()
    return [check_arrived(chosen, run), check_unavailable(history, int(limit)), check_pause(run)]


def abort_checks(db_url: str, run: RolloutRun) -> list[Check]:
    """The aborted rollout's check, once its nodes settled (before the next phase)."""
    with connected(db_url) as db:
        aborted = members(db, run.aborted)
        touched = db.execute(
            "SELECT DISTINCT n.name FROM node_history h JOIN nodes n ON n.id = h.node_id"
            " WHERE h.event = 'transition' AND h.at >= (SELECT created_at FROM rollouts"
            " WHERE id = %s)", (run.aborted,),
        ).fetchall()  # fmt: skip
    return [check_abort(aborted, run, {str(name) for (name,) in touched})]


def check_arrived(chosen: list[Member], run: RolloutRun) -> Check:
    arrived = [name for _, name, phase, state, version, held, _ in chosen
               if phase == "done" and not held and version == ROLLOUT_RELEASE
               and state == run.before[name]]  # fmt: skip
    held = [(name, error) for _, name, _, _, _, is_held, error in chosen if is_held]
    others = [f"{name} {phase} in {state} on {version}"
              for _, name, phase, state, version, is_held, _ in chosen
              if name not in arrived and not is_held]  # fmt: skip
    stopped = sum(1 for _, name, *_ in chosen if run.before[name] == "stopped")
    return Check(
        "rollout: every selected node on the new release and back where it was, or held"
        " with its cause",
        bool(chosen) and not others and all(error for _, error in held),
        f"{len(arrived)} of {len(chosen)} on {ROLLOUT_RELEASE} ({stopped} stayed stopped),"
        f" {len(held)} held" + (f" ({'; '.join(sorted({str(e)[:60] for _, e in held}))})"
                                if held else "")
        + (f"; not arrived: {'; '.join(others[:5])}" if others else ""),
    )  # fmt: skip


def check_unavailable(history: list[tuple[int, str, datetime]], limit: int) -> Check:
    most = most_down(history)
    return Check(
        "rollout: max-unavailable never exceeded (from the history)",
        0 < most <= limit,
        f"at most {most} live nodes down at once, held ones included (max-unavailable {limit})",
    )


def check_pause(run: RolloutRun) -> Check:
    paused, after = run.paused_batches
    return Check(
        "rollout: pause began no batch, resume went on",
        paused > 0 and paused == after and run.resumed_batches > paused,
        f"paused at batch {paused}, still {after} after {PAUSED_SECONDS:g}s; resumed, done"
        f" after {run.resumed_batches} batches",
    )


def check_abort(aborted: list[Member], run: RolloutRun, touched: set[str]) -> Check:
    updated = [m for m in aborted if m[4] == ABORT_RELEASE]
    untouched = [m for m in aborted if m[4] != ABORT_RELEASE]
    wrong = [f"{name} in {state} on {version}" for _, name, _, state, version, held, _ in untouched
             if held or (state, version) != run.abort_before[name] or name in touched]  # fmt: skip
    wrong += [
        f"{name} {phase}" for _, name, phase, *_ in updated if phase not in ("skipped", "done")
    ]
    return Check(
        "rollout abort: updated nodes stay, the rest untouched",
        bool(updated) and bool(untouched) and not wrong,
        f"{len(updated)} updated to {ABORT_RELEASE} before the abort, {len(untouched)} untouched"
        + (f"; wrong: {'; '.join(wrong[:5])}" if wrong else ""),
    )
