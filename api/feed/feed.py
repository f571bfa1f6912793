"""The activity feed: events from PostgreSQL, live through the process's shared listener, resumable by event id.

A stream first reads the table from the client's ``Last-Event-ID`` up to the listener's cursor, then takes the live
events the listener queues for it. When its queue overflowed (the client reads slower than events arrive), it reads
the table again from the last event it sent: the client loses nothing and repeats nothing, and the listener never
waits on it. Resuming from the table rather than disconnecting the client: a burst (a run of many stages finishing
together) must not make every dashboard reconnect at once, and catching up costs the same query a reconnect would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sse_starlette import ServerSentEvent

from devart.api.feed import listener
from devart.api.feed.listener import EVENT_COLUMNS, FeedEvent
from devart.api.feed.stream_caps import Slot
from devart.api.sse import SEP
from devart.core.database import db, tenancy
from devart.core.database.tenancy import SYSTEM

#: Events read per query.
BATCH = 500
#: What an EventSource waits before it reconnects (sent once, as the stream's first line), in milliseconds.
RECONNECT_MS = 2000


@dataclass(frozen=True)
class Filters:
    """What a reader asked for. ``org`` is the reader's organisation: the feed reads as devart's own services (one
    listener serves every organisation), so the organisation is always part of the filter."""

    org: str
    run_id: str | None = None
    pipeline: str | None = None
    agent: str | None = None
    kind: str | None = None

    def sql(self) -> tuple[str, dict[str, Any]]:
        clauses, params = ["e.org_id = :org"], {"org": self.org}
        if self.run_id:
            clauses.append("e.run_id = :run_id")
            params["run_id"] = self.run_id
        if self.pipeline:
            clauses.append("e.run_id IN (SELECT id FROM runs WHERE pipeline = :pipeline)")
            params["pipeline"] = self.pipeline
        if self.agent:
            clauses.append("e.agent = :agent")
            params["agent"] = self.agent
        if self.kind:
            clauses.append("(e.kind = :kind OR e.kind LIKE :kind_prefix)")
            params.update(kind=self.kind, kind_prefix=f"{self.kind}.%")
        return " AND " + " AND ".join(clauses), params

    def matches(self, event: FeedEvent) -> bool:
        """The same choice as ``sql``, for an event the listener offers."""
        return (event.org == self.org and (not self.run_id or event.run_id == self.run_id)
                and (not self.pipeline or event.pipeline == self.pipeline)
                and (not self.agent or event.agent == self.agent)
                and (not self.kind or event.kind == self.kind or event.kind.startswith(f"{self.kind}.")))


async def _read(after: int, filters: Filters, limit: int, until: int | None = None) -> list[Any]:
    where, params = filters.sql()
    if until is not None:
        where += " AND e.id <= :until"
        params["until"] = until
    async with db.session() as s:
        await tenancy.switch(s, SYSTEM)  # the organisation is in the filter
        rows = (await s.execute(text(
            f"SELECT {EVENT_COLUMNS} FROM events e WHERE e.id > :after{where} ORDER BY e.id LIMIT :limit"),
            {"after": after, "limit": limit, **params})).all()
    return [r._mapping for r in rows]


async def fetch(after: int, filters: Filters, limit: int = BATCH) -> list[dict[str, Any]]:
    """Events after ``after`` that match, in id order."""
    return [{**r, "created_at": r["created_at"].isoformat()} for r in await _read(after, filters, limit)]


class FeedStream:
    """One client's stream: its admission slot and its subscription, both released by ``close``."""

    def __init__(self, subscription: listener.Subscription, slot: Slot, after: int, filters: Filters) -> None:
        self._subscription = subscription
        self._slot = slot
        self._last = after
        self._filters = filters

    async def frames(self) -> AsyncIterator[ServerSentEvent | bytes]:
        """Server-Sent Events, forever: matching events in id order, then live ones as the listener hands them out."""
        yield ServerSentEvent(retry=RECONNECT_MS, sep=SEP)
        while True:
            if self._subscription.behind:  # first, and whenever the queue overflowed
                until = self._subscription.catch_up_point()
                while self._last < until:
                    batch = await _read(self._last, self._filters, BATCH, until)
                    for row in batch:
                        yield FeedEvent.from_row(row).frame
                    self._last = batch[-1]["id"] if len(batch) == BATCH else until
                continue
            for live in await self._subscription.next():
                if live.id > self._last:  # a client resuming past the listener's cursor has seen it
                    yield live.frame
                    self._last = live.id

    def close(self) -> None:
        self._subscription.close()
        self._slot.release()


async def open_stream(after: int, filters: Filters, slot: Slot, queue_size: int) -> FeedStream:
    """Subscribe to the process's listener (starting it if it is not running yet) for a new stream."""
    try:
        subscription = await listener.shared().subscribe(filters.matches, queue_size)
    except BaseException:
        slot.release()
        raise
    return FeedStream(subscription, slot, after, filters)
