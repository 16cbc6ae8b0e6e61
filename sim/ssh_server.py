"""The SSH side of one simulated host: an asyncssh server that runs the host agent's
commands (`[sudo] rln-hostctl <command> <args...>`) on a HostAgent and answers like
deploy/host/rln-hostctl: one line on stdout and exit 0, one line on stderr and exit 1
when the agent refuses, exit 2 for a usage error.

Besides exec requests of the agent, one kind of forwarding: a direct-tcpip channel to
the host's own loopback ("127.0.0.1" or "localhost") at a port it serves locally (the
node API), as `sshd` with `PermitOpen 127.0.0.1:3001 localhost:3001` allows. The host
connects to its service from its own address, so the service can tell a tunnelled call
(the peer is the host itself) from one that came over the network. Every other
destination is refused, as are shells, PTYs, SFTP and remote forwarding.

Built to run by the hundred in one event loop: a host is one listening socket and a few
small objects; the agent, the keys and the connections are all it holds."""

import asyncio
import logging
import shlex
from collections.abc import Awaitable, Callable, Collection
from functools import partial
from typing import NamedTuple, Self, cast

import asyncssh

from sim.agent import AgentError, HostAgent

log = logging.getLogger(__name__)

PROGRAM = "rln-hostctl"
# What a client names to reach the host's own loopback through a direct-tcpip channel.
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost"})
USAGE = (
    "usage: rln-hostctl set-root-key HEX | set-network NETWORK | start | stop | status"
    " | install VERSION URL SHA256 | backup-upload PATH S3URI | backup-remove PATH"
    " | wallet-aside"
    " | backup-download URL PATH SHA256"
)


class Reply(NamedTuple):
    exit_status: int
    line: str  # stdout when exit_status is 0, stderr otherwise


class _Command(NamedTuple):
    params: tuple[str, ...]  # as the real agent's usage line names them
    call: Callable[[HostAgent, list[str]], Awaitable[str]]


COMMANDS: dict[str, _Command] = {
    "set-root-key": _Command(("HEX",), lambda agent, args: agent.set_root_key(args[0])),
    "set-network": _Command(("NETWORK",), lambda agent, args: agent.set_network(args[0])),
    "start": _Command((), lambda agent, _: agent.start()),
    "stop": _Command((), lambda agent, _: agent.stop()),
    "status": _Command((), lambda agent, _: agent.status()),
    "install": _Command(
        ("VERSION", "URL", "SHA256"), lambda agent, args: agent.install(args[0], args[1], args[2])
    ),
    "backup-upload": _Command(
        ("PATH", "S3URI"), lambda agent, args: agent.backup_upload(args[0], args[1])
    ),
    "backup-remove": _Command(("PATH",), lambda agent, args: agent.backup_remove(args[0])),
    "wallet-aside": _Command((), lambda agent, _: agent.wallet_aside()),
    "backup-download": _Command(
        ("URL", "PATH", "SHA256"),
        lambda agent, args: agent.backup_download(args[0], args[1], args[2]),
    ),
}


def _usage(name: str) -> str:
    return " ".join(["usage:", PROGRAM, name, *COMMANDS[name].params])


def _agent_args(words: list[str]) -> list[str] | None:
    """The agent's arguments, or None when the words do not run the agent."""
    if words[:1] == ["sudo"]:
        words = words[1:]
    if not words or words[0] not in (PROGRAM, f"/usr/local/bin/{PROGRAM}"):
        return None
    return words[1:]


def _usage_reply(words: list[str]) -> Reply | None:
    """The help or usage error the real agent prints, or None for a well formed call."""
    if not words:
        return Reply(2, USAGE)
    name, args = words[0], words[1:]
    if name in ("-h", "--help", "help"):
        return Reply(0, USAGE)
    if name not in COMMANDS:
        return Reply(2, USAGE)
    if len(args) != len(COMMANDS[name].params):
        return Reply(2, _usage(name))
    return None


async def run_agent_command(agent: HostAgent, command_line: str) -> Reply:
    """What the host answers to one exec request: the whole protocol, without SSH."""
    # The fleet quotes with shlex.join, so shlex.split undoes it exactly; no shell runs.
    try:
        words = shlex.split(command_line)
    except ValueError as exc:
        return Reply(2, f"cannot parse the command line: {exc}")
    args = _agent_args(words)
    if args is None:
        return Reply(127, f"{words[0] if words else repr('')}: command not found")
    refusal = _usage_reply(args)
    if refusal is not None:
        return refusal
    try:
        return Reply(0, await COMMANDS[args[0]].call(agent, args[1:]))
    except AgentError as exc:
        return Reply(1, str(exc))


async def _serve_process(agent: HostAgent, process: asyncssh.SSHServerProcess[str]) -> None:
    if process.command is None:
        reply = Reply(2, f"this host runs only {PROGRAM} commands, no shell")
    else:
        try:
            reply = await run_agent_command(agent, process.command)
        except Exception:
            # The real agent turns an unplanned failure into one line and exit 1 too;
            # the traceback goes to the log so a simulator bug is not mistaken for a host.
            log.exception("simulated host agent failed on %r", process.command)
            reply = Reply(1, "rln-hostctl: unexpected failure")
    stream = process.stdout if reply.exit_status == 0 else process.stderr
    stream.write(reply.line + "\n")
    process.exit(reply.exit_status)


