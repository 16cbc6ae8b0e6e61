"""The clients the steps use, built once per worker process from the settings."""

from dataclasses import dataclass
from functools import cache

from jobs.config import StepSettings
from jobs.ec2 import Cloud, Ec2Cloud
from jobs.host import FabricAgent, HostAgentClient


@dataclass(frozen=True)
class Toolbox:
    settings: StepSettings
    cloud: Cloud
    agent: HostAgentClient


@cache
def toolbox() -> Toolbox:
    settings = StepSettings()
    return Toolbox(settings, Ec2Cloud(settings), FabricAgent(settings))
