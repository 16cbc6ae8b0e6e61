"""The clients the steps use, built once per worker process from its settings and handed
to every step through its context (StepContext.tools): one configuration in force."""

from dataclasses import dataclass

from jobs.config import StepSettings
from jobs.ec2 import Cloud, Ec2Cloud
from jobs.host import FabricAgent, HostAgentClient


@dataclass(frozen=True)
class Toolbox:
    settings: StepSettings
    # The fleet's own id (from its database): it tags and seeds every launch.
    fleet_id: str
    cloud: Cloud
    agent: HostAgentClient

    @classmethod
    def build(cls, settings: StepSettings, fleet_id: str) -> "Toolbox":
        return cls(settings, fleet_id, Ec2Cloud(settings, fleet_id), FabricAgent(settings))
