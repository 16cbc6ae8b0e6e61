"""Notifications, sweeps and the at-most-once enqueue, against real Postgres and Redis."""

import threading
import time
from pathlib import Path

import psycopg
import redis
from rq import Queue

from sim.services import free_port, redis_url_for, start_redis_server
from tests.conftest import add_nodes, fetch, wait_until
from worker.dispatcher import Dispatcher
from worker.settings import FleetSettings


def queued_job_ids(config: FleetSettings) -> list[str]:
    queue = Queue(config.queue_name, connection=redis.Redis.from_url(config.redis_url))
    return list(queue.get_job_ids())


def test_notify_fires_when_a_row_has_work(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN fleet_due")
        [idle] = add_nodes(db_url, ["quiet"], state="new")
        [due] = add_nodes(db_url, ["busy"], state="instance")
        with psycopg.connect(db_url, autocommit=True) as app:
            app.execute("UPDATE nodes SET state = 'instance' WHERE id = %s", (idle,))
            app.execute("UPDATE nodes SET held_at = now() WHERE id = %s", (due,))
            app.execute("UPDATE nodes SET held_at = NULL WHERE id = %s", (due,))
            app.execute("UPDATE nodes SET owner = 'someone' WHERE id = %s", (due,))
        payloads = [n.payload for n in listener.notifies(timeout=1.0)]
    # Created in instance, moved into instance, released from hold: one each. Created in
    # new, held, and an unrelated column change: none.
    assert payloads == [str(due), str(idle), str(due)]


def test_dispatcher_picks_up_a_change_without_waiting_for_a_sweep(
    config: FleetSettings, db_url: str
) -> None:
    slow_sweeps = config.model_copy(update={"sweep_interval_seconds": 60.0})
    running = Dispatcher(slow_sweeps, redis.Redis.from_url(config.redis_url))
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # past the first sweep; the next is a minute away
        [node_id] = add_nodes(db_url, ["prompt"], state="new")
        changed = time.monotonic()
        with psycopg.connect(db_url, autocommit=True) as app:
            app.execute("UPDATE nodes SET state = 'instance' WHERE id = %s", (node_id,))
        wait_until(lambda: len(queued_job_ids(config)) == 1, 5, "the job is queued")
        latency = time.monotonic() - changed
    finally:
        stop.set()
        thread.join(timeout=5)
    assert latency < 1.0
    assert queued_job_ids(config) == [f"node-{node_id}-instance-0"]


def test_two_dispatchers_and_repeated_sweeps_queue_each_run_once(
    config: FleetSettings, db_url: str
) -> None:
    node_ids = add_nodes(db_url, [f"many-{i}" for i in range(60)])
    dispatchers = [Dispatcher(config, redis.Redis.from_url(config.redis_url)) for _ in range(2)]
    start = threading.Barrier(len(dispatchers))

    def sweep_often(dispatcher: Dispatcher) -> None:
        start.wait()
        for _ in range(15):
            dispatcher.sweep()

    threads = [threading.Thread(target=sweep_often, args=(d,)) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    job_ids = queued_job_ids(config)
    assert sorted(job_ids) == sorted(f"node-{i}-instance-0" for i in node_ids)


def test_held_and_postponed_rows_are_not_dispatched(config: FleetSettings, db_url: str) -> None:
    held, later, now = add_nodes(db_url, ["held", "later", "now"])
    with psycopg.connect(db_url, autocommit=True) as app:
        app.execute("UPDATE nodes SET held_at = now() WHERE id = %s", (held,))
        app.execute(
            "UPDATE nodes SET next_attempt_at = now() + interval '1 hour' WHERE id = %s", (later,)
        )
    report = Dispatcher(config, redis.Redis.from_url(config.redis_url)).sweep()
    assert report.enqueued == 1
    assert queued_job_ids(config) == [f"node-{now}-instance-0"]


def test_an_expired_lease_is_taken_back_and_counted(config: FleetSettings, db_url: str) -> None:
    [node_id] = add_nodes(db_url, ["orphan"])
    with psycopg.connect(db_url, autocommit=True) as app:
        app.execute(
            "UPDATE nodes SET lease_owner = 'fleet-worker:gone:1:aaaaaa', step_run = 1,"
            " lease_expires_at = now() - interval '1 second' WHERE id = %s",
            (node_id,),
        )
    report = Dispatcher(config, redis.Redis.from_url(config.redis_url)).sweep()
    assert report.expired_leases == 1
    assert queued_job_ids(config) == [f"node-{node_id}-instance-1"]
    [(owner, attempts, error)] = fetch(
        db_url, "SELECT lease_owner, attempts, last_error FROM nodes WHERE id = %s", node_id
    )
    assert owner is None
    assert attempts == 1
    assert "lease of fleet-worker:gone:1:aaaaaa expired" in str(error)


def test_dispatcher_outlives_a_redis_outage(
    config: FleetSettings, db_url: str, tmp_path: Path
) -> None:
    port, password = free_port(), "outage"
    server = start_redis_server(port, tmp_path, password)
    own = config.model_copy(update={"redis_url": redis_url_for(port, password)})
    running = Dispatcher(own, redis.Redis.from_url(own.redis_url))
    stop = threading.Event()
    thread = threading.Thread(target=running.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        server.kill()
        server.wait()
        add_nodes(db_url, ["patient"])
        time.sleep(2)
        assert thread.is_alive()  # it keeps retrying instead of dying
        server = start_redis_server(port, tmp_path, password)
        wait_until(lambda: len(queued_job_ids(own)) == 1, 10, "the job is queued")
    finally:
        stop.set()
        thread.join(timeout=5)
        server.kill()
        server.wait()
