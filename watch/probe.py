"""One probe of one live node: the node API first (is it unlocked, is it the node we
recorded, on its network, is its chain moving), the host agent when the API is silent,
EC2 when SSH is. Any answer is not health: only an unlocked daemon with the recorded
pubkey on the node's network is `ok`."""

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from jobs.ec2 import Cloud
from jobs.node_api import NETWORK_NAMES
from watch.health import Observation
from watch.hosts import (
    ApiAnswer,
    ApiClosed,
    ConnectionBroken,
    HostConnections,
    HostKeyChanged,
    KeyRefused,
    NoSession,
)
from watch.hosts import Target as HostTarget
from watch.tokens import ProbeTokens

PROBE_PATHS = ["/nodeinfo", "/networkinfo"]


@dataclass(frozen=True)
class WatchedNode:
    """A live node as the watch needs it: where it is, what it must answer."""

    id: int
    name: str
    region: str
    network: str
    instance_id: str | None
    address: str | None
    ssh_host_key: str | None
    node_pubkey: str | None


@dataclass(frozen=True)
class ChainMemory:
    """The last height seen and when it last moved (from node_health)."""

    height: int | None
    moved_at: datetime | None


@dataclass(frozen=True)
class ProbeTools:
    hosts: HostConnections
    cloud: Cloud
    tokens: ProbeTokens
    timeout: float
    chain_stall: timedelta | None  # None: not checked


async def probe(
    node: WatchedNode, chain: ChainMemory, tools: ProbeTools, now: datetime
) -> Observation:
    if node.address is None or node.ssh_host_key is None:
        return Observation("error", "no address or no pinned SSH host key: nothing was sent")
    target = HostTarget(node.address, node.ssh_host_key)
    try:
        async with asyncio.timeout(tools.timeout):
            try:
                return await _through_ssh(node, target, chain, tools, now)
            except ConnectionBroken:
                # The kept connection was dead (a reboot): once more, on a new one, so
                # that this probe, not the next one an interval later, sees the host.
                await tools.hosts.drop(node.id)
                return await _through_ssh(node, target, chain, tools, now)
    except HostKeyChanged as exc:
        await tools.hosts.drop(node.id)
        return Observation("wrong_pubkey", str(exc))
    except (NoSession, KeyRefused, ConnectionBroken, TimeoutError) as exc:
        await tools.hosts.drop(node.id)
        said = str(exc) or f"no answer within {tools.timeout:g} s"
        return await _from_ec2(node, tools, said)


async def _through_ssh(
    node: WatchedNode, target: HostTarget, chain: ChainMemory, tools: ProbeTools, now: datetime
) -> Observation:
    connection = await tools.hosts.get(node.id, target)
    try:
        tokens = [tools.tokens.for_route(node.id, path) for path in PROBE_PATHS]
        info, network = await tools.hosts.api_get(node.id, connection, PROBE_PATHS, tokens)
    except ApiClosed as closed:
        status = await tools.hosts.agent_status(connection)
        if not status.running:
            return Observation(
                "daemon_down", f"the host agent says the daemon is stopped ({closed})"
            )
        return Observation("unreachable", f"the daemon runs but its API does not answer ({closed})")
    except ValueError as exc:
        return Observation("error", str(exc))
    return _judge(node, info, network, chain, tools.chain_stall, now)


def _judge(
    node: WatchedNode,
    info: ApiAnswer,
    network: ApiAnswer,
    chain: ChainMemory,
    chain_stall: timedelta | None,
    now: datetime,
) -> Observation:
    if info.error_name == "LockedNode":
        return Observation("locked", "the daemon answers LockedNode (it restarted)")
    if (wrong := _identity(node, info, network)) is not None:
        return wrong
    height = network.body.get("height")
    seen = height if isinstance(height, int) else None
    if _stalled(node, seen, chain, chain_stall, now):
        return Observation("chain_stalled", f"chain height {seen} since {chain.moved_at}", seen)
    return Observation("ok", f"unlocked, height {seen}", seen)


def _identity(node: WatchedNode, info: ApiAnswer, network: ApiAnswer) -> Observation | None:
    """Not the node the fleet made, or not on its chain; None when it is."""
    if info.status != 200:
        return Observation("error", f"/nodeinfo answered {info.status} {info.error_name}".strip())
    pubkey = str(info.body.get("pubkey", ""))
    if node.node_pubkey is not None and pubkey != node.node_pubkey:
        return Observation(
            "wrong_pubkey", f"answers as {pubkey[:20]}..., recorded {node.node_pubkey[:20]}..."
        )
    if network.status != 200:
        return Observation("error", f"/networkinfo answered {network.status} {network.error_name}")
    running = str(network.body.get("network", ""))
    if running != NETWORK_NAMES.get(node.network):
        return Observation("wrong_network", f"runs {running}, the node is on {node.network}")
    return None


def _stalled(
    node: WatchedNode,
    height: int | None,
    chain: ChainMemory,
    stall: timedelta | None,
    now: datetime,
) -> bool:
    if stall is None or node.network == "regtest" or chain.moved_at is None:
        return False
    return height == chain.height and now - chain.moved_at >= stall


async def _from_ec2(node: WatchedNode, tools: ProbeTools, said: str) -> Observation:
    """SSH is silent: EC2 says whether the instance still runs."""
    if node.instance_id is None:
        return Observation("unreachable", said)
    try:
        instance = await asyncio.to_thread(tools.cloud.describe, node.region, node.instance_id)
    except Exception as exc:  # noqa: BLE001  # EC2's own trouble: unreachable, not gone
        return Observation("unreachable", f"{said}; EC2 did not answer: {type(exc).__name__}")
    if instance is None or instance.state in ("shutting-down", "terminated"):
        state = "knows no such instance" if instance is None else f"says {instance.state}"
        return Observation("instance_gone", f"EC2 {state}: {node.instance_id}")
    if instance.state in ("stopping", "stopped"):
        return Observation("instance_stopped", f"EC2 says {node.instance_id} is {instance.state}")
    return Observation("unreachable", f"{said}; EC2 says {instance.state}")
