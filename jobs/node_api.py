"""The node's REST API (rln-node-api.md). Every call carries a fresh short-lived token
(read-only for read routes, admin for the rest) and goes over a connection of its own,
opened by the Route: through the node's SSH connection by default (jobs/tunnel.py), or
straight to the node's address when configured so. Errors come back as NodeApiError
with the daemon's error name, so steps decide by name (`ChangingState` is a wait,
`WrongPassword` holds the node, ...)."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpcore

from jobs.config import ChainBackend
from jobs.host import HostUnreachable
from models.secrets import Secret


class NodeApiError(Exception):
    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(f"{name} ({status}): {message}")
        self.status = status
        self.name = name


class NodeUnreachable(Exception):
    """No HTTP answer at all (refused, timed out, no SSH session). Never counted as healthy."""


# How /networkinfo names each network the fleet writes on a node row.
NETWORK_NAMES = {
    "regtest": "Regtest",
    "testnet": "Testnet",
    "testnet4": "Testnet4",
    "signet": "Signet",
    "mainnet": "Mainnet",
}


@dataclass(frozen=True)
class NetworkInfo:
    network: str  # as the daemon names it: "Regtest", "Testnet", ...
    height: int


@dataclass(frozen=True)
class NodeInfo:
    pubkey: str
    num_channels: int
    num_peers: int


class Route(Protocol):
    """How requests reach the daemon: the origin they are addressed to, and a fresh
    connection there. `connect` raises httpcore's connect errors, HostUnreachable (no SSH
    session) or HoldNode (the host showed another SSH key)."""

    @property
    def origin(self) -> httpcore.Origin: ...

    def connect(self, timeout: float) -> httpcore.NetworkStream: ...


@dataclass(frozen=True)
class Direct:
    """Plain TCP to the node's address: everything in the request crosses the network
    in clear. Only by explicit setting (FLEET_NODE_API_TRANSPORT=direct)."""

    address: str
    port: int

    @property
    def origin(self) -> httpcore.Origin:
        return httpcore.Origin(b"http", self.address.encode(), self.port)

    def connect(self, timeout: float) -> httpcore.NetworkStream:
        return httpcore.SyncBackend().connect_tcp(self.address, self.port, timeout=timeout)


# A token for the route (its path), minted when the call is made.
TokenForRoute = Callable[[str], str]


class NodeApi:
    def __init__(
        self, route: Route, token: TokenForRoute, timeout: float, unlock_timeout: float
    ) -> None:
        self._route = route
        self._token = token
        self._timeout = timeout
        self._unlock_timeout = unlock_timeout

    def init(self, password: Secret, mnemonic: Secret) -> Secret:
        body = {"password": password.reveal(), "mnemonic": mnemonic.reveal()}
        return Secret(str(self._post("/init", body)["mnemonic"]))

    def unlock(self, password: Secret, chain: ChainBackend) -> None:
        body: dict[str, Any] = {
            "password": password.reveal(),
            "ldk_chain_sync": {
                "mode": "BlockSync",
                "config": {
                    "bitcoind_rpc_username": chain.bitcoind_rpc_username,
                    "bitcoind_rpc_password": chain.bitcoind_rpc_password,
                    "bitcoind_rpc_host": chain.bitcoind_rpc_host,
                    "bitcoind_rpc_port": chain.bitcoind_rpc_port,
                },
            },
            "indexer_url": chain.indexer_url,
            "announce_addresses": [],
            "announce_alias": None,
        }
        self._post("/unlock", body, timeout=self._unlock_timeout)

    def lock(self) -> None:
        self._post("/lock", None)

    def backup(self, path: str, password: Secret) -> None:
        self._post("/backup", {"backup_path": path, "password": password.reveal()})

    def restore(self, path: str, password: Secret) -> None:
        """The wallet from a backup file on the node's disk (a node with no wallet yet).
        It unzips the whole storage dir: as slow as an unlock, not a read."""
        body = {"backup_path": path, "password": password.reveal()}
        self._post("/restore", body, timeout=self._unlock_timeout)

    def node_info(self) -> NodeInfo:
        answer = self._call("GET", "/nodeinfo", None, self._timeout)
        return NodeInfo(
            pubkey=str(answer["pubkey"]),
            num_channels=int(answer.get("num_channels", 0)),
            num_peers=int(answer.get("num_peers", 0)),
        )

    def network_info(self) -> NetworkInfo:
        answer = self._call("GET", "/networkinfo", None, self._timeout)
        return NetworkInfo(network=str(answer["network"]), height=int(answer["height"]))

    def _post(self, path: str, body: dict[str, Any] | None, timeout: float | None = None) -> Any:
        return self._call("POST", path, {} if body is None else body, timeout or self._timeout)

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None, read_timeout: float
    ) -> Any:
        headers = [("Authorization", f"Bearer {self._token(path)}")]
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers.append(("Content-Type", "application/json"))
        origin = self._route.origin
        url = httpcore.URL(scheme=origin.scheme, host=origin.host, port=origin.port, target=path)
        timeouts = {"read": read_timeout, "write": self._timeout}
        try:
            stream = self._route.connect(self._timeout)
            with httpcore.HTTP11Connection(origin, stream) as connection:
                response = connection.request(
                    method, url, headers=headers, content=content, extensions={"timeout": timeouts}
                )
        except HostUnreachable as exc:
            raise NodeUnreachable(f"{path}: {exc}") from None
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as exc:
            # Never the request: its body may hold a password.
            raise NodeUnreachable(f"{path}: {type(exc).__name__}") from None
        if 200 <= response.status < 300:
            return json.loads(response.content)
        raise _error(response, path)


def _error(response: httpcore.Response, path: str) -> NodeApiError:
    try:
        body = json.loads(response.content)
        return NodeApiError(response.status, str(body["name"]), str(body["error"])[:200])
    except (ValueError, KeyError, TypeError):
        return NodeApiError(response.status, "Unexpected", f"{path}: not an RLN error body")
