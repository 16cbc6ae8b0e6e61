"""What the real steps need: SSH host keys, releases, launch budget, backup history.

Revision ID: 0002_real_steps
Revises: 0001_fleet_schema
"""

from migrations import apply_sql

revision = "0002_real_steps"
down_revision = "0001_fleet_schema"


def upgrade() -> None:
    apply_sql("0002_real_steps.sql")


def downgrade() -> None:
    raise NotImplementedError("the fleet's schema only moves forward")
