"""The node's REST API (rln-node-api.md). Every call carries a fresh short-lived admin
token; errors come back as NodeApiError with the daemon's error name, so steps decide by
name (`ChangingState` is a wait, `WrongPassword` holds the node, ...)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from jobs.config import ChainBackend
from models.secrets import Secret


class NodeApiError(Exception):
    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(f"{name} ({status}): {message}")
        self.status = status
        self.name = name


class NodeUnreachable(Exception):
    """No HTTP answer at all (refused, timed out). Never counted as healthy."""


@dataclass(frozen=True)
class NodeInfo:
    pubkey: str
    num_channels: int
    num_peers: int


class NodeApi:
    def __init__(
        self, base_url: str, token: Callable[[], str], timeout: float, unlock_timeout: float
    ) -> None:
        self._base_url = base_url
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

    def node_info(self) -> NodeInfo:
        answer = self._call("GET", "/nodeinfo", None, self._timeout)
        return NodeInfo(
            pubkey=str(answer["pubkey"]),
            num_channels=int(answer.get("num_channels", 0)),
            num_peers=int(answer.get("num_peers", 0)),
        )

    def _post(self, path: str, body: dict[str, Any] | None, timeout: float | None = None) -> Any:
        return self._call("POST", path, {} if body is None else body, timeout or self._timeout)

    def _call(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        headers = {"Authorization": f"Bearer {self._token()}"}
        try:
            response = httpx.request(
                method, self._base_url + path, json=body, headers=headers, timeout=timeout
            )
        except httpx.TransportError as exc:
            # Never the request: its body may hold a password.
            raise NodeUnreachable(f"{path}: {type(exc).__name__}") from None
        if response.is_success:
            return response.json()
        raise _error(response, path)


def _error(response: httpx.Response, path: str) -> NodeApiError:
    try:
        body = response.json()
        return NodeApiError(response.status_code, str(body["name"]), str(body["error"])[:200])
    except (ValueError, KeyError, TypeError):
        return NodeApiError(response.status_code, "Unexpected", f"{path}: not an RLN error body")
