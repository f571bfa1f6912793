"""The live feed's NOTIFY comes from a trigger on ``events``, not from a statement the application sends.

One statement fewer in every transaction that writes an event (several per run), and writers that bypass the ORM
notify the feed too. A statement-level trigger, so a transaction inserting many events still sends one
notification, as PostgreSQL folds identical notifications of a transaction anyway.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE FUNCTION devart_notify_events() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_notify('devart_events', ''); RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION devart_notify_events()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER events_notify ON events")
    op.execute("DROP FUNCTION devart_notify_events()")
