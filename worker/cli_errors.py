"""What `fleet` says when a command fails: one `error:` line and an exit code, chosen here
for every kind of failure the operator can act on.

Exit 2: the input or the configuration is wrong (fix it and run again). Exit 1: a service
the command needs does not answer or is not ready (the database, Redis, AWS). Anything
else is a bug in the fleet, and keeps its traceback: a vague line would hide where it is.

No message echoes a URL or a setting's value: they may hold passwords or keys."""

import re
from dataclasses import dataclass

from pydantic import ValidationError
from pydantic_settings import SettingsError
from sqlalchemy.exc import DBAPIError, OperationalError

from models.errors import FleetError
from models.secrets import SecretError, SecretsDoNotOpen

BAD_INPUT = 2
UNAVAILABLE = 1

# SQLSTATEs of a schema older than the code: no table, column or function of that name.
NOT_MIGRATED = ("42P01", "42703", "42883")
INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True)
class Failure:
    message: str
    exit_code: int


def explain(exc: BaseException) -> Failure | None:
    """The line and exit code for a failure the operator can act on; None for a bug."""
    for kind in (input_failure, secret_failure, database_failure, service_failure):
        if failure := kind(exc):
            return failure
    return None


def input_failure(exc: BaseException) -> Failure | None:
    match exc:
        case FleetError():
            return Failure(str(exc), BAD_INPUT)
        case ValidationError() if exc.title.endswith("Settings"):
            return Failure(settings_problems(exc), BAD_INPUT)
        case SettingsError():
            return Failure(unparsable_setting(exc), BAD_INPUT)
        case UnicodeEncodeError() if "surrogates" in exc.reason:
            return Failure("some input is not valid UTF-8", BAD_INPUT)
    return None


def secret_failure(exc: BaseException) -> Failure | None:
    # Tampered data or a key ring without the right key: not fixed by retyping the command.
    match exc:
        case SecretsDoNotOpen():
            return Failure(f"secrets do not open, none revealed: {exc}", UNAVAILABLE)
        case SecretError():
            return Failure(str(exc), UNAVAILABLE)
    return None


def database_failure(exc: BaseException) -> Failure | None:
    match exc:
        case OperationalError():
            return Failure(f"cannot reach the database: {database_says(exc)}", UNAVAILABLE)
        case DBAPIError() if sqlstate(exc) in NOT_MIGRATED:
            return Failure(
                f"the database is not migrated ({database_says(exc)}): run fleet db upgrade",
                UNAVAILABLE,
            )
        case DBAPIError() if sqlstate(exc) == INSUFFICIENT_PRIVILEGE:
            return Failure(
                f"the database login may not do this ({database_says(exc)}):"
                " is FLEET_DATABASE_URL the right login?",
                BAD_INPUT,
            )
    return None


def service_failure(exc: BaseException) -> Failure | None:
    """Redis and AWS, imported only once something failed: `fleet node ...` in a script
    loop should not pay for importing them."""
    from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
    from botocore.exceptions import ConnectionError as AwsDown
    from redis.exceptions import ConnectionError as RedisDown

    match exc:
        case RedisDown():
            return Failure(f"cannot reach Redis: {first_line(exc)}", UNAVAILABLE)
        case AwsDown() | HTTPClientError():
            return Failure(f"cannot reach AWS: {first_line(exc)}", UNAVAILABLE)
        case NoCredentialsError():
            return Failure("no AWS credentials found (environment, profile or role)", BAD_INPUT)
        case ClientError():
            return Failure(f"AWS refused: {first_line(exc)}", UNAVAILABLE)
    return None


def settings_problems(exc: ValidationError) -> str:
    """`FLEET_X: what is wrong` for each bad setting, on one line; never the value."""
    problems = []
    for error in exc.errors():
        field, *inner = (str(part) for part in error["loc"])
        where = f" {'.'.join(inner)}:" if inner else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"FLEET_{field.upper()}:{where} {message}")
    return "; ".join(problems)


def unparsable_setting(exc: SettingsError) -> str:
    # pydantic-settings names the field in its message and chains the JSON error.
    found = re.search(r'field "(\w+)"', str(exc))
    name = f"FLEET_{found.group(1).upper()}" if found else "a FLEET_ setting"
    cause = f" ({exc.__cause__})" if exc.__cause__ else ""
    return f"{name}: not valid JSON{cause}"


def sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def database_says(exc: DBAPIError) -> str:
    """The server's or the driver's first line (it names host and port, not the password)."""
    return first_line(exc.orig) if exc.orig is not None else first_line(exc)


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
