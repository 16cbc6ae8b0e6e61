"""Fleet scale: batched launches and per-region launch budgets.

Revision ID: 0008_fleet_scale
Revises: 0007_health
"""

from migrations import apply_sql

revision = "0008_fleet_scale"
down_revision = "0007_health"


def upgrade() -> None:
    # Each topic's DDL is its own file (migrations/sql/0008_<topic>.sql), applied here in
    # order; the functions and privileges they need live in functions.sql/privileges.sql.
    apply_sql("0008_launch_batches.sql")


def downgrade() -> None:
    raise NotImplementedError("the fleet's schema only moves forward")
