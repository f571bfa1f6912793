"""A run's start in the feed, once, whoever records it.

The API records a run's start once the run's workflow exists, in a transaction after Temporal answered: an API
killed between the two leaves a run that goes on without its start in the feed. So three writers may record it:
the API (the usual one), the workflow's end record (``activities.records``) and the sweep (``workers.sweeper``), for
a run still going. Each locks the run's row before it looks, so writers of one run take turns, and only the one that
finds no start in the feed adds it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.domain.events import add_event

STARTED = "run.started"
FINISHED = "run.finished"
#: Locks the run's row: the feed is read after it, in a statement of its own (a fresh snapshot under READ COMMITTED).
_LOCK = text("SELECT pipeline FROM runs WHERE id = :run_id FOR UPDATE")
#: The run's start and end as far as the feed has them.
_IN_FEED = text("SELECT DISTINCT kind FROM events WHERE run_id = :run_id AND kind IN ('run.started', 'run.finished')")
#: Which of these runs have their start in the feed.
_STARTED_AMONG = text("SELECT DISTINCT run_id FROM events WHERE run_id = ANY(:ids) AND kind = 'run.started'")


async def in_feed(session: AsyncSession, run_id: str) -> set[str]:
    """Which of the run's start and end the feed has; read with the run's row locked, or a writer may be missed."""
    return {str(kind) for kind in (await session.execute(_IN_FEED, {"run_id": run_id})).scalars()}


async def started_among(session: AsyncSession, run_ids: list[str]) -> set[str]:
    """Those of ``run_ids`` whose start the feed has, in one query: a hint for choosing whom to look at, read
    without locks (``record_started`` looks again under the row's lock)."""
    return {str(r) for r in (await session.execute(_STARTED_AMONG, {"ids": run_ids})).scalars()} if run_ids else set()


def add_started(session: AsyncSession, run_id: str, pipeline: str, *, late: str | None = None) -> None:
    """Queue the run's start on ``session``; ``late`` says why someone other than the API recorded it."""
    data: dict[str, Any] = {"recorded_late": late} if late else {}
    add_event(session, STARTED, "run running", run_id=run_id, pipeline=pipeline, status="running", **data)


async def record_started(session: AsyncSession, run_id: str, *, late: str | None = None) -> bool:
    """Lock the run's row and add its start unless the feed has it; True when it was added (commit to keep it)."""
    pipeline = (await session.execute(_LOCK, {"run_id": run_id})).scalar_one_or_none()
    if pipeline is None or STARTED in await in_feed(session, run_id):
        return False
    add_started(session, run_id, pipeline, late=late)
    return True
