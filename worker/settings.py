"""Configuration from the environment (prefix FLEET_) or a .env file."""

from functools import cache
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from models.formats import Network
from models.session import DatabaseUrl
from watch.settings import WatchSettings

REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(redis_url: str) -> str:
    """What redis-py's from_url would refuse, refused when the settings are read (the
    message never echoes the URL: it may hold a password)."""
    parts = urlsplit(redis_url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError("not a Redis URL (redis://, rediss:// or unix://)")
    try:
        parts.port  # noqa: B018  # urllib checks the port only when asked for it
        path = parts.path.lstrip("/")
        if parts.scheme != "unix" and path:
            int(path)
    except ValueError:
        raise ValueError("not a Redis URL (redis://[:password@]host[:port][/db number])") from None
    return redis_url


class FleetSettings(WatchSettings):
    """Everything: the steps' settings (jobs/config.py), the watch's (watch/settings.py)
    and the runtime's."""

    # The schema owner's URL, for `fleet db upgrade` and `fleet db create-login` (the only
    # commands that need it); unset, they use database_url.
    owner_database_url: DatabaseUrl | None = None

    redis_url: Annotated[str, AfterValidator(check_redis_url)] = "redis://127.0.0.1:6379/0"
    queue_name: str = "fleet"

    # Leases: a worker renews its lease every lease_seconds / 3 while a step runs; the
    # dispatcher takes the row back once it is lease_seconds old without renewal.
    lease_seconds: float = Field(default=60.0, gt=0)
    # Hard limit on one run of a step (RQ's job timeout).
    step_timeout_seconds: int = Field(default=900, gt=0)

    # A step that keeps waiting (an API that never answers, an instance stuck pending)
    # is held after this long in its state, with what it was waiting for (0: never).
    wait_limit_seconds: float = Field(default=1800.0, ge=0)

    # Errors: retried after base * 2^attempt seconds (capped, with jitter), held at the limit.
    max_attempts: int = Field(default=5, ge=1)
    backoff_base_seconds: float = Field(default=2.0, gt=0)
    backoff_max_seconds: float = Field(default=600.0, gt=0)

    # The dispatcher sweeps at least this often, whatever notifications say.
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    dispatch_batch: int = Field(default=1000, ge=1)
    listen: bool = True
    # The dispatcher compares cloud and rows this often (0: never): it reports every
    # finding (log line and metrics), holds nodes whose instance is gone and, with
    # reconcile_fix_orphans, terminates this fleet's instances of nodes that are destroyed
    # or have no row. Five minutes: an orphan costs money by the hour, a reconcile costs one
    # paged DescribeInstances per region (EC2's request budget is the account's).
    reconcile_interval_seconds: float = Field(default=300.0, ge=0)
    reconcile_fix_orphans: bool = True
    # Prometheus metrics on this port (0: off). Workers on one machine need one port each:
    # each worker takes the first free port from worker_metrics_port upwards.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    # Python modules whose import registers the steps (comma separated).
    step_modules: str = "jobs.steps"
    # RQ worker class: "simple" runs jobs in the worker process, "fork" forks per job.
    # README.md, "Choosing the worker class", has the measurement behind the default.
    worker_class: str = Field(default="simple", pattern="^(simple|fork)$")

    # Defaults for `fleet node create`.
    default_region: str = "eu-west-1"
    default_instance_type: str = "t3.small"
    default_network: Network = "regtest"

    log_format: str = Field(default="console", pattern="^(console|json)$")
    log_level: str = Field(default="INFO", pattern="(?i)^(debug|info|warning|error|critical)$")

    def owner_url(self) -> str:
        return self.owner_database_url or self.database_url

    def step_module_names(self) -> list[str]:
        return [name.strip() for name in self.step_modules.split(",") if name.strip()]


@cache
def settings() -> FleetSettings:
    return FleetSettings()
