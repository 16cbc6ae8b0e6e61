"""The simulated RLN daemon against rln-node-api.md, over real HTTP on loopback, with
tokens minted by the fleet's own jobs/node_auth.py.

The daemons run on an asyncio loop in a background thread (no pytest-asyncio here); the
tests talk to them with plain synchronous httpx from the test thread, so a slow /unlock
can be left running in a worker thread while other calls are made."""

import asyncio
import itertools
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
from biscuit_auth import Biscuit, BiscuitBuilder, PrivateKey, PublicKey
from mnemonic import Mnemonic

from jobs.node_auth import READ_ONLY_ROUTES as FLEET_READ_ONLY_ROUTES
from jobs.node_auth import (
    InvalidRootKey,
    RootKey,
    admin_token,
    custom_token,
    new_root_key,
    public_key_of,
    read_only_token,
    route_token,
)
from sim.rln_daemon import (
    ApiFaults,
    ApiTraffic,
    BlockSync,
    NodeDisk,
    RlnDaemon,
    SimBitcoind,
    carries_secret,
)

T = TypeVar("T")
HOST = "127.0.0.1"
PASSWORD = "correct horse battery"
NEW_PASSWORD = "staple staple staple"
# The BIP39 test vector: valid checksum, 12 words.
MNEMONIC = " ".join(["abandon"] * 11 + ["about"])
UNLOCK: dict[str, Any] = {
    "password": PASSWORD,
    "ldk_chain_sync": {
        "mode": "BlockSync",
        "config": {
            "bitcoind_rpc_username": "user",
            "bitcoind_rpc_password": "password",
            "bitcoind_rpc_host": "127.0.0.1",
            "bitcoind_rpc_port": 18443,
        },
    },
    "indexer_url": "127.0.0.1:50001",
    "announce_addresses": [],
    "announce_alias": None,
}
# The shape releases before mid-2026 took; the current daemon refuses it.
OLD_UNLOCK = {
    "password": PASSWORD,
    "bitcoind_rpc_username": "user",
    "bitcoind_rpc_password": "password",
    "bitcoind_rpc_host": "127.0.0.1",
    "bitcoind_rpc_port": 18443,
    "indexer_url": "127.0.0.1:50001",
}
INIT = {"password": PASSWORD, "mnemonic": MNEMONIC}
BACKUP = {"backup_path": "/var/backups/rln-1", "password": PASSWORD}
CHANGE = {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
PUBKEY = re.compile(r"^0[23][0-9a-f]{64}$")
UNAUTHORIZED = {"error": "Missing or invalid credentials", "code": 401, "name": "Unauthorized"}


# --- harness ----------------------------------------------------------------------------
class Loop:
    """An asyncio loop in a background thread, where the daemons live."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Node:
    """One host: its disk, its root key, and the daemon currently running on it."""

    loop: Loop
    client: httpx.Client
    key: RootKey
    disk: NodeDisk
    host: str
    port: int
    unlock_seconds: float
    faults: ApiFaults | None = None
    lock_seconds: float = 0.0
    daemon: RlnDaemon | None = None
    wallet_format: int = 1  # of the release the daemon is

    def start(self) -> RlnDaemon:
        daemon = RlnDaemon(
            self.disk,
            "regtest",
            self.key.public_hex,
            unlock_seconds=self.unlock_seconds,
            faults=self.faults,
            lock_seconds=self.lock_seconds,
            wallet_format=self.wallet_format,
        )
        self.loop.run(daemon.start(self.host, self.port))
        self.daemon = daemon
        return daemon

    def stop(self) -> None:
        if self.daemon is not None:
            self.loop.run(self.daemon.stop())
            self.daemon = None

    def restart(self) -> RlnDaemon:
        self.stop()
        return self.start()

    @property
    def current(self) -> RlnDaemon:
        assert self.daemon is not None, "no daemon running on this node"
        return self.daemon

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        token: str | None = "admin",
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        """token: "admin" for a fresh admin token, None for no Authorization header,
        anything else is sent as the bearer token."""
        sent = dict(headers or {})
        if token is not None:
            bearer = admin_token(self.key.private_hex) if token == "admin" else token
            sent["Authorization"] = f"Bearer {bearer}"
        url = f"http://{self.host}:{self.port}{path}"
        if content is not None:
            return self.client.request(method, url, content=content, headers=sent)
        return self.client.request(method, url, json=body, headers=sent)


@dataclass
class Nodes:
    loop: Loop
    client: httpx.Client
    started: list[Node] = field(default_factory=list)

    def new(
        self,
        host: str = HOST,
        disk: NodeDisk | None = None,
        unlock_seconds: float = 0.02,
        faults: ApiFaults | None = None,
        lock_seconds: float = 0.0,
    ) -> Node:
        node = Node(
            loop=self.loop,
            client=self.client,
            key=new_root_key(),
            disk=disk or NodeDisk(),
            host=host,
            port=free_port(host),
            unlock_seconds=unlock_seconds,
            faults=faults,
            lock_seconds=lock_seconds,
        )
        node.start()
        self.started.append(node)
        return node


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    # A new connection per request, as a fresh client would make (a kept-alive one would
    # outlive a daemon's restart), without building a client per call.
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(limits=limits, timeout=10) as shared:
        yield shared


@pytest.fixture
def nodes(loop: Loop, client: httpx.Client) -> Iterator[Nodes]:
    made = Nodes(loop, client)
    yield made
    for node in made.started:
        node.stop()


def expect_error(response: httpx.Response, status: int, name: str) -> None:
    body = response.json()
    assert (response.status_code, body.get("name")) == (status, name), response.text
    assert set(body) == {"error", "code", "name"}
    assert body["code"] == status
    assert isinstance(body["error"], str)
    assert body["error"]


def expect_ok(response: httpx.Response, body: dict[str, Any] | None = None) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == ({} if body is None else body)


def initialised(node: Node) -> Node:
    expect_ok(node.call("POST", "/init", INIT), {"mnemonic": MNEMONIC})
    return node


def unlocked(node: Node) -> Node:
    initialised(node)
    expect_ok(node.call("POST", "/unlock", UNLOCK))
    return node


def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


STATES: dict[str, Callable[[Node], Node]] = {
    "empty": lambda node: node,
    "locked": initialised,
    "unlocked": unlocked,
}


# --- the state table --------------------------------------------------------------------
WRONG_STATE = [
    ("empty", "GET", "/nodeinfo", None, 403, "LockedNode"),
    ("empty", "GET", "/networkinfo", None, 403, "LockedNode"),
    ("empty", "GET", "/listchannels", None, 403, "LockedNode"),
    ("empty", "GET", "/listpeers", None, 403, "LockedNode"),
    ("empty", "GET", "/listpayments", None, 403, "LockedNode"),
    ("empty", "POST", "/address", {}, 403, "LockedNode"),
    ("empty", "POST", "/btcbalance", {"skip_sync": False}, 403, "LockedNode"),
    ("empty", "POST", "/unlock", UNLOCK, 403, "NotInitialized"),
    ("empty", "POST", "/lock", {}, 403, "LockedNode"),
    ("empty", "POST", "/backup", BACKUP, 403, "NotInitialized"),
    ("empty", "POST", "/changepassword", CHANGE, 403, "NotInitialized"),
    ("empty", "POST", "/init", {"password": "short"}, 400, "InvalidPassword"),
    ("empty", "POST", "/restore", {"backup_path": "/nope", "password": PASSWORD}, 500, "IO"),
    ("locked", "POST", "/init", INIT, 403, "AlreadyInitialized"),
    ("locked", "POST", "/init", {"password": "short"}, 400, "InvalidPassword"),
    ("locked", "POST", "/restore", BACKUP, 403, "AlreadyInitialized"),
    ("locked", "POST", "/unlock", {**UNLOCK, "password": "not the one"}, 401, "WrongPassword"),
    ("locked", "POST", "/lock", {}, 403, "LockedNode"),
    ("locked", "GET", "/nodeinfo", None, 403, "LockedNode"),
    ("locked", "POST", "/btcbalance", {"skip_sync": True}, 403, "LockedNode"),
    ("locked", "POST", "/backup", {**BACKUP, "password": "not the one"}, 401, "WrongPassword"),
    ("locked", "POST", "/changepassword", {**CHANGE, "old_password": "nope nope"}, 401,
     "WrongPassword"),
    ("locked", "POST", "/changepassword", {**CHANGE, "new_password": "short"}, 400,
     "InvalidPassword"),
    ("unlocked", "POST", "/init", INIT, 403, "UnlockedNode"),
    ("unlocked", "POST", "/unlock", UNLOCK, 403, "AlreadyUnlocked"),
    ("unlocked", "POST", "/backup", BACKUP, 403, "UnlockedNode"),
    ("unlocked", "POST", "/restore", BACKUP, 403, "UnlockedNode"),
    ("unlocked", "POST", "/changepassword", CHANGE, 403, "UnlockedNode"),
]  # fmt: skip


@pytest.mark.parametrize(("state", "method", "path", "body", "status", "name"), WRONG_STATE)
def test_wrong_state_answers(
    nodes: Nodes,
    state: str,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    status: int,
    name: str,
) -> None:
    node = STATES[state](nodes.new())
    before = (node.disk.mnemonic, node.disk.password, node.current.unlocked)

    expect_error(node.call(method, path, body), status, name)

    assert (node.disk.mnemonic, node.disk.password, node.current.unlocked) == before


INVALID_REQUESTS = [
    ("empty", "/init", {"mnemonic": MNEMONIC}),
    ("empty", "/init", {"password": 12345678}),
    ("locked", "/unlock", OLD_UNLOCK),
    ("locked", "/unlock", {**UNLOCK, "ldk_chain_sync": {"mode": "Electrum", "config": {}}}),
    ("locked", "/unlock", {**UNLOCK, "ldk_chain_sync": {"mode": "BlockSync"}}),
    ("locked", "/unlock", {**UNLOCK, "ldk_chain_sync": {"mode": "TransactionSync", "config": {}}}),
    ("locked", "/unlock", {**UNLOCK, "ldk_chain_sync": {
        "mode": "BlockSync", "config": {"bitcoind_rpc_username": "u",
        "bitcoind_rpc_password": "p", "bitcoind_rpc_host": "h", "bitcoind_rpc_port": "18443"}}}),
    ("locked", "/unlock", {k: v for k, v in UNLOCK.items() if k != "announce_addresses"}),
    ("locked", "/unlock", {k: v for k, v in UNLOCK.items() if k != "indexer_url"}),
    ("locked", "/unlock", {**UNLOCK, "indexer_url": None}),
    ("locked", "/unlock", {**UNLOCK, "announce_addresses": "127.0.0.1:9735"}),
    ("locked", "/backup", {"password": PASSWORD}),
    ("locked", "/changepassword", {"old_password": PASSWORD}),
    ("unlocked", "/btcbalance", {}),
    # The body is read before the state is looked at, as upstream's extractor does.
    ("locked", "/init", {"password": PASSWORD, "mnemonic": 12}),
]  # fmt: skip


@pytest.mark.parametrize(("state", "path", "body"), INVALID_REQUESTS)
def test_bad_bodies_are_invalid_request(
    nodes: Nodes, state: str, path: str, body: dict[str, Any]
) -> None:
    node = STATES[state](nodes.new())
    expect_error(node.call("POST", path, body), 400, "InvalidRequest")
    assert node.current.unlocked == (state == "unlocked")


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"password": "long enough"}', {}),  # JSON, but not said to be
        (b'{"password": "long enough"}', {"Content-Type": "text/plain"}),
        (b'{"password": ', {"Content-Type": "application/json"}),
        (b'["password"]', {"Content-Type": "application/json"}),
        (b"", {"Content-Type": "application/json"}),
    ],
)
def test_init_needs_a_json_object_body(
    nodes: Nodes, content: bytes, headers: dict[str, str]
) -> None:
    node = nodes.new()
    expect_error(
        node.call("POST", "/init", headers=headers, content=content), 400, "InvalidRequest"
    )
    assert node.disk.mnemonic is None


# --- the happy path ----------------------------------------------------------------------
def test_init_restart_unlock_lock_backup_restore(nodes: Nodes) -> None:
    node = nodes.new()
    expect_ok(node.call("POST", "/init", INIT), {"mnemonic": MNEMONIC})
    assert (node.disk.mnemonic, node.disk.password, node.disk.init_calls) == (
        MNEMONIC,
        PASSWORD,
        1,
    )
    assert node.current.unlocked is False  # /init does not unlock

    daemon = node.restart()
    assert daemon.unlocked is False
    expect_error(node.call("GET", "/nodeinfo"), 403, "LockedNode")
    expect_ok(node.call("POST", "/unlock", UNLOCK))
    assert daemon.unlocked is True
    assert node.disk.unlock_calls == 1
    assert daemon.last_unlock is not None
    assert daemon.last_unlock.ldk_chain_sync == BlockSync("user", "password", "127.0.0.1", 18443)
    assert daemon.last_unlock.indexer_url == "127.0.0.1:50001"

    info = node.call("GET", "/nodeinfo")
    assert info.status_code == 200
    pubkey = info.json()["pubkey"]
    assert PUBKEY.match(pubkey)
    assert pubkey == daemon.node_pubkey
    assert info.json()["num_channels"] == 0
    assert info.json()["num_peers"] == 0

    # Unlocked is never persisted: any restart comes back locked.
    daemon = node.restart()
    assert daemon.unlocked is False
    expect_error(node.call("GET", "/nodeinfo"), 403, "LockedNode")
    expect_ok(node.call("POST", "/unlock", UNLOCK))
    assert node.call("GET", "/nodeinfo").json()["pubkey"] == pubkey  # same wallet, same id

    expect_ok(node.call("POST", "/lock"))
    assert daemon.unlocked is False
    expect_error(node.call("GET", "/nodeinfo"), 403, "LockedNode")

    expect_ok(node.call("POST", "/backup", BACKUP))
    backup = node.disk.read(BACKUP["backup_path"])
    assert backup is not None
    assert MNEMONIC.encode() not in backup and PASSWORD.encode() not in backup
    expect_error(node.call("POST", "/backup", BACKUP), 400, "InvalidBackupPath")
    assert node.disk.read(BACKUP["backup_path"]) == backup

    # The backup file taken to a new host with an empty storage dir.
    other_disk = NodeDisk()
    other_disk.write("/restore/me", backup)
    other = nodes.new(disk=other_disk)
    restore = {"backup_path": "/restore/me", "password": PASSWORD}
    expect_error(other.call("POST", "/restore", {**restore, "password": "wrong one"}), 401,
                 "WrongPassword")  # fmt: skip
    assert other.disk.mnemonic is None
    expect_error(other.call("POST", "/unlock", UNLOCK), 403, "NotInitialized")
    expect_ok(other.call("POST", "/restore", restore))
    assert (other.disk.mnemonic, other.disk.password) == (MNEMONIC, PASSWORD)
    assert other.current.unlocked is False  # a restore leaves the node locked
    expect_error(other.call("POST", "/restore", restore), 403, "AlreadyInitialized")
    expect_error(other.call("POST", "/init", INIT), 403, "AlreadyInitialized")
    expect_ok(other.call("POST", "/unlock", UNLOCK))
    assert other.call("GET", "/nodeinfo").json()["pubkey"] == pubkey


def test_init_twice_is_already_initialized(nodes: Nodes) -> None:
    node = initialised(nodes.new())
    second = {"password": NEW_PASSWORD, "mnemonic": Mnemonic("english").generate(256)}
    expect_error(node.call("POST", "/init", second), 403, "AlreadyInitialized")
    assert (node.disk.mnemonic, node.disk.password, node.disk.init_calls) == (
        MNEMONIC,
        PASSWORD,
        2,
    )


def test_init_without_a_mnemonic_generates_one(nodes: Nodes) -> None:
    node = nodes.new()
    answer = node.call("POST", "/init", {"password": PASSWORD})
    assert answer.status_code == 200
    generated = answer.json()["mnemonic"]
    assert len(generated.split()) in (12, 24)
    assert Mnemonic("english").check(generated)
    assert node.disk.mnemonic == generated


def test_node_pubkey_is_deterministic_per_mnemonic(nodes: Nodes) -> None:
    first = unlocked(nodes.new())
    second = unlocked(nodes.new())
    third = nodes.new()
    assert third.call("POST", "/init", {"password": PASSWORD}).status_code == 200
    expect_ok(third.call("POST", "/unlock", UNLOCK))
    pubkeys = [node.call("GET", "/nodeinfo").json()["pubkey"] for node in (first, second, third)]
    assert pubkeys[0] == pubkeys[1] != pubkeys[2]
    assert all(PUBKEY.match(pubkey) for pubkey in pubkeys)


def test_a_release_of_another_wallet_format_cannot_read_the_wallet(nodes: Nodes) -> None:
    """Upstream's release of 2026-08-01 reads no mnemonic file (nor backup) an earlier one
    wrote: /unlock answers CorruptedMnemonic (500), whatever the password. Its documented
    recovery, a new wallet from the same mnemonic, gives the same node key."""
    node = unlocked(nodes.new())
    pubkey = node.call("GET", "/nodeinfo").json()["pubkey"]
    expect_ok(node.call("POST", "/lock"))
    expect_ok(node.call("POST", "/backup", BACKUP))
    old_backup = node.disk.read(BACKUP["backup_path"])
    assert old_backup is not None and node.disk.wallet_format == 1

    node.wallet_format = 2  # an update to the release of the break
    node.restart()
    expect_error(node.call("POST", "/unlock", UNLOCK), 500, "CorruptedMnemonic")
    expect_error(node.call("POST", "/unlock", {**UNLOCK, "password": "not the one"}), 500,
                 "CorruptedMnemonic")  # fmt: skip
    backup = {**BACKUP, "backup_path": "/var/backups/rln-2"}
    expect_error(node.call("POST", "/backup", backup), 500, "CorruptedMnemonic")

    node.stop()
    node.disk.move_aside("/var/lib/rln-aside-1")
    assert node.disk.mnemonic is None and node.disk.read("/var/lib/rln-aside-1/mnemonic")
    node.start()
    expect_error(node.call("POST", "/unlock", UNLOCK), 403, "NotInitialized")
    expect_ok(node.call("POST", "/init", INIT), {"mnemonic": MNEMONIC})
    expect_ok(node.call("POST", "/unlock", UNLOCK))
    assert node.call("GET", "/nodeinfo").json()["pubkey"] == pubkey
    assert node.disk.wallet_format == 2

    # A backup of the old format restores as it is, and cannot be unlocked either.
    other_disk = NodeDisk()
    other_disk.write("/restore/me", old_backup)
    other = nodes.new(disk=other_disk)
    other.wallet_format = 2
    other.restart()
    expect_ok(other.call("POST", "/restore", {"backup_path": "/restore/me", "password": PASSWORD}))
    expect_error(other.call("POST", "/unlock", UNLOCK), 500, "CorruptedMnemonic")


def test_change_password(nodes: Nodes) -> None:
    node = initialised(nodes.new())
    expect_ok(node.call("POST", "/changepassword", CHANGE))
    assert node.disk.password == NEW_PASSWORD
    expect_error(node.call("POST", "/unlock", UNLOCK), 401, "WrongPassword")
    expect_ok(node.call("POST", "/unlock", {**UNLOCK, "password": NEW_PASSWORD}))


def test_read_routes_when_unlocked(nodes: Nodes) -> None:
    node = unlocked(nodes.new())
    expect_ok(node.call("GET", "/networkinfo"), {"network": "Regtest", "height": 150})
    expect_ok(node.call("GET", "/listchannels"), {"channels": []})
    expect_ok(node.call("GET", "/listpeers"), {"peers": []})
    expect_ok(node.call("GET", "/listpayments"), {"payments": []})
    empty = {"settled": 0, "future": 0, "spendable": 0}
    expect_ok(node.call("POST", "/btcbalance", {"skip_sync": False}),
              {"vanilla": empty, "colored": empty})  # fmt: skip
    first, second = (node.call("POST", "/address").json()["address"] for _ in range(2))
    assert first.startswith("bcrt1q") and second.startswith("bcrt1q")
    assert first != second


def test_a_backup_zips_the_storage_dir_so_one_inside_it_holds_every_earlier_one(
    nodes: Nodes,
) -> None:
    node = initialised(nodes.new())
    inside = [f"/var/lib/rln/backups/b-{i}" for i in range(4)]
    outside = [f"/var/lib/rln-backups/b-{i}" for i in range(4)]
    for path in [*inside, *outside]:
        expect_ok(node.call("POST", "/backup", {"backup_path": path, "password": PASSWORD}))
    sizes_inside = [len(node.disk.read(p) or b"") for p in inside]
    sizes_outside = [len(node.disk.read(p) or b"") for p in outside]
    assert all(b > 2 * a for a, b in itertools.pairwise(sizes_inside)), sizes_inside
    assert max(sizes_outside) < 1.2 * min(sizes_outside), sizes_outside
    # The temporary zip went next to the backup file, and away again.
    assert sorted(p.name for p in node.disk.path("/var/lib/rln-backups").iterdir()) == [
        "b-0", "b-1", "b-2", "b-3"
    ]  # fmt: skip


def test_init_answers_invalid_mnemonic_and_normalises_a_good_one(nodes: Nodes) -> None:
    node = nodes.new()
    bad = {"password": PASSWORD, "mnemonic": "not a mnemonic at all"}
    expect_error(node.call("POST", "/init", bad), 400, "InvalidMnemonic")
    spaced = {"password": PASSWORD, "mnemonic": "  " + MNEMONIC.replace(" ", "   ") + " "}
    expect_ok(node.call("POST", "/init", spaced), {"mnemonic": MNEMONIC})


def test_nodeinfo_has_upstreams_full_shape(nodes: Nodes) -> None:
    node = initialised(nodes.new())
    expect_ok(node.call("POST", "/unlock", UNLOCK))
    info = node.call("GET", "/nodeinfo").json()
    assert set(info) >= {
        "pubkey", "num_channels", "num_usable_channels", "local_balance_sat",
        "eventual_close_fees_sat", "pending_outbound_payments_sat", "num_peers",
        "account_xpub_vanilla", "account_xpub_colored", "max_media_upload_size_mb",
        "rgb_htlc_min_msat", "rgb_channel_capacity_min_sat", "channel_capacity_min_sat",
        "channel_capacity_max_sat", "channel_asset_min_amount", "channel_asset_max_amount",
        "network_nodes", "network_channels",
    }  # fmt: skip


CHAIN_ERRORS = [
    ({"indexer_url": "tcp://nowhere:50001"}, "InvalidIndexer"),
    ({"ldk_chain_sync": {"mode": "TransactionSync", "config": {"indexer_url": "nowhere:1"}}},
     "InvalidIndexer"),
    ({"ldk_chain_sync": {**UNLOCK["ldk_chain_sync"], "config": {
        **UNLOCK["ldk_chain_sync"]["config"], "bitcoind_rpc_port": 18444}}},
     "FailedBitcoindConnection"),
    ({"ldk_chain_sync": {**UNLOCK["ldk_chain_sync"], "config": {
        **UNLOCK["ldk_chain_sync"]["config"], "bitcoind_rpc_password": "wrong"}}},
     "FailedBitcoindConnection"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "name"), CHAIN_ERRORS)
def test_unlock_checks_the_chain_backend(nodes: Nodes, change: dict[str, Any], name: str) -> None:
    node = initialised(nodes.new())
    expect_error(node.call("POST", "/unlock", {**UNLOCK, **change}), 403, name)
    assert not node.current.unlocked
    # The password is checked first, as upstream does.
    wrong = {**UNLOCK, **change, "password": "not the one"}
    expect_error(node.call("POST", "/unlock", wrong), 401, "WrongPassword")


def test_unlock_refuses_a_bitcoind_of_another_network(nodes: Nodes) -> None:
    node = initialised(nodes.new())
    node.current.chain.bitcoinds[("127.0.0.1", 18443)] = SimBitcoind("testnet", "user", "password")
    answer = node.call("POST", "/unlock", UNLOCK)
    expect_error(answer, 403, "NetworkMismatch")
    assert "(test)" in answer.json()["error"] and "(Regtest)" in answer.json()["error"]


@pytest.mark.parametrize("name", ["InvalidIndexer", "FailedBitcoindConnection", "NetworkMismatch"])
def test_the_chain_error_knob_fails_every_unlock(nodes: Nodes, name: str) -> None:
    node = initialised(nodes.new(faults=ApiFaults(chain_error=name)))
    expect_error(node.call("POST", "/unlock", UNLOCK), 403, name)
    assert not node.current.unlocked


def test_unlock_takes_transaction_sync(nodes: Nodes) -> None:
    node = initialised(nodes.new())
    chain = {"mode": "TransactionSync", "config": {"indexer_url": "tcp://127.0.0.1:50001"}}
    body = {"password": PASSWORD, "ldk_chain_sync": chain, "announce_addresses": [],
            "indexer_url": "127.0.0.1:50001"}  # fmt: skip
    expect_ok(node.call("POST", "/unlock", body))
    assert node.current.last_unlock is not None
    assert node.current.last_unlock.ldk_chain_sync.mode == "TransactionSync"


# --- slow state changes -----------------------------------------------------------------
CHECKED_CALLS = [
    ("GET", "/nodeinfo", None),
    ("GET", "/networkinfo", None),
    ("POST", "/init", INIT),
    ("POST", "/unlock", UNLOCK),
    ("POST", "/lock", {}),
    ("POST", "/backup", BACKUP),
    ("POST", "/restore", BACKUP),
    ("POST", "/changepassword", CHANGE),
    ("POST", "/address", {}),
    ("POST", "/shutdown", {}),
]


def test_calls_during_a_slow_unlock_answer_changing_state(nodes: Nodes) -> None:
    node = initialised(nodes.new(unlock_seconds=1.0))
    with ThreadPoolExecutor(max_workers=1) as pool:
        unlocking: Future[httpx.Response] = pool.submit(node.call, "POST", "/unlock", UNLOCK)
        wait_until(lambda: node.current.changing_state)
        for method, path, body in CHECKED_CALLS:
            expect_error(node.call(method, path, body), 403, "ChangingState")
        assert node.current.unlocked is False
        expect_ok(unlocking.result(timeout=5))
    assert node.current.unlocked is True
    assert node.current.changing_state is False
    assert node.call("GET", "/nodeinfo").status_code == 200
    assert node.disk.unlock_calls == 2


def test_calls_during_a_slow_lock_answer_changing_state(nodes: Nodes) -> None:
    node = unlocked(nodes.new(lock_seconds=1.0))
    with ThreadPoolExecutor(max_workers=1) as pool:
        locking: Future[httpx.Response] = pool.submit(node.call, "POST", "/lock")
        wait_until(lambda: node.current.changing_state)
        expect_error(node.call("GET", "/nodeinfo"), 403, "ChangingState")
        expect_error(node.call("POST", "/lock"), 403, "ChangingState")
        expect_error(node.call("POST", "/unlock", UNLOCK), 403, "ChangingState")
        expect_ok(locking.result(timeout=5))
    expect_error(node.call("GET", "/nodeinfo"), 403, "LockedNode")


def test_a_daemon_stopped_mid_unlock_comes_back_locked(nodes: Nodes) -> None:
    node = initialised(nodes.new(unlock_seconds=2.0))
    with ThreadPoolExecutor(max_workers=1) as pool:
        unlocking: Future[httpx.Response] = pool.submit(node.call, "POST", "/unlock", UNLOCK)
        wait_until(lambda: node.current.changing_state)
        daemon = node.restart()
        with pytest.raises(httpx.TransportError):
            unlocking.result(timeout=5)
    assert daemon.unlocked is False
    expect_error(node.call("GET", "/nodeinfo"), 403, "LockedNode")


# --- the process -------------------------------------------------------------------------
def test_shutdown_answers_then_stops_serving(nodes: Nodes) -> None:
    node = unlocked(nodes.new())
    expect_ok(node.call("POST", "/shutdown"))
    wait_until(lambda: not node.current.running)
    with pytest.raises(httpx.ConnectError):
        node.call("GET", "/nodeinfo")
    node.daemon = None
    daemon = node.start()  # the same disk, started again: locked
    assert daemon.unlocked is False
    expect_ok(node.call("POST", "/unlock", UNLOCK))


def test_serves_on_any_loopback_address_and_refuses_a_taken_port(nodes: Nodes) -> None:
    node = nodes.new(host="127.3.0.7")
    expect_error(node.call("GET", "/nodeinfo"), 403, "LockedNode")
    clash = RlnDaemon(NodeDisk(), "regtest", node.key.public_hex)
    with pytest.raises(OSError):
        node.loop.run(clash.start(node.host, node.port))
    assert clash.running is False


def test_the_daemon_counts_how_each_call_came_and_what_it_carried(nodes: Nodes) -> None:
    """A call from the daemon's own address came through the host's SSH tunnel; one from
    any other address (this test's 127.0.0.1) over the network."""
    node = nodes.new(host=f"127.4.{random.randint(0, 250)}.{random.randint(1, 250)}")
    traffic = node.current.traffic
    read_only = read_only_token(node.key.private_hex)
    expect_error(node.call("GET", "/nodeinfo", token=read_only), 403, "LockedNode")
    # A refused call's password crossed the wire all the same.
    answer = node.call("POST", "/init", INIT, token="not-a-biscuit")
    assert answer.status_code == 401
    expect_error(node.call("POST", "/lock", {}), 403, "LockedNode")  # an admin token
    assert traffic == ApiTraffic(
        direct=3,
        direct_secrets=2,
        roles=Counter({("/nodeinfo", "read-only"): 1, ("/lock", "admin"): 1}),
    )
    transport = httpx.HTTPTransport(local_address=node.host)
    with httpx.Client(transport=transport, timeout=10) as from_the_host:
        headers = {"Authorization": f"Bearer {admin_token(node.key.private_hex)}"}
        url = f"http://{node.host}:{node.port}/init"
        expect_ok(from_the_host.post(url, json=INIT, headers=headers), {"mnemonic": MNEMONIC})
    assert (traffic.tunnelled, traffic.direct, traffic.direct_secrets) == (1, 3, 2)
    assert traffic.roles[("/init", "admin")] == 1


@pytest.mark.parametrize(
    ("body", "secret"),
    [
        (b"", False),
        (b"{}", False),
        (b'{"skip_sync": true}', False),
        (b'{"backup_path": "/x", "password": "p"}', True),
        (b'{"mnemonic": "abandon"}', True),
        (b'{"old_password": "a", "new_password": "b"}', True),
        (b'{"ldk_chain_sync": {"config": {"bitcoind_rpc_password": "x"}}}', True),
        (b'[{"password": "p"}]', True),
        (b"password=p", True),  # not JSON: looked for as text
        (b"\xff\xfe", False),
    ],
)
def test_what_counts_as_a_secret_in_a_body(body: bytes, secret: bool) -> None:
    assert carries_secret(body) is secret


def test_refuses_bad_start_arguments() -> None:
    with pytest.raises(ValueError, match="network"):
        RlnDaemon(NodeDisk(), "bitcoin-cash", new_root_key().public_hex)
    with pytest.raises(ValueError, match="root public key"):
        RlnDaemon(NodeDisk(), "regtest", "00" * 31)


# --- authentication ----------------------------------------------------------------------
def test_missing_or_bad_credentials_are_unauthorized(nodes: Nodes) -> None:
    node = nodes.new()
    stranger = new_root_key()
    for token in (
        None,
        "not-a-biscuit",
        admin_token(stranger.private_hex),  # signed by another key
        admin_token(node.key.private_hex, ttl_seconds=-5),  # expired
    ):
        for method, path, body in (("POST", "/init", INIT), ("GET", "/nodeinfo", None)):
            answer = node.call(method, path, body, token=token)
            assert (answer.status_code, answer.json()) == (401, UNAUTHORIZED)
    basic = node.call("POST", "/init", INIT, token=None, headers={"Authorization": "Basic eDp5"})
    assert (basic.status_code, basic.json()) == (401, UNAUTHORIZED)
    assert node.disk.init_calls == 0
    assert node.disk.mnemonic is None


def test_a_token_with_an_unknown_role_is_unauthorized(nodes: Nodes) -> None:
    node = nodes.new()
    private = PrivateKey("ed25519-private/" + node.key.private_hex)
    token = BiscuitBuilder('role("operator");').build(private).to_base64()
    answer = node.call("GET", "/nodeinfo", token=token)
    assert (answer.status_code, answer.json()) == (401, UNAUTHORIZED)


def test_read_only_token(nodes: Nodes) -> None:
    node = nodes.new()
    token = read_only_token(node.key.private_hex)
    expect_error(node.call("POST", "/init", INIT, token=token), 403, "Forbidden")
    assert node.disk.init_calls == 0
    # Allowed through authentication: the answer is the state's.
    expect_error(node.call("GET", "/nodeinfo", token=token), 403, "LockedNode")
    unlocked(node)
    for path in ("/nodeinfo", "/networkinfo", "/listchannels", "/listpeers", "/listpayments"):
        assert node.call("GET", path, token=token).status_code == 200, path
    assert node.call("POST", "/btcbalance", {"skip_sync": True}, token=token).status_code == 200
    for path, body in (("/unlock", UNLOCK), ("/lock", {}), ("/address", {}), ("/shutdown", {})):
        expect_error(node.call("POST", path, body, token=token), 403, "Forbidden")
    assert node.current.unlocked is True


def test_the_fleets_token_for_each_route_is_the_least_the_daemon_takes(nodes: Nodes) -> None:
    node = unlocked(nodes.new())
    for path in sorted(FLEET_READ_ONLY_ROUTES):
        token = route_token(node.key.private_hex, path)
        if path == "/btcbalance":
            answer = node.call("POST", path, {"skip_sync": True}, token=token)
        else:
            answer = node.call("GET", path, token=token)
        assert answer.status_code == 200, path
        assert node.current.traffic.roles[(path, "read-only")] == 1, path
    token = route_token(node.key.private_hex, "/lock")
    expect_ok(node.call("POST", "/lock", {}, token=token))
    assert node.current.traffic.roles[("/lock", "admin")] == 1


def test_custom_token_allows_only_its_routes(nodes: Nodes) -> None:
    node = initialised(nodes.new())
    token = custom_token(node.key.private_hex, ["/unlock", "/nodeinfo"])
    expect_ok(node.call("POST", "/unlock", UNLOCK, token=token))
    assert node.call("GET", "/nodeinfo", token=token).status_code == 200
    for method, path in (("GET", "/networkinfo"), ("POST", "/lock"), ("POST", "/init")):
        expect_error(node.call(method, path, {}, token=token), 403, "Forbidden")
    assert node.current.unlocked is True


def test_revoked_token_is_unauthorized_across_restarts(nodes: Nodes) -> None:
    node = nodes.new()
    revoked, kept = admin_token(node.key.private_hex), admin_token(node.key.private_hex)
    expect_error(node.call("GET", "/nodeinfo", token=revoked), 403, "LockedNode")
    expect_ok(node.call("POST", "/revoketoken", {"token": revoked}, token=kept))
    answer = node.call("GET", "/nodeinfo", token=revoked)
    assert (answer.status_code, answer.json()) == (401, UNAUTHORIZED)
    expect_error(node.call("GET", "/nodeinfo", token=kept), 403, "LockedNode")
    node.restart()  # the revocation list is in the storage dir
    assert node.call("GET", "/nodeinfo", token=revoked).status_code == 401
    expect_error(node.call("GET", "/nodeinfo", token=kept), 403, "LockedNode")


# --- injected faults ---------------------------------------------------------------------
def test_failure_rate_one_fails_every_authenticated_call(nodes: Nodes) -> None:
    node = nodes.new(faults=ApiFaults(failure_rate=1.0))
    for method, path, body in (("POST", "/init", INIT), ("GET", "/nodeinfo", None)):
        answer = node.call(method, path, body)
        assert (answer.status_code, answer.json()["name"], answer.json()["code"]) == (
            500,
            "Unexpected",
            500,
        )
    assert (node.disk.init_calls, node.disk.mnemonic) == (0, None)  # failed before doing anything
    answer = node.call("GET", "/nodeinfo", token=None)
    assert (answer.status_code, answer.json()) == (401, UNAUTHORIZED)


def test_failure_rate_is_a_share_drawn_from_the_injected_rng(nodes: Nodes) -> None:
    node = nodes.new(faults=ApiFaults(failure_rate=0.5, rng=random.Random(7)))
    statuses = [node.call("GET", "/nodeinfo").status_code for _ in range(30)]
    assert set(statuses) == {403, 500}
    assert 5 <= statuses.count(500) <= 25


def test_latency_is_added_to_every_answer(nodes: Nodes) -> None:
    node = nodes.new(faults=ApiFaults(latency_seconds=0.3))
    for token in ("admin", None):
        started = time.monotonic()
        node.call("GET", "/nodeinfo", token=token)
        assert time.monotonic() - started >= 0.3


# --- the fleet's side: jobs/node_auth.py ------------------------------------------------
def test_root_key_is_raw_hex_and_public_key_of_matches() -> None:
    key = new_root_key()
    assert re.fullmatch(r"[0-9a-f]{64}", key.private_hex)
    assert re.fullmatch(r"[0-9a-f]{64}", key.public_hex)
    assert public_key_of(key.private_hex) == key.public_hex
    assert key.private_hex not in repr(key)
    assert new_root_key() != key


def test_admin_token_carries_role_and_expiry() -> None:
    key = new_root_key()
    root = PublicKey("ed25519/" + key.public_hex)
    source = Biscuit.from_base64(admin_token(key.private_hex, 60), root).block_source(0)
    assert 'role("admin");' in source
    assert "check if time($t), $t <= " in source
    custom = Biscuit.from_base64(custom_token(key.private_hex, ["/nodeinfo"]), root)
    assert 'role("custom");' in custom.block_source(0)
    assert 'right("api", "/nodeinfo");' in custom.block_source(0)


@pytest.mark.parametrize("bad", ["zz" * 32, "ab" * 31, "AB" * 32, ""])
def test_a_bad_private_key_never_shows_in_the_error(bad: str) -> None:
    with pytest.raises(InvalidRootKey) as caught:
        admin_token(bad)
    assert bad == "" or bad not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ or caught.value.__context__ is None
