"""The clients the steps use, built once per worker process from its settings and handed
to every step through its context (StepContext.tools): one configuration in force."""

from dataclasses import dataclass

from jobs.backups import BackupStore, S3Backups
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
    backups: BackupStore

    @classmethod
    def build(cls, settings: StepSettings, fleet_id: str) -> "Toolbox":
        cloud, agent = Ec2Cloud(settings, fleet_id), FabricAgent(settings)
        return cls(settings, fleet_id, cloud, agent, S3Backups(settings))
