"""The node API through the node's SSH connection (jobs/tunnel.py), against a simulated
host over real SSH and real HTTP: the daemon counts every call it got through the tunnel
and every one that came over the network (sim/rln_daemon.py ApiTraffic)."""

import asyncio
import random
import statistics
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import asyncssh
import pytest

from jobs.config import ChainBackend, StepSettings
from jobs.host import FabricAgent, HostConnections, HostUnreachable
from jobs.node_api import Direct, NodeApi, NodeUnreachable, Route
from jobs.node_auth import RootKey, new_root_key, route_token
from jobs.outcomes import HoldNode
from jobs.registry import NodeSnapshot
from jobs.toolbox import Toolbox
from jobs.tunnel import SshTunnel, node_route
from models.secrets import Secret
from sim.host import HostPorts, SimHost
from sim.rln_daemon import ApiTraffic, ChainWorld, SimBitcoind
from sim.ssh_server import public_key_text
from tests.conftest import add_nodes, fetch
from tests.simulation import Simulation, write_ssh_key
from tests.test_lifecycle import StartWorker, reach
from worker.dispatcher import Dispatcher

T = TypeVar("T")
PASSWORD = Secret("correct horse battery staple")
MNEMONIC = Secret(" ".join(["abandon"] * 11 + ["about"]))
# The regtest bitcoind and electrs the simulated host has on itself (ChainWorld.local).
CHAIN = ChainBackend(
    bitcoind_rpc_host="127.0.0.1",
    bitcoind_rpc_port=18443,
    bitcoind_rpc_username="user",
    bitcoind_rpc_password="rpc-password-not-for-the-wire",
    indexer_url="127.0.0.1:50001",
)


