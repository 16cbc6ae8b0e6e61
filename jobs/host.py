"""The host over SSH (fabric): the host agent's commands, and the connection the node
API's tunnel (jobs/tunnel.py) rides on, one per host for a whole job (HostConnections).
The host's SSH key is pinned on first contact and checked on every connection opened
later: a different key holds the node (a man in the middle, or a replaced host), it is
never accepted silently."""

import base64
import os
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut
from invoke.runners import Result

from jobs.config import StepSettings
from jobs.outcomes import HoldNode

AGENT = "rln-hostctl"


@dataclass(frozen=True)
class AgentReply:
    ok: bool
    line: str  # the agent's one line: stdout on success, stderr on failure
    host_key: str  # the key the host showed, "<type> <base64>"


class HostUnreachable(Exception):
    """No SSH session (refused, timed out): the host may still be booting."""


class AgentTimedOut(Exception):
    """An agent command ran past its time limit (a stalled download, a hung host): the
    session is closed, and the step is retried like any failure of the agent."""


class HostAgentClient(Protocol):
    def run(self, address: str, pinned_key: str | None, *command: str) -> AgentReply: ...


class _PinnedKey(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Accept exactly the pinned key, or on first contact any key (remembered by the
    caller from the reply). paramiko's own check runs first for a known key and raises
    BadHostKeyException on a mismatch; this policy is asked only for unknown hosts."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        return None


class FabricAgent:
    """The host agent's commands over SSH. With a job's HostConnections they share the
    job's one connection per host; without, each command opens and closes its own."""

    def __init__(self, settings: StepSettings, connections: "HostConnections | None" = None):
        self.settings = settings
        self.connections = connections

    def run(self, address: str, pinned_key: str | None, *command: str) -> AgentReply:
        if self.connections is not None:
            return self._run(self.connections, address, pinned_key, command)
        with HostConnections(self.settings) as own:
            return self._run(own, address, pinned_key, command)

    def _run(
        self,
        connections: "HostConnections",
        address: str,
        pinned_key: str | None,
        command: tuple[str, ...],
    ) -> AgentReply:
        line = shlex.join(["sudo", AGENT, *command])
        timeout = self.settings.ssh_command_timeout_seconds

        def agent_command(connection: Connection) -> tuple[Result, str]:
            result = connection.run(line, hide=True, warn=True, in_stream=False, timeout=timeout)
            return result, _key_text(connection.client.get_transport().get_remote_server_key())

        try:
            result, shown = connections.use(address, pinned_key, agent_command)
        except CommandTimedOut as exc:
            raise AgentTimedOut(
                f"host agent {command[0]} on {address} did not answer within {exc.timeout:g} s"
            ) from None
        except BROKEN as exc:
            raise _no_session(address, exc) from None
        ok = result.exited == 0
        text = (result.stdout if ok else result.stderr or result.stdout).strip()
        return AgentReply(ok, text.splitlines()[-1] if text else "", shown)


# What a connection that broke under a command or a channel raises (paramiko and fabric).
BROKEN = (OSError, paramiko.SSHException, EOFError)
T = TypeVar("T")


@dataclass
class _Open:
    connection: Connection
    shown_key: str  # the key the host showed when it was opened, "<type> <base64>"


class HostConnections:
    """The SSH connections of one job (a step chain): one per host address, opened on
    first use and shared by the agent's commands and the node API's tunnel channels, so a
    chain pays one key exchange per host instead of one per command or call. Closed when
    the job ends (`close`, or leaving the `with`): no connection outlives its job.

    Each connection is opened by pinned_connection, so the host key is checked every time
    one is opened. A connection is reused for a pinned key only if the key it showed when
    opened is that key (a first contact's connection serves the chain's later steps once
    the key step pinned what it showed). One found broken under a command or a channel is
    opened again once, key checked again, and the work retried on it: what is retried
    is an agent command (each is safe to repeat, as whole steps are) or the opening of a
    channel (nothing was sent yet), never an HTTP request already on its way."""

    def __init__(self, settings: StepSettings) -> None:
        self.settings = settings
        self._open: dict[str, _Open] = {}

    def use(self, address: str, pinned_key: str | None, work: Callable[[Connection], T]) -> T:
        """`work` on the host's connection; raises what pinned_connection raises, or what
        `work` raised (BROKEN: on a fresh connection, or on the reopened one)."""
        connection, reused = self._connection(address, pinned_key)
        try:
            return work(connection)
        except BROKEN:
            self.drop(address)
            if not reused:
                raise
        except CommandTimedOut:
            # The command may still run on the host: its session goes with the connection.
            self.drop(address)
            raise
        connection, _ = self._connection(address, pinned_key)
        try:
            return work(connection)
        except (*BROKEN, CommandTimedOut):
            self.drop(address)
            raise

    def _connection(self, address: str, pinned_key: str | None) -> tuple[Connection, bool]:
        held = self._open.get(address)
        if held is not None:
            if _alive(held.connection) and pinned_key in (None, held.shown_key):
                return held.connection, True
            self.drop(address)  # broken, or another key pinned since: opened again
        connection = pinned_connection(self.settings, address, pinned_key)
        shown = _key_text(connection.client.get_transport().get_remote_server_key())
        self._open[address] = _Open(connection, shown)
        return connection, False

    def drop(self, address: str) -> None:
        held = self._open.pop(address, None)
        if held is not None:
            held.connection.close()

    def close(self) -> None:
        for address in list(self._open):
            self.drop(address)

    def __enter__(self) -> "HostConnections":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _alive(connection: Connection) -> bool:
    transport = connection.client.get_transport()
    return transport is not None and bool(transport.is_active())


def pinned_connection(settings: StepSettings, address: str, pinned_key: str | None) -> Connection:
    """An open SSH connection to the host, which showed exactly the pinned key (or, with
    no pin, any key: first contact, the caller pins what `get_remote_server_key` shows).
    The one way the fleet reaches a host: the agent's commands and the node API's tunnel.
    A changed key holds the node; no session at all raises HostUnreachable."""
    try:
        connection = _connection(settings, address, pinned_key)
    except OSError as exc:
        raise _no_session(address, exc) from None
    try:
        connection.open()
    except paramiko.AuthenticationException:
        connection.close()
        raise HoldNode(
            f"SSH key refused by {address}: the host does not accept the fleet's key"
            f" {settings.ssh_key_path}; check the key the image authorises"
        ) from None
    except paramiko.BadHostKeyException:
        connection.close()
        raise HoldNode(
            f"SSH host key of {address} changed since it was pinned: "
            "possible man in the middle; nothing was sent: check the host, then record its"
            " checked key in nodes.ssh_host_key (as the schema owner)"
        ) from None
    except (OSError, paramiko.SSHException) as exc:
        connection.close()
        raise _no_session(address, exc) from None
    return connection


def _no_session(address: str, exc: Exception) -> HostUnreachable:
    return HostUnreachable(f"no SSH session with {address}: {exc}")


def _connection(settings: StepSettings, address: str, pinned_key: str | None) -> Connection:
    port, timeout = settings.ssh_port, settings.ssh_timeout_seconds
    key_file = Path(settings.ssh_key_path).expanduser()
    if not os.access(key_file, os.R_OK) or not key_file.is_file():
        # Not the host's fault and not a boot: waiting cannot help.
        raise HoldNode(f"SSH key file {settings.ssh_key_path} is missing or unreadable here")
    sock = socket.create_connection((address, port), timeout=timeout)
    # paramiko leaves Nagle on: the handshake's small packets then wait for delayed
    # ACKs, about 100 ms a connection instead of about 25 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection = Connection(
        host=address,
        user=settings.ssh_user,
        port=port,
        connect_timeout=timeout,
        connect_kwargs={
            "sock": sock,
            "key_filename": str(key_file),
            "look_for_keys": False,
            "allow_agent": False,
        },
    )
    connection.client.set_missing_host_key_policy(_PinnedKey())
    if pinned_key is not None:
        _pin(connection.client, address, port, pinned_key)
    return connection


def _pin(client: paramiko.SSHClient, address: str, port: int, pinned_key: str) -> None:
    key_type, _, blob = pinned_key.partition(" ")
    host = address if port == 22 else f"[{address}]:{port}"
    client.get_host_keys().add(
        host, key_type, paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
    )


def _key_text(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


@dataclass(frozen=True)
class HostStatus:
    running: bool
    version: str | None
    root_key: str | None

    @classmethod
    def parse(cls, line: str) -> "HostStatus":
        """`state=running version=0.9.1 root_key=<hex>`; `none` for what is not set."""
        fields = dict(part.partition("=")[::2] for part in line.split())
        if fields.get("state") not in ("running", "stopped"):
            raise ValueError(f"host agent status not understood: {line[:80]!r}")

        def value(name: str) -> str | None:
            found = fields.get(name, "none")
            return None if found == "none" else found

        return cls(fields["state"] == "running", value("version"), value("root_key"))
