"""Database logins for the fleet's roles (migrations/sql/privileges.sql).

Every process and every app connects with a login of its own that is a member of one
fleet role: `fleet db create-login` makes it (run with the schema owner's URL) and prints
its connection URL once. The password goes to the server only as a SCRAM verifier. The
worker, the dispatcher and the API refuse to start with any other login than their role's,
and never as a superuser."""

import base64
import hashlib
import hmac
import re
import secrets as random_source
from dataclasses import dataclass
from typing import Final, Literal, get_args

from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from models.errors import BadInput, FleetError, refusal
from models.formats import problem
from models.queries import query
from models.secrets import Secret

FleetRole = Literal["app", "reader", "api", "worker", "dispatcher", "operator", "watch"]
FLEET_ROLES: Final[tuple[FleetRole, ...]] = get_args(FleetRole)
# Roles whose logins may be bound to one owner (row-level security).
OWNER_BOUND: Final = ("app", "reader")
LOGIN_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
PASSWORD_BYTES: Final = 24
MIN_PASSWORD_LENGTH: Final = 16
SCRAM_ITERATIONS: Final = 4096
# SQLSTATEs of fleet_create_login (migrations/sql/functions.sql).
LOGIN_REFUSED: Final = {"FL010", "FL011", "FL012"}


class WrongLogin(FleetError):
    """A process connected with a login that is not its role's (or a superuser)."""


@dataclass(frozen=True)
class NewLogin:
    name: str
    role: FleetRole
    owner: str | None
    url: Secret  # carries the password: shown once, never logged


def parse_role(value: str) -> FleetRole:
    for role in FLEET_ROLES:
        if value == role:
            return role
    raise BadInput(f"unknown role {value!r}: one of {', '.join(FLEET_ROLES)}")


def create_login(
    connection: Connection,
    database_url: str,
    name: str,
    role: FleetRole,
    owner: str | None,
    password: Secret | None = None,
) -> NewLogin:
    """Make the login (in the caller's transaction) and return its connection URL. The
    password is generated unless given (a deployment that keeps it in its own secrets)."""
    if not LOGIN_NAME.match(name):
        raise BadInput(
            f"bad login name {name!r}: 1-63 characters, lowercase letters, digits and '_',"
            " starting with a letter"
        )
    if owner is not None:
        if role not in OWNER_BOUND:
            raise BadInput(f"--owner goes with --role app or reader, not {role}")
        if message := problem("owner", owner):
            raise BadInput(message)
    if password is not None and len(password.reveal()) < MIN_PASSWORD_LENGTH:
        raise BadInput(
            f"the password of login {name} must have {MIN_PASSWORD_LENGTH} characters or more"
        )
    chosen = password.reveal() if password else random_source.token_urlsafe(PASSWORD_BYTES)
    params = {"login": name, "role": role, "owner": owner, "verifier": scram_verifier(chosen)}
    try:
        connection.execute(query("create_login"), params)
    except DBAPIError as exc:
        if (message := refusal(exc, LOGIN_REFUSED)) is None:
            raise
        raise BadInput(message) from None
    return NewLogin(name, role, owner, Secret(login_url(database_url, name, chosen)))


def made_role(connection: Connection, name: str) -> str | None:
    """The fleet role of a login create-login made for this database, if it did."""
    return connection.execute(query("made_login"), {"login": name}).scalar()


def drop_login(connection: Connection, name: str) -> None:
    """Take a login away: its privileges here, then the role itself."""
    try:
        connection.execute(query("drop_login"), {"login": name})
    except DBAPIError as exc:
        if (message := refusal(exc, LOGIN_REFUSED)) is None:
            raise
        raise BadInput(message) from None


def login_url(database_url: str, name: str, password: str) -> str:
    """The same server and database as database_url, as this login."""
    url = make_url(database_url).set(username=name, password=password)
    return url.render_as_string(hide_password=False)


def scram_verifier(password: str) -> str:
    """What Postgres stores for a SCRAM-SHA-256 password (RFC 5802, RFC 7677)."""
    salt = random_source.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def require_role(connection: Connection, role: FleetRole, process: str) -> str:
    """Refuse to run a fleet process with another login than its role's. Returns the login."""
    found = connection.execute(query("session_login"), {"role": f"fleet_{role}"}).one()
    hint = f"give it a login of its own: `fleet db create-login NAME --role {role}`"
    if found.superuser:
        raise WrongLogin(f"the {process} connects as superuser {found.login!r}; {hint}")
    if not found.member:
        raise WrongLogin(f"the {process} connects as {found.login!r}, not a fleet_{role}; {hint}")
    return str(found.login)
