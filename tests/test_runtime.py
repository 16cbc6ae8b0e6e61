"""The worker runtime with real `fleet worker` processes: leases, outcomes, crashes."""

import itertools
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime

import psycopg
import redis
from rq import Queue, Worker

from tests.conftest import add_nodes, fetch, wait_until
from worker.dispatcher import Dispatcher
from worker.queue import DueStep
from worker.runtime import run_step
from worker.settings import FleetSettings
from worker.step_job import step_queue

StartWorker = Callable[..., subprocess.Popen[bytes]]
Fleet = Callable[..., subprocess.CompletedProcess[str]]


def state_of(db_url: str, node_id: int) -> str:
    return str(fetch(db_url, "SELECT state FROM nodes WHERE id = %s", node_id)[0][0])


def effect_count(db_url: str, node_id: int, state: str, phase: str) -> int:
    rows = fetch(
        db_url,
        "SELECT count(*) FROM test_effects WHERE node_id = %s AND state = %s AND phase = %s",
        node_id,
        state,
        phase,
    )
    return int(rows[0][0])


def all_in(db_url: str, node_ids: list[int], state: str) -> Callable[[], bool]:
    return lambda: all(state_of(db_url, n) == state for n in node_ids)


def test_nodes_run_through_every_step_to_live(
    config: FleetSettings, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    node_ids = add_nodes(db_url, [f"ok-{i}" for i in range(10)] + ["facts-1"])
    start_worker()
    start_worker()
    wait_until(all_in(db_url, node_ids, "live"), 60, "every node is live")
    for node_id in node_ids:
        for state in ("instance", "key", "start", "wallet"):
            assert effect_count(db_url, node_id, state, "run") == 1
    [(address, instance_id)] = fetch(
        db_url, "SELECT address, instance_id FROM nodes WHERE name = 'facts-1'"
    )
    assert (address, instance_id) == ("127.0.0.7", "i-0123456789abcdef0")
    history = fetch(
        db_url,
        "SELECT from_state, to_state, actor FROM node_history"
        " WHERE node_id = %s AND event = 'transition' ORDER BY id",
        node_ids[0],
    )
    assert [(a, b) for a, b, _ in history] == [
        ("instance", "key"), ("key", "start"), ("start", "wallet"), ("wallet", "live")
    ]  # fmt: skip
    assert all(str(actor).startswith("fleet-worker:") for _, _, actor in history)


def test_two_copies_of_one_job_run_the_step_once(
    config: FleetSettings, db_url: str, start_worker: StartWorker
) -> None:
    [node_id] = add_nodes(db_url, ["slow-twice"])
    queue = step_queue(redis.Redis.from_url(config.redis_url), config.queue_name)
    run = DueStep(node_id, "instance", 0)
    # At-least-once delivery: the same run arrives twice (RQ itself would refuse the
    # same id twice, so the copy gets its own id).
    for job_id in (run.job_id, run.job_id + "-copy"):
        queue.enqueue_call(run_step, args=(node_id, "instance", 0), job_id=job_id)
    workers = [start_worker("--burst", env={"FLEET_TEST_SLOW_SECONDS": "1"}) for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=30) == 0
    # No dispatcher runs: the job that won the claim chained through every step.
    for state in ("instance", "key", "start", "wallet"):
        assert effect_count(db_url, node_id, state, "begin") == 1
    assert state_of(db_url, node_id) == "live"
    actors = fetch(
        db_url,
        "SELECT DISTINCT actor FROM node_history WHERE node_id = %s AND event = 'transition'",
        node_id,
    )
    assert len(actors) == 1  # one worker, one lease, the whole chain


def test_a_killed_worker_is_replaced_and_the_step_runs_at_most_once_more(
    config: FleetSettings, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    [node_id] = add_nodes(db_url, ["slow-victim"])
    victim = start_worker(env={"FLEET_TEST_SLOW_SECONDS": "4"})
    wait_until(lambda: effect_count(db_url, node_id, "instance", "begin") == 1, 20, "step begins")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    start_worker(env={"FLEET_TEST_SLOW_SECONDS": "0.2"})
    wait_until(all_in(db_url, [node_id], "live"), 60, "the node is live")
    assert effect_count(db_url, node_id, "instance", "begin") == 2
    assert effect_count(db_url, node_id, "instance", "run") == 1
    [(attempt, error)] = fetch(
        db_url,
        "SELECT attempt, error FROM node_history"
        " WHERE node_id = %s AND from_state = 'instance' AND to_state = 'key'",
        node_id,
    )
    assert attempt == 1
    assert "expired" in str(error)


def test_redis_lost_while_work_is_pending(
    config: FleetSettings, db_url: str, start_worker: StartWorker
) -> None:
    node_ids = add_nodes(db_url, [f"ok-lost-{i}" for i in range(15)])
    first = Dispatcher(config, redis.Redis.from_url(config.redis_url))
    assert first.sweep().enqueued == 15
    redis.Redis.from_url(config.redis_url).flushdb()
    assert Queue(config.queue_name, connection=redis.Redis.from_url(config.redis_url)).count == 0
    # A fresh dispatcher (its own loop) and workers recover everything from Postgres.

    stop = threading.Event()
    loop = threading.Thread(target=first.run, args=(stop,), daemon=True)
    loop.start()
    try:
        start_worker()
        wait_until(all_in(db_url, node_ids, "live"), 60, "every node is live")
    finally:
        stop.set()
        loop.join(timeout=5)
    for node_id in node_ids:
        assert effect_count(db_url, node_id, "instance", "run") == 1


def test_wait_releases_the_worker_and_the_step_runs_again_later(
    config: FleetSettings, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    [waiter] = add_nodes(db_url, ["wait-boot"])
    start_worker()  # one worker only: it must be free while the node waits
    wait_until(lambda: effect_count(db_url, waiter, "instance", "wait") == 1, 20, "it waits")
    others = add_nodes(db_url, [f"ok-meanwhile-{i}" for i in range(3)])
    wait_until(all_in(db_url, [waiter], "live"), 60, "the waiting node is live")
    wait_until(all_in(db_url, others, "live"), 60, "the others are live")
    times = dict(
        fetch(
            db_url,
            "SELECT phase, at FROM test_effects WHERE node_id = %s AND state = 'instance'",
            waiter,
        )
    )
    waited, ran = times["wait"], times["run"]
    assert isinstance(waited, datetime) and isinstance(ran, datetime)
    assert (ran - waited).total_seconds() >= 1.0
    first_other = fetch(
        db_url,
        "SELECT min(at) FROM test_effects WHERE node_id = ANY(%s)",
        others,
    )[0][0]
    assert isinstance(first_other, datetime)
    assert first_other < ran  # the single worker served others during the wait
    [(attempts, held)] = fetch(db_url, "SELECT attempts, held FROM nodes WHERE id = %s", waiter)
    assert (attempts, held) == (0, False)


def test_errors_back_off_then_hold_and_retry_resumes(
    config: FleetSettings,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    fleet: Fleet,
) -> None:
    [node_id] = add_nodes(db_url, ["fail-often"])
    start_worker()
    wait_until(
        lambda: fetch(db_url, "SELECT held FROM nodes WHERE id = %s", node_id)[0][0] is True,
        30,
        "the node is held",
    )
    failures = [
        at
        for (at,) in fetch(
            db_url,
            "SELECT at FROM test_effects WHERE node_id = %s AND phase = 'fail' ORDER BY at",
            node_id,
        )
    ]
    assert len(failures) == config.max_attempts
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(failures)]
    # Attempt n waits between half and all of base * 2^n: each gap is at least the
    # previous ceiling, so the delays grow.
    base = config.backoff_base_seconds
    assert gaps[0] >= base * 0.5
    assert gaps[1] >= base * 1.0
    [(attempts, error, state)] = fetch(
        db_url, "SELECT attempts, last_error, state FROM nodes WHERE id = %s", node_id
    )
    assert attempts == config.max_attempts
    assert error == "RuntimeError: step instance broke on purpose"
    assert state == "instance"
    holds = fetch(db_url, "SELECT count(*) FROM node_history WHERE event = 'hold'")
    assert holds == [(1,)]

    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO test_effects (node_id, state, phase) VALUES (%s, 'instance', 'fixed')",
            (node_id,),
        )
    result = fleet("node", "retry", "fail-often")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: state_of(db_url, node_id) == "key", 30, "the step succeeds")


