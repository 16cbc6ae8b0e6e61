"""The node lifecycle as Python types. The database holds the same facts as rows
(node_states, node_edges); tests/test_schema.py checks that the two agree."""

from typing import Final, Literal, TypeGuard, get_args

NodeState = Literal[
    "new",
    "instance",
    "key",
    "start",
    "wallet",
    "live",
    "stop",
    "stopped",
    "update",
    "destroy",
    "destroyed",
]
WorkState = Literal["instance", "key", "start", "wallet", "stop", "update", "destroy"]

ALL_STATES: Final[tuple[NodeState, ...]] = get_args(NodeState)
WORK_STATES: Final[tuple[WorkState, ...]] = get_args(WorkState)

# Where a work state goes when its step is done (the 'worker' edges).
NEXT_STATE: Final[dict[WorkState, NodeState]] = {
    "instance": "key",
    "key": "start",
    "start": "wallet",
    "wallet": "live",
    "stop": "stopped",
    "update": "stopped",
    "destroy": "destroyed",
}


def is_state(value: str) -> TypeGuard[NodeState]:
    return value in ALL_STATES


def is_work_state(value: str) -> TypeGuard[WorkState]:
    return value in WORK_STATES
