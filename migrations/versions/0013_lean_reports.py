"""A lean stage: an agent's report is recorded before Temporal hears of it, and budgets announce their changes.

``task_attempts.reported``: while an attempt is ``reporting`` (its claim holder's report is recorded, with its result
and cost, and is on its way to Temporal), the state it ends in once Temporal took it. So no transaction stays open
across the call to Temporal, and a run read as finished still shows its stages' results (``domain.reports``).

``devart_budgets_changed``: a trigger on ``budgets`` notifies the channel of that name on every change, so the
pipeline worker can skip the budget check for an organisation with no budget and know at once when one is set
(``domain.budget_cache``).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("task_attempts", sa.Column("reported", sa.String(), nullable=True))
    op.execute("""
        CREATE FUNCTION devart_budgets_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('devart_budgets_changed', '');
            RETURN NULL;
        END $$
    """)
    op.execute("CREATE TRIGGER budgets_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON budgets "
               "FOR EACH STATEMENT EXECUTE FUNCTION devart_budgets_changed()")


def downgrade() -> None:
    op.execute("DROP TRIGGER budgets_changed ON budgets")
    op.execute("DROP FUNCTION devart_budgets_changed()")
    op.drop_column("task_attempts", "reported")
