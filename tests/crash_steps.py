"""Loaded after jobs.steps by workers in the crash tests (FLEET_STEP_MODULES): the first
time each (node, state) finishes its real step, the worker dies before it can settle
the outcome, as if SIGKILLed at the worst moment. The next run must not repeat the
step's effects (a second instance, a second /init)."""

import os
from pathlib import Path

from jobs.outcomes import Done, Outcome
from jobs.registry import StepContext, StepHandler, steps
from models.states import WorkState

CRASH_DIR = Path(os.environ.get("FLEET_TEST_CRASH_DIR", "/nonexistent"))


def crash_once_after(state: WorkState, handler: StepHandler) -> StepHandler:
    def run(context: StepContext) -> Outcome:
        outcome = handler(context)
        marker = CRASH_DIR / f"{context.node.id}-{state}"
        if isinstance(outcome, Done) and not marker.exists():
            marker.touch()
            os._exit(137)
        return outcome

    return run


steps.wrap_all(crash_once_after)
