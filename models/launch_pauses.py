"""Launches paused in a region (migrations/sql/0007_launch_pauses.sql): the account's
quota refused one, and the region's other launches wait without calling EC2. Written by
the instance step, read by it, by `fleet status` and by the dispatcher's metrics."""

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection

from models.queries import query


@dataclass(frozen=True)
class LaunchPause:
    region: str
    kind: str  # "quota"
    code: str  # EC2's error code, e.g. VcpuLimitExceeded
    message: str  # EC2's words (no secret: AWS's message about the account's limit)
    since: datetime
    until: datetime
    seconds_left: float

    def reason(self) -> str:
        """What `fleet status` says, and why a node of the region waits."""
        return (
            f"launches paused in {self.region}: {self.kind.upper()} ({self.code}:"
            f" {self.message}) until {self.until.astimezone(UTC):%H:%M} UTC"
        )


def pauses_in_force(connection: Connection) -> list[LaunchPause]:
    """Every region's pause that has not ended yet (the fleet_launch_pauses view)."""
    return [LaunchPause(**row) for row in connection.execute(query("launch_pauses")).mappings()]
