"""Prometheus metrics of the health watch (deploy/monitoring/ alerts on them)."""

from prometheus_client import Counter, Gauge, Histogram

from watch.health import HEALS as HEAL_EDGES
from watch.health import STATUSES

PROBES = Counter("fleet_watch_probes_total", "Probes of live nodes, by what they found", ["status"])
PROBE_SECONDS = Histogram(
    "fleet_watch_probe_seconds",
    "Wall time of one probe (SSH reuse, both API calls, EC2 when SSH is silent)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HEALS = Counter("fleet_watch_heals_total", "Heals the watch started, by cause", ["cause"])
HOLDS = Counter("fleet_watch_holds_total", "Live nodes the watch held, by cause", ["cause"])
LIVE_BY_HEALTH = Gauge(
    "fleet_live_nodes_by_health", "Live nodes by what the watch last saw", ["status"]
)
OVERDUE = Gauge(
    "fleet_watch_overdue_nodes", "Live nodes not probed within twice the interval (a slow watch)"
)
ROUND_AT = Gauge(
    "fleet_watch_round_timestamp_seconds", "Unix time the watch last read the live nodes"
)


def _prime() -> None:
    """Every label a rule asks about exists from the start at 0, so that the first heal
    or hold of a kind shows in increase() (a series that appears at 1 does not)."""
    for status in STATUSES:
        PROBES.labels(status)
        LIVE_BY_HEALTH.labels(status)
    for cause in HEAL_EDGES:
        HEALS.labels(cause)
    for held in ("flapping", "wrong_pubkey", "wrong_network", "instance_gone", "unreachable"):
        HOLDS.labels(held)


_prime()
