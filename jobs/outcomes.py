"""What a step tells the runtime when it returns."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Done:
    """The step's work is complete: advance along its worker edge."""


@dataclass(frozen=True)
class Wait:
    """Not yet (an instance is booting, an unlock is running): run the step again after
    `seconds`. The worker is free meanwhile and the attempt is not counted."""

    seconds: float
    reason: str
    # False: not held by FLEET_WAIT_LIMIT_SECONDS however long it lasts (a launch paused
    # for EC2's capacity or the account's quota passes when AWS decides, not the node).
    limited: bool = True


@dataclass(frozen=True)
class Fail:
    """The step failed. It is retried with backoff until the attempt limit, then held;
    `hold=True` holds the node at once (retrying cannot help, an operator must look)."""

    error: str
    hold: bool = False


Outcome = Done | Wait | Fail


class HoldNode(Exception):
    """Raised anywhere in a step: stop and hold the node with this message at once,
    because retrying cannot help (a changed SSH host key, a wallet the fleet cannot
    unlock). The message must name the problem and never contain a secret."""
