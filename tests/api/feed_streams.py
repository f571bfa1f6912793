"""Live event streams for the feed's tests: open many, read the ids they receive, wait for one."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core.database import db
from tests.stack import sql


def publish_events(kind: str, count: int = 1, message_bytes: int = 10) -> list[int]:
    """Insert ``count`` events of ``kind`` in one statement (one notification); their ids, in order."""
    rows = sql("INSERT INTO events (kind, message, data, created_at) SELECT :k, repeat('x', :m), '{}', now() "
               "FROM generate_series(1, :n) RETURNING id", k=kind, m=message_bytes, n=count)
    return sorted(r["id"] for r in rows)


class Reader:
    """One open stream: the ids of the events it has read so far, and a way to wait for one."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.ids: list[int] = []
        self.connected = asyncio.Event()
        self._arrived = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for line in self.response.aiter_lines():
            if line.startswith("retry:"):
                self.connected.set()
            elif line.startswith("data: "):
                self.ids.append(json.loads(line[6:])["id"])
                self._arrived.set()

    async def wait_for(self, event_id: int, deadline: float) -> None:
        async with asyncio.timeout(deadline):
            while event_id not in self.ids:
                self._arrived.clear()
                if self.task.done():
                    raise AssertionError(f"the stream ended before event {event_id}: {self.task.exception()!r}")
                await self._arrived.wait()


def bearer() -> dict[str, str]:
    """The first administrator's authorization header (the test stack's environment is this process's)."""
    return {"Authorization": f"Bearer {os.environ['DEVART_ADMIN_TOKEN']}"}


async def open_streams(stack: AsyncExitStack, url: str, count: int, kind: str, source: str = "127.0.0.1",
                       after: int | None = None) -> list[Reader]:
    """``count`` streams of events of ``kind``, each on its own connection from ``source``, all subscribed; resuming
    after event ``after`` if given."""
    transport = httpx.AsyncHTTPTransport(local_address=source, limits=httpx.Limits(max_connections=count + 10))
    client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, transport=transport, timeout=60,
                                                               headers=bearer()))

    async def one() -> Reader:
        headers = {"Last-Event-ID": str(after)} if after is not None else {}
        response = await stack.enter_async_context(
            client.stream("GET", "/v1/events/stream", params={"kind": kind}, headers=headers))
        assert response.status_code == 200, (await response.aread()).decode()
        return Reader(response)

    readers = [await one() for _ in range(count)]
    for reader in readers:
        stack.callback(reader.task.cancel)
    await asyncio.wait_for(asyncio.gather(*(r.connected.wait() for r in readers)), 60)
    return readers


#: How long the late transaction stays open: past the 2 s after which the feed used to give up on a missing id.
HOLD = 5.0


@asynccontextmanager
async def transaction() -> AsyncIterator[AsyncSession]:
    """A session of its own engine (the suite's cached one belongs to another event loop)."""
    engine = create_async_engine(db.database_url())
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            yield session
    finally:
        await engine.dispose()
