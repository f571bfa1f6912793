"""One LISTEN connection per API process, shared by every live event stream.

A stream used to hold a PostgreSQL connection of its own, so a few hundred anonymous streams exhausted the server's
connections. Now the first stream starts a listener that reads what was committed (one query per notification for
the whole process, on its own connection) and offers each event to every stream, through a bounded queue per
stream. The listener never waits on a stream: a stream whose queue is full is marked behind and catches up from the
table by id on its own (``feed.FeedStream``), so a client that stops reading costs the others nothing.

Event ids come from a sequence, so a transaction that started earlier can commit a smaller id after a larger one
was read. The listener never moves past a missing id at once: it hands out events up to the gap and waits for the
missing one (up to ``GAP_WAIT``) before taking it for a rolled-back transaction. Its cursor outlives a lost
connection: it reconnects with backoff and reads everything committed after the cursor, so no event is lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client import Counter
from psycopg.rows import dict_row
from sse_starlette import ServerSentEvent

from api.sse import SEP
from core import db
from core.errors import ServiceUnavailable
from core.events import CHANNEL

log = logging.getLogger(__name__)

#: How long a gap in event ids is waited for before it is taken as a rolled-back transaction.
GAP_WAIT = 2.0
#: Longest wait for a notification: the listener then reads the table anyway, which also finds out that a silently
#: dropped connection is gone, and stops once no stream has been open for ``IDLE_LINGER``.
POLL_EVERY = 5.0
#: Events read per query.
BATCH = 500
#: Reconnection backoff after PostgreSQL dropped the connection: doubles from the first to the last.
RECONNECT_FIRST = 0.5
RECONNECT_LAST = 30.0
#: With no stream left, the connection is kept this long (a client reconnecting finds it open), then closed.
IDLE_LINGER = 30.0
#: How long a new stream waits for the listener's first connection before it is refused with a 503.
READY_TIMEOUT = 10.0

CONNECTS = Counter("devart_feed_listener_connects", "Times the live feed's LISTEN connection was opened")
RESYNCS = Counter("devart_feed_resyncs", "Streams whose queue overflowed, caught up from the events table")

#: Everything a stream sends and filters on, read once for every stream.
EVENT_COLUMNS = "e.id, e.kind, e.run_id, e.stage, e.agent, e.message, e.data, e.created_at"
_NEW = (f"SELECT {EVENT_COLUMNS}, r.pipeline FROM events e LEFT JOIN runs r ON r.id = e.run_id "
        "WHERE e.id > %s ORDER BY e.id LIMIT %s")


@dataclass(frozen=True)
class FeedEvent:
    """One event as streams filter it, with its Server-Sent Events frame encoded once for all of them."""

    id: int
    kind: str
    run_id: str | None
    agent: str | None
    pipeline: str | None
    frame: bytes

    @classmethod
    def from_row(cls, row: Mapping[str, Any], pipeline: str | None = None) -> FeedEvent:
        body = {"id": row["id"], "kind": row["kind"], "run_id": row["run_id"], "stage": row["stage"],
                "agent": row["agent"], "message": row["message"], "data": row["data"],
                "created_at": row["created_at"].isoformat()}
        frame = ServerSentEvent(json.dumps(body), id=str(row["id"]), event=row["kind"], sep=SEP).encode()
        return cls(row["id"], row["kind"], row["run_id"], row["agent"], pipeline, frame)


def contiguous_until(after: int, ids: list[int]) -> int:
    """The largest id up to which every id after ``after`` is committed."""
    last = after
    for i in ids:
        if i != last + 1:
            break
        last = i
    return last


class Subscription:
    """One stream's view of the listener: the matching events since it last caught up, at most ``size`` of them."""

    def __init__(self, listener: Listener, match: Callable[[FeedEvent], bool], size: int) -> None:
        self._listener = listener
        self._match = match
        self._size = size
        self._events: deque[FeedEvent] = deque()
        self._arrived = asyncio.Event()
        #: Set when the queue overflowed (and was emptied): the stream must read the table up to the cursor.
        self.behind = True

    def offer(self, event: FeedEvent) -> None:
        """Called by the listener for every event; never waits."""
        if self.behind or not self._match(event):
            return
        if len(self._events) >= self._size:
            self._events.clear()
            self.behind = True
            RESYNCS.inc()
        else:
            self._events.append(event)
        self._arrived.set()

    def catch_up_point(self) -> int:
        """Start queueing again and return the id up to which the stream must read the table itself.

        Synchronous, like the listener's hand-out: every event after the returned id reaches the queue.
        """
        self.behind = False
        self._events.clear()
        return self._listener.cursor or 0

    async def next(self) -> list[FeedEvent]:
        """The events queued so far, once there is one (empty when the stream fell behind).

        Waits as long as it takes: the response keeps an idle connection open with its own pings (``api.sse``).
        """
        if not self._events and not self.behind:
            self._arrived.clear()
            await self._arrived.wait()
        events = list(self._events)
        self._events.clear()
        return events

    def close(self) -> None:
        self._listener.unsubscribe(self)


