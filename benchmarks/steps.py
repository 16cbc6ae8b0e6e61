"""Instant steps for benchmarks: every work state is done at once."""

from jobs.outcomes import Done, Outcome
from jobs.registry import StepContext, steps
from models.states import WORK_STATES


def done(context: StepContext) -> Outcome:
    return Done()


for _state in WORK_STATES:
    steps.register(_state, done)


def no_op() -> None:
    """The reference job for bare RQ."""
