"""The simulated host's machine-level faults: what systemd does is not a host agent
command, so the agent's injected failures never touch it."""

import asyncio
import random
import socket

import asyncssh

from jobs.node_auth import new_root_key
from sim.host import HostFaults, HostPorts, SimHost


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_reboot_brings_the_daemon_back_whatever_the_agent_fails() -> None:
    """Before: reboot() went through the agent's `start`, so a chaos run's injected agent
    failure raised out of the reboot and left the daemon down."""

    async def reboot() -> tuple[bool, bool]:
        host = SimHost(
            "127.0.0.1",
            HostPorts(ssh=free_port(), api=free_port()),
            "regtest",
            "0.9.0",
            asyncssh.generate_private_key("ssh-ed25519"),
            fetch=lambda url: b"",
            upload=lambda url, content, sha256: None,
            faults=HostFaults(agent_failure_rate=0.0, rng=random.Random(1)),
        )
        host.root_key = new_root_key().public_hex
        await host.boot()
        await host.start()
        host.faults.agent_failure_rate = 1.0  # every agent command fails from now on
        await host.reboot()
        running = host.daemon is not None
        locked = host.daemon is not None and not host.daemon.unlocked
        await host.power_off()
        return running, locked

    assert asyncio.run(reboot()) == (True, True)
