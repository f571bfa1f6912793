"""Tenancy: every tenant row carries its organisation, and PostgreSQL itself keeps organisations apart.

Each tenant table gets ``org_id`` (existing rows: the default organisation), indexed, referencing its organisation,
with row-level security enabled and forced. The services connect through the role ``devart_app``, which owns no
table and has no BYPASSRLS; each transaction names its organisation and role with ``set_config(…, true)``
(``core.database.tenancy``). The policies:

- a row is visible, and may be written, only in its organisation's transactions (``devart.org_id``), or in the
  services' own (``devart.role = 'system'``: the pipeline worker, the sweeper, the feed, token look-ups);
- a viewer's transaction may not insert, update or delete operational rows (restrictive policies);
- a transaction that named nothing sees nothing and can write nothing.

The settings are read as ``(SELECT current_setting(…))``, so PostgreSQL evaluates them once per statement (an
initplan) rather than once per row, and the ``org_id`` indexes serve the filter.

A new row's ``org_id`` defaults to the transaction's organisation; a service's row that belongs to a run (an
event, an attempt, a GitHub check) takes the run's, filled in by a trigger when the transaction names none.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

APP_ROLE = "devart_app"
ORG = "(SELECT current_setting('devart.org_id', true))"
ROLE = "(SELECT current_setting('devart.role', true))"
#: Operational tables: org-scoped, and read-only for viewers.
OPERATIONAL = ["runs", "task_attempts", "events", "pipeline_versions", "agents", "lanes", "agent_skill_stats",
               "dead_letters", "budgets", "github_repositories", "github_runs", "github_checks", "github_reviews"]
#: (``github_deliveries`` stays global: GitHub's delivery ids, kept to drop redeliveries, arrive before anyone knows
#: which organisation a delivery is for, and many are for none.)
#: Identity tables scoped to an organisation, which every member writes to (their tokens, their audited writes).
IDENTITY = ["memberships", "api_tokens", "audit_log"]
#: Tables whose rows belong to a run: a service's insert takes the run's organisation.
RUN_BOUND = ["task_attempts", "events", "github_runs", "github_checks", "github_reviews"]
#: New primary keys: names are unique within an organisation, not across them.
KEYS = {"pipeline_versions": ("org_id", "name", "version"), "lanes": ("org_id", "name"),
        "budgets": ("org_id", "scope", "name")}


def upgrade() -> None:
    op.execute(f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
            CREATE ROLE {APP_ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
        END IF;
    END $$""")
    op.execute(f"GRANT {APP_ROLE} TO CURRENT_USER")
    # A service's row about no run it can find (a sandbox swept after its run was deleted, say) is the default
    # organisation's; a tenant's transaction that names no organisation still fails, on the NOT NULL.
    op.execute(
        "CREATE FUNCTION devart_run_org() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.org_id IS NULL THEN "
        "NEW.org_id := coalesce((SELECT org_id FROM runs WHERE id = NEW.run_id), "
        "CASE WHEN current_setting('devart.role', true) = 'system' THEN 'default' END); "
        "END IF; RETURN NEW; END $$"
    )
    for table in OPERATIONAL:
        op.execute(f"ALTER TABLE {table} ADD COLUMN org_id varchar NOT NULL DEFAULT 'default' "
                   "REFERENCES organisations (id)")
        op.execute(f"ALTER TABLE {table} ALTER COLUMN org_id SET DEFAULT "
                   "nullif(current_setting('devart.org_id', true), '')")
        op.execute(f"CREATE INDEX ix_{table}_org_id ON {table} (org_id)")
    op.execute("CREATE INDEX runs_org_created ON runs (org_id, created_at)")
    for table, columns in KEYS.items():
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
        op.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({', '.join(columns)})")
    op.execute("ALTER TABLE audit_log ADD FOREIGN KEY (org_id) REFERENCES organisations (id)")
    for table in RUN_BOUND:
        op.execute(f"CREATE TRIGGER {table}_run_org BEFORE INSERT ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION devart_run_org()")
    tenant = f"org_id = {ORG} OR {ROLE} = 'system'"
    for table in [*OPERATIONAL, *IDENTITY]:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY {table}_tenant ON {table} USING ({tenant}) WITH CHECK ({tenant})")
    for table in OPERATIONAL:
        not_viewer = f"{ROLE} IS DISTINCT FROM 'viewer'"
        op.execute(f"CREATE POLICY {table}_viewer_insert ON {table} AS RESTRICTIVE FOR INSERT "
                   f"WITH CHECK ({not_viewer})")
        op.execute(f"CREATE POLICY {table}_viewer_update ON {table} AS RESTRICTIVE FOR UPDATE USING ({not_viewer})")
        op.execute(f"CREATE POLICY {table}_viewer_delete ON {table} AS RESTRICTIVE FOR DELETE USING ({not_viewer})")
    # Organisations: a member's own, or all of them for the services (creating one, listing a user's).
    op.execute("ALTER TABLE organisations ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE organisations FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY organisations_tenant ON organisations USING (id = {ORG} OR {ROLE} = 'system') "
               f"WITH CHECK ({ROLE} = 'system')")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
    op.execute(f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {APP_ROLE}")
    op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES "
               f"TO {APP_ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}")


def downgrade() -> None:
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {APP_ROLE}")
    op.execute(f"ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {APP_ROLE}")
    op.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {APP_ROLE}")
    op.execute("DROP POLICY organisations_tenant ON organisations")
    op.execute("ALTER TABLE organisations NO FORCE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE organisations DISABLE ROW LEVEL SECURITY")
    for table in OPERATIONAL:
        for kind in ("insert", "update", "delete"):
            op.execute(f"DROP POLICY {table}_viewer_{kind} ON {table}")
    for table in [*OPERATIONAL, *IDENTITY]:
        op.execute(f"DROP POLICY {table}_tenant ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for table in RUN_BOUND:
        op.execute(f"DROP TRIGGER {table}_run_org ON {table}")
    op.execute("ALTER TABLE audit_log DROP CONSTRAINT audit_log_org_id_fkey")
    for table, columns in KEYS.items():
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
        op.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({', '.join(c for c in columns if c != 'org_id')})")
    op.execute("DROP INDEX runs_org_created")
    for table in OPERATIONAL:
        op.execute(f"ALTER TABLE {table} DROP COLUMN org_id")
    op.execute("DROP FUNCTION devart_run_org()")
