"""The knowledge base: failures seen in an organisation's runs, the remedies and guidance that fixed them, and how
well each remedy did since (``domain.knowledge``).

One row per entry: a failure's signature (skill, error type, the message and log tail normalised, and the SHA-256
``digest`` of the four, for exact matches), its context, the remedy and/or written guidance (both NULL for a failure
recorded before anything fixed it), where it came from and its record. Tenant rows like 0010's secrets: visible and
writable only in their organisation's transactions (or the system role's), never written by a viewer; ``org_id``
defaults to the transaction's organisation.

``embedding`` is an untyped ``vector`` beside the name of the ``model`` that made it, so the vectors of two models
(of different dimensions, too) coexist while ``devart kb reembed`` moves the entries from one to the other. Each
model gets a partial HNSW index of its own over ``embedding::vector(<dimension>)`` ``WHERE model = '<model>'``,
created when the model is first used, not here: the models are the deployment's choice, not the schema's. The
services' role owns no table and so cannot create an index; ``devart_knowledge_index(model, dimension)`` does it
for them (SECURITY DEFINER, owned by the migrating role, the model quoted as a literal by ``format``), and returns
the index's name.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

APP_ROLE = "devart_app"
TABLE = "knowledge_entries"
ORG = "(SELECT current_setting('devart.org_id', true))"
ROLE = "(SELECT current_setting('devart.role', true))"
#: HNSW's graph: 16 links per node and 64 candidates while building (pgvector's defaults; bench.kb_search measured
#: recall ≥ 0.95 at 100,000 entries with them and ``hnsw.ef_search`` = 64).
INDEX_FUNCTION = f"""
CREATE FUNCTION devart_knowledge_index(model text, dimension integer) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    name text := 'knowledge_hnsw_' || left(md5(model || '/' || dimension::text), 16);
BEGIN
    IF dimension IS NULL OR dimension < 1 OR dimension > 2000 THEN
        RAISE EXCEPTION 'an HNSW index takes vectors of 1 to 2000 dimensions, not %', dimension;
    END IF;
    IF to_regclass(name) IS NOT NULL THEN
        RETURN name;  -- the usual case, answered without locking the table
    END IF;
    -- Two transactions creating the same index take turns: the second then finds it.
    PERFORM pg_advisory_xact_lock(hashtext(name));
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON {TABLE} USING hnsw ((embedding::vector(%s)) vector_cosine_ops) '
                   'WITH (m = 16, ef_construction = 64) WHERE model = %L', name, dimension, model);
    RETURN name;
END $$
"""


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("id", sa.BigInteger(), autoincrement=True, primary_key=True),
        sa.Column("org_id", sa.String(), sa.ForeignKey("organisations.id"), nullable=False,
                  server_default=sa.text("nullif(current_setting('devart.org_id', true), '')")),
        sa.Column("skill", sa.String(), nullable=False),
        sa.Column("error_type", sa.String(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("log_tail", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("remedy", sa.String(), nullable=True),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("guidance", sa.Text(), nullable=True),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("author", sa.String(), nullable=True),
        sa.Column("seen", sa.Integer(), nullable=False),
        sa.Column("suggested", sa.Integer(), nullable=False),
        sa.Column("applied", sa.Integer(), nullable=False),
        sa.Column("succeeded", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("embedding", Vector(), nullable=False),
        sa.CheckConstraint("source IN ('learned', 'written')", name="knowledge_entries_source"),
    )
    op.create_index(f"ix_{TABLE}_org_id", TABLE, ["org_id"])
    op.create_index("knowledge_entries_org_digest", TABLE, ["org_id", "digest"])
    op.create_index("knowledge_entries_org_model", TABLE, ["org_id", "model"])
    tenant = f"org_id = {ORG} OR {ROLE} = 'system'"
    not_viewer = f"{ROLE} IS DISTINCT FROM 'viewer'"
    op.execute(f"ALTER TABLE {TABLE} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {TABLE} FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY {TABLE}_tenant ON {TABLE} USING ({tenant}) WITH CHECK ({tenant})")
    op.execute(f"CREATE POLICY {TABLE}_viewer_insert ON {TABLE} AS RESTRICTIVE FOR INSERT WITH CHECK ({not_viewer})")
    op.execute(f"CREATE POLICY {TABLE}_viewer_update ON {TABLE} AS RESTRICTIVE FOR UPDATE USING ({not_viewer})")
    op.execute(f"CREATE POLICY {TABLE}_viewer_delete ON {TABLE} AS RESTRICTIVE FOR DELETE USING ({not_viewer})")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {TABLE} TO {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON SEQUENCE {TABLE}_id_seq TO {APP_ROLE}")
    op.execute(INDEX_FUNCTION)
    op.execute("REVOKE ALL ON FUNCTION devart_knowledge_index(text, integer) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION devart_knowledge_index(text, integer) TO {APP_ROLE}")


def downgrade() -> None:
    op.execute("DROP FUNCTION devart_knowledge_index(text, integer)")
    op.drop_table(TABLE)  # its policies and its models' HNSW indexes go with it
