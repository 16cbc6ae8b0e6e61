"""The simulated host's SSH server, driven by the same client the fleet uses: fabric 3
over paramiko, from this thread, while the server runs on an asyncio loop in another."""

import asyncio
import base64
import os
import random
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import paramiko
import pytest
from fabric import Connection

from sim.agent import AgentError, HostAgent
from sim.ssh_server import (
    USAGE,
    SimSSHHost,
    public_key_text,
    run_agent_command,
    start_ssh_server,
)

T = TypeVar("T")
KEY = "ab" * 32
AGENT_SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "host" / "rln-hostctl"


@dataclass
class FakeAgent:
    """Enough of a host agent to see that each command reaches it with its arguments."""

    root_key: str | None = None
    running: bool = False
    version: str | None = None
    calls: list[tuple[str, ...]] = field(default_factory=list)

    async def set_root_key(self, public_key_hex: str) -> str:
        self.calls.append(("set-root-key", public_key_hex))
        if len(public_key_hex) != 64:
            raise AgentError("invalid root public key: need 64 lowercase hex characters")
        unchanged = self.root_key == public_key_hex
        self.root_key = public_key_hex
        return "unchanged" if unchanged else "set"

    async def start(self) -> str:
        self.calls.append(("start",))
        if self.root_key is None:
            raise AgentError("no root public key set: run set-root-key first")
        was_running, self.running = self.running, True
        return "already running" if was_running else "started"

    async def stop(self) -> str:
        self.calls.append(("stop",))
        was_running, self.running = self.running, False
        return "stopped" if was_running else "already stopped"

    async def status(self) -> str:
        self.calls.append(("status",))
        state = "running" if self.running else "stopped"
        return f"state={state} version={self.version or 'none'} root_key={self.root_key or 'none'}"

    async def install(self, version: str, url: str, sha256: str) -> str:
        self.calls.append(("install", version, url, sha256))
        if self.running:
            raise AgentError(f"node is running: stop it before installing {version}")
        already, self.version = self.version == version, version
        return "already installed" if already else f"installed {version}"

    async def backup_upload(self, path: str, s3_uri: str) -> str:
        self.calls.append(("backup-upload", path, s3_uri))
        return s3_uri

    async def set_network(self, network: str) -> str:
        self.calls.append(("set-network", network))
        return "set"

    async def backup_remove(self, path: str) -> str:
        self.calls.append(("backup-remove", path))
        return "removed"

    async def wallet_aside(self) -> str:
        self.calls.append(("wallet-aside",))
        return "no wallet in /var/lib/rln: nothing moved"

    async def backup_download(self, url: str, path: str, sha256: str) -> str:
        self.calls.append(("backup-download", url, path, sha256))
        return f"{path} size=1 sha256={sha256}"


class BrokenAgent(FakeAgent):
    async def status(self) -> str:
        raise RuntimeError("a bug in the simulator")


def _typed(agent: FakeAgent) -> HostAgent:
    return agent  # checks, for mypy, that the fake keeps to the protocol


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def on_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)


@dataclass
class Keys:
    host: asyncssh.SSHKey
    client: asyncssh.SSHKey
    client_file: Path
    stranger_file: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("keys")
    client = asyncssh.generate_private_key("ssh-ed25519")
    client.write_private_key(directory / "id_ed25519")
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    stranger.write_private_key(directory / "stranger")
    host = asyncssh.generate_private_key("ssh-ed25519")
    return Keys(host, client, directory / "id_ed25519", directory / "stranger")


@dataclass
class Served:
    server: SimSSHHost
    agent: FakeAgent


@pytest.fixture
def served(loop: asyncio.AbstractEventLoop, keys: Keys) -> Iterator[Served]:
    agent = FakeAgent()
    server = on_loop(loop, start_ssh_server("127.0.0.1", 0, _typed(agent), keys.host, keys.client))
    yield Served(server, agent)
    on_loop(loop, server.close())


@dataclass
class Answer:
    code: int
    stdout: str
    stderr: str
    host_key: str


