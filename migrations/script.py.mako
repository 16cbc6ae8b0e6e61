"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""

from migrations import apply_sql

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}


def upgrade() -> None:
    apply_sql("${up_revision}.sql")


def downgrade() -> None:
    raise NotImplementedError("the fleet's schema only moves forward")
