"""Agent fleet: agent status, current task and skills; per-skill stats; dead letters; lane waiting.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_skill_stats",
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("skill", sa.String(), nullable=False),
        sa.Column("tasks", sa.Integer(), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("total_seconds", sa.Float(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("agent", "skill"),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("lane", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("body", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redriven_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.add_column("agents", sa.Column("status", sa.String(), server_default="offline", nullable=False))
    op.add_column("agents", sa.Column("current_task", sa.String(), nullable=True))
    op.add_column("agents", sa.Column("skills", sa.JSON(), server_default="[]", nullable=False))
    op.add_column("task_attempts", sa.Column("wait_timeout", sa.Float(), server_default="600", nullable=False))
    op.add_column("task_attempts", sa.Column("waiting_reason", sa.String(), nullable=True))


def downgrade() -> None:
    op.drop_column("task_attempts", "waiting_reason")
    op.drop_column("task_attempts", "wait_timeout")
    op.drop_column("agents", "skills")
    op.drop_column("agents", "current_task")
    op.drop_column("agents", "status")
    op.drop_table("dead_letters")
    op.drop_table("agent_skill_stats")
