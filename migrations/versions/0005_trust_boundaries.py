"""Trust boundaries: fleet id, logins and roles, row-level security, wallet facts.

Revision ID: 0005_trust_boundaries
Revises: 0004_step_chain
"""

from migrations import apply_sql

revision = "0005_trust_boundaries"
down_revision = "0004_step_chain"


def upgrade() -> None:
    apply_sql("0005_trust_boundaries.sql")


def downgrade() -> None:
    raise NotImplementedError("the fleet's schema only moves forward")