class _AuthServer(asyncssh.SSHServer):
    """Public-key auth for the one authorized client key, under any user name."""

    def __init__(self, host: "SimSSHHost") -> None:
        self._host = host
        self._connection: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._connection = conn
        self._host.connections.add(conn)
        self._host.handshakes += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connection is not None:
            self._host.connections.discard(self._connection)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.public_data == self._host.authorized_client_key.public_data

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        if dest_host not in LOOPBACK_NAMES or dest_port not in self._host.forward_ports:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"forwarding to {dest_host}:{dest_port} is not permitted",
            )
        self._host.forwards_opened += 1
        return _forward_from_host(self._host.host, dest_port)


async def _forward_from_host(address: str, port: int) -> asyncssh.SSHTCPSession[bytes]:
    """asyncssh's own forward_connection, but connecting from the host's address (as a
    real sshd on the host does, its loopback being the host's own)."""
    try:
        _, peer = await asyncio.get_running_loop().create_connection(
            asyncssh.SSHForwarder, address, port, local_addr=(address, 0)
        )
    except OSError as exc:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
    # A forwarder serves as the channel's session: asyncssh casts it the same way.
    return cast("asyncssh.SSHTCPSession[bytes]", asyncssh.SSHForwarder(peer))


class SimSSHHost:
    """One simulated host's SSH server. Use `start_ssh_server` to make a running one."""

    def __init__(
        self,
        host: str,
        port: int,
        agent: HostAgent,
        host_key: asyncssh.SSHKey,
        authorized_client_key: asyncssh.SSHKey,
        forward_ports: Collection[int] = (),
    ) -> None:
        self.host = host
        self.port = port  # the bound port once started (0 asks for a free one)
        self.agent = agent
        self.host_key = host_key
        self.authorized_client_key = authorized_client_key
        # Ports on the host's own address a client may reach as 127.0.0.1 / localhost.
        self.forward_ports = frozenset(forward_ports)
        self.connections: set[asyncssh.SSHServerConnection] = set()
        # Every SSH connection a client opened (each one a key exchange) and every
        # direct-tcpip channel to the host's loopback: what the fleet's round trips per
        # node (tests/test_round_trips.py) and the watch's kept channels are counted in.
        self.handshakes = 0
        self.forwards_opened = 0
        self._acceptor: asyncssh.SSHAcceptor | None = None

    @property
    def acceptor(self) -> asyncssh.SSHAcceptor:
        if self._acceptor is None:
            raise RuntimeError(f"SSH server for {self.host} is not running")
        return self._acceptor

    @property
    def host_key_text(self) -> str:
        """The host key as the fleet records it: `<type> <base64>`."""
        return public_key_text(self.host_key)

    async def start(self) -> None:
        if self._acceptor is not None:
            return
        self._acceptor = await asyncssh.listen(
            self.host,
            self.port,
            server_factory=partial(_AuthServer, self),
            process_factory=partial(_serve_process, self.agent),
            server_host_keys=[self.host_key],
            # Exec requests and the local forwards above; nothing read from disk or asked
            # of GSSAPI.
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            gss_host=None,
            x509_trusted_certs=None,
            rdns_lookup=False,
            login_timeout=30,
        )
        self.port = self._acceptor.get_port()

    def change_host_key(self, new_key: asyncssh.SSHKey | None = None) -> asyncssh.SSHKey:
        """Fault knob: the host's SSH key changes (a rebuilt host, or a man in the
        middle). Connections from now on see the new key; the port stays open."""
        key = new_key or asyncssh.generate_private_key("ssh-ed25519")
        self.acceptor.update(server_host_keys=[key])
        self.host_key = key
        return key

    def drop_connections(self) -> None:
        """Fault knob: every open SSH connection breaks (a NAT timeout, a restarted
        sshd); the port stays open and new connections are served."""
        for connection in list(self.connections):
            connection.abort()

    async def close(self) -> None:
        """Stop listening and drop open sessions, as a host that dies does."""
        if self._acceptor is None:
            return
        acceptor, self._acceptor = self._acceptor, None
        acceptor.close()
        for connection in list(self.connections):
            connection.abort()
        await acceptor.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_ssh_server(
    host: str,
    port: int,
    agent: HostAgent,
    host_key: asyncssh.SSHKey,
    authorized_client_key: asyncssh.SSHKey,
    forward_ports: Collection[int] = (),
) -> SimSSHHost:
    """A running SSH server for one simulated host; `close()` it when done."""
    server = SimSSHHost(host, port, agent, host_key, authorized_client_key, forward_ports)
    await server.start()
    return server


def public_key_text(key: asyncssh.SSHKey) -> str:
    """`<type> <base64>` without a comment, the form paramiko and the fleet use."""
    key_type, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{key_type} {blob}"
