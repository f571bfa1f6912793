"""The organisation's secret store: values a stage takes as ``secrets: {NAME: secret:NAME}``.

One row per organisation and name, holding the value only as Fernet ciphertext (the key comes from the
environment, ``DEVART_SECRETS_KEY``, never from the database, so a dump of the database reveals no value). Tenant
rows like 0009's operational tables: visible and writable only in their organisation's transactions (or the system
role's), never written by a viewer; ``org_id`` defaults to the transaction's organisation. 0009's default
privileges grant the services' role ``devart_app`` this table; the grant is repeated here so the migration does
not depend on who ran 0009.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

APP_ROLE = "devart_app"
ORG = "(SELECT current_setting('devart.org_id', true))"
ROLE = "(SELECT current_setting('devart.role', true))"


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("org_id", sa.String(), sa.ForeignKey("organisations.id"), nullable=False,
                  server_default=sa.text("nullif(current_setting('devart.org_id', true), '')")),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "name"),
    )
    tenant = f"org_id = {ORG} OR {ROLE} = 'system'"
    not_viewer = f"{ROLE} IS DISTINCT FROM 'viewer'"
    op.execute("ALTER TABLE secrets ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE secrets FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY secrets_tenant ON secrets USING ({tenant}) WITH CHECK ({tenant})")
    op.execute(f"CREATE POLICY secrets_viewer_insert ON secrets AS RESTRICTIVE FOR INSERT WITH CHECK ({not_viewer})")
    op.execute(f"CREATE POLICY secrets_viewer_update ON secrets AS RESTRICTIVE FOR UPDATE USING ({not_viewer})")
    op.execute(f"CREATE POLICY secrets_viewer_delete ON secrets AS RESTRICTIVE FOR DELETE USING ({not_viewer})")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON secrets TO {APP_ROLE}")


def downgrade() -> None:
    op.drop_table("secrets")  # its policies go with it
