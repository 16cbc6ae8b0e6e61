"""The watch's way to a node: one SSH connection per node, kept open between probes
(asyncssh), that must show the node's pinned host key. Through it, the node API at the
host's own 127.0.0.1 (a direct-tcpip channel, also kept between probes: HTTP/1.1 with
keep-alive) and the host agent's `status`. Reusing both is what keeps a probe cheap: a
new SSH handshake per probe would cost more CPU than everything else in it, and a new
channel per probe (open, confirm, a TCP connect on the host, EOF and close both ways)
about as much as the two API calls themselves."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import h11

from jobs.host import AGENT, HostStatus

HOST_LOOPBACK = "127.0.0.1"
MAX_BODY = 1 << 20
# AES-GCM first: asyncssh builds chacha20-poly1305 (its default first choice) from three
# cipher calls per packet in Python, about 19 us a packet on the bench machine against
# 2-4 us for AES-GCM (AES-NI), and a probe sends and receives some twenty packets.
# OpenSSH's sshd offers both; chacha20 and CTR stay as fallbacks for any other server.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
           "chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr")  # fmt: skip


class HostKeyChanged(Exception):
    """The host showed another SSH key than the pinned one: nothing was sent."""


class KeyRefused(Exception):
    """The host does not accept the fleet's SSH key."""


class NoSession(Exception):
    """No SSH session (refused, timed out, reset)."""


class ConnectionBroken(Exception):
    """The kept connection died under the probe (the host rebooted, a reset), perhaps
    before the watch saw it close: a new connection may well answer."""


class ApiClosed(Exception):
    """SSH answers, but nothing listens on the node API's port."""


@dataclass(frozen=True)
class ApiAnswer:
    status: int
    body: dict[str, Any]

    @property
    def error_name(self) -> str:
        return str(self.body.get("name", ""))


@dataclass(frozen=True)
class Target:
    """Where one node's host is and the key it must show."""

    address: str
    pinned_key: str