def test_a_step_can_hold_its_node_at_once(
    config: FleetSettings, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    [node_id] = add_nodes(db_url, ["hold-me"])
    start_worker()
    wait_until(
        lambda: fetch(db_url, "SELECT held FROM nodes WHERE id = %s", node_id)[0][0] is True,
        30,
        "the node is held",
    )
    assert fetch(db_url, "SELECT attempts, last_error FROM nodes WHERE id = %s", node_id) == [
        (1, "cannot go on: needs an operator")
    ]


def test_a_node_that_waits_too_long_is_held_with_what_it_waited_for(
    config: FleetSettings,
    db_url: str,
    dispatcher: Dispatcher,
    start_worker: StartWorker,
    fleet: Fleet,
) -> None:
    start_worker(env={"FLEET_WAIT_LIMIT_SECONDS": "2"})
    # The limit counts from the node's creation: a worker still starting up would eat it.
    queue = Queue(config.queue_name, connection=redis.Redis.from_url(config.redis_url))
    wait_until(lambda: Worker.count(queue=queue) == 1, 60, "the worker is up")
    [node_id] = add_nodes(db_url, ["stuck-api"])

    def holds() -> list[tuple[datetime, str]]:
        return fetch(
            db_url,
            "SELECT at, error FROM node_history WHERE node_id = %s AND event = 'hold' ORDER BY id",
            node_id,
        )

    wait_until(lambda: len(holds()) == 1, 30, "the node is held")
    [(attempts, error, state)] = fetch(
        db_url, "SELECT attempts, last_error, state FROM nodes WHERE id = %s", node_id
    )
    assert (attempts, state) == (0, "instance")
    assert error == "gave up after waiting 2 s in instance: node API not answering yet"
    assert effect_count(db_url, node_id, "instance", "wait") > 2  # it polled meanwhile

    assert fleet("node", "retry", "stuck-api").returncode == 0
    # The clock starts again at the release: not held again on the next poll.
    wait_until(lambda: len(holds()) == 2, 30, "held again")
    [(released,)] = fetch(
        db_url, "SELECT at FROM node_history WHERE node_id = %s AND event = 'release'", node_id
    )
    assert (holds()[1][0] - released).total_seconds() >= 2


def test_sigterm_finishes_the_current_step_then_exits(
    config: FleetSettings, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    [node_id] = add_nodes(db_url, ["slow-shutdown"])
    worker = start_worker(env={"FLEET_TEST_SLOW_SECONDS": "2"})
    wait_until(lambda: effect_count(db_url, node_id, "instance", "begin") == 1, 20, "step begins")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert effect_count(db_url, node_id, "instance", "run") == 1
    assert fetch(db_url, "SELECT state, lease_owner FROM nodes WHERE id = %s", node_id) == [
        ("key", None)
    ]
    assert effect_count(db_url, node_id, "key", "begin") == 0


def test_a_second_sigterm_gives_the_step_back_at_once(
    config: FleetSettings, db_url: str, start_worker: StartWorker
) -> None:
    [node_id] = add_nodes(db_url, ["slow-cold"])
    Dispatcher(config, redis.Redis.from_url(config.redis_url)).sweep()
    worker = start_worker(env={"FLEET_TEST_SLOW_SECONDS": "20"})
    wait_until(lambda: effect_count(db_url, node_id, "instance", "begin") == 1, 20, "step begins")
    worker.send_signal(signal.SIGTERM)
    time.sleep(1.2)  # RQ ignores a repeat within a second
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=10)
    assert effect_count(db_url, node_id, "instance", "run") == 0
    # Given back, not left to expire: due again now, not counted as a failure.
    assert fetch(
        db_url,
        "SELECT state, lease_owner, attempts, next_attempt_at <= now() FROM nodes WHERE id = %s",
        node_id,
    ) == [("instance", None, 0, True)]
