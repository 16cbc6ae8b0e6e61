"""Loaded after jobs.steps by workers in a crash test (FLEET_STEP_MODULES): the first
time a step notes a verified backup, the worker dies right after the note committed and
before the step's next line (removing the host's copy, stopping the service), as if
SIGKILLed there. The next run must not back the node up again."""

import os
from pathlib import Path
from typing import Any, Literal

from jobs.outcomes import Outcome
from jobs.registry import StepContext, StepHandler, steps
from models.states import WorkState

CRASH_DIR = Path(os.environ.get("FLEET_TEST_CRASH_DIR", "/nonexistent"))


class DiesAfterBackupNote:
    def __init__(self, context: StepContext, marker: Path) -> None:
        self._context, self._marker = context, marker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def note(self, event: Literal["backup", "note"], detail: str) -> None:
        self._context.note(event, detail)
        if event == "backup" and not self._marker.exists():
            self._marker.touch()
            os._exit(137)


def crash_once_after_backup(state: WorkState, handler: StepHandler) -> StepHandler:
    def run(context: StepContext) -> Outcome:
        marker = CRASH_DIR / f"{context.node.id}-{state}-backup"
        return handler(DiesAfterBackupNote(context, marker))

    return run


steps.wrap_all(crash_once_after_backup)