class _ApiChannel:
    """One direct-tcpip channel to the node API, HTTP/1.1 on it (h11), kept between probes
    while the daemon keeps it (axum, like the simulator's aiohttp, keeps an idle HTTP/1.1
    connection open). A probe's requests go out pipelined, in one write: one SSH packet
    and one round trip for both instead of a packet and a round trip each."""

    def __init__(
        self,
        connection: asyncssh.SSHClientConnection,
        reader: asyncssh.SSHReader[bytes],
        writer: asyncssh.SSHWriter[bytes],
    ) -> None:
        self.connection, self.reader, self.writer = connection, reader, writer
        self.http = h11.Connection(h11.CLIENT)
        # The last probe's requests on the wire: the tokens are reused for minutes, so
        # most probes send the very same bytes again.
        self._wire: tuple[tuple[str, ...], bytes] = ((), b"")

    def reusable(self, connection: asyncssh.SSHClientConnection) -> bool:
        """Still open at both ends, between two requests, on this very SSH connection:
        a daemon that restarted or closed an idle connection has sent EOF by now."""
        return (
            self.connection is connection
            and self.http.our_state is h11.IDLE
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    async def get_all(self, paths: list[str], tokens: list[str]) -> list["ApiAnswer"]:
        requests = [_request(path, token) for path, token in zip(paths, tokens, strict=True)]
        self.writer.write(self._wire_bytes((*paths, *tokens), requests))
        answers: list[ApiAnswer] = []
        for path, request in zip(paths, requests, strict=True):
            # h11 follows one exchange at a time: it is told of each request, already
            # sent, just before its answer is read (what it would send is discarded).
            self.http.send(request)
            self.http.send(h11.EndOfMessage())
            answers.append(await _answer(self.http, self.reader, path))
            # Ready for the next request; a server that said "Connection: close" leaves
            # the channel unusable (LocalProtocolError: the channel is closed).
            self.http.start_next_cycle()
        return answers

    def _wire_bytes(self, key: tuple[str, ...], requests: list[h11.Request]) -> bytes:
        if self._wire[0] != key:
            self._wire = (key, b"".join(_serialized(request) for request in requests))
        return self._wire[1]

    def close(self) -> None:
        self.writer.close()


class HostConnections:
    """Open SSH connections by node id, each checked against its pin when made, and
    each with its kept channel to the node API."""

    def __init__(self, user: str, port: int, key_path: str, api_port: int) -> None:
        self._user, self._port, self._api_port = user, port, api_port
        self._key = asyncssh.read_private_key(Path(key_path).expanduser())
        self._open: dict[int, tuple[Target, asyncssh.SSHClientConnection]] = {}
        # Taken out while a probe uses it and put back only after a clean exchange, so
        # a probe cut off mid-request (its timeout) never leaves a half-read channel.
        self._channels: dict[int, _ApiChannel] = {}

    async def get(self, node_id: int, target: Target) -> asyncssh.SSHClientConnection:
        known = self._open.get(node_id)
        if known is not None and known[0] == target and not _closed(known[1]):
            return known[1]
        await self.drop(node_id)
        connection = await self._connect(target)
        self._open[node_id] = (target, connection)
        return connection

    async def drop(self, node_id: int) -> None:
        channel = self._channels.pop(node_id, None)
        if channel is not None:
            channel.close()
        known = self._open.pop(node_id, None)
        if known is not None:
            known[1].close()

    async def keep_only(self, node_ids: set[int]) -> None:
        # Channels too: a probe that ends after its node was dropped puts its channel back.
        for node_id in (set(self._open) | set(self._channels)) - node_ids:
            await self.drop(node_id)

    async def close(self) -> None:
        await self.keep_only(set())

    async def api_get(
        self,
        node_id: int,
        connection: asyncssh.SSHClientConnection,
        paths: list[str],
        tokens: list[str],
    ) -> list[ApiAnswer]:
        """GET each path in turn over the node's kept channel to the daemon, or a new one
        when there is none (or the daemon closed it: then once more on a new one)."""
        kept = self._channels.pop(node_id, None)
        if kept is not None and kept.reusable(connection):
            try:
                return await self._exchange(node_id, kept, paths, tokens)
            except ConnectionBroken:
                # Closed under us by the daemon (a restart, an idle timeout) or by a
                # dying SSH connection: a new channel tells which.
                pass
        elif kept is not None:
            kept.close()
        channel = await self._open_channel(connection)
        return await self._exchange(node_id, channel, paths, tokens)

    async def _exchange(
        self, node_id: int, channel: _ApiChannel, paths: list[str], tokens: list[str]
    ) -> list[ApiAnswer]:
        done = False
        try:
            answers = await channel.get_all(paths, tokens)
            done = True
            return answers
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionBroken(f"SSH connection lost: {_said(exc)}") from None
        except h11.ProtocolError as exc:
            # Its kind only: h11's text may quote a header, and a header is the token.
            raise ConnectionBroken(f"HTTP on the channel failed: {type(exc).__name__}") from None
        finally:
            if done:
                self._channels[node_id] = channel
            else:  # an error, a bad answer (ValueError) or the probe's timeout
                channel.close()

    async def _open_channel(self, connection: asyncssh.SSHClientConnection) -> _ApiChannel:
        try:
            reader, writer = await connection.open_connection(HOST_LOOPBACK, self._api_port)
        except asyncssh.ChannelOpenError as exc:
            if _closed(connection):
                raise ConnectionBroken(f"SSH connection lost: {exc.reason}") from None
            raise ApiClosed(
                f"node API port {self._api_port} closed on the host: {exc.reason}"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionBroken(f"SSH connection lost: {_said(exc)}") from None
        return _ApiChannel(connection, reader, writer)

    async def agent_status(self, connection: asyncssh.SSHClientConnection) -> HostStatus:
        try:
            result = await connection.run(f"sudo {AGENT} status", check=False)
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionBroken(f"SSH connection lost: {_said(exc)}") from None
        line = str(result.stdout or "").strip()
        if result.exit_status != 0:
            raise ValueError(f"host agent status failed: {str(result.stderr or '')[:120]!r}")
        return HostStatus.parse(line.splitlines()[-1] if line else "")

    async def _connect(self, target: Target) -> asyncssh.SSHClientConnection:
        try:
            pinned = asyncssh.import_public_key(target.pinned_key)
            return await asyncssh.connect(
                target.address,
                port=self._port,
                username=self._user,
                client_keys=[self._key],
                known_hosts=([pinned], [], []),
                encryption_algs=CIPHERS,
                agent_path=None,
                config=[],
            )
        except asyncssh.HostKeyNotVerifiable:
            raise HostKeyChanged(
                f"SSH host key of {target.address} changed since it was pinned: nothing was sent"
            ) from None
        except asyncssh.PermissionDenied:
            raise KeyRefused(f"SSH key refused by {target.address}") from None
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            raise NoSession(f"no SSH session with {target.address}: {_said(exc)}") from None


def _request(path: str, token: str) -> h11.Request:
    headers = [("Host", HOST_LOOPBACK), ("Authorization", f"Bearer {token}")]
    return h11.Request(method="GET", target=path, headers=headers)


def _serialized(request: h11.Request) -> bytes:
    """The request as h11 writes it (checked as h11 checks it), from a connection of its
    own: the channel's h11 can write a request only once the one before is answered."""
    scratch = h11.Connection(h11.CLIENT)
    return (scratch.send(request) or b"") + (scratch.send(h11.EndOfMessage()) or b"")


async def _answer(http: h11.Connection, reader: asyncssh.SSHReader[bytes], path: str) -> ApiAnswer:
    status, body = 0, bytearray()
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            chunk = await reader.read(65536)
            http.receive_data(chunk)
            if not chunk and http.their_state is h11.CLOSED:
                break
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise ValueError(f"{path}: answer over {MAX_BODY} bytes")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        raise ValueError(f"{path}: answer is not JSON (HTTP {status})") from None
    return ApiAnswer(status, parsed if isinstance(parsed, dict) else {})


def _closed(connection: asyncssh.SSHClientConnection) -> bool:
    return connection.is_closed()


def _said(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
