"""An event id is taken only by a transaction that already has its transaction id (xid).

The live feed delivers events in id order and must never skip one that commits late (a transaction holding a lock
across a Temporal call). A missing id is either still held by an open transaction or lost to a rollback; the feed
tells them apart with PostgreSQL snapshots (``api.services.listener``), which list the open transactions that have an
xid. An id taken before its transaction had one (a plain ``nextval`` is not a write) would be invisible there for a
moment, and the feed could take it for a rollback. ``devart_event_id()`` assigns the xid first, then draws the id;
it is the column's default and what ``core.events.reserve_id`` calls.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE FUNCTION devart_event_id() RETURNS bigint LANGUAGE plpgsql VOLATILE AS "
        "$$ BEGIN PERFORM pg_current_xact_id(); RETURN nextval('events_id_seq'); END $$"
    )
    op.execute("ALTER TABLE events ALTER COLUMN id SET DEFAULT devart_event_id()")


def downgrade() -> None:
    op.execute("ALTER TABLE events ALTER COLUMN id SET DEFAULT nextval('events_id_seq'::regclass)")
    op.execute("DROP FUNCTION devart_event_id()")