def fabric_run(
    port: int, key_file: Path, command: str, address: str = "127.0.0.1", *, nodelay: bool = False
) -> Answer:
    """One command the way jobs/host.py runs it: a fresh connection, no PTY, no stdin."""
    connect_kwargs: dict[str, Any] = {
        "key_filename": str(key_file),
        "look_for_keys": False,
        "allow_agent": False,
    }
    if nodelay:
        sock = socket.create_connection((address, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connect_kwargs["sock"] = sock
    connection = Connection(
        host=address, user="fleet", port=port, connect_timeout=10, connect_kwargs=connect_kwargs
    )
    connection.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    with connection:
        result = connection.run(command, hide=True, warn=True, in_stream=False)
        shown = connection.client.get_transport().get_remote_server_key()
    key_text = f"{shown.get_name()} {shown.get_base64()}"
    return Answer(result.exited, result.stdout, result.stderr, key_text)


def agent_run(served: Served, keys: Keys, *args: str) -> Answer:
    return fabric_run(
        served.server.port, keys.client_file, shlex.join(["sudo", "rln-hostctl", *args])
    )


def test_every_command_reaches_the_agent(served: Served, keys: Keys) -> None:
    steps = [
        (("status",), "state=stopped version=none root_key=none"),
        (("set-root-key", KEY), "set"),
        (("set-root-key", KEY), "unchanged"),
        (("install", "0.9.1", "https://releases.example/rln.tar.gz", "0" * 64), "installed 0.9.1"),
        (
            ("install", "0.9.1", "https://releases.example/rln.tar.gz", "0" * 64),
            "already installed",
        ),
        (("start",), "started"),
        (("start",), "already running"),
        (("status",), f"state=running version=0.9.1 root_key={KEY}"),
        (("backup-upload", "/var/lib/rln/backups/a b.rlnbackup", "s3://b/k"), "s3://b/k"),
        (("stop",), "stopped"),
        (("stop",), "already stopped"),
    ]
    for args, line in steps:
        answer = agent_run(served, keys, *args)
        assert (answer.code, answer.stdout, answer.stderr) == (0, f"{line}\n", ""), args
    assert served.agent.calls[-3] == (
        "backup-upload",
        "/var/lib/rln/backups/a b.rlnbackup",
        "s3://b/k",
    )


def test_the_fleet_sees_the_servers_host_key(served: Served, keys: Keys) -> None:
    answer = agent_run(served, keys, "status")
    assert answer.host_key == served.server.host_key_text == public_key_text(keys.host)


def test_agent_errors_are_one_stderr_line_and_exit_1(served: Served, keys: Keys) -> None:
    answer = agent_run(served, keys, "start")
    assert (answer.code, answer.stdout) == (1, "")
    assert answer.stderr == "no root public key set: run set-root-key first\n"
    answer = agent_run(served, keys, "set-root-key", "abc")
    assert (answer.code, answer.stderr) == (
        1,
        "invalid root public key: need 64 lowercase hex characters\n",
    )


@pytest.mark.parametrize(
    "args",
    [(), ("bogus",), ("set-root-key",), ("start", "now"), ("install", "0.9.1"), ("backup-upload",)],
)
def test_usage_errors_match_the_real_agent(
    served: Served, keys: Keys, args: tuple[str, ...]
) -> None:
    answer = agent_run(served, keys, *args)
    real = subprocess.run(
        ["bash", str(AGENT_SCRIPT), *args],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": os.environ["PATH"], "RLN_ETC": "/nonexistent", "RLN_OPT": "/nonexistent"},
    )
    assert (answer.code, answer.stdout, answer.stderr) == (2, "", real.stderr)
    assert real.returncode == 2
    assert served.agent.calls == []


def test_only_the_agent_runs(served: Served, keys: Keys) -> None:
    answer = fabric_run(served.server.port, keys.client_file, "cat /etc/shadow")
    assert (answer.code, answer.stderr) == (127, "cat: command not found\n")
    answer = fabric_run(served.server.port, keys.client_file, "rln-hostctl status; reboot")
    assert answer.code == 2  # "status;" is no command of the agent: no shell splits it
    assert served.agent.calls == []


def test_an_unplanned_failure_is_still_one_line(
    loop: asyncio.AbstractEventLoop, keys: Keys
) -> None:
    server = on_loop(loop, start_ssh_server("127.0.0.1", 0, BrokenAgent(), keys.host, keys.client))
    try:
        answer = fabric_run(server.port, keys.client_file, "sudo rln-hostctl status")
    finally:
        on_loop(loop, server.close())
    assert (answer.code, answer.stderr) == (1, "rln-hostctl: unexpected failure\n")


def test_a_shell_session_is_refused(
    loop: asyncio.AbstractEventLoop, served: Served, keys: Keys
) -> None:
    async def open_shell() -> asyncssh.SSHCompletedProcess:
        async with asyncssh.connect(
            "127.0.0.1",
            served.server.port,
            username="fleet",
            client_keys=[keys.client],
            known_hosts=None,
        ) as connection:
            return await connection.run()

    result = on_loop(loop, open_shell())
    assert (result.exit_status, result.stderr) == (
        2,
        "this host runs only rln-hostctl commands, no shell\n",
    )


def test_a_wrong_client_key_is_refused(served: Served, keys: Keys) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        fabric_run(served.server.port, keys.stranger_file, "sudo rln-hostctl status")
    assert served.agent.calls == []


def _pinned_client(host_key_text: str, port: int) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key_type, blob = host_key_text.split()
    key = paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
    client.get_host_keys().add(f"[127.0.0.1]:{port}", key_type, key)
    return client


def _exec_pinned(client: paramiko.SSHClient, port: int, key_file: Path) -> str:
    client.connect(
        "127.0.0.1",
        port,
        username="fleet",
        key_filename=str(key_file),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        _, stdout, _ = client.exec_command("sudo rln-hostctl status")
        return str(stdout.read().decode())
    finally:
        client.close()


def test_a_changed_host_key_breaks_the_pin(served: Served, keys: Keys) -> None:
    port, old_key = served.server.port, served.server.host_key_text
    assert _exec_pinned(_pinned_client(old_key, port), port, keys.client_file).startswith("state=")

    new_key = served.server.change_host_key()
    assert public_key_text(new_key) == served.server.host_key_text != old_key
    with pytest.raises(paramiko.BadHostKeyException):
        _exec_pinned(_pinned_client(old_key, port), port, keys.client_file)
    # Same port, still serving: a client that pins the new key gets through.
    assert _exec_pinned(_pinned_client(public_key_text(new_key), port), port, keys.client_file)


def test_a_closed_host_refuses_connections_until_it_restarts(
    loop: asyncio.AbstractEventLoop, keys: Keys
) -> None:
    server = on_loop(loop, start_ssh_server("127.0.0.1", 0, FakeAgent(), keys.host, keys.client))
    port = server.port
    on_loop(loop, server.close())
    on_loop(loop, server.close())  # closing twice is harmless
    with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
        fabric_run(port, keys.client_file, "sudo rln-hostctl status")
    # The host comes back on the same port.
    on_loop(loop, server.start())
    try:
        assert server.port == port
        assert fabric_run(port, keys.client_file, "sudo rln-hostctl status").code == 0
    finally:
        on_loop(loop, server.close())


def test_hundreds_of_hosts_in_one_loop(loop: asyncio.AbstractEventLoop, keys: Keys) -> None:
    """Each on its own loopback address, as the simulator places them."""
    count = 300

    async def start_all() -> list[SimSSHHost]:
        return await asyncio.gather(
            *(
                start_ssh_server(
                    f"127.0.{1 + i // 250}.{1 + i % 250}", 0, FakeAgent(), keys.host, keys.client
                )
                for i in range(count)
            )
        )

    async def close_all(servers: list[SimSSHHost]) -> None:
        await asyncio.gather(*(server.close() for server in servers))

    began = time.perf_counter()
    servers = on_loop(loop, start_all())
    started = time.perf_counter() - began
    try:
        for server in (servers[0], servers[count // 2], servers[-1]):
            answer = fabric_run(server.port, keys.client_file, "sudo rln-hostctl stop", server.host)
            assert answer.stdout == "already stopped\n"
    finally:
        on_loop(loop, close_all(servers))
    print(f"\n{count} simulated SSH hosts started in {started * 1000:.0f} ms")


def test_fabric_round_trip_time(served: Served, keys: Keys) -> None:
    """What one agent command costs the fleet: connect, key exchange, auth, exec. Also
    with TCP_NODELAY on the client socket, which paramiko does not set by itself: without
    it, Nagle and delayed ACKs stall the handshake's small packets on every connection."""
    rounds = 20
    timings: dict[bool, float] = {}
    for nodelay in (False, True):
        began = time.perf_counter()
        for _ in range(rounds):
            answer = fabric_run(
                served.server.port, keys.client_file, "sudo rln-hostctl status", nodelay=nodelay
            )
            assert answer.code == 0
        timings[nodelay] = (time.perf_counter() - began) / rounds
    print(
        f"\nfabric connect + one agent command, mean of {rounds}: "
        f"{timings[False] * 1000:.1f} ms as fabric connects, "
        f"{timings[True] * 1000:.1f} ms with TCP_NODELAY"
    )
    assert max(timings.values()) < 2.0


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("rln-hostctl status", (0, "state=stopped version=none root_key=none")),
        ("/usr/local/bin/rln-hostctl stop", (0, "already stopped")),
        ("sudo rln-hostctl help", (0, USAGE)),
        (
            "sudo rln-hostctl 'unbalanced",
            (2, "cannot parse the command line: No closing quotation"),
        ),
        ("sudo", (127, "sudo: command not found")),
        ("", (127, "'': command not found")),
    ],
)
def test_command_lines(line: str, expected: tuple[int, str]) -> None:
    reply = asyncio.run(run_agent_command(FakeAgent(), line))
    assert (reply.exit_status, reply.line) == expected


# --- direct-tcpip: the node API's tunnel -------------------------------------------------
def _connected(port: int, key_file: Path, address: str) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        address,
        port,
        username="fleet",
        key_filename=str(key_file),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


async def _tell_the_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A service on the host that answers each connection with the address it came from."""
    writer.write(f"{writer.get_extra_info('peername')[0]}\n".encode())
    await writer.drain()
    writer.close()


@dataclass
class Forwarding:
    server: SimSSHHost
    address: str
    service_port: int


@pytest.fixture
def forwarding(loop: asyncio.AbstractEventLoop, keys: Keys) -> Iterator[Forwarding]:
    address = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}.{random.randint(1, 250)}"
    service = on_loop(loop, asyncio.start_server(_tell_the_peer, address, 0))
    service_port = int(service.sockets[0].getsockname()[1])
    server = on_loop(
        loop,
        start_ssh_server(
            address, 0, FakeAgent(), keys.host, keys.client, forward_ports=[service_port]
        ),
    )
    yield Forwarding(server, address, service_port)
    on_loop(loop, server.close())

    async def close_service() -> None:
        service.close()
        await service.wait_closed()

    on_loop(loop, close_service())


def _through(client: paramiko.SSHClient, host: str, port: int) -> str:
    channel = client.get_transport().open_channel(
        "direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=10
    )
    try:
        channel.settimeout(10)
        received = b""
        while chunk := channel.recv(100):
            received += chunk
        return received.decode().strip()
    finally:
        channel.close()


def test_a_tunnel_to_its_own_loopback_reaches_the_hosts_service(
    forwarding: Forwarding, keys: Keys
) -> None:
    client = _connected(forwarding.server.port, keys.client_file, forwarding.address)
    try:
        for name in ("127.0.0.1", "localhost"):
            # The service sees the host itself as the peer, as behind a real sshd.
            assert _through(client, name, forwarding.service_port) == forwarding.address
    finally:
        client.close()
    # Straight from here, the same service sees another address.
    with socket.create_connection((forwarding.address, forwarding.service_port)) as direct:
        assert direct.recv(100).decode().strip() == "127.0.0.1"


def test_a_tunnel_anywhere_else_is_refused(forwarding: Forwarding, keys: Keys) -> None:
    port = forwarding.service_port
    elsewhere = [
        ("127.0.0.1", port + 1),
        ("localhost", forwarding.server.port),
        (forwarding.address, port),
        ("10.1.2.3", port),
        ("example.com", 80),
    ]
    client = _connected(forwarding.server.port, keys.client_file, forwarding.address)
    try:
        for host, to_port in elsewhere:
            with pytest.raises(paramiko.ChannelException) as refused:
                _through(client, host, to_port)
            assert refused.value.code == paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        # Nor does the host listen for the client (remote forwarding).
        with pytest.raises(paramiko.SSHException):
            client.get_transport().request_port_forward("127.0.0.1", 0)
        # A session refused a forward is still good for the agent.
        _, stdout, _ = client.exec_command("sudo rln-hostctl status")
        assert stdout.read().decode().startswith("state=")
    finally:
        client.close()


def test_a_tunnel_to_a_service_that_is_down_fails_to_connect(
    loop: asyncio.AbstractEventLoop, keys: Keys
) -> None:
    address = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}.{random.randint(1, 250)}"
    server = on_loop(
        loop, start_ssh_server(address, 0, FakeAgent(), keys.host, keys.client, forward_ports=[9])
    )
    client = _connected(server.port, keys.client_file, address)
    try:
        with pytest.raises(paramiko.ChannelException) as refused:
            _through(client, "127.0.0.1", 9)
        assert refused.value.code == paramiko.OPEN_FAILED_CONNECT_FAILED
    finally:
        client.close()
        on_loop(loop, server.close())


def test_a_host_without_forward_ports_forwards_nothing(served: Served, keys: Keys) -> None:
    client = _connected(served.server.port, keys.client_file, "127.0.0.1")
    try:
        with pytest.raises(paramiko.ChannelException) as refused:
            _through(client, "127.0.0.1", served.server.port)
        assert refused.value.code == paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
    finally:
        client.close()
