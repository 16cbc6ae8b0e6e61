"""The real steps, one module per work state. Importing this package registers them
(FLEET_STEP_MODULES=jobs.steps, the default)."""

from jobs.steps import destroy, instance, key, start, stop, update, wallet

__all__ = ["destroy", "instance", "key", "start", "stop", "update", "wallet"]
