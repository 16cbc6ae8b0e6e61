"""The host agent over SSH (fabric). The host's SSH key is pinned on first contact and
checked on every later one: a different key holds the node (a man in the middle, or a
replaced host), it is never accepted silently."""

import base64
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko
from fabric import Connection

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
        try:
            with self._connect(address, pinned_key) as connection:
                result = connection.run(
                    shlex.join(["sudo", AGENT, *command]), hide=True, warn=True, in_stream=False
                )
                shown = connection.client.get_transport().get_remote_server_key()
        except paramiko.BadHostKeyException:
            raise HoldNode(
                f"SSH host key of {address} changed since it was pinned: "
                "possible man in the middle; check the host, then clear nodes.ssh_host_key"
            ) from None
        except (OSError, paramiko.SSHException) as exc:
            raise HostUnreachable(f"no SSH session with {address}: {exc}") from None
        ok = result.exited == 0
        line = (result.stdout if ok else result.stderr or result.stdout).strip()
        return AgentReply(ok, line.splitlines()[-1] if line else "", _key_text(shown))

    def _connect(self, address: str, pinned_key: str | None) -> Connection:
        port, timeout = self.settings.ssh_port, self.settings.ssh_timeout_seconds
        sock = socket.create_connection((address, port), timeout=timeout)
        # paramiko leaves Nagle on: the handshake's small packets then wait for delayed
        # ACKs, about 100 ms a connection instead of about 25 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Connection(
            host=address,
            user=self.settings.ssh_user,
            port=port,
            connect_timeout=timeout,
            connect_kwargs={
                "sock": sock,
                "key_filename": str(Path(self.settings.ssh_key_path).expanduser()),
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
