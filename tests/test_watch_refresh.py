"""The watch's refresh against probes still in flight (a unit test of watch/loop.py with
a store that lists no live node: the node left live, or was healed, meanwhile)."""

import asyncio
import base64
import os
from collections import namedtuple
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh

from jobs.node_auth import new_root_key
from models.secrets import KeyRing, Secret
from watch.hosts import HostConnections
from watch.loop import Watch
from watch.probe import ChainMemory, ProbeTools, WatchedNode
from watch.settings import WatchSettings
from watch.store import LiveNode, WatchStore
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


class _Rows:
    """An engine whose watch_nodes query answers the rows set on it (a fake: what is
    tested is what the store makes of rows, not Postgres)."""

    def __init__(self) -> None:
        self.rows: list[Any] = []

    def connect(self) -> "_Rows":
        return self

    def __enter__(self) -> "_Rows":
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def execute(self, statement: object) -> "_Rows":
        return self

    def all(self) -> list[Any]:
        return list(self.rows)


class _CountingRing(KeyRing):
    opened = 0

    def open(self, *args: Any) -> Secret:
        self.opened += 1
        return super().open(*args)


_Row = namedtuple(  # the columns of models/sql/watch_nodes.sql
    "_Row",
    "id name region network instance_id address ssh_host_key node_pubkey held"
    " key_id nonce ciphertext status since height height_at",
)


def test_a_refresh_reuses_what_it_made_of_an_unchanged_row() -> None:
    """The refresh reads every live node again every few seconds; opening each root key
    and building its node again cost some 25 us a row (0.15 ms of CPU per probe). An
    unchanged row gives back what was made of it; a changed one (a new pin) is made
    again; a node no longer listed is forgotten."""
    keys = "k:" + base64.b64encode(os.urandom(32)).decode()
    ring = _CountingRing(KeyRing.parse(keys, "k").keys, "k")
    engine = _Rows()
    store = WatchStore(engine, ring)  # type: ignore[arg-type]
    now = datetime.now(UTC)

    def row(node_id: int, pin: str) -> Any:
        root = Secret(new_root_key().private_hex)
        key_id, nonce, sealed = ring.seal(node_id, "api_root_key", root)
        return _Row(node_id, f"n{node_id}", "eu-west-1", "regtest", "i-1", "127.0.0.9", pin,
                    None, False, key_id, nonce, sealed, "ok", now, 7, now)  # fmt: skip

    first, second = row(1, "ssh-ed25519 AAAA1"), row(2, "ssh-ed25519 AAAA2")
    engine.rows = [first, second]
    made = store.live_nodes()
    assert ring.opened == 2
    engine.rows = [first, second]
    again = store.live_nodes()
    assert [a is b for a, b in zip(made, again, strict=True)] == [True, True]
    assert ring.opened == 2
    engine.rows = [first, second._replace(ssh_host_key="ssh-ed25519 BBBB2")]
    moved = store.live_nodes()
    assert moved[0] is made[0] and moved[1].node.ssh_host_key == "ssh-ed25519 BBBB2"
    assert ring.opened == 3
    engine.rows = [first]
    store.live_nodes()
    engine.rows = [first, second]
    assert store.live_nodes()[1] is not made[1]  # forgotten, then made anew
