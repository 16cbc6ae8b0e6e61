"""Step handlers for the runtime tests, loaded by workers with FLEET_STEP_MODULES.

What a handler does depends on the node's name prefix, so a test picks a behaviour by
naming its nodes. Every handler writes its effects to the test_effects table (a real
side effect, outside the runtime's own transactions) so that tests can count them."""

import os
import time

import psycopg

from jobs.outcomes import Done, Fail, Outcome, Wait
from jobs.registry import NodeFacts, StepContext, steps
from models.states import WORK_STATES
from worker.settings import settings

SLOW_SECONDS = float(os.environ.get("FLEET_TEST_SLOW_SECONDS", "3"))


def record_effect(context: StepContext, phase: str) -> None:
    node = context.node
    with psycopg.connect(settings().database_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO test_effects (node_id, state, step_run, phase) VALUES (%s, %s, %s, %s)",
            (node.id, node.state, node.step_run, phase),
        )


def effects(context: StepContext, phase: str) -> int:
    node = context.node
    with psycopg.connect(settings().database_url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM test_effects WHERE node_id = %s AND state = %s AND phase = %s",
            (node.id, node.state, phase),
        ).fetchone()
    return int(row[0]) if row else 0


def behave(context: StepContext) -> Outcome:
    kind = context.node.name.split("-", 1)[0]
    if kind == "slow":
        record_effect(context, "begin")
        time.sleep(SLOW_SECONDS)
        record_effect(context, "run")
        return Done()
    if kind == "wait" and effects(context, "wait") == 0:
        record_effect(context, "wait")
        return Wait(1.0, "test waits once")
    if kind == "stuck":
        record_effect(context, "wait")
        return Wait(0.3, "node API not answering yet")
    if kind == "fail" and effects(context, "fixed") == 0:
        record_effect(context, "fail")
        raise RuntimeError(f"step {context.node.state} broke on purpose")
    if kind == "hold":
        record_effect(context, "fail")
        return Fail("cannot go on: needs an operator", hold=True)
    if kind == "facts":
        context.record(NodeFacts(address="127.0.0.7", instance_id="i-0123456789abcdef0"))
    record_effect(context, "run")
    return Done()


for _state in WORK_STATES:
    steps.register(_state, behave)
