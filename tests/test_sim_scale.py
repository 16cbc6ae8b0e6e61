"""The simulator holds hundreds of hosts in one process: SSH servers and node APIs, each
on its own loopback address, all answering."""

import asyncio
import random
import time

import aiohttp
import asyncssh

from jobs.node_auth import new_root_key
from sim.host import HostPorts, SimHost

HOSTS = 200


def test_two_hundred_hosts_answer_from_one_process() -> None:
    async def scenario() -> tuple[float, set[int], int]:
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        block = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}"
        hosts = [
            SimHost(
                f"{block}.{i + 1}", HostPorts(ssh=2222, api=3001), "regtest", "0.9.0",
                client_key, fetch=lambda url: b"", upload=lambda url, body, sha256: None,
            )
            for i in range(HOSTS)
        ]  # fmt: skip
        started = time.perf_counter()
        await asyncio.gather(*(h.boot() for h in hosts))
        for host in hosts:
            await host.set_root_key(new_root_key().public_hex)
        await asyncio.gather(*(h.start() for h in hosts))
        elapsed = time.perf_counter() - started
        async with aiohttp.ClientSession() as session:

            async def status(host: SimHost) -> int:
                url = f"http://{host.address}:3001/nodeinfo"
                async with session.get(url) as response:
                    return response.status

            statuses = set(await asyncio.gather(*(status(h) for h in hosts)))

        async def ssh_banner(host: SimHost) -> bool:
            reader, writer = await asyncio.open_connection(host.address, 2222)
            banner = await reader.readline()
            writer.close()
            return banner.startswith(b"SSH-2.0-")

        banners = sum(await asyncio.gather(*(ssh_banner(h) for h in hosts)))
        await asyncio.gather(*(h.power_off() for h in hosts))
        return elapsed, statuses, banners

    elapsed, statuses, banners = asyncio.run(scenario())
    assert statuses == {401}  # every node API answers, and wants a token
    assert banners == HOSTS
    print(f"{HOSTS} hosts up (SSH + node API) in {elapsed:.2f}s")
