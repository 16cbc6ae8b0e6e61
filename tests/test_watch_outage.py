"""The watch outlives its database going away (a Postgres restart, a failover): the
chaos run restarts Postgres while the lifecycle runs, and a watch that exited on it left
every later fault unhealed. Here its Postgres is a port nothing listens on: a real
connection refused, through the real store and engine."""

import asyncio
import base64
import os
from datetime import UTC, datetime
from pathlib import Path

import asyncssh

from jobs.ec2 import Ec2Cloud
from models.secrets import KeyRing
from models.session import engine_for
from watch.health import Observation
from watch.hosts import HostConnections
from watch.loop import Watch
from watch.probe import ProbeTools
from watch.settings import WatchSettings
from watch.store import ProbeResult, WatchStore
from watch.tokens import ProbeTokens

NOWHERE = "postgresql://fleet_watch@127.0.0.1:9/fleet"  # the discard port: refused


def test_the_watch_keeps_running_and_keeps_its_results_while_postgres_is_away(
    tmp_path: Path,
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(tmp_path / "key"))
    settings = WatchSettings(watch_refresh_seconds=0.1)
    ring = KeyRing.parse("k:" + base64.b64encode(os.urandom(32)).decode(), "k")
    tools = ProbeTools(
        hosts=HostConnections("fleet", 2222, str(tmp_path / "key"), 3001),
        cloud=Ec2Cloud(settings, "fleet-test"),
        tokens=ProbeTokens(),
        timeout=1.0,
        chain_stall=None,
    )
    watch = Watch(settings, WatchStore(engine_for(NOWHERE, "fleet-watch"), ring), tools)
    seen = ProbeResult(1, Observation("ok", "unlocked, height 150", 150), datetime.now(UTC))
    watch.pending = [seen]

    async def run_for_a_while() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(1.5, stop.set)
        await watch.run(stop)  # before: the refresh's OperationalError ended the watch

    asyncio.run(run_for_a_while())
    assert watch.pending == [seen]  # written once Postgres is back, not lost
