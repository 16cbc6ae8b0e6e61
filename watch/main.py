"""Starting the watch process: its login checked, its tools built once from the settings."""

import asyncio
import signal
from datetime import timedelta

from sqlalchemy import Engine

from jobs.ec2 import Ec2Cloud
from models.identity import fleet_id
from models.secrets import KeyRing
from watch.hosts import HostConnections
from watch.loop import Watch
from watch.probe import ProbeTools
from watch.settings import WatchSettings
from watch.store import WatchStore
from watch.tokens import ProbeTokens


def build_watch(settings: WatchSettings, engine: Engine, ring: KeyRing) -> Watch:
    with engine.connect() as connection:
        fleet = fleet_id(connection)
    hosts = HostConnections(
        settings.ssh_user, settings.ssh_port, settings.ssh_key_path, settings.node_api_port
    )
    stall = settings.watch_chain_stall_seconds
    tools = ProbeTools(
        hosts=hosts,
        cloud=Ec2Cloud(settings, fleet),
        tokens=ProbeTokens(),
        timeout=settings.watch_probe_timeout_seconds,
        chain_stall=None if stall == 0 else timedelta(seconds=stall),
    )
    return Watch(settings, WatchStore(engine, ring), tools)


def run_watch(settings: WatchSettings, engine: Engine, ring: KeyRing) -> None:
    """Probe until SIGTERM or Ctrl-C; the probes in flight finish first."""

    async def watch_until_stopped() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await build_watch(settings, engine, ring).run(stop)

    asyncio.run(watch_until_stopped())
