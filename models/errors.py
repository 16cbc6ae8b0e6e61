"""Errors that a user's input can cause. Each carries a one-line message for the user."""


class FleetError(Exception):
    """A refusal the user can act on; the CLI prints it and exits with code 2."""


class BadInput(FleetError):
    pass


class UnknownNode(FleetError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no node named {name!r}")


class IllegalTransition(FleetError):
    pass
