"""Database engine, sessions and migrations.

``DATABASE_URL`` picks any PostgreSQL with pgvector; unset, the embedded server is started under the state
folder. Every process resolves the URL the same way, so the API, the worker and the CLI share one database.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from core import settings


@lru_cache
def database_url() -> str:
    """The URL every process uses; starts the embedded server when none is configured."""
    url = settings.DatabaseSettings().database_url
    if url:
        return url
    from core.embedded import ensure_postgres

    url = ensure_postgres(settings.state().root)
    # Children (worker, agents, API) reuse it instead of each resolving the embedded server again.
    os.environ["DATABASE_URL"] = url
    return url


@lru_cache
def engine() -> AsyncEngine:
    return create_async_engine(database_url(), pool_size=10, max_overflow=10, pool_pre_ping=True)


@lru_cache
def _sessions() -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine(), class_=AsyncSession, expire_on_commit=False)


@asynccontextmanager
async def session() -> AsyncIterator[AsyncSession]:
    """A session that commits on success and rolls back on error."""
    async with _sessions()() as s:
        try:
            yield s
            await s.commit()
        except BaseException:
            await s.rollback()
            raise


def upgrade(revision: str = "head") -> None:
    """Apply Alembic migrations up to ``revision`` (idempotent)."""
    from alembic import command
    from alembic.config import Config

    import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", database_url().replace("%", "%%"))
    command.upgrade(cfg, revision)
