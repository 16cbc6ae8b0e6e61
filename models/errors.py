"""Errors that a user's input can cause. Each carries a one-line message for the user."""

from collections.abc import Collection

from sqlalchemy.exc import DBAPIError


class FleetError(Exception):
    """A refusal the user can act on; the CLI prints it and exits with code 2."""


class BadInput(FleetError):
    pass


class UnknownNode(FleetError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no node named {name!r}")


class IllegalTransition(FleetError):
    pass


def refusal(exc: DBAPIError, sqlstates: Collection[str]) -> str | None:
    """The message of one of the fleet's own refusals (RAISE ... USING ERRCODE in
    migrations/sql/functions.sql), or None when the error is something else."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) not in sqlstates:
        return None
    diag = getattr(orig, "diag", None)
    return str(getattr(diag, "message_primary", None) or orig)
