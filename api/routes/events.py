"""The activity feed: recent events, and a live Server-Sent Events stream that resumes by event id."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from api.services import feed

router = APIRouter(prefix="/v1/events", tags=["events"])


def _filters(run_id: str | None, pipeline: str | None, agent: str | None, kind: str | None) -> feed.Filters:
    return feed.Filters(run_id=run_id, pipeline=pipeline, agent=agent, kind=kind)


@router.get("")
async def list_events(
    run_id: str | None = None, pipeline: str | None = None, agent: str | None = None, kind: str | None = None,
    after: int = Query(default=0, ge=0), limit: int = Query(default=100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    events, _ = await feed.fetch(after, _filters(run_id, pipeline, agent, kind), limit)
    return events


@router.get("/stream")
async def stream(
    run_id: str | None = None, pipeline: str | None = None, agent: str | None = None, kind: str | None = None,
    after: int = Query(default=0, ge=0, description="Start after this event id (Last-Event-ID wins if set)."),
    last_event_id: Annotated[int | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Server-Sent Events: every matching event after the given id, then live ones; reconnect with
    ``Last-Event-ID`` to resume without gaps or repeats."""
    start = last_event_id if last_event_id is not None else after
    return StreamingResponse(feed.stream(start, _filters(run_id, pipeline, agent, kind)),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
