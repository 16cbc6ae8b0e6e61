"""The watch's schedule: each live node is probed once per interval, at its own offset
within it (a fleet of 2,000 nodes is 67 probes a second, not a burst of 2,000), with at
most `watch_concurrency` probes in flight, so a slow host holds up nobody but itself.
Results are written in batches; a heal or a hold is written at once, with its probe."""

import asyncio
import heapq
import math
import random
import time
from collections import Counter as Tally
from collections.abc import Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError

from watch import metrics
from watch.health import STATUSES, Heal, Hold, Limits, Observation, decide
from watch.probe import ChainMemory, ProbeTools, probe
from watch.settings import WatchSettings
from watch.store import LiveNode, ProbeResult, Seen, WatchStore

log = structlog.get_logger()
TICK_SECONDS = 0.05
FLUSH_SECONDS = 1.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def next_due(due: float, now: float, interval: float) -> float:
    """The node's next probe: a whole number of intervals after this one, in the future.
    A late node is probed once, not once per interval it missed, and keeps its offset
    (after a stall, the fleet stays spread over the interval, not bunched at its end)."""
    missed = math.floor((now - due) / interval) if now > due else 0
    return due + (missed + 1) * interval


class Watch:
    def __init__(self, settings: WatchSettings, store: WatchStore, tools: ProbeTools) -> None:
        self.settings, self.store, self.tools = settings, store, tools
        self.limits = Limits(timedelta(seconds=settings.watch_unreachable_hold_seconds))
        self.nodes: dict[int, LiveNode] = {}
        self.due_at: dict[int, float] = {}  # monotonic time of each node's next probe
        # The same times in a heap, so that a tick looks only at the nodes due (a scan of
        # every node 20 times a second cost 0.2 ms of CPU per probe); an entry whose time
        # is no longer the node's in due_at is stale and skipped.
        self._due_heap: list[tuple[float, int]] = []
        self.seen: dict[int, Seen] = {}
        self.chain: dict[int, ChainMemory] = {}
        self.pending: list[ProbeResult] = []
        self.in_flight: set[int] = set()
        self.probes_done = 0
        self._slots = asyncio.Semaphore(settings.watch_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        refreshed = flushed = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now - refreshed >= self.settings.watch_refresh_seconds:
                    refreshed = now
                    await self._or_later(self.refresh())
                self._start_due(now)
                if now - flushed >= FLUSH_SECONDS:
                    flushed = now
                    await self._or_later(self.flush())
                await asyncio.sleep(TICK_SECONDS)
        finally:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._or_later(self.flush())
            await self.tools.hosts.close()

    async def _or_later(self, work: Coroutine[Any, Any, None]) -> None:
        """Postgres away (restarting, failing over) ends nothing: the nodes known so far
        are still probed, the results wait in `pending`, and the next refresh or flush
        tries again. Only the error's kind is logged (its text may name the server)."""
        try:
            await work
        except DBAPIError as exc:
            log.warning("database unavailable; trying again later", error=type(exc.orig).__name__)

    async def refresh(self) -> None:
        live = await asyncio.to_thread(self.store.live_nodes)
        now, interval = time.monotonic(), self.settings.watch_interval_seconds
        self.nodes = {n.node.id: n for n in live}
        for node_id, node in self.nodes.items():
            if node.root_key is not None:
                self.tools.tokens.set_key(node_id, node.root_key)
            if node_id not in self.due_at:  # new here: somewhere within the next interval
                self.schedule(node_id, now + random.uniform(0, interval))
                if node.seen is not None:
                    self.seen[node_id] = node.seen
                self.chain[node_id] = node.chain
        ids = set(self.nodes)
        for gone in set(self.due_at) - ids:
            self.due_at.pop(gone)
            self.seen.pop(gone, None)
            self.chain.pop(gone, None)
        # A probe in flight (maybe still waiting for a slot) keeps its connection and key
        # until it ends: the list it was started from may be older than this one.
        await self.tools.hosts.keep_only(ids | self.in_flight)
        self.tools.tokens.keep_only(ids | self.in_flight)
        self._export(now)

    def schedule(self, node_id: int, due: float) -> None:
        self.due_at[node_id] = due
        heapq.heappush(self._due_heap, (due, node_id))

    def _start_due(self, now: float) -> None:
        waiting: list[tuple[float, int]] = []  # due, but in flight or out of live for now
        heap = self._due_heap
        while heap and heap[0][0] <= now:
            due, node_id = heapq.heappop(heap)
            if self.due_at.get(node_id) != due:
                continue  # stale: gone, or scheduled again since
            if node_id in self.in_flight or node_id not in self.nodes:
                waiting.append((due, node_id))
                continue
            self.schedule(node_id, next_due(due, now, self.settings.watch_interval_seconds))
            self.in_flight.add(node_id)
            task = asyncio.create_task(self._probe_one(self.nodes[node_id]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for entry in waiting:  # looked at again next tick, as before
            heapq.heappush(heap, entry)

    async def _probe_one(self, live: LiveNode) -> None:
        node_id = live.node.id
        try:
            async with self._slots:
                started = time.perf_counter()
                seen = await self._observe(live)
                metrics.PROBE_SECONDS.observe(time.perf_counter() - started)
            await self._settle(live, seen, utc_now())
        except Exception:  # one node's trouble must never stop the watch
            log.exception("probe failed", node_id=node_id)
        finally:
            self.in_flight.discard(node_id)
            self.probes_done += 1

    async def _observe(self, live: LiveNode) -> Observation:
        if live.root_key is None:
            return Observation("error", f"cannot sign a probe token: {live.key_problem}")
        chain = self.chain.get(live.node.id, ChainMemory(None, None))
        return await probe(live.node, chain, self.tools, utc_now())

    async def _settle(self, live: LiveNode, seen: Observation, at: datetime) -> None:
        node_id = live.node.id
        metrics.PROBES.labels(seen.status).inc()
        before = self.seen.get(node_id)
        since = before.since if before is not None and before.status == seen.status else at
        self.seen[node_id] = Seen(seen.status, since)
        self._remember_height(node_id, seen, at)
        result = ProbeResult(node_id, seen, at)
        verdict = None if live.held else decide(seen, since, at, self.limits)
        if verdict is None:
            self.pending.append(result)
            return
        await asyncio.to_thread(self.store.record, [result])
        await self._act(live, verdict, seen)

    async def _act(self, live: LiveNode, verdict: Heal | Hold, seen: Observation) -> None:
        node_id, settings = live.node.id, self.settings
        if isinstance(verdict, Heal):
            outcome = await asyncio.to_thread(
                self.store.heal, node_id, verdict.to_state, verdict.cause,
                settings.watch_flap_limit, settings.watch_flap_window_seconds,
            )  # fmt: skip
            if outcome == "healed":
                metrics.HEALS.labels(seen.status).inc()
            elif outcome == "held":
                metrics.HOLDS.labels("flapping").inc()
        else:
            outcome = (
                "held" if await asyncio.to_thread(self.store.hold, node_id, verdict.cause) else None
            )
            if outcome:
                metrics.HOLDS.labels(seen.status).inc()
        log.info("health watch acted", node_id=node_id, node=live.node.name, status=seen.status,
                 outcome=outcome, cause=getattr(verdict, "cause", ""))  # fmt: skip
        if outcome is not None:  # it left live, or is held now: read it again at the refresh
            self.nodes.pop(node_id, None)

    def _remember_height(self, node_id: int, seen: Observation, at: datetime) -> None:
        chain = self.chain.get(node_id, ChainMemory(None, None))
        if seen.height is not None and (chain.height != seen.height or chain.moved_at is None):
            self.chain[node_id] = replace(chain, height=seen.height, moved_at=at)

    async def flush(self) -> None:
        batch, self.pending = self.pending, []
        try:
            await asyncio.to_thread(self.store.record, batch)
        except DBAPIError:
            self.pending = batch + self.pending  # kept for the next flush
            raise

    def _export(self, now: float) -> None:
        tally = Tally(seen.status for node_id, seen in self.seen.items() if node_id in self.nodes)
        for status in STATUSES:
            metrics.LIVE_BY_HEALTH.labels(status).set(tally.get(status, 0))
        late = 2 * self.settings.watch_interval_seconds
        metrics.OVERDUE.set(sum(1 for due in self.due_at.values() if now - due > late))
        metrics.ROUND_AT.set(time.time())
