"""A simulated `rgb-lightning-node` daemon for one host: the REST API of rln-node-api.md,
served over real HTTP, with its Biscuit authentication, its state rules and its error
bodies. No Lightning, no chain: balances, channels and peers are always empty.

What survives a restart is the NodeDisk: a real directory standing for the host's file
system, with the storage dir at /var/lib/rln as the unit runs it. /backup zips that
storage dir as upstream does (src/backup.rs), through a temporary zip written next to
the backup file, so a backup path inside the storage dir shows: every backup holds every
earlier one. An RlnDaemon is one run of the process, so a restart is a new RlnDaemon on
the same NodeDisk, and it always comes up locked. /unlock checks the chain backend first
(ChainWorld: the bitcoinds and indexers the host can reach). Cheap by design (one aiohttp
app and a few attributes each): hundreds run in one asyncio loop."""

import asyncio
import functools
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
import weakref
import zipfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from aiohttp import web
from biscuit_auth import (
    AuthorizationError,
    Authorizer,
    AuthorizerBuilder,
    Biscuit,
    BiscuitValidationError,
    DataLogError,
    PublicKey,
    Rule,
)
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from mnemonic import Mnemonic

NETWORKS = {
    "regtest": "Regtest",
    "testnet": "Testnet",
    "testnet4": "Testnet4",
    "signet": "Signet",
    "mainnet": "Mainnet",
}
ADDRESS_PREFIX = {"regtest": "bcrt1q", "mainnet": "bc1q"}  # every test network: tb1q
BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
ADDRESS_CHARS = 38  # after the "q" of a P2WPKH address: 20 bytes of data and a checksum
PASSWORD_MIN_LENGTH = 8
GENERATED_MNEMONIC_STRENGTH = 128  # 12 words, as rgb-lib generates keys
# Upstream's READ_ONLY_OPS (src/auth.rs), cut down to the routes simulated here.
READ_ONLY_ROUTES = frozenset(
    {"/btcbalance", "/listchannels", "/listpayments", "/listpeers", "/networkinfo", "/nodeinfo"}
)
# Body fields that are secrets, at any depth (/init, /unlock, /backup, /changepassword).
SECRET_FIELDS = frozenset(
    {"password", "mnemonic", "old_password", "new_password", "bitcoind_rpc_password"}
)
BACKUP_MAGIC = b"rln-sim-backup/1\n"  # the sealed mnemonic file, and a backup's payload
# A mnemonic file written by a release of a later wallet format starts so instead (the
# format's number, a newline): upstream's release of 2026-08-01 changed the encryption,
# and a release reads only the files a release of its own format wrote.
WALLET_FORMAT_MAGIC = b"rln-sim-wallet-format/"
FIRST_WALLET_FORMAT = 1
BACKUP_VERSION = "1"
# The unit's storage dir (deploy/host/rgb-lightning-node.service), on the host's disk.
STORAGE_DIR = "/var/lib/rln"
CHANNELS_FILE = f"{STORAGE_DIR}/.ldk/channels"  # the simulated channels' state: one peer a line
LDK_STATE_BYTES = 4096  # what an initialised wallet's .ldk/ holds here, so backups weigh
# getblockchaininfo's `chain` for each network (upstream src/ldk.rs).
BITCOIND_CHAINS = {
    "mainnet": "main",
    "testnet": "test",
    "testnet4": "testnet4",
    "regtest": "regtest",
    "signet": "signet",
}
SALT_BYTES = 16
NONCE_BYTES = 12
# In-flight requests get this long when the daemon stops; a stop is a process exit.
SHUTDOWN_SECONDS = 0.25
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

AUTHORIZER_MAX_TIME = timedelta(milliseconds=250)
ROLE_QUERY = "role($role) <- role($role)"
RIGHT_QUERY = 'right($path) <- right("api", $path)'
_BIP39 = Mnemonic("english")  # loads a word list: once per process, not per daemon

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Json = dict[str, Any]


