"""One LISTEN connection per API process, shared by every live event stream; it hands out events in id order and
never skips one that commits late.

A stream used to hold a PostgreSQL connection of its own, so a few hundred anonymous streams exhausted the server's
connections. Now the first stream starts a listener that reads what was committed (one query per notification for
the whole process, on its own connection) and offers each event to every stream, through a bounded queue per
stream. The listener never waits on a stream: a stream whose queue is full is marked behind and catches up from the
table by id on its own (``feed.FeedStream``), so a client that stops reading costs the others nothing.

Events are handed out in id order, and never past a missing id that a transaction still open may commit: an event
committed late (a report holding its task's lock across a Temporal call) reaches every stream in its place, once
(``feed_order`` says how PostgreSQL snapshots tell such a hole from a rolled-back one). The cursor outlives a lost
connection: the listener reconnects with backoff and reads everything committed after the cursor.
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

from devart.api.feed.order import Barrier, Horizon, contiguous_until, in_progress
from devart.api.sse import SEP
from devart.core.database import db
from devart.core.errors import ServiceUnavailable
from devart.domain.events import CHANNEL

log = logging.getLogger(__name__)

#: How often the listener looks whether the transactions a hole waits on have ended (a rolled-back transaction
#: sends no notification).
BARRIER_POLL = 0.25
#: Longest wait for a notification: the listener then reads the table anyway, which also finds out that a silently
#: dropped connection is gone, and stops once no stream has been open for ``IDLE_LINGER``.
POLL_EVERY = 5.0
#: Events read per query.
BATCH = 500
#: A listener starting while transactions are open starts before the first hole among this many recent ids: one of
#: those transactions may still commit it. (Further back, a transaction would have stayed open while that many later
#: events committed.)
START_WINDOW = 10_000
#: A hole waited on this long is logged once, with the transactions it waits on: one left open by mistake would hold
#: the live feed back until it ends.
STALL_WARNING = 60.0
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
EVENT_COLUMNS = "e.id, e.org_id, e.kind, e.run_id, e.stage, e.agent, e.message, e.data, e.created_at"
#: Marks the listener's statements in ``pg_stat_activity``.
MARK = "/* event feed listener */"
#: The statement's own snapshot comes with every row, so the rows and the in-progress transactions agree.
_NEW = (f"{MARK} SELECT {EVENT_COLUMNS}, r.pipeline, pg_current_snapshot()::text AS snapshot, "
        "(SELECT max(id) FROM events) AS newest FROM events e "
        "LEFT JOIN runs r ON r.id = e.run_id WHERE e.id > %s ORDER BY e.id LIMIT %s")
_RECENT = f"{MARK} SELECT id, pg_current_snapshot()::text AS snapshot FROM events ORDER BY id DESC LIMIT %s"
_SNAPSHOT = f"{MARK} SELECT pg_current_snapshot()::text AS snapshot"


@dataclass(frozen=True)
class FeedEvent:
    """One event as streams filter it, with its Server-Sent Events frame encoded once for all of them."""

    id: int
    org: str
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
        return cls(row["id"], row["org_id"], row["kind"], row["run_id"], row["agent"], pipeline, frame)


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
        #: Since when the horizon has had a barrier, and whether that was logged.
        self._held_since: float | None = None
        self._held_logged = False
        #: Every event up to this id has been offered to the streams, or is missing for good.
        self.cursor: int | None = None
        #: What the listener knows of the holes past the cursor.
        self.horizon = Horizon()

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
                    # One connection reads every organisation's events for every stream; each stream keeps only its
                    # own organisation's (``Subscription``), as the application role acting as devart itself.
                    await conn.execute("SELECT set_config('devart.role', 'system', false)")
                    await conn.execute(f"LISTEN {CHANNEL}")
                    CONNECTS.inc()
                    if self.cursor is None:
                        self.cursor = await _start_point(conn, self.horizon)
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
        notified = True
        while True:
            if notified or self.horizon.barrier is None or await self._barrier_lifted(conn):
                await self._drain(conn)
            self._note_hold()
            idle = self._idle_since is not None and time.monotonic() - self._idle_since > self._idle_linger
            if not self._subscriptions and idle:
                # Reset before the connection closes (no await in between), so a stream arriving now starts afresh.
                self._task, self.cursor, self.horizon, self._ready = None, None, Horizon(), asyncio.Event()
                return
            notified = False
            async for _ in conn.notifies(timeout=BARRIER_POLL if self.horizon.barrier else POLL_EVERY, stop_after=1):
                notified = True

    def _note_hold(self) -> None:
        barrier = self.horizon.barrier
        if barrier is None:
            self._held_since, self._held_logged = None, False
        elif self._held_since is None:
            self._held_since = time.monotonic()
        elif not self._held_logged and time.monotonic() - self._held_since > STALL_WARNING:
            self._held_logged = True
            log.warning("event feed: events after %s wait for transactions %s to end (xid8; pg_stat_activity's "
                        "backend_xid is the low 32 bits): one of them may still commit a missing event id",
                        self.cursor, sorted(barrier.waits_on))

    async def _barrier_lifted(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> bool:
        """Whether the transactions the holes wait on have all ended (one short query, no rows read)."""
        row = await (await conn.execute(_SNAPSHOT)).fetchone()
        assert row is not None
        return self.horizon.lift(row["snapshot"])

    async def _drain(self, conn: psycopg.AsyncConnection[dict[str, Any]]) -> None:
        """Offer every event committed after the cursor up to the first hole that may still fill."""
        assert self.cursor is not None
        while True:
            rows = await (await conn.execute(_NEW, (self.cursor, BATCH))).fetchall()
            if not rows:
                return
            ids = [r["id"] for r in rows]
            safe = self.horizon.safe(self.cursor, ids, rows[0]["snapshot"], rows[0]["newest"])
            for row in rows:  # no await from here to the cursor's move: a stream catching up sees both or neither
                if row["id"] <= safe:
                    event = FeedEvent.from_row(row, row["pipeline"])
                    for subscription in list(self._subscriptions):
                        subscription.offer(event)
            self.cursor = safe
            if len(ids) < BATCH or safe < ids[-1]:
                return


async def _start_point(conn: psycopg.AsyncConnection[dict[str, Any]], horizon: Horizon) -> int:
    """Where a fresh listener starts: after the last event, or, while transactions are in progress, before the first
    hole among the recent ids, with every hole up to the last id waiting on those transactions."""
    rows = await (await conn.execute(_RECENT, (START_WINDOW,))).fetchall()
    if not rows:
        return 0
    ids, snapshot = sorted(r["id"] for r in rows), rows[0]["snapshot"]
    horizon.wait(Barrier(in_progress(snapshot), ids[-1]), snapshot)
    return contiguous_until(ids[0] - 1, ids, horizon.settled)


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Listener] = weakref.WeakKeyDictionary()


def shared() -> Listener:
    """This process's listener (one per event loop: an application served twice in one process gets two)."""
    loop = asyncio.get_running_loop()
    if (listener := _shared.get(loop)) is None:
        listener = _shared[loop] = Listener(db.app_database_url().replace("postgresql+psycopg://", "postgresql://", 1))
    return listener
