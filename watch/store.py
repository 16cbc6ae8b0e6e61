"""The watch's reads and writes in Postgres, as its own login (fleet_watch): the live
nodes with their root keys, each probe's result, and heals and holds through the two
functions the schema gives the watch (it writes no column of nodes itself)."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Engine, Row

from models.queries import query
from models.secrets import KeyRing, Secret, SecretError
from watch.health import Observation, Status, is_status
from watch.probe import ChainMemory, WatchedNode

HealOutcome = Literal["healed", "held"] | None


@dataclass(frozen=True)
class Seen:
    """What the watch last recorded for a node: its status and since when."""

    status: Status
    since: datetime


@dataclass(frozen=True)
class LiveNode:
    node: WatchedNode
    held: bool
    root_key: Secret | None
    key_problem: str | None  # why the root key could not be opened
    seen: Seen | None
    chain: ChainMemory


@dataclass(frozen=True)
class ProbeResult:
    node_id: int
    seen: Observation
    at: datetime


class WatchStore:
    def __init__(self, engine: Engine, ring: KeyRing) -> None:
        self._engine = engine
        self._ring = ring
        # Each node's row at the last refresh and what was made of it: most rows come
        # back unchanged every few seconds, and opening the key and building the
        # dataclasses again cost some 25 us a row (0.15 ms of CPU per probe at 6
        # refreshes per interval).
        self._made: dict[int, tuple[tuple[Any, ...], LiveNode]] = {}

    def live_nodes(self) -> list[LiveNode]:
        with self._engine.connect() as connection:
            rows = connection.execute(query("watch_nodes")).all()
        made: dict[int, tuple[tuple[Any, ...], LiveNode]] = {}
        for row in rows:
            values = tuple(row)
            before = self._made.get(row.id)
            live = before[1] if before is not None and before[0] == values else self._live(row)
            made[row.id] = (values, live)
        self._made = made
        return [live for _, live in made.values()]

    def record(self, results: list[ProbeResult]) -> None:
        if not results:
            return
        params = [
            {"node_id": r.node_id, "status": r.seen.status, "detail": r.seen.detail[:1000],
             "at": r.at, "height": r.seen.height}
            for r in results
        ]  # fmt: skip
        with self._engine.begin() as connection:
            connection.execute(query("record_probe"), params)

    def heal(
        self, node_id: int, to_state: str, cause: str, limit: int, window: float
    ) -> HealOutcome:
        params = {"node_id": node_id, "to_state": to_state, "cause": cause[:1000],
                  "flap_limit": limit, "flap_window_seconds": window}  # fmt: skip
        with self._engine.begin() as connection:
            outcome = connection.execute(query("heal_node"), params).scalar_one()
        return outcome if outcome in ("healed", "held") else None

    def hold(self, node_id: int, cause: str) -> bool:
        with self._engine.begin() as connection:
            params = {"node_id": node_id, "cause": cause[:1000]}
            return bool(connection.execute(query("watch_hold"), params).scalar_one())

    def _live(self, row: Row[Any]) -> LiveNode:
        node = WatchedNode(
            row.id, row.name, row.region, row.network, row.instance_id, row.address,
            row.ssh_host_key, row.node_pubkey,
        )  # fmt: skip
        key, problem = self._root_key(row)
        seen = Seen(row.status, row.since) if is_status(row.status) else None
        return LiveNode(node, row.held, key, problem, seen, ChainMemory(row.height, row.height_at))

    def _root_key(self, row: Row[Any]) -> tuple[Secret | None, str | None]:
        if row.ciphertext is None:
            return None, "no API root key stored"
        sealed = (row.key_id, bytes(row.nonce), bytes(row.ciphertext))
        try:
            return self._ring.open(row.id, "api_root_key", *sealed), None
        except SecretError as exc:
            return None, str(exc)
