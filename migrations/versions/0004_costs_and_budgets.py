"""Costs and budgets: the cost of every attempt in micro-units, and spending limits per pipeline or repository.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("soft_micros", sa.BigInteger(), nullable=True),
        sa.Column("hard_micros", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "name"),
    )
    op.add_column("task_attempts", sa.Column("cost_micros", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    op.drop_column("task_attempts", "cost_micros")
    op.drop_table("budgets")
