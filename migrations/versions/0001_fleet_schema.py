"""The fleet schema: states and edges as data, nodes, history, secrets, triggers, views.

Revision ID: 0001_fleet_schema
Revises:
"""

from migrations import apply_sql

revision = "0001_fleet_schema"
down_revision = None


def upgrade() -> None:
    apply_sql("0001_fleet_schema.sql")


def downgrade() -> None:
    raise NotImplementedError("the fleet's schema only moves forward")
