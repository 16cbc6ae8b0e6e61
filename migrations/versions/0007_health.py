"""Keeping live nodes live and real deployments: the health watch, wallet formats of
releases, EC2 launch pauses, rollouts.

Revision ID: 0007_health
Revises: 0006_bad_input
"""

from migrations import apply_sql

revision = "0007_health"
down_revision = "0006_bad_input"


def upgrade() -> None:
    # Each topic's DDL is its own file (migrations/sql/0007_<topic>.sql), applied here in
    # order; the functions and privileges they need live in functions.sql/privileges.sql.
    apply_sql("0007_watch.sql")
    apply_sql("0007_wallet_format.sql")
    apply_sql("0007_rollouts.sql")
    apply_sql("0007_launch_pauses.sql")
    apply_sql("0007_replace.sql")


def downgrade() -> None:
    raise NotImplementedError("the fleet's schema only moves forward")
