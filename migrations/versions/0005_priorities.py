"""Run priorities: the priority of every run, and the priority bands (queues) each lane has used.

Existing lanes had only the default band, and existing runs the default priority.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("priority", sa.Integer(), server_default="3", nullable=False))
    op.add_column("lanes", sa.Column("priorities", sa.JSON(), server_default="[3]", nullable=False))


def downgrade() -> None:
    op.drop_column("lanes", "priorities")
    op.drop_column("runs", "priority")
