"""What an owner reads of the fleet's errors: the same text with the fleet's internals
replaced by neutral words. One place, at the door (the API's node and event answers),
rather than a second, owner-safe message written beside every error: the errors come from
SQL (expired leases), steps and libraries, and all of them keep their full text for
operators (`fleet node show`, SQL). A new internal detail is added here once."""

import re
from typing import Final

# Longest first: the lease message names a worker, which the next rule would also match.
INTERNAL: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # models/sql/expire_leases.sql: the worker's process name is host:pid:token.
    (
        re.compile(r"lease of \S+ expired: the worker died or stalled mid-step"),
        "the step was interrupted: its worker stopped",
    ),
    # Process names (worker/identity.py): fleet-<role>:<host>:<pid>:<token>.
    (re.compile(r"\bfleet-[a-z]+:[^\s,;)]+"), "a fleet process"),
    # EC2 ids: the node's instance, images, volumes, network, requests.
    (
        re.compile(r"(?<![\w-])(i|ami|vol|eni|sg|subnet|vpc|r|snap)-[0-9a-f]{8,17}\b"),
        "<aws resource>",
    ),
    (re.compile(r"\bRequest ?ID: ?[0-9A-Za-z-]+", re.IGNORECASE), "request id <hidden>"),
)


def for_owner(text: str | None) -> str | None:
    """text as its owner may see it."""
    if text is None:
        return None
    for pattern, neutral in INTERNAL:
        text = pattern.sub(neutral, text)
    return text
