"""Loaded after jobs.steps by workers in the batch crash tests (FLEET_STEP_MODULES): the
first time a batched launch reaches the line FLEET_TEST_CRASH_AT names
(jobs/steps/batching.py `reached`), the worker dies there, as if SIGKILLed."""

import os
from pathlib import Path

from jobs.steps import batching

CRASH_DIR = Path(os.environ.get("FLEET_TEST_CRASH_DIR", "/nonexistent"))
CRASH_AT = os.environ.get("FLEET_TEST_CRASH_AT", "")


def crash_once_at(point: str) -> None:
    marker = CRASH_DIR / f"batch-{point}"
    if point == CRASH_AT and not marker.exists():
        marker.touch()
        os._exit(137)


batching.reached = crash_once_at