# --- what survives a restart, and what tests can turn up --------------------------------
@dataclass
class NodeDisk:
    """The host's disk: `root` is a real directory standing for its `/`, the storage dir
    is root/var/lib/rln. The wallet is initialised iff `mnemonic` is set; the storage
    dir's `mnemonic` file holds it sealed under `password` (kept in clear here too: a
    simulation). Without a root, a scratch directory is made and removed with the disk."""

    mnemonic: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    revoked_tokens: set[str] = field(default_factory=set)  # revocation ids, hex
    init_calls: int = 0  # /init calls that got past authentication and injected faults
    unlock_calls: int = 0  # same for /unlock
    root: Path | None = None

    def __post_init__(self) -> None:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="rln-sim-disk-"))
            weakref.finalize(self, shutil.rmtree, str(self.root), True)

    def path(self, host_path: str) -> Path:
        """Where an absolute path of the host lies in `root`; never outside it."""
        assert self.root is not None
        parts = PurePosixPath(host_path).parts
        if not parts or parts[0] != "/" or ".." in parts:
            raise ValueError(f"not an absolute path of the host: {host_path!r}")
        return self.root.joinpath(*parts[1:])

    @property
    def storage_dir(self) -> Path:
        return self.path(STORAGE_DIR)

    def read(self, host_path: str) -> bytes | None:
        found = self.path(host_path)
        return found.read_bytes() if found.is_file() else None

    def write(self, host_path: str, content: bytes) -> None:
        target = self.path(host_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)

    def keep_wallet(
        self, mnemonic: str, password: str, wallet_format: int = FIRST_WALLET_FORMAT
    ) -> None:
        """Write the wallet's files: the sealed mnemonic (in the wallet format of the
        release writing it), and LDK state the first time."""
        self.mnemonic, self.password = mnemonic, password
        self.write(f"{STORAGE_DIR}/mnemonic", seal_backup(mnemonic, password, wallet_format))
        ldk = self.storage_dir / ".ldk" / "channel_manager"
        if not ldk.exists():
            self.write(f"{STORAGE_DIR}/.ldk/channel_manager", os.urandom(LDK_STATE_BYTES))

    @property
    def wallet_format(self) -> int | None:
        """The wallet format of the release that wrote the mnemonic file; None: no file."""
        sealed = self.read(f"{STORAGE_DIR}/mnemonic")
        return None if sealed is None else wallet_format_of(sealed)

    def move_aside(self, host_path: str) -> None:
        """What `rln-hostctl wallet-aside` does: the storage dir is renamed to host_path
        (nothing deleted) and an empty one takes its place; the wallet is gone from it.
        Revoked tokens stay revoked."""
        target = self.path(host_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.storage_dir.rename(target)
        self.storage_dir.mkdir()
        self.mnemonic = self.password = None

    def open_channel(self, peer_pubkey: str) -> None:
        """A channel with a peer, kept in the LDK state (so a backup holds it, and a
        restore brings it back; a wallet made afresh from the mnemonic has none)."""
        channels = [*self.channels(), peer_pubkey]
        self.write(CHANNELS_FILE, "".join(f"{peer}\n" for peer in channels).encode())

    def channels(self) -> list[str]:
        """The peers of the wallet's channels, as its LDK state holds them."""
        content = self.read(CHANNELS_FILE)
        return [] if content is None else content.decode().split()


@dataclass(frozen=True)
class SimBitcoind:
    network: str  # the node network whose chain it runs
    username: str = "fleet"
    password: str = field(default="sim-rpc-password", repr=False)


@dataclass
class ChainWorld:
    """The chain backends a host can reach: bitcoind RPC endpoints by (host, port) and
    indexers by URL, each with the network it serves. Tests take some away or break them."""

    bitcoinds: dict[tuple[str, int], SimBitcoind] = field(default_factory=dict)
    indexers: dict[str, str] = field(default_factory=dict)  # URL -> network

    @classmethod
    def local(cls) -> "ChainWorld":
        """A regtest bitcoind and electrs on the host itself, upstream's example setup."""
        return cls(
            {("127.0.0.1", 18443): SimBitcoind("regtest", "user", "password")},
            {"127.0.0.1:50001": "regtest", "tcp://127.0.0.1:50001": "regtest"},
        )

    def check(self, request: "UnlockRequest", network: str) -> None:
        """Upstream's order: the indexer, then bitcoind's connection, then its chain."""
        self._check_indexer(request.indexer_url, network)
        sync = request.ldk_chain_sync
        if isinstance(sync, TransactionSync):
            self._check_indexer(sync.indexer_url, network)
            return
        bitcoind = self.bitcoinds.get((sync.bitcoind_rpc_host, sync.bitcoind_rpc_port))
        if bitcoind is None:
            raise RlnError(
                403,
                "FailedBitcoindConnection",
                "Failed to connect to bitcoind client: Connection refused (os error 111)",
            )
        if (sync.bitcoind_rpc_username, sync.bitcoind_rpc_password) != (
            bitcoind.username,
            bitcoind.password,
        ):
            raise RlnError(
                403,
                "FailedBitcoindConnection",
                "Failed to connect to bitcoind client: JSON-RPC error: 401 Unauthorized",
            )
        if bitcoind.network != network:
            chain = BITCOIND_CHAINS[bitcoind.network]
            raise RlnError(
                403,
                "NetworkMismatch",
                f"The network of the given bitcoind ({chain}) doesn't match the node's"
                f" chain ({NETWORKS[network]})",
            )

    def _check_indexer(self, url: str, network: str) -> None:
        served = self.indexers.get(url)
        if served is None:
            raise RlnError(403, "InvalidIndexer", f"Invalid indexer: cannot connect to {url}")
        if served != network:
            raise RlnError(
                403,
                "InvalidIndexer",
                f"Invalid indexer: {url} is for {NETWORKS[served]}, the node runs"
                f" {NETWORKS[network]}",
            )


@dataclass
class ApiTraffic:
    """How calls reached one host's daemon, kept across its restarts. A call whose peer is
    the daemon's own address came through the host's SSH tunnel (the SSH server connects
    from the host itself); any other peer sent it over the network, in clear. Telling the
    two apart needs the daemon on an address of its own, not on the client's 127.0.0.1."""

    tunnelled: int = 0
    direct: int = 0
    # Direct calls carrying a secret: a password, mnemonic or RPC password in the body,
    # or an admin token (valid, so one that opens everything).
    direct_secrets: int = 0
    roles: Counter[tuple[str, str]] = field(default_factory=Counter)  # (path, role) granted

    def note(self, path: str, role: str | None, tunnelled: bool, secret: bool) -> None:
        if tunnelled:
            self.tunnelled += 1
        else:
            self.direct += 1
            self.direct_secrets += secret
        if role is not None:
            self.roles[(path, role)] += 1

    def __add__(self, other: "ApiTraffic") -> "ApiTraffic":
        return ApiTraffic(
            self.tunnelled + other.tunnelled,
            self.direct + other.direct,
            self.direct_secrets + other.direct_secrets,
            self.roles + other.roles,
        )


@dataclass
class ApiFaults:
    failure_rate: float = 0.0  # share of authenticated calls answered 500 Unexpected
    latency_seconds: float = 0.0  # added to every answer
    # A chain backend error every /unlock answers after its password check
    # ("InvalidIndexer", "FailedBitcoindConnection" or "NetworkMismatch"), as if the
    # host could not reach its backends.
    chain_error: str | None = None
    rng: random.Random = field(default_factory=random.Random)


# --- request bodies ------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockSync:
    bitcoind_rpc_username: str
    bitcoind_rpc_password: str = field(repr=False)
    bitcoind_rpc_host: str
    bitcoind_rpc_port: int
    mode: Literal["BlockSync"] = "BlockSync"


@dataclass(frozen=True)
class TransactionSync:
    indexer_url: str
    mode: Literal["TransactionSync"] = "TransactionSync"


@dataclass(frozen=True)
class UnlockRequest:
    password: str = field(repr=False)
    ldk_chain_sync: BlockSync | TransactionSync
    indexer_url: str
    announce_addresses: list[str]
    announce_alias: str | None


@dataclass(frozen=True)
class InitRequest:
    password: str = field(repr=False)
    mnemonic: str | None = field(repr=False)


@dataclass(frozen=True)
class BackupRequest:
    """The body of both /backup and /restore."""

    backup_path: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ChangePasswordRequest:
    old_password: str = field(repr=False)
    new_password: str = field(repr=False)


# --- errors ----------------------------------------------------------------------------------
class RlnError(Exception):
    """An error answer: `{"error": message, "code": status, "name": name}`."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(f"{name} ({status}): {message}")
        self.status = status
        self.name = name
        self.message = message

    def response(self) -> web.Response:
        body = {"error": self.message, "code": self.status, "name": self.name}
        return web.json_response(body, status=self.status)


FIXED_ERRORS: dict[str, tuple[int, str]] = {
    "AlreadyInitialized": (403, "Node has already been initialized"),
    "AlreadyUnlocked": (403, "Node has already been unlocked"),
    "ChangingState": (403, "Cannot call other APIs while node is changing state"),
    "Forbidden": (403, "Forbidden: the token's role does not allow this route"),
    "InvalidBackupPath": (400, "Invalid backup path"),
    "LockedNode": (403, "Node is locked (hint: call unlock)"),
    "NotInitialized": (403, "Wallet has not been initialized (hint: call init)"),
    "Unauthorized": (401, "Missing or invalid credentials"),
    "UnlockedNode": (403, "Node is unlocked (hint: call lock)"),
    "WrongPassword": (401, "The provided password is incorrect"),
}


def fail(name: str) -> RlnError:
    status, message = FIXED_ERRORS[name]
    return RlnError(status, name, message)


def invalid_request(detail: str) -> RlnError:
    return RlnError(400, "InvalidRequest", detail)


def _missing(name: str) -> RlnError:
    return invalid_request(
        f"Failed to deserialize the JSON body into the target type: missing field `{name}`"
    )


def _wrong_type(name: str, expected: str) -> RlnError:
    return invalid_request(
        f"Failed to deserialize the JSON body into the target type: {name}: "
        f"invalid type, expected {expected}"
    )


# --- the daemon ------------------------------------------------------------------------------
class RlnDaemon:
    def __init__(
        self,
        disk: NodeDisk,
        network: str,
        root_public_key_hex: str,
        unlock_seconds: float = 0.2,
        faults: ApiFaults | None = None,
        lock_seconds: float = 0.0,
        traffic: ApiTraffic | None = None,
        chain: ChainWorld | None = None,
        wallet_format: int = FIRST_WALLET_FORMAT,
    ) -> None:
        if network not in NETWORKS:
            raise ValueError(f"unknown network {network!r}: the daemon exits at start")
        self.disk = disk
        self.network = network
        self.height = 150  # the chain tip /networkinfo reports; tests may move it
        self.last_unlock: UnlockRequest | None = None  # what the last good /unlock sent
        self.wallet_format = wallet_format  # of the release this daemon is
        self._root_key = _public_key(root_public_key_hex)
        self._unlock_seconds = unlock_seconds
        self._lock_seconds = lock_seconds
        self._faults = faults or ApiFaults()
        self.traffic = traffic or ApiTraffic()
        self.chain = chain or ChainWorld.local()
        self._unlocked = False  # every start comes up locked: this is never persisted
        self._changing = False
        self._addresses = 0
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None  # set once started
        self._background: set[asyncio.Task[None]] = set()

    # --- the process -----------------------------------------------------------------
    @property
    def unlocked(self) -> bool:
        return self._unlocked

    @property
    def changing_state(self) -> bool:
        return self._changing

    @property
    def running(self) -> bool:
        """Started and not yet fully stopped (its port is still bound)."""
        return self._stopped is not None and not self._stopped.is_set()

    @property
    def node_pubkey(self) -> str | None:
        """The Lightning node id (compressed secp256k1, hex), derived from the mnemonic."""
        return None if self.disk.mnemonic is None else _node_pubkey(self.disk.mnemonic)

    def app(self) -> web.Application:
        if self._app is None:
            self._app = web.Application(middlewares=[self._middleware])
            self._app.add_routes(self._routes())
        return self._app

    async def start(self, host: str, port: int) -> None:
        """Serves on exactly host:port. A port already taken raises OSError, as the real
        daemon exits at start."""
        if self._stopped is not None:
            # Like a process, a daemon runs once: a restart is a new RlnDaemon on the disk.
            raise RuntimeError("this daemon has already been started")
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner, self._stopped = runner, asyncio.Event()

    async def stop(self) -> None:
        """Returns once the port is free, also when another stop (a /shutdown) runs."""
        runner, self._runner = self._runner, None
        if runner is not None and self._stopped is not None:
            try:
                await runner.cleanup()
            finally:
                self._stopped.set()
        elif self._stopped is not None:
            await self._stopped.wait()

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.post("/init", self._init),
            web.post("/unlock", self._unlock),
            web.post("/lock", self._lock),
            web.post("/backup", self._backup),
            web.post("/restore", self._restore),
            web.post("/changepassword", self._change_password),
            web.post("/shutdown", self._shutdown),
            web.post("/revoketoken", self._revoke_token),
            web.get("/nodeinfo", self._node_info),
            web.get("/networkinfo", self._network_info),
            web.get("/listchannels", self._list("channels")),
            web.get("/listpeers", self._list("peers")),
            web.get("/listpayments", self._list("payments")),
            web.post("/address", self._address),
            web.post("/btcbalance", self._btc_balance),
        ]

    # --- every request ---------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._faults.latency_seconds > 0:
            await asyncio.sleep(self._faults.latency_seconds)
        try:
            role = authorize(request, self._root_key, self.disk.revoked_tokens)
        except RlnError as exc:
            await self._witness(request, None)
            return exc.response()
        await self._witness(request, role)
        try:
            failure_rate = self._faults.failure_rate
            if failure_rate > 0 and self._faults.rng.random() < failure_rate:
                raise RlnError(500, "Unexpected", "Unexpected error: simulated failure")
            return await handler(request)
        except RlnError as exc:
            return exc.response()

    async def _witness(self, request: web.Request, role: str | None) -> None:
        """Count how the call came (read before any handler: a refused call's body
        crossed the wire all the same)."""
        body = await request.read()  # aiohttp keeps it for the handler
        secret = role == "admin" or carries_secret(body)
        self.traffic.note(request.path, role, tunnelled=_from_own_address(request), secret=secret)

    # --- state rules -------------------------------------------------------------------
    def _require_locked(self) -> None:
        if self._changing:
            raise fail("ChangingState")
        if self._unlocked:
            raise fail("UnlockedNode")

    def _require_unlocked(self) -> None:
        if self._changing:
            raise fail("ChangingState")
        if not self._unlocked:
            raise fail("LockedNode")

    def _require_wallet(self) -> str:
        if self.disk.mnemonic is None:
            raise fail("NotInitialized")
        return self.disk.mnemonic

    def _check_password(self, password: str) -> str:
        mnemonic = self._require_wallet()
        written = self.disk.wallet_format
        if written is not None and written != self.wallet_format:
            # Upstream cannot decrypt a mnemonic file of another format, whatever the password.
            raise RlnError(
                500,
                "CorruptedMnemonic",
                f"The mnemonic file is corrupted or unreadable (wallet format {written},"
                f" this release reads {self.wallet_format})",
            )
        if password != self.disk.password:
            raise fail("WrongPassword")
        return mnemonic

    async def _change_state(self, seconds: float, unlocked: bool) -> None:
        self._changing = True
        try:
            await asyncio.sleep(seconds)
            self._unlocked = unlocked
        finally:
            # A daemon stopped mid-change never finishes it: it stays as it was.
            self._changing = False

    # --- wallet lifecycle -----------------------------------------------------------
    async def _init(self, request: web.Request) -> web.Response:
        self.disk.init_calls += 1
        body = parse_init(await json_body(request))
        self._require_locked()
        check_strength(body.password)
        if self.disk.mnemonic is not None:
            raise fail("AlreadyInitialized")
        mnemonic = body.mnemonic or _BIP39.generate(strength=GENERATED_MNEMONIC_STRENGTH)
        self.disk.keep_wallet(mnemonic, body.password, self.wallet_format)
        return ok({"mnemonic": mnemonic})

    async def _unlock(self, request: web.Request) -> web.Response:
        self.disk.unlock_calls += 1
        body = parse_unlock(await json_body(request))
        if self._changing:
            raise fail("ChangingState")
        if self._unlocked:
            raise fail("AlreadyUnlocked")
        self._check_password(body.password)
        if self._faults.chain_error is not None:
            raise _chain_fault(self._faults.chain_error)
        self.chain.check(body, self.network)
        await self._change_state(self._unlock_seconds, unlocked=True)
        self.last_unlock = body
        return ok({})

    async def _lock(self, _: web.Request) -> web.Response:
        self._require_unlocked()
        await self._change_state(self._lock_seconds, unlocked=False)
        return ok({})

    async def _backup(self, request: web.Request) -> web.Response:
        body = parse_backup(await json_body(request))
        self._require_locked()
        self._check_password(body.password)
        await asyncio.to_thread(write_backup, self.disk, body.backup_path, body.password)
        return ok({})

    async def _restore(self, request: web.Request) -> web.Response:
        body = parse_backup(await json_body(request))
        self._require_locked()
        if self.disk.mnemonic is not None:
            raise fail("AlreadyInitialized")
        try:
            content = self.disk.read(body.backup_path)
        except ValueError:
            content = None
        if content is None:
            raise RlnError(500, "IO", "IO error: No such file or directory (os error 2)")
        # The restored storage dir is the backed-up one: its mnemonic is encrypted with
        # the password the backup was taken with.
        storage = open_backup_file(content, body.password)
        unzip_into(storage, self.disk.storage_dir)
        sealed = self.disk.read(f"{STORAGE_DIR}/mnemonic")
        if sealed is None:
            raise RlnError(500, "Unexpected", "Unexpected error: no mnemonic in the backup")
        # A backup of another wallet format restores as it is: its /unlock then fails.
        written = wallet_format_of(sealed) or FIRST_WALLET_FORMAT
        self.disk.keep_wallet(open_backup(sealed, body.password), body.password, written)
        return ok({})

    async def _change_password(self, request: web.Request) -> web.Response:
        body = parse_change_password(await json_body(request))
        self._require_locked()
        self._require_wallet()
        check_strength(body.new_password)
        mnemonic = self._check_password(body.old_password)
        self.disk.keep_wallet(mnemonic, body.new_password, self.wallet_format)
        return ok({})

    async def _shutdown(self, _: web.Request) -> web.Response:
        if self._changing:
            raise fail("ChangingState")
        # Stopped from another task: this answer goes out first (stop waits for it).
        task = asyncio.get_running_loop().create_task(self.stop())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return ok({})

    async def _revoke_token(self, request: web.Request) -> web.Response:
        token = _str_field(await json_body(request), "token")
        try:
            revoked = Biscuit.from_base64(token, self._root_key)
        except BiscuitValidationError:
            raise invalid_request("Invalid token: not signed by the root key") from None
        self.disk.revoked_tokens.update(revoked.revocation_ids)
        return ok({})

    # --- reads ------------------------------------------------------------------------------
    async def _node_info(self, _: web.Request) -> web.Response:
        self._require_unlocked()
        return ok(
            {
                "pubkey": self.node_pubkey,
                "num_channels": len(self.disk.channels()),
                "num_usable_channels": len(self.disk.channels()),
                "local_balance_sat": 0,
                "eventual_close_fees_sat": 0,
                "pending_outbound_payments_sat": 0,
                "num_peers": 0,
                "account_xpub_vanilla": fake_xpub(self.network, self.node_pubkey, "vanilla"),
                "account_xpub_colored": fake_xpub(self.network, self.node_pubkey, "colored"),
                "max_media_upload_size_mb": 5,
                "rgb_htlc_min_msat": 3000000,
                "rgb_channel_capacity_min_sat": 30010,
                "channel_capacity_min_sat": 5506,
                "channel_capacity_max_sat": 16777215,
                "channel_asset_min_amount": 1,
                "channel_asset_max_amount": 18446744073709551615,
                "network_nodes": 0,
                "network_channels": 0,
            }
        )

    async def _network_info(self, _: web.Request) -> web.Response:
        self._require_unlocked()
        return ok({"network": NETWORKS[self.network], "height": self.height})

    def _list(self, key: str) -> Handler:
        async def answer(_: web.Request) -> web.Response:
            self._require_unlocked()
            return ok({key: []})

        return answer

    async def _address(self, _: web.Request) -> web.Response:
        self._require_unlocked()
        self._addresses += 1
        seed = f"{self.node_pubkey}/{self._addresses}".encode()
        return ok({"address": fake_address(self.network, seed)})

    async def _btc_balance(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        _bool_field(body, "skip_sync")
        self._require_unlocked()
        empty = {"settled": 0, "future": 0, "spendable": 0}
        return ok({"vanilla": empty, "colored": dict(empty)})


# --- authentication ----------------------------------------------------------------------------
def authorize(request: web.Request, root_key: PublicKey, revoked: set[str]) -> str:
    """Upstream's middleware (src/auth.rs): a valid, unexpired, unrevoked token, then
    admin = every route, read-only = the read routes, custom = its right("api", path)s.
    Any other role is as bad as no token. Returns the role that let the call in."""
    token = _bearer_token(request, root_key)
    if revoked.intersection(token.revocation_ids):
        raise fail("Unauthorized")
    roles, rights = _grants(token)
    if "admin" in roles:
        return "admin"
    if "read-only" in roles:
        role, allowed = "read-only", READ_ONLY_ROUTES
    elif "custom" in roles:
        role, allowed = "custom", frozenset(rights)
    else:
        raise fail("Unauthorized")
    if request.path not in allowed:
        raise fail("Forbidden")
    return role


def _from_own_address(request: web.Request) -> bool:
    """The peer is the address the daemon listens on: the host's SSH server forwarded it."""
    transport = request.transport
    if transport is None:
        return False
    peer, own = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    return peer is not None and own is not None and peer[0] == own[0]


def carries_secret(body: bytes) -> bool:
    """A secret field anywhere in a JSON body; a body that is not JSON is searched as text."""
    try:
        return _has_secret_field(json.loads(body)) if body else False
    except ValueError:
        return any(name.encode() in body for name in SECRET_FIELDS)


def _has_secret_field(value: object) -> bool:
    if isinstance(value, dict):
        return any(k in SECRET_FIELDS or _has_secret_field(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_secret_field(item) for item in value)
    return False


def _grants(token: Biscuit) -> tuple[set[str], set[str]]:
    """The token's roles and api rights, once all its checks (its expiry among them) pass."""
    try:
        authorizer = _authorizer_builder().build(token)
        authorizer.authorize()
        return _query(authorizer, ROLE_QUERY), _query(authorizer, RIGHT_QUERY)
    except (AuthorizationError, DataLogError):
        raise fail("Unauthorized") from None


def _authorizer_builder() -> AuthorizerBuilder:
    builder = AuthorizerBuilder("time({now}); allow if true;", {"now": datetime.now(UTC)})
    # biscuit's default budget is 1 ms of wall time: one loop serving hundreds of daemons
    # (or a busy CI box) overruns it and valid tokens get 401. Not in the type stubs.
    untyped: Any = builder
    limits = untyped.limits()
    limits.max_time = AUTHORIZER_MAX_TIME
    untyped.set_limits(limits)
    return builder


def _bearer_token(request: web.Request, root_key: PublicKey) -> Biscuit:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        raise fail("Unauthorized")
    try:
        return Biscuit.from_base64(header.removeprefix("Bearer "), root_key)
    except BiscuitValidationError:
        raise fail("Unauthorized") from None


def _query(authorizer: Authorizer, rule: str) -> set[str]:
    return {str(term) for fact in authorizer.query(Rule(rule)) for term in fact.terms}


def _public_key(hex_key: str) -> PublicKey:
    if len(hex_key) != 64 or any(c not in "0123456789abcdef" for c in hex_key):
        raise ValueError("root public key must be 64 lowercase hex characters")
    return PublicKey("ed25519/" + hex_key)


# --- request parsing -----------------------------------------------------------------------
async def json_body(request: web.Request) -> Json:
    if request.content_type != "application/json":
        raise invalid_request("Expected request with `Content-Type: application/json`")
    try:
        body = json.loads(await request.read())
    except ValueError as exc:
        raise invalid_request(f"Failed to parse the request body as JSON: {exc}") from None
    if not isinstance(body, dict):
        raise invalid_request("Failed to deserialize the JSON body: expected an object")
    return body


def parse_init(body: Json) -> InitRequest:
    mnemonic = _optional_str_field(body, "mnemonic")
    if mnemonic is not None:
        mnemonic = " ".join(mnemonic.split())  # upstream answers it re-normalised
        if not _BIP39.check(mnemonic):
            raise RlnError(400, "InvalidMnemonic", "Invalid mnemonic: invalid checksum")
    return InitRequest(password=_str_field(body, "password"), mnemonic=mnemonic)


def parse_unlock(body: Json) -> UnlockRequest:
    return UnlockRequest(
        password=_str_field(body, "password"),
        ldk_chain_sync=parse_chain_sync(_object_field(body, "ldk_chain_sync")),
        indexer_url=_str_field(body, "indexer_url"),  # required and non-null upstream
        announce_addresses=_str_list_field(body, "announce_addresses"),
        announce_alias=_optional_str_field(body, "announce_alias"),
    )


def parse_chain_sync(body: Json) -> BlockSync | TransactionSync:
    mode = _str_field(body, "mode")
    config = _object_field(body, "config")
    if mode == "BlockSync":
        return BlockSync(
            bitcoind_rpc_username=_str_field(config, "bitcoind_rpc_username"),
            bitcoind_rpc_password=_str_field(config, "bitcoind_rpc_password"),
            bitcoind_rpc_host=_str_field(config, "bitcoind_rpc_host"),
            bitcoind_rpc_port=_port_field(config, "bitcoind_rpc_port"),
        )
    if mode == "TransactionSync":
        return TransactionSync(indexer_url=_str_field(config, "indexer_url"))
    raise invalid_request(
        f"Failed to deserialize the JSON body into the target type: ldk_chain_sync.mode: "
        f"unknown variant `{mode}`, expected `BlockSync` or `TransactionSync`"
    )


def parse_backup(body: Json) -> BackupRequest:
    return BackupRequest(
        backup_path=_str_field(body, "backup_path"), password=_str_field(body, "password")
    )


def parse_change_password(body: Json) -> ChangePasswordRequest:
    return ChangePasswordRequest(
        old_password=_str_field(body, "old_password"),
        new_password=_str_field(body, "new_password"),
    )


def check_strength(password: str) -> None:
    if len(password) < PASSWORD_MIN_LENGTH:
        detail = f"must have at least {PASSWORD_MIN_LENGTH} chars"
        raise RlnError(400, "InvalidPassword", f"Invalid password: {detail}")


def _str_field(body: Json, name: str) -> str:
    if name not in body:
        raise _missing(name)
    value = body[name]
    if not isinstance(value, str):
        raise _wrong_type(name, "a string")
    return value


def _optional_str_field(body: Json, name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _wrong_type(name, "a string")
    return value


def _str_list_field(body: Json, name: str) -> list[str]:
    # Required, as upstream's `Vec<String>` without a serde default is.
    if name not in body:
        raise _missing(name)
    value = body[name]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _wrong_type(name, "a sequence of strings")
    return value


def _object_field(body: Json, name: str) -> Json:
    if name not in body:
        raise _missing(name)
    value = body[name]
    if not isinstance(value, dict):
        raise _wrong_type(name, "an object")
    return value


def _port_field(body: Json, name: str) -> int:
    if name not in body:
        raise _missing(name)
    value = body[name]
    # bool is an int to Python, not to serde.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise _wrong_type(name, "u16")
    return value


def _bool_field(body: Json, name: str) -> bool:
    if name not in body:
        raise _missing(name)
    value = body[name]
    if not isinstance(value, bool):
        raise _wrong_type(name, "a boolean")
    return value


def ok(body: Json) -> web.Response:
    return web.json_response(body)


# --- the simulated wallet --------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def _node_pubkey(mnemonic: str) -> str:
    digest = hashlib.sha256(b"rln-sim node key\x00" + mnemonic.encode()).digest()
    secret = int.from_bytes(digest) % (SECP256K1_ORDER - 1) + 1
    point = ec.derive_private_key(secret, ec.SECP256K1()).public_key()
    compressed = serialization.PublicFormat.CompressedPoint
    return point.public_bytes(serialization.Encoding.X962, compressed).hex()


def fake_address(network: str, seed: bytes) -> str:
    """Shaped like a P2WPKH address of the network; the checksum is not real."""
    prefix = ADDRESS_PREFIX.get(network, "tb1q")
    digest = hashlib.sha512(seed).digest()
    return prefix + "".join(BECH32_CHARSET[byte % 32] for byte in digest[:ADDRESS_CHARS])


def fake_xpub(network: str, node_pubkey: str | None, kind: str) -> str:
    prefix = "xpub" if network == "mainnet" else "tpub"
    digest = hashlib.sha512(f"{node_pubkey}/{kind}".encode()).digest()
    return prefix + "".join(BECH32_CHARSET[byte % 32] for byte in digest[:60])


def _chain_fault(name: str) -> RlnError:
    messages = {
        "InvalidIndexer": "Invalid indexer: simulated failure",
        "FailedBitcoindConnection": "Failed to connect to bitcoind client: simulated failure",
        "NetworkMismatch": "The network of the given bitcoind (simulated) doesn't match the"
        " node's chain",
    }
    return RlnError(403, name, messages[name])


# --- backups as upstream takes them (src/backup.rs) -------------------------------------------
def write_backup(disk: NodeDisk, backup_path: str, password: str) -> None:
    """Zip the whole storage dir through a temporary directory next to the backup file,
    encrypt that zip, and zip it with its salt, nonce and version into the backup file."""
    try:
        target = disk.path(backup_path)
    except ValueError:
        raise fail("InvalidBackupPath") from None
    if target.exists():
        raise fail("InvalidBackupPath")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent))
    try:
        zip_dir(disk.storage_dir, work / "backup.zip")
        salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
        plain = (work / "backup.zip").read_bytes()
        (work / "backup.enc").write_bytes(
            AESGCM(_backup_key(salt, password)).encrypt(nonce, plain, None)
        )
        (work / "backup.zip").unlink()
        (work / "backup.salt").write_bytes(salt)
        (work / "backup.nonce").write_bytes(nonce)
        (work / "backup.version").write_text(BACKUP_VERSION)
        zip_dir(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def zip_dir(source: Path, target: Path) -> None:
    """Every file under source but logs, as upstream's zip_dir. Each file is read whole
    when met: a file still growing (the backup's own temporary zip, when the backup lies
    inside the storage dir) goes in as it is at that moment."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for folder, folders, files in os.walk(source):
            folders[:] = sorted(name for name in folders if name != "logs")
            for name in sorted(files):
                path = Path(folder, name)
                if name == "log" or not path.is_file():
                    continue
                archive.writestr(str(path.relative_to(source)), path.read_bytes())


def open_backup_file(content: bytes, password: str) -> bytes:
    """The storage dir's zip inside a backup file."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            version = archive.read("backup.version").decode()
            salt, nonce = archive.read("backup.salt"), archive.read("backup.nonce")
            sealed = archive.read("backup.enc")
    except (zipfile.BadZipFile, KeyError):
        raise RlnError(500, "Unexpected", "Unexpected error: cannot unzip the backup") from None
    if version != BACKUP_VERSION:
        raise RlnError(
            400,
            "UnsupportedBackupVersion",
            f"The provided backup has an unsupported version: {version}",
        )
    try:
        return AESGCM(_backup_key(salt, password)).decrypt(nonce, sealed, None)
    except (InvalidTag, ValueError):
        raise fail("WrongPassword") from None


def unzip_into(content: bytes, target: Path) -> None:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        for member in archive.namelist():
            if member.startswith("/") or ".." in PurePosixPath(member).parts:
                continue
            destination = target / member
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(archive.read(member))


def seal_backup(mnemonic: str, password: str, wallet_format: int = FIRST_WALLET_FORMAT) -> bytes:
    """The storage dir's mnemonic file: the mnemonic encrypted under the password, so
    /unlock and /restore can tell a wrong password (the tag does not verify), headed by
    the wallet format of the release that wrote it."""
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    sealed = AESGCM(_backup_key(salt, password)).encrypt(nonce, mnemonic.encode(), None)
    return _format_header(wallet_format) + salt + nonce + sealed


def _format_header(wallet_format: int) -> bytes:
    if wallet_format == FIRST_WALLET_FORMAT:
        return BACKUP_MAGIC  # the files of every release before the break, unchanged
    return WALLET_FORMAT_MAGIC + str(wallet_format).encode() + b"\n"


def wallet_format_of(content: bytes) -> int | None:
    """The wallet format a mnemonic file was written in; None: not a mnemonic file."""
    if content.startswith(BACKUP_MAGIC):
        return FIRST_WALLET_FORMAT
    if not content.startswith(WALLET_FORMAT_MAGIC):
        return None
    number, newline, _ = content.removeprefix(WALLET_FORMAT_MAGIC).partition(b"\n")
    return int(number) if newline and number.isdigit() else None


def open_backup(content: bytes, password: str) -> str:
    wallet_format = wallet_format_of(content)
    if wallet_format is None:
        raise RlnError(
            400,
            "UnsupportedBackupVersion",
            "The provided backup has an unsupported version: unknown",
        )
    rest = content.removeprefix(_format_header(wallet_format))
    salt, nonce = rest[:SALT_BYTES], rest[SALT_BYTES : SALT_BYTES + NONCE_BYTES]
    sealed = rest[SALT_BYTES + NONCE_BYTES :]
    try:
        return AESGCM(_backup_key(salt, password)).decrypt(nonce, sealed, None).decode()
    except (InvalidTag, ValueError):
        raise fail("WrongPassword") from None


def _backup_key(salt: bytes, password: str) -> bytes:
    # A hash, not a KDF: this guards nothing real, and hundreds of nodes share a CPU.
    return hashlib.sha256(salt + password.encode()).digest()
