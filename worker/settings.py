"""Configuration from the environment (prefix FLEET_) or a .env file."""

from functools import cache

from pydantic import Field

from jobs.config import StepSettings
from models.formats import Network


class FleetSettings(StepSettings):
    """Everything: the steps' settings (jobs/config.py) and the runtime's."""

    # The schema owner's URL, for `fleet db upgrade` and `fleet db create-login` (the only
    # commands that need it); unset, they use database_url.
    owner_database_url: str | None = None

    redis_url: str = "redis://127.0.0.1:6379/0"
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
    # The dispatcher compares cloud and rows this often (0: never); it reports and holds
    # nodes whose instance is gone, but terminates nothing (that is `fleet reconcile --fix`).
    reconcile_interval_seconds: float = Field(default=0.0, ge=0)
    # Prometheus metrics on this port (0: off). Workers on one machine need one port each:
    # each worker takes the first free port from worker_metrics_port upwards.
    metrics_port: int = Field(default=0, ge=0)
    worker_metrics_port: int = Field(default=0, ge=0)

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
    log_level: str = "INFO"

    def owner_url(self) -> str:
        return self.owner_database_url or self.database_url

    def step_module_names(self) -> list[str]:
        return [name.strip() for name in self.step_modules.split(",") if name.strip()]


@cache
def settings() -> FleetSettings:
    return FleetSettings()
