"""Writing to the activity feed: one row per significant event, in the caller's transaction."""

from __future__ import annotations

from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from core.models import Event


def add_event(
    session: AsyncSession,
    kind: str,
    message: str,
    *,
    run_id: str | None = None,
    stage: str | None = None,
    agent: str | None = None,
    **data: Any,
) -> None:
    """Queue an event on ``session``; it is stored when the session commits, atomically with the change it reports."""
    session.add(Event(kind=kind, message=message, run_id=run_id, stage=stage, agent=agent, data=data))


#: The PostgreSQL channel the live feed listens on; a notification means "new events were committed". A trigger on
#: ``events`` sends it (migration 0006), so it is delivered on commit, atomically with the events.
CHANNEL = "devart_events"
