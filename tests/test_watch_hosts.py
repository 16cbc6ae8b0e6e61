"""The watch's kept SSH connections (watch/hosts.py) against a simulated host's SSH
server: real asyncssh on both sides, over loopback."""

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import asyncssh
from mnemonic import Mnemonic

from jobs.ec2 import Cloud
from jobs.node_auth import new_root_key
from models.secrets import Secret
from sim.host import HostPorts, SimHost
from sim.ssh_server import public_key_text, start_ssh_server
from tests.test_node_tunnel import Loop
from tests.test_sim_ssh import FakeAgent
from watch.hosts import HostConnections, Target
from watch.probe import ChainMemory, ProbeTools, WatchedNode, probe
from watch.tokens import ProbeTokens

SSH_PORT = 2222
API_PORT = 3001


def test_the_watch_prefers_aes_gcm_over_chacha20(tmp_path: Path) -> None:
    """asyncssh's chacha20-poly1305 is built from three cipher calls per packet in Python
    (about 19 us a packet here against 2-4 us for AES-GCM) and a probe is some twenty
    packets, so the watch asks for AES-GCM first; chacha20 stays as a fallback."""
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key.write_private_key(str(tmp_path / "key"))
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    address = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}.{random.randint(2, 250)}"

    async def negotiated() -> tuple[str, str]:
        server = await start_ssh_server(
            address, SSH_PORT, FakeAgent(), host_key, client_key.convert_to_public()
        )
        hosts = HostConnections("fleet", SSH_PORT, str(tmp_path / "key"), 3001)
        try:
            connection = await hosts.get(1, Target(address, public_key_text(host_key)))
            sent = connection.get_extra_info("send_cipher")
            received = connection.get_extra_info("recv_cipher")
            return str(sent), str(received)
        finally:
            await hosts.close()
            await server.close()

    assert asyncio.run(negotiated()) == ("aes128-gcm@openssh.com", "aes128-gcm@openssh.com")


def test_the_first_probe_after_a_reboot_finds_the_node_locked(tmp_path: Path) -> None:
    """A reboot breaks the kept connection, and the watch may not have seen it close yet
    (here: its loop was busy while the host rebooted, as on a loaded machine). The probe
    after it must make a new connection in the same probe and find the daemon locked,
    rather than fail on the dead one (a BrokenPipeError: nothing recorded) and leave the
    reboot to the probe an interval later."""
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key.write_private_key(str(tmp_path / "key"))
    root = new_root_key()
    address = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}.{random.randint(2, 250)}"
    sim = Loop()  # the host's side, in its own thread
    host = SimHost(address, HostPorts(SSH_PORT, API_PORT), "regtest", "0.9.0",
                   client_key.convert_to_public(), fetch=_no_fetch, upload=_no_upload,
                   unlock_seconds=0.0, disk_root=tmp_path / "disk")  # fmt: skip
    sim.run(_live(host, root.public_hex))
    assert host.daemon is not None
    node = WatchedNode(1, "n", "eu-west-1", "regtest", None, address,
                       public_key_text(host.host_key), host.daemon.node_pubkey)  # fmt: skip

    async def seen_before_and_after() -> tuple[str, str]:
        tokens = ProbeTokens()
        tokens.set_key(1, Secret(root.private_hex))
        hosts = HostConnections("fleet", SSH_PORT, str(tmp_path / "key"), API_PORT)
        tools = ProbeTools(hosts, cast(Cloud, _NoCloud()), tokens, timeout=10.0, chain_stall=None)
        memory = ChainMemory(None, None)
        try:
            before = await probe(node, memory, tools, datetime.now(UTC))
            sim.run(host.reboot())  # blocks this loop: the close is not seen before the probe
            after = await probe(node, memory, tools, datetime.now(UTC))
            return before.status, after.status
        finally:
            await hosts.close()

    try:
        assert asyncio.run(seen_before_and_after()) == ("ok", "locked")
    finally:
        sim.run(host.power_off())
        sim.close()


