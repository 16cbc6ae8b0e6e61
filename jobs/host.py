"""The host over SSH (fabric): the host agent's commands, and the connection the node
API's tunnel (jobs/tunnel.py) rides on. The host's SSH key is pinned on first contact
and checked on every later one: a different key holds the node (a man in the middle, or
a replaced host), it is never accepted silently."""

import base64
import os
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut

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
    def __init__(self, settings: StepSettings) -> None:
        self.settings = settings

    def run(self, address: str, pinned_key: str | None, *command: str) -> AgentReply:
        with pinned_connection(self.settings, address, pinned_key) as connection:
            try:
                result = connection.run(
                    shlex.join(["sudo", AGENT, *command]),
                    hide=True,
                    warn=True,
                    in_stream=False,
                    timeout=self.settings.ssh_command_timeout_seconds,
                )
            except CommandTimedOut as exc:
                raise AgentTimedOut(
                    f"host agent {command[0]} on {address} did not answer within {exc.timeout:g} s"
                ) from None
            except (OSError, paramiko.SSHException) as exc:
                raise _no_session(address, exc) from None
            shown = connection.client.get_transport().get_remote_server_key()
        ok = result.exited == 0
        line = (result.stdout if ok else result.stderr or result.stdout).strip()
        return AgentReply(ok, line.splitlines()[-1] if line else "", _key_text(shown))


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
