"""Bad input, abuse and races: bounds on what apps write, launches recorded before they
are made.

Revision ID: 0006_bad_input
Revises: 0005_trust_boundaries
"""

from migrations import apply_sql

revision = "0006_bad_input"
down_revision = "0005_trust_boundaries"


def upgrade() -> None:
    apply_sql("0006_bad_input.sql")
    apply_sql("0006_apilimits.sql")
    apply_sql("0006_grammar.sql")
    apply_sql("0006_launches.sql")


def downgrade() -> None:
    raise NotImplementedError("the fleet's schema only moves forward")
