"""Prometheus metrics of the dispatcher and the workers (prometheus-client)."""

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = structlog.get_logger()

NODES = Gauge("fleet_nodes", "Nodes per state (from the dispatcher)", ["state"])
HELD = Gauge("fleet_nodes_held", "Held nodes per state (from the dispatcher)", ["state"])
DUE = Gauge("fleet_nodes_due", "Nodes whose step is due now, per state", ["state"])
# 1 while launches in the region are paused for that kind (the account's quota), else 0:
# every configured region has its series, so an alert can say "for 30 minutes".
LAUNCHES_PAUSED = Gauge(
    "fleet_launches_paused", "1 while launches in the region are paused (from the dispatcher)",
    ["region", "kind"],
)  # fmt: skip
PAUSE_KINDS = ("quota",)
ENQUEUED = Counter("fleet_jobs_enqueued_total", "Step runs queued by this dispatcher")
EXPIRED_LEASES = Counter("fleet_leases_expired_total", "Leases taken back from dead workers")
RECONCILE_FINDINGS = Gauge("fleet_reconcile_findings", "Findings of the last reconcile")
RECONCILE_KINDS = Gauge(
    "fleet_reconcile_findings_by_kind", "Findings of the last reconcile, per kind", ["kind"]
)
RECONCILE_TERMINATED = Counter(
    "fleet_reconcile_terminated_total", "Orphaned instances the dispatcher's reconcile terminated"
)
RECONCILE_FAILED = Counter("fleet_reconcile_failures_total", "Reconciles that could not finish")

STEP_SECONDS = Histogram(
    "fleet_step_duration_seconds",
    "Time a step's handler ran",
    ["state"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
OUTCOMES = Counter("fleet_step_outcomes_total", "Settled step runs", ["state", "result"])
DISPATCH_LATENCY = Histogram(
    "fleet_dispatch_latency_seconds",
    "From a step falling due (its row changed, or its wait ended) to a worker claiming it",
    ["state"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# Worker processes on one machine each need a port: they take the first free one.
PORTS_TO_TRY = 64


def serve_metrics(port: int, *, search: bool = False) -> int | None:
    """Serve /metrics on port (or the first free one above it when search); None if off."""
    if port == 0:
        return None
    for candidate in range(port, port + (PORTS_TO_TRY if search else 1)):
        try:
            start_http_server(candidate)
        except OSError:
            continue
        log.info("metrics served", port=candidate)
        return candidate
    log.warning("no free port for metrics", first=port)
    return None
