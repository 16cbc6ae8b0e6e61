"""Pages bounded in bytes as well as in items: a page stops before the item that would take
its JSON past the budget, and its cursor gives the rest. However long the nodes' errors
grow, one answer stays about the budget (at least one item, which the column bounds keep
small)."""

from collections.abc import Sequence
from typing import Final, TypeVar

from pydantic import BaseModel

Item = TypeVar("Item", bound=BaseModel)

# The envelope's own bytes ({"items":[...],"next_cursor":"..."}) beside the items.
ENVELOPE: Final = 64


def fitting(items: Sequence[Item], budget: int) -> list[Item]:
    """The longest prefix of items whose JSON fits in budget bytes; never empty if items
    is not."""
    taken: list[Item] = []
    size = ENVELOPE
    for item in items:
        size += len(item.model_dump_json()) + 1  # and its comma
        if taken and size > budget:
            break
        taken.append(item)
    return taken
