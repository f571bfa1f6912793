"""Identity: organisations, users with a role per organisation, personal API tokens, and the audit trail.

A default organisation exists from the start, so single-user local use needs no set-up: ``devart up`` makes the
first administrator in it. Tokens are stored as the SHA-256 of the token (looked up by it: 256 random bits make a
fast hash as strong as a slow one) plus a short display prefix; the token itself is shown once.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "organisations",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("source_roots", sa.JSON(), nullable=False, server_default="[]"),
        sa.Column("source_hosts", sa.JSON(), nullable=False, server_default="[]"),
        sa.Column("created_at", _ts, nullable=False, server_default=sa.func.now()),
    )
    op.execute("INSERT INTO organisations (id, name) VALUES ('default', 'Default organisation')")
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(), nullable=False, unique=True),
        sa.Column("created_at", _ts, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.BigInteger(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("org_id", sa.String(), sa.ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("created_at", _ts, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("role IN ('admin', 'supervisor', 'viewer')", name="memberships_role"),
    )
    op.create_index("ix_memberships_org_id", "memberships", ["org_id"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.BigInteger(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("org_id", sa.String(), sa.ForeignKey("organisations.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("prefix", sa.String(), nullable=False),
        sa.Column("token_hash", sa.String(), nullable=False, unique=True),
        sa.Column("created_at", _ts, nullable=False, server_default=sa.func.now()),
        sa.Column("expires_at", _ts, nullable=True),
        sa.Column("revoked_at", _ts, nullable=True),
        sa.Column("last_used_at", _ts, nullable=True),
    )
    op.create_index("api_tokens_user", "api_tokens", ["user_id", "org_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("user_name", sa.String(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("route", sa.String(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("at", _ts, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("audit_log_org_at", "audit_log", ["org_id", "at"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("api_tokens")
    op.drop_table("memberships")
    op.drop_table("users")
    op.drop_table("organisations")
