"""The node API through the node's SSH connection: a direct-tcpip channel, opened on the
same pinned-key connection the host agent uses (jobs/host.py), to the host's own
127.0.0.1:<node API port>. The daemon has no TLS; this way its passwords, mnemonics and
admin tokens never cross the network in clear, and its port can stay closed to the world.

In a job, each API call is a channel of its own on the job's one SSH connection to the
host (HostConnections, jobs/host.py), which the job closes when it ends; without one,
each call opens and closes an SSH session of its own (tests/test_node_tunnel.py measures
what either costs)."""

from dataclasses import dataclass

import httpcore
import paramiko
from fabric import Connection

from jobs.config import StepSettings
from jobs.host import BROKEN, HostConnections, pinned_connection
from jobs.node_api import Direct, Route
from jobs.outcomes import HoldNode
from jobs.registry import NodeSnapshot

# Where the daemon listens as seen from the host itself: sshd connects there for us.
HOST_LOOPBACK = "127.0.0.1"


def node_route(
    settings: StepSettings, node: NodeSnapshot, connections: HostConnections | None = None
) -> Route:
    """How this node's API is reached under the fleet's settings (through the job's SSH
    connections when given)."""
    if node.address is None:
        raise HoldNode(f"node {node.name} has no address; its instance step did not finish")
    if settings.node_api_transport == "direct":
        return Direct(node.address, settings.node_api_port)
    if node.ssh_host_key is None:
        raise HoldNode(
            f"node {node.name} has no pinned SSH host key (missing or cleared): nothing was"
            " sent; its API is reached only through SSH with a pinned key: record the"
            " host's checked key in nodes.ssh_host_key (as the schema owner), then retry"
        )
    return SshTunnel(settings, node.address, node.ssh_host_key, connections)


@dataclass(frozen=True)
class SshTunnel:
    settings: StepSettings
    address: str
    pinned_key: str  # never None: a host without a pin gets no tunnel
    # The job's connections to share; None: an SSH session of its own per call.
    connections: HostConnections | None = None

    @property
    def origin(self) -> httpcore.Origin:
        return httpcore.Origin(b"http", HOST_LOOPBACK.encode(), self.settings.node_api_port)

    def connect(self, timeout: float) -> httpcore.NetworkStream:
        if self.connections is not None:
            return self._shared_channel(self.connections, timeout)
        connection = pinned_connection(self.settings, self.address, self.pinned_key)
        try:
            channel = open_api_channel(connection, self.settings.node_api_port, timeout)
        except BaseException:
            connection.close()
            raise
        return ChannelStream(connection, channel)

    def _shared_channel(self, connections: HostConnections, timeout: float) -> "SharedChannel":
        port = self.settings.node_api_port

        def channel(connection: Connection) -> paramiko.Channel:
            # Raw: a refusal must not look like a broken connection (no retry for it).
            transport = connection.client.get_transport()
            return transport.open_channel(
                "direct-tcpip", (HOST_LOOPBACK, port), (HOST_LOOPBACK, 0), timeout=timeout
            )

        try:
            return SharedChannel(connections.use(self.address, self.pinned_key, channel))
        except paramiko.ChannelException as exc:
            raise httpcore.ConnectError(f"the host refused the tunnel: {exc.text}") from None
        except BROKEN as exc:
            raise httpcore.ConnectError(f"no tunnel: {exc}") from None


def open_api_channel(connection: Connection, port: int, timeout: float) -> paramiko.Channel:
    """A channel to the host's own loopback port. The host refusing it (the daemon is not
    listening, or sshd forbids the forward) is a refused connection, as on plain TCP."""
    transport = connection.client.get_transport()
    try:
        return transport.open_channel(
            "direct-tcpip", (HOST_LOOPBACK, port), (HOST_LOOPBACK, 0), timeout=timeout
        )
    except paramiko.ChannelException as exc:
        raise httpcore.ConnectError(f"the host refused the tunnel: {exc.text}") from None
    except (OSError, paramiko.SSHException, EOFError) as exc:
        # paramiko says "Timeout opening channel." with a plain SSHException.
        raise httpcore.ConnectError(f"no tunnel: {exc}") from None


class ChannelStream(httpcore.NetworkStream):
    """An SSH channel as httpcore's byte stream; closing it ends the SSH session too."""

    def __init__(self, connection: Connection | None, channel: paramiko.Channel) -> None:
        self._connection = connection
        self._channel = channel

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            self._channel.settimeout(timeout)
            data: bytes = self._channel.recv(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout("no answer through the tunnel in time") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise httpcore.ReadError(f"tunnel read failed: {type(exc).__name__}") from None
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._channel.settimeout(timeout)
            self._channel.sendall(buffer)
        except TimeoutError:
            raise httpcore.WriteTimeout("the tunnel took no data in time") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise httpcore.WriteError(f"tunnel write failed: {type(exc).__name__}") from None

    def close(self) -> None:
        self._channel.close()
        if self._connection is not None:
            self._connection.close()


class SharedChannel(ChannelStream):
    """A channel on the job's connection: closing it leaves the connection to the job."""

    def __init__(self, channel: paramiko.Channel) -> None:
        super().__init__(None, channel)

    def close(self) -> None:
        self._channel.close()