def test_probes_of_a_node_reuse_its_ssh_connection_and_its_api_channel(tmp_path: Path) -> None:
    """A new direct-tcpip channel per probe (open, confirm, a TCP connect on the host, EOF
    and close both ways) cost the watch about as much CPU as the two API calls: the
    channel is kept between probes (HTTP/1.1 keep-alive), as the SSH connection is."""
    sim, host, node, tokens = _one_live_host(tmp_path)

    async def five_probes() -> list[str]:
        hosts = HostConnections("fleet", SSH_PORT, str(tmp_path / "key"), API_PORT)
        tools = ProbeTools(hosts, cast(Cloud, _NoCloud()), tokens, timeout=10.0, chain_stall=None)
        try:
            return [(await probe(node, ChainMemory(None, None), tools, datetime.now(UTC))).status
                    for _ in range(5)]  # fmt: skip
        finally:
            await hosts.close()

    try:
        assert asyncio.run(five_probes()) == ["ok"] * 5
        server = host.ssh_server
        assert server is not None
        assert (server.handshakes, server.forwards_opened) == (1, 1)
        assert host.traffic.tunnelled == 10  # both calls of every probe reached the daemon
    finally:
        sim.run(host.power_off())
        sim.close()


def test_a_kept_api_channel_the_daemon_closed_is_opened_again(tmp_path: Path) -> None:
    """The daemon restarts between two probes (its idle HTTP connections close) and the
    watch's loop is busy meanwhile, so it has not seen the channel end: the probe finds
    the kept channel dead and asks again on a new one, on the same SSH connection, rather
    than call the node unreachable or drop its SSH connection."""
    sim, host, node, tokens = _one_live_host(tmp_path)

    async def restarted_between() -> list[str]:
        hosts = HostConnections("fleet", SSH_PORT, str(tmp_path / "key"), API_PORT)
        tools = ProbeTools(hosts, cast(Cloud, _NoCloud()), tokens, timeout=10.0, chain_stall=None)
        memory = ChainMemory(None, None)
        try:
            before = await probe(node, memory, tools, datetime.now(UTC))
            sim.run(_restart_unlocked(host))  # blocks this loop: the EOF is not seen yet
            after = await probe(node, memory, tools, datetime.now(UTC))
            again = await probe(node, memory, tools, datetime.now(UTC))
            return [before.status, after.status, again.status]
        finally:
            await hosts.close()

    try:
        assert asyncio.run(restarted_between()) == ["ok", "ok", "ok"]
        server = host.ssh_server
        assert server is not None
        assert (server.handshakes, server.forwards_opened) == (1, 2)
    finally:
        sim.run(host.power_off())
        sim.close()


def _one_live_host(tmp_path: Path) -> tuple[Loop, SimHost, WatchedNode, ProbeTokens]:
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key.write_private_key(str(tmp_path / "key"))
    root = new_root_key()
    address = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}.{random.randint(2, 250)}"
    sim = Loop()  # the host's side, in its own thread
    host = SimHost(address, HostPorts(SSH_PORT, API_PORT), "regtest", "0.9.0",
                   client_key.convert_to_public(), fetch=_no_fetch, upload=_no_upload,
                   unlock_seconds=0.0, disk_root=tmp_path / "disk")  # fmt: skip
    sim.run(_live(host, root.public_hex))
    assert host.daemon is not None
    node = WatchedNode(1, "n", "eu-west-1", "regtest", None, address,
                       public_key_text(host.host_key), host.daemon.node_pubkey)  # fmt: skip
    tokens = ProbeTokens()
    tokens.set_key(1, Secret(root.private_hex))
    return sim, host, node, tokens


async def _restart_unlocked(host: SimHost) -> None:
    await host.stop()
    await host.start()
    assert host.daemon is not None
    await host.daemon._change_state(0.0, unlocked=True)


async def _live(host: SimHost, root_public_hex: str) -> None:
    await host.boot()
    await host.set_root_key(root_public_hex)
    host.disk.keep_wallet(Mnemonic("english").generate(strength=256), "password-12345678")
    await host.start()
    assert host.daemon is not None
    await host.daemon._change_state(0.0, unlocked=True)  # as the wallet step leaves it


def _no_fetch(url: str) -> bytes:
    raise AssertionError(f"nothing is installed here ({url})")


def _no_upload(url: str, content: bytes, sha256: str) -> None:
    raise AssertionError(f"nothing is uploaded here ({url})")


class _NoCloud:
    """EC2 must not be asked: SSH answers throughout."""

    def describe(self, region: str, instance_id: str) -> None:
        raise AssertionError("EC2 asked")
