"""Which organisations have a budget at all, so the stage's budget check costs nothing where none applies.

Most deployments set no budget; a check that reads the budgets table for every stage would then be a transaction
for nothing. The pipeline worker keeps one LISTEN connection on ``devart_budgets_changed`` (a trigger on
``budgets`` notifies it on every change, migration 0013) and, after each notification, reads again the set of
organisations with a budget. The set is trusted only while that connection is up: before the first read, and from
the moment the connection drops until it is back and the set read again, every check reads the table as before.
LISTEN comes before the read, so a change committed in between is notified, not missed.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

import psycopg

from devart.core.database import db

log = logging.getLogger(__name__)

CHANNEL = "devart_budgets_changed"
_ORGS = "SELECT DISTINCT coalesce(org_id, '') FROM budgets"
#: Seconds between attempts to connect again after the connection dropped.
RECONNECT_SECONDS = 1.0


class BudgetWatch:
    """The organisations with a budget, as this process last read them; None while that may be out of date."""

    def __init__(self) -> None:
        self._orgs: frozenset[str] | None = None

    def none_for(self, org: str | None) -> bool:
        """True only when it is known that ``org`` has no budget (the check may be skipped)."""
        return org is not None and self._orgs is not None and org not in self._orgs

    async def run(self, stop: asyncio.Event, url: str | None = None) -> None:
        """Keep the set current until ``stop`` is set, reconnecting after any failure."""
        url = url or db.app_database_url().replace("postgresql+psycopg://", "postgresql://", 1)
        while not stop.is_set():
            try:
                await self._watch(url, stop)
            except (psycopg.Error, OSError) as exc:
                log.warning("budget watch: PostgreSQL connection lost (%s); every check reads the budgets meanwhile",
                            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            finally:
                self._orgs = None
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RECONNECT_SECONDS)

    async def _watch(self, url: str, stop: asyncio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True, keepalives=1, keepalives_idle=30,
                                                         keepalives_interval=10, keepalives_count=3) as conn:
            await conn.execute("SELECT set_config('devart.role', 'system', false)")  # every organisation's budgets
            await conn.execute(f"LISTEN {CHANNEL}")
            await self._read(conn)
            while not stop.is_set():
                changed = False
                async for _ in conn.notifies(timeout=1.0, stop_after=1):
                    changed = True
                if changed:
                    await self._read(conn)

    async def _read(self, conn: psycopg.AsyncConnection[tuple[str]]) -> None:
        rows = await (await conn.execute(_ORGS)).fetchall()
        self._orgs = frozenset(str(r[0]) for r in rows)


#: The pipeline worker's watch (``workers.pipeline_worker`` runs it; ``activities.budgets`` reads it).
WATCH = BudgetWatch()
