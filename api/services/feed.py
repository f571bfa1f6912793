"""The activity feed: events from PostgreSQL, live through LISTEN/NOTIFY, resumable by event id.

Event ids come from a sequence, so a transaction that started earlier can commit a smaller id after a larger one
was already sent. The stream therefore never jumps over a missing id at once: it delivers up to the gap and waits
for the missing event (up to ``GAP_WAIT``) before deciding it belonged to a rolled-back transaction. That is what
makes resuming with ``Last-Event-ID`` lose nothing and repeat nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import text

from core import db
from core.events import CHANNEL

#: How long a gap in event ids is waited for before it is taken as a rolled-back transaction.
GAP_WAIT = 2.0
#: A comment line is sent this often so proxies and clients keep an idle stream open.
KEEPALIVE = 15.0
#: Events read per query.
BATCH = 500


@dataclass(frozen=True)
class Filters:
    run_id: str | None = None
    pipeline: str | None = None
    agent: str | None = None
    kind: str | None = None

    def sql(self) -> tuple[str, dict[str, Any]]:
        clauses, params = [], {}
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
        return (" AND " + " AND ".join(clauses)) if clauses else "", params


def _row(r: Any) -> dict[str, Any]:
    return {"id": r.id, "kind": r.kind, "run_id": r.run_id, "stage": r.stage, "agent": r.agent,
            "message": r.message, "data": r.data, "created_at": r.created_at.isoformat()}


async def fetch(after: int, filters: Filters, limit: int = BATCH) -> tuple[list[dict[str, Any]], list[int]]:
    """Events after ``after`` that match, and every committed id after ``after`` (to see gaps)."""
    where, params = filters.sql()
    async with db.session() as s:
        rows = (await s.execute(text(
            f"SELECT e.* FROM events e WHERE e.id > :after{where} ORDER BY e.id LIMIT :limit"),
            {"after": after, "limit": limit, **params})).all()
        ids = [r[0] for r in (await s.execute(text(
            "SELECT id FROM events WHERE id > :after ORDER BY id LIMIT :limit"), {"after": after, "limit": limit}))]
    return [_row(r) for r in rows], ids


def contiguous_until(after: int, ids: list[int]) -> int:
    """The largest id up to which every id after ``after`` is committed."""
    last = after
    for i in ids:
        if i != last + 1:
            break
        last = i
    return last


async def stream(after: int, filters: Filters) -> AsyncIterator[str]:
    """Server-sent events, forever: matching events in id order, then live ones as they are committed."""
    url = db.database_url().replace("postgresql+psycopg://", "postgresql://", 1)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as listener:
        await listener.execute(f"LISTEN {CHANNEL}")
        cursor, gap_since = after, None
        while True:
            events, ids = await fetch(cursor, filters)
            safe = contiguous_until(cursor, ids)
            if ids and safe < ids[-1]:  # a hole: wait for it, unless it has been open too long
                gap_since = gap_since or time.monotonic()
                if time.monotonic() - gap_since > GAP_WAIT:
                    safe, gap_since = ids[-1], None
            else:
                gap_since = None
            for event in events:
                if event["id"] <= safe:
                    yield f"id: {event['id']}\nevent: {event['kind']}\ndata: {json.dumps(event)}\n\n"
            cursor = max(cursor, safe)
            if len(ids) >= BATCH and safe == ids[-1]:
                continue  # more to read right away
            woke = False
            async for _ in listener.notifies(timeout=GAP_WAIT / 4 if gap_since else KEEPALIVE, stop_after=1):
                woke = True
            if not woke and not gap_since:
                yield ": keepalive\n\n"
