"""How the chaos harness reaches a stack whose parts come and go: its database, Temporal, and polling with deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import create_engine, text
from temporalio.client import Client

from devart.core.temporal import connect


class Database:
    """Plain synchronous queries on the stack's PostgreSQL, run on a thread (the harness only reads)."""

    def __init__(self, url: str) -> None:
        self._engine = create_engine(url, pool_pre_ping=True)

    def _rows(self, query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(query), params)]

    async def rows(self, query: str, **params: Any) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._rows, query, params)

    def close(self) -> None:
        self._engine.dispose()


class Temporal:
    """A Temporal client that reconnects after the server was killed."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._client: Client | None = None

    async def client(self) -> Client:
        if self._client is None:
            self._client = await connect(self.address)
        return self._client

    def forget(self) -> None:
        self._client = None


async def until(check: Callable[[], Awaitable[bool]], *, deadline: float, what: str, every: float = 0.2) -> None:
    """Poll ``check`` (errors count as not yet) until it holds; raise ``TimeoutError`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    last: BaseException | None = None
    while time.monotonic() < end:
        try:
            if await check():
                return
        except Exception as exc:  # the part being checked may still be starting
            last = exc
        await asyncio.sleep(every)
    raise TimeoutError(f"{what} not within {deadline:.0f}s" + (f" (last error: {last!r})" if last else ""))
