"""What the HTTP API needs: idempotency keys for creating nodes.

Revision ID: 0003_api
Revises: 0002_real_steps
"""

from migrations import apply_sql

revision = "0003_api"
down_revision = "0002_real_steps"


def upgrade() -> None:
    apply_sql("0003_api.sql")


def downgrade() -> None:
    raise NotImplementedError("the fleet's schema only moves forward")