class Loop:
    """The simulator's side: an asyncio loop in a thread, as SimCloud runs its hosts."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


@dataclass
class Node:
    loop: Loop
    host: SimHost
    key: RootKey
    settings: StepSettings
    pin: str  # the host key as the fleet pinned it

    @property
    def traffic(self) -> ApiTraffic:
        return self.host.traffic

    def api(
        self,
        route: Route | None = None,
        timeout: float = 5,
        unlock: float = 10,
        connections: HostConnections | None = None,
    ) -> NodeApi:
        return NodeApi(
            route or SshTunnel(self.settings, self.host.address, self.pin, connections),
            token=lambda path: route_token(self.key.private_hex, path),
            timeout=timeout,
            unlock_timeout=unlock,
        )

    def direct(self) -> Direct:
        return Direct(self.host.address, self.host.ports.api)


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


@pytest.fixture
def node(loop: Loop, tmp_path: Path) -> Iterator[Node]:
    private, public = write_ssh_key(tmp_path)
    address = f"127.{random.randint(100, 250)}.{random.randint(0, 250)}.{random.randint(1, 250)}"
    host = SimHost(
        address,
        HostPorts(ssh=2222, api=3001),
        "regtest",
        "0.9.0",
        asyncssh.read_public_key(str(public)),
        fetch=lambda url: b"",
        upload=lambda url, body, sha256: None,
        unlock_seconds=0.05,
        chain=ChainWorld(
            {("127.0.0.1", 18443): SimBitcoind("regtest", "user", CHAIN.bitcoind_rpc_password)},
            {"127.0.0.1:50001": "regtest"},
        ),
    )
    key = new_root_key()
    loop.run(host.boot())
    loop.run(host.set_root_key(key.public_hex))
    loop.run(host.start())
    settings = StepSettings(
        ssh_port=2222, ssh_key_path=str(private), node_api_port=3001, ssh_timeout_seconds=5
    )
    try:
        yield Node(loop, host, key, settings, public_key_text(host.host_key))
    finally:
        loop.run(host.power_off())


def test_calls_go_through_the_tunnel_with_the_least_token(node: Node) -> None:
    api = node.api()
    assert api.init(PASSWORD, MNEMONIC) == MNEMONIC
    api.unlock(PASSWORD, CHAIN)
    info = api.node_info()
    api.lock()
    assert node.host.daemon is not None and info.pubkey == node.host.daemon.node_pubkey
    assert node.host.disk.mnemonic == MNEMONIC.reveal() and not node.host.daemon.unlocked
    assert (node.traffic.tunnelled, node.traffic.direct, node.traffic.direct_secrets) == (4, 0, 0)
    assert dict(node.traffic.roles) == {
        ("/init", "admin"): 1,
        ("/unlock", "admin"): 1,
        ("/nodeinfo", "read-only"): 1,
        ("/lock", "admin"): 1,
    }


def test_direct_mode_is_plain_http_to_the_address_and_counted(node: Node) -> None:
    api = node.api(node.direct())
    api.init(PASSWORD, MNEMONIC)
    api.unlock(PASSWORD, CHAIN)
    api.node_info()
    api.lock()
    # /init and /unlock carry the password (and an admin token), /lock an admin token;
    # /nodeinfo only a read-only token and no body.
    assert (node.traffic.tunnelled, node.traffic.direct, node.traffic.direct_secrets) == (0, 4, 3)


def test_a_changed_host_key_holds_the_node_before_the_daemon_hears_anything(
    node: Node,
) -> None:
    commands = list(node.host.commands)
    node.loop.run(node.host.change_host_key())
    with pytest.raises(HoldNode) as held:
        node.api().unlock(PASSWORD, CHAIN)
    assert "changed since it was pinned" in str(held.value)
    assert "possible man in the middle" in str(held.value)
    assert node.traffic == ApiTraffic()  # not one call reached the daemon
    assert node.host.disk.unlock_calls == 0
    # The agent's connection is the same one: the same check, the same words.
    with pytest.raises(HoldNode) as agent_held:
        FabricAgent(node.settings).run(node.host.address, node.pin, "status")
    assert str(agent_held.value) == str(held.value)
    assert node.host.commands == commands


def test_a_jobs_agent_commands_and_api_calls_share_one_ssh_connection(node: Node) -> None:
    before = node.host.ssh_handshakes
    with HostConnections(node.settings) as connections:
        agent = FabricAgent(node.settings, connections)
        assert agent.run(node.host.address, node.pin, "status").ok
        api = node.api(connections=connections)
        api.init(PASSWORD, MNEMONIC)
        api.unlock(PASSWORD, CHAIN)
        api.network_info()
        api.node_info()
        assert agent.run(node.host.address, node.pin, "status").ok
        assert node.host.ssh_handshakes - before == 1
        assert node.loop.run(_open_connections(node)) == 1
    # Nothing outlives the job: the host sees the connection closed.
    wait_for(lambda: node.loop.run(_open_connections(node)) == 0)
    assert node.traffic.tunnelled == 4 and node.traffic.direct == 0
    # Without a job's connections, a session per call as before.
    FabricAgent(node.settings).run(node.host.address, node.pin, "status")
    node.api().node_info()
    assert node.host.ssh_handshakes - before == 3


def test_a_jobs_toolbox_closes_its_connections_however_the_job_ends(node: Node) -> None:
    tools = Toolbox(node.settings, "fleet", cast(Any, None), FabricAgent(node.settings),
                    cast(Any, None))  # fmt: skip
    before = node.host.ssh_handshakes
    with pytest.raises(KeyboardInterrupt), HostConnections(node.settings) as hosts:
        job = tools.for_job(hosts)
        assert job.agent.run(node.host.address, node.pin, "status").ok
        node.api(connections=job.hosts).init(PASSWORD, MNEMONIC)
        assert node.host.ssh_handshakes - before == 1
        raise KeyboardInterrupt  # a cold shutdown mid-chain
    wait_for(lambda: node.loop.run(_open_connections(node)) == 0)
    assert tools.hosts is None  # the worker's own toolbox holds no connection


def test_a_first_contacts_connection_serves_the_pin_it_showed_and_no_other(node: Node) -> None:
    before = node.host.ssh_handshakes
    with HostConnections(node.settings) as connections:
        agent = FabricAgent(node.settings, connections)
        shown = agent.run(node.host.address, None, "status").host_key  # the key step
        assert shown == node.pin
        agent.run(node.host.address, shown, "status")  # a later step, pinned
        assert node.host.ssh_handshakes - before == 1
        other = public_key_text(asyncssh.generate_private_key("ssh-ed25519"))
        commands = list(node.host.commands)
        with pytest.raises(HoldNode, match="changed since it was pinned"):
            agent.run(node.host.address, other, "status")
        assert node.host.commands == commands  # opened again, checked, nothing sent


def test_a_connection_broken_mid_chain_is_opened_again_once_with_the_key_checked(
    node: Node,
) -> None:
    before = node.host.ssh_handshakes
    with HostConnections(node.settings) as connections:
        agent = FabricAgent(node.settings, connections)
        api = node.api(connections=connections)
        agent.run(node.host.address, node.pin, "status")
        node.loop.run(node.host.drop_ssh_connections())
        assert agent.run(node.host.address, node.pin, "status").ok
        assert node.host.ssh_handshakes - before == 2
        node.loop.run(node.host.drop_ssh_connections())
        api.init(PASSWORD, MNEMONIC)
        assert node.host.ssh_handshakes - before == 3
        assert node.traffic.tunnelled == 1
        # Broken again, and the host shows another key now: the reopening checks it.
        node.loop.run(node.host.drop_ssh_connections())
        node.loop.run(node.host.change_host_key())
        with pytest.raises(HoldNode, match="changed since it was pinned"):
            api.unlock(PASSWORD, CHAIN)
        with pytest.raises(HoldNode, match="changed since it was pinned"):
            agent.run(node.host.address, node.pin, "status")
    assert node.traffic.tunnelled == 1 and node.host.disk.unlock_calls == 0


def test_a_break_noticed_only_under_the_work_is_retried_once_on_a_new_connection(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """paramiko has not seen the break yet when the command or channel goes out: the
    work fails on the old connection, and is retried once on a newly opened one."""
    monkeypatch.setattr("jobs.host._alive", lambda connection: True)
    before = node.host.ssh_handshakes
    with HostConnections(node.settings) as connections:
        agent = FabricAgent(node.settings, connections)
        agent.run(node.host.address, node.pin, "status")
        node.loop.run(node.host.drop_ssh_connections())
        wait_for(lambda: node.loop.run(_open_connections(node)) == 0)
        assert agent.run(node.host.address, node.pin, "status").ok
        node.loop.run(node.host.drop_ssh_connections())
        wait_for(lambda: node.loop.run(_open_connections(node)) == 0)
        node.api(connections=connections).init(PASSWORD, MNEMONIC)
    assert node.host.ssh_handshakes - before == 3
    assert node.traffic.tunnelled == 1


def test_a_host_that_stays_down_is_unreachable_after_one_reopening(node: Node) -> None:
    with HostConnections(node.settings) as connections:
        agent = FabricAgent(node.settings, connections)
        agent.run(node.host.address, node.pin, "status")
        node.loop.run(node.host.power_off())
        with pytest.raises(HostUnreachable, match="no SSH session with"):
            agent.run(node.host.address, node.pin, "status")
        with pytest.raises(NodeUnreachable, match=r"^/nodeinfo: no SSH session with"):
            node.api(connections=connections).node_info()


async def _open_connections(node: Node) -> int:
    ssh = node.host._ssh  # the simulator's own sshd, counted from inside
    return 0 if ssh is None else len(ssh.connections)


def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def snapshot(address: str | None, ssh_host_key: str | None) -> NodeSnapshot:
    return NodeSnapshot(
        id=1, name="n1", owner="o", region="eu-west-1", instance_type="t3.small",
        network="regtest", current_version=None, target_version=None, state="wallet",
        instance_id="i-1", address=address, node_pubkey=None, ssh_host_key=ssh_host_key,
        attempts=0, step_run=1, wallet_initialised=True, launch_generation=0,
    )  # fmt: skip


def test_a_node_without_a_pinned_key_gets_no_tunnel() -> None:
    settings = StepSettings()
    with pytest.raises(HoldNode, match="no pinned SSH host key"):
        node_route(settings, snapshot("127.0.0.9", None))
    route = node_route(settings, snapshot("127.0.0.9", "ssh-ed25519 AAAA"))
    assert isinstance(route, SshTunnel) and route.pinned_key == "ssh-ed25519 AAAA"
    with pytest.raises(HoldNode, match="has no address"):
        node_route(settings, snapshot(None, "ssh-ed25519 AAAA"))
    # Direct only when asked for: it needs no pin, and goes to the address.
    direct = settings.model_copy(update={"node_api_transport": "direct"})
    assert node_route(direct, snapshot("127.0.0.9", None)) == Direct("127.0.0.9", 3001)
    assert StepSettings().node_api_transport == "ssh"


def test_the_transport_setting_takes_only_ssh_or_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_NODE_API_TRANSPORT", "direct")
    assert StepSettings().node_api_transport == "direct"
    monkeypatch.setenv("FLEET_NODE_API_TRANSPORT", "plain")
    with pytest.raises(ValueError, match="node_api_transport"):
        StepSettings()


def test_a_stopped_daemon_is_unreachable_and_the_error_holds_no_secret(node: Node) -> None:
    node.loop.run(node.host.stop())
    calls: list[Callable[[NodeApi], object]] = [
        lambda api: api.unlock(PASSWORD, CHAIN),
        lambda api: api.init(PASSWORD, MNEMONIC),
    ]
    for call in calls:
        with pytest.raises(NodeUnreachable) as unreachable:
            call(node.api())
        message = str(unreachable.value)
        assert "ConnectError" in message
        for secret in (PASSWORD.reveal(), MNEMONIC.reveal(), CHAIN.bitcoind_rpc_password):
            assert secret not in message
    assert node.traffic == ApiTraffic()


def test_a_dead_host_is_unreachable(node: Node) -> None:
    node.loop.run(node.host.power_off())
    with pytest.raises(NodeUnreachable, match=r"^/nodeinfo: no SSH session with 127\."):
        node.api().node_info()


def test_read_timeouts_hold_and_unlock_gets_its_longer_one(node: Node) -> None:
    api = node.api(timeout=0.3, unlock=5)
    api.init(PASSWORD, MNEMONIC)
    node.host.faults.api.latency_seconds = 0.6
    with pytest.raises(NodeUnreachable, match=r"^/nodeinfo: ReadTimeout$"):
        api.node_info()
    api.unlock(PASSWORD, CHAIN)  # slower than the read timeout, within the unlock one
    assert node.host.daemon is not None and node.host.daemon.unlocked


def test_cost_per_call(node: Node) -> None:
    """What one read call and one agent command cost: with an SSH session of their own
    each (no job's connections), on the job's one connection (what a step chain does),
    and a read call as plain HTTP (direct mode). Wall time, and the CPU time of this
    process: the fleet's side (paramiko's threads too) and the simulated host's both."""
    node.api().init(PASSWORD, MNEMONIC)
    node.api().unlock(PASSWORD, CHAIN)
    rounds = 20

    def per_call(call: Callable[[], object]) -> tuple[float, float]:
        walls, cpus = [], []
        for _ in range(rounds):
            began, began_cpu = time.perf_counter(), time.process_time()
            call()
            walls.append(time.perf_counter() - began)
            cpus.append(time.process_time() - began_cpu)
        return statistics.median(walls), statistics.median(cpus)

    address, pin = node.host.address, node.pin
    with HostConnections(node.settings) as job:
        node.api(connections=job).node_info()  # the job's connection is open
        FabricAgent(node.settings, job).run(address, pin, "status")
        figures = {
            "/nodeinfo, SSH session per call": per_call(lambda: node.api().node_info()),
            "/nodeinfo, channel on the job's connection": per_call(
                lambda: node.api(connections=job).node_info()
            ),
            "/nodeinfo, direct HTTP": per_call(lambda: node.api(node.direct()).node_info()),
            "status, SSH session per command": per_call(
                lambda: FabricAgent(node.settings).run(address, pin, "status")
            ),
            "status, on the job's connection": per_call(
                lambda: FabricAgent(node.settings, job).run(address, pin, "status")
            ),
        }
    print(
        f"\nmedian of {rounds} (wall / CPU, both ends): "
        + ", ".join(
            f"{name} {wall * 1000:.1f} / {cpu * 1000:.1f} ms"
            for name, (wall, cpu) in figures.items()
        )
    )
    assert node.traffic.tunnelled == 3 + 2 * rounds and node.traffic.direct == rounds
    assert figures["/nodeinfo, SSH session per call"][0] < 1.0


def test_lifecycle_in_direct_mode_sends_its_secrets_in_clear(
    simulation: Simulation, db_url: str, dispatcher: Dispatcher, start_worker: StartWorker
) -> None:
    """Direct mode is what it says: the calls reach the daemon from the network, the
    password and admin tokens with them."""
    node_ids = add_nodes(db_url, ["plain"])
    start_worker(env=simulation.env | {"FLEET_NODE_API_TRANSPORT": "direct"})
    reach(db_url, node_ids, "live")
    traffic = simulation.cloud.api_traffic()
    assert traffic.tunnelled == 0
    # start: /nodeinfo (read-only); wallet: /unlock (NotInitialized), /init, /unlock,
    # each with the password, then /nodeinfo.
    assert traffic.direct >= 5 and traffic.direct_secrets >= 3
    assert {role for (path, role) in traffic.roles if path == "/nodeinfo"} == {"read-only"}
    assert fetch(db_url, "SELECT state FROM nodes") == [("live",)]
