"""The watch's refresh against probes still in flight (a unit test of watch/loop.py with
a store that lists no live node: the node left live, or was healed, meanwhile)."""

import asyncio
from pathlib import Path

import asyncssh

from jobs.node_auth import new_root_key
from models.secrets import Secret
from watch.hosts import HostConnections
from watch.loop import Watch
from watch.probe import ProbeTools
from watch.settings import WatchSettings
from watch.store import LiveNode
from watch.tokens import ProbeTokens


class NoLiveNodes:
    def live_nodes(self) -> list[LiveNode]:
        return []


def test_a_refresh_keeps_the_key_of_a_probe_in_flight(tmp_path: Path) -> None:
    """A probe waiting for a slot while a refresh no longer lists its node (seen with
    2,000 nodes in benchmarks.watch: KeyError, 'probe failed') still signs its token."""
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(tmp_path / "key"))
    tokens = ProbeTokens()
    tools = ProbeTools(HostConnections("fleet", 22, str(tmp_path / "key"), 3001), None,  # type: ignore[arg-type]
                       tokens, timeout=1.0, chain_stall=None)  # fmt: skip
    watch = Watch(WatchSettings(), NoLiveNodes(), tools)  # type: ignore[arg-type]
    tokens.set_key(7, Secret(new_root_key().private_hex))
    watch.in_flight.add(7)

    asyncio.run(watch.refresh())

    assert tokens.for_route(7, "/nodeinfo")
