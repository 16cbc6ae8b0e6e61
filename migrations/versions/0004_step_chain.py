"""The step chain: a worker edge taken by the lease holder may keep the lease.

Revision ID: 0004_step_chain
Revises: 0003_api
"""

from migrations import apply_sql

revision = "0004_step_chain"
down_revision = "0003_api"


def upgrade() -> None:
    apply_sql("0004_step_chain.sql")


def downgrade() -> None:
    raise NotImplementedError("the fleet's schema only moves forward")
