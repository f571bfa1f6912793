"""Writing to the activity feed: one row per significant event, in the caller's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core.database.models import Event


def add_event(
    session: AsyncSession,
    kind: str,
    message: str,
    *,
    run_id: str | None = None,
    stage: str | None = None,
    agent: str | None = None,
    event_id: int | None = None,
    **data: Any,
) -> None:
    """Queue an event on ``session``; it is stored when the session commits, atomically with the change it reports.

    ``event_id``, from ``reserve_id``, places the event in the feed where it happened rather than where it committed.
    """
    session.add(Event(id=event_id, kind=kind, message=message, run_id=run_id, stage=stage, agent=agent, data=data))


async def reserve_id(session: AsyncSession) -> int:
    """The id of an event that will be added once something outside PostgreSQL has happened.

    The feed is read in id order. An event whose id is taken before a slow step, and committed after it, keeps its
    place ahead of the events others write meanwhile. The live feed waits for the id until this transaction has
    ended, however long it stays open: ``devart_event_id()`` (migration 0007) gives the transaction its xid before
    drawing the id, so the feed's snapshots show the id may still come (``api.feed.order``). Agents' reports no
    longer need it: they are recorded before Temporal hears of them, and the run's end settles them first
    (``domain.settle``); any transaction may still commit its events out of id order, which the feed handles the
    same way.
    """
    return int((await session.execute(text("SELECT devart_event_id()"))).scalar_one())


#: The PostgreSQL channel the live feed listens on; a notification means "new events were committed". A trigger on
#: ``events`` sends it (migration 0006), so it is delivered on commit, atomically with the events.
CHANNEL = "devart_events"
