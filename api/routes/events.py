"""The activity feed: recent events, and a live Server-Sent Events stream that resumes by event id."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request

from devart.api.auth import Caller, access
from devart.api.errors import ErrorBody
from devart.api.feed import feed, stream_caps
from devart.api.sse import EventStreamResponse
from devart.core import settings
from devart.domain.identity import Principal, Role

router = APIRouter(prefix="/v1/events", tags=["events"])


def _filters(caller: Principal, run_id: str | None, pipeline: str | None, agent: str | None,
             kind: str | None) -> feed.Filters:
    return feed.Filters(org=caller.org, run_id=run_id, pipeline=pipeline, agent=agent, kind=kind)


@router.get("", **access(Role.VIEWER))
async def list_events(
    caller: Caller,
    run_id: str | None = None, pipeline: str | None = None, agent: str | None = None, kind: str | None = None,
    after: int = Query(default=0, ge=0), limit: int = Query(default=100, ge=1, le=1000),
) -> list[dict[str, Any]]:
    return await feed.fetch(after, _filters(caller, run_id, pipeline, agent, kind), limit)


@router.get("/stream", responses={
    200: {"description": "An endless text/event-stream of the matching events.", "content": {"text/event-stream": {}}},
    429: {"model": ErrorBody, "description": "Past the streams allowed per client address or per API process; the "
          "message names the limit, Retry-After says when to try again."},
    503: {"model": ErrorBody, "description": "The feed cannot reach PostgreSQL."},
}, **access(Role.VIEWER))
async def stream(
    request: Request, caller: Caller,
    run_id: str | None = None, pipeline: str | None = None, agent: str | None = None, kind: str | None = None,
    after: int = Query(default=0, ge=0, description="Start after this event id (Last-Event-ID wins if set)."),
    last_event_id: Annotated[int | None, Header(alias="Last-Event-ID")] = None,
) -> EventStreamResponse:
    """Server-Sent Events: every matching event after the given id, then live ones; reconnect with
    ``Last-Event-ID`` to resume without gaps or repeats. 429 (with Retry-After) past the stream caps."""
    try:
        slot = stream_caps.shared().admit(request.client.host if request.client else "unknown")
    except stream_caps.StreamRefused as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    cfg = settings.feed()
    start = last_event_id if last_event_id is not None else after
    opened = await feed.open_stream(start, _filters(caller, run_id, pipeline, agent, kind), slot, cfg.queue_size)
    return EventStreamResponse(opened.frames(), send_timeout=cfg.send_timeout, on_close=opened.close)
