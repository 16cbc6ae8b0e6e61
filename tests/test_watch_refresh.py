"""The watch's refresh against probes still in flight (a unit test of watch/loop.py with
a store that lists no live node: the node left live, or was healed, meanwhile)."""

import asyncio
from pathlib import Path

import asyncssh

from jobs.node_auth import new_root_key
from models.secrets import Secret
from watch.hosts import HostConnections
from watch.loop import Watch
from watch.probe import ChainMemory, ProbeTools, WatchedNode
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


def test_a_late_node_is_probed_once_then_back_on_its_own_offset(tmp_path: Path) -> None:
    """A node found late by more than an interval (the first round's handshakes, a stalled
    loop) is probed once, and its next probe is a whole number of intervals after its old
    offset, in the future: not again at the next tick, once per interval it missed (seen
    in benchmarks.watch as 1.36 times the schedule's probes per second at 2,000 nodes)."""
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(tmp_path / "key"))
    tools = ProbeTools(HostConnections("fleet", 22, str(tmp_path / "key"), 3001), None,  # type: ignore[arg-type]
                       ProbeTokens(), timeout=1.0, chain_stall=None)  # fmt: skip
    watch = Watch(WatchSettings(watch_interval_seconds=30), NoLiveNodes(), tools)  # type: ignore[arg-type]
    node = WatchedNode(1, "n", "eu-west-1", "regtest", None, None, None, None)
    watch.nodes = {1: LiveNode(node, False, None, "no key", None, ChainMemory(None, None))}

    async def start_late() -> float:
        now = 1000.0
        watch.schedule(1, now - 75.0)  # 2.5 intervals late
        watch._start_due(now)
        await asyncio.gather(*watch._tasks)
        return watch.due_at[1]

    assert asyncio.run(start_late()) == 1000.0 - 75.0 + 3 * 30.0
