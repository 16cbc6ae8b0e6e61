"""The health watch's settings (prefix FLEET_WATCH_); the worker's FleetSettings extends
these, so one environment configures every process."""

from datetime import timedelta

from pydantic import Field

from jobs.config import StepSettings


class WatchSettings(StepSettings):
    # Each live node is probed once per interval (spread over it, not all at once).
    watch_interval_seconds: float = Field(default=30.0, gt=0)
    # One probe's whole budget (SSH, both API calls, the agent): a slow host is
    # "unreachable" for this round and never delays another node's probe.
    watch_probe_timeout_seconds: float = Field(default=10.0, gt=0)
    # Probes in flight at once.
    watch_concurrency: int = Field(default=256, ge=1)
    # How often the list of live nodes is read again (new nodes, moved ones, new pins).
    watch_refresh_seconds: float = Field(default=5.0, gt=0)
    # A node healed this many times within the window is held as flapping instead.
    watch_flap_limit: int = Field(default=3, ge=1)
    watch_flap_window_seconds: float = Field(default=3600.0, gt=0)
    # A node neither its API nor SSH answers, while EC2 says its instance runs, is held
    # as unreachable after this long (a hung or cut-off host: the operator decides).
    watch_unreachable_hold_seconds: float = Field(default=900.0, gt=0)
    # A chain whose height has not moved this long is reported (chain_stalled; never
    # healed). Mainnet makes a block every ten minutes or so; 0: not checked. Regtest
    # chains move only when someone mines, so they are never checked.
    watch_chain_stall_seconds: float = Field(default=7200.0, ge=0)
    # Prometheus metrics of the watch on this port (0: off).
    watch_metrics_port: int = Field(default=0, ge=0, le=65535)

    def flap_window(self) -> timedelta:
        return timedelta(seconds=self.watch_flap_window_seconds)
