"""Read-only tokens for the probes, signed with each node's API root key (the only secret
the watch can read) and reused for a while: minting one per probe would cost more than
the probe. A token opens only read routes, so one that leaks can change nothing."""

import time
from dataclasses import dataclass, field

from jobs.node_auth import route_token
from models.secrets import Secret

TOKEN_TTL_SECONDS = 300.0
REUSE_SECONDS = 120.0  # well inside the TTL, so a token never expires in flight


@dataclass
class ProbeTokens:
    _keys: dict[int, Secret] = field(default_factory=dict)
    _minted: dict[tuple[int, str], tuple[float, str]] = field(default_factory=dict)

    def set_key(self, node_id: int, key: Secret) -> None:
        if self._keys.get(node_id) != key:
            self._keys[node_id] = key
            for cached in [k for k in self._minted if k[0] == node_id]:
                del self._minted[cached]

    def keep_only(self, node_ids: set[int]) -> None:
        for node_id in set(self._keys) - node_ids:
            del self._keys[node_id]
        self._minted = {k: v for k, v in self._minted.items() if k[0] in node_ids}

    def for_route(self, node_id: int, path: str) -> str:
        now = time.monotonic()
        cached = self._minted.get((node_id, path))
        if cached is not None and now - cached[0] < REUSE_SECONDS:
            return cached[1]
        token = route_token(self._keys[node_id].reveal(), path, ttl_seconds=TOKEN_TTL_SECONDS)
        self._minted[(node_id, path)] = (now, token)
        return token
