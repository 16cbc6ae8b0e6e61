"""The clients the steps use, built once per worker process from its settings and handed
to every step through its context (StepContext.tools): one configuration in force. Each
job gets its own copy (`for_job`) sharing the job's SSH connections to its host."""

from dataclasses import dataclass, replace

from jobs.backups import BackupStore, S3Backups
from jobs.config import StepSettings
from jobs.ec2 import Cloud, Ec2Cloud
from jobs.host import FabricAgent, HostAgentClient, HostConnections


@dataclass(frozen=True)
class Toolbox:
    settings: StepSettings
    # The fleet's own id (from its database): it tags and seeds every launch.
    fleet_id: str
    cloud: Cloud
    agent: HostAgentClient
    backups: BackupStore
    # The job's SSH connections (for_job); None outside a job: a session per call.
    hosts: HostConnections | None = None

    @classmethod
    def build(cls, settings: StepSettings, fleet_id: str) -> "Toolbox":
        cloud, agent = Ec2Cloud(settings, fleet_id), FabricAgent(settings)
        return cls(settings, fleet_id, cloud, agent, S3Backups(settings))

    def for_job(self, hosts: HostConnections) -> "Toolbox":
        """This toolbox for one job: the host agent and the node API's tunnel share the
        job's SSH connections (which the job closes when it ends, however it ends)."""
        agent = self.agent
        if isinstance(agent, FabricAgent):
            agent = FabricAgent(agent.settings, hosts)
        return replace(self, agent=agent, hosts=hosts)