class Listener:
    """The process's LISTEN connection and the streams it feeds; started by the first stream, stopped when idle."""

    def __init__(self, url: str, *, idle_linger: float = IDLE_LINGER) -> None:
        self._url = url
        self._idle_linger = idle_linger
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._idle_since: float | None = None
        #: Every event up to this id has been offered to the streams (or was a gap given up on).
        self.cursor: int | None = None

    async def subscribe(self, match: Callable[[FeedEvent], bool], size: int) -> Subscription:
        """A new stream's subscription, once the listener knows where the table ends."""
        subscription = Subscription(self, match, size)
        self._subscriptions.add(subscription)
        self._idle_since = None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="event feed listener")
        try:
            await asyncio.wait_for(self._ready.wait(), READY_TIMEOUT)
        except TimeoutError:
            self.unsubscribe(subscription)
            raise ServiceUnavailable(f"the event feed could not reach PostgreSQL within {READY_TIMEOUT:.0f}s; "
                                     "try again shortly") from None
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        if not self._subscriptions:
            self._idle_since = time.monotonic()

    @property
    def streams(self) -> int:
        return len(self._subscriptions)

    async def _run(self) -> None:
        delay = RECONNECT_FIRST
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, row_factory=dict_row,
                    keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    CONNECTS.inc()
                    if self.cursor is None:
                        self.cursor = await _start_point(conn)
                        self._ready.set()
                    else:
                        log.info("event feed: listening again from event %s", self.cursor)
                    delay = RECONNECT_FIRST
                    await self._serve(conn)
                    return  # idle: _serve already reset the listener for the next stream
            except (psycopg.Error, OSError) as exc:
                why = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                log.warning("event feed: PostgreSQL connection lost (%s); reconnecting in %.1fs", why, delay)
            except Exception:  # a bug must not end the feed of every stream for good
                log.exception("event feed: the listener failed; restarting in %.1fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_LAST)

    async def _serve(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> None:
        gap_since: float | None = None
        while True:
            gap_since = await self._drain(conn, gap_since)
            idle = self._idle_since is not None and time.monotonic() - self._idle_since > self._idle_linger
            if not self._subscriptions and idle:
                # Reset before the connection closes (no await in between), so a stream arriving now starts afresh.
                self._task, self.cursor, self._ready = None, None, asyncio.Event()
                return
            async for _ in conn.notifies(timeout=GAP_WAIT / 4 if gap_since else POLL_EVERY, stop_after=1):
                pass

    async def _drain(self, conn: psycopg.AsyncConnection[dict[str, Any]], gap_since: float | None) -> float | None:
        """Offer every event committed after the cursor; returns since when a gap has been waited for, if one is."""
        assert self.cursor is not None
        while True:
            rows = await (await conn.execute(_NEW, (self.cursor, BATCH))).fetchall()
            ids = [r["id"] for r in rows]
            safe = contiguous_until(self.cursor, ids)
            if ids and safe < ids[-1]:  # a hole: wait for it, unless it has been open too long
                gap_since = gap_since or time.monotonic()
                if time.monotonic() - gap_since > GAP_WAIT:
                    safe, gap_since = ids[-1], None
            else:
                gap_since = None
            for row in rows:  # no await from here to the cursor's move: a stream catching up sees both or neither
                if row["id"] <= safe:
                    event = FeedEvent.from_row(row, row["pipeline"])
                    for subscription in list(self._subscriptions):
                        subscription.offer(event)
            self.cursor = max(self.cursor, safe)
            if len(ids) < BATCH or safe < ids[-1]:
                return gap_since


async def _start_point(conn: psycopg.AsyncConnection[dict[str, Any]]) -> int:
    """Where a fresh listener starts: the end of the recent events, or before the first hole among them.

    A hole among the last ids may be a transaction still committing: starting before it lets the usual gap wait
    decide, so an event committed just as the first stream connects is not skipped.
    """
    rows = await (await conn.execute(
        "SELECT id FROM (SELECT id FROM events ORDER BY id DESC LIMIT %s) recent ORDER BY id", (BATCH,))).fetchall()
    ids = [r["id"] for r in rows]
    return contiguous_until(ids[0] - 1, ids) if ids else 0


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Listener] = weakref.WeakKeyDictionary()


def shared() -> Listener:
    """This process's listener (one per event loop: an application served twice in one process gets two)."""
    loop = asyncio.get_running_loop()
    if (listener := _shared.get(loop)) is None:
        listener = _shared[loop] = Listener(db.database_url().replace("postgresql+psycopg://", "postgresql://", 1))
    return listener
