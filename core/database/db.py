"""Database engine, sessions and migrations.

``DATABASE_URL`` picks any PostgreSQL with pgvector; unset, the embedded server is started under the state
folder. Every process resolves the URL the same way, so the API, the worker and the CLI share one database.

Migrations run once, before the services: ``devart db upgrade`` (also run by ``devart up`` and compose's
``migrate`` job) applies them under a PostgreSQL advisory lock, so concurrent upgrades take turns and the schema is
migrated once. The API and the pipeline worker never migrate: ``require_current_schema`` makes them refuse to start
on a schema that is not the one their code needs, naming the command to run.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from devart.core import settings
from devart.core.errors import ServiceUnavailable

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

#: The advisory lock every schema upgrade holds: a fixed 64-bit key (the first 8 bytes of the SHA-256 of
#: "devart schema migrations"), so no other program on a shared server is likely to pick it.
MIGRATION_LOCK = 3795371350183336764
#: The command that migrates the schema, named by every refusal.
UPGRADE_COMMAND = "devart db upgrade"


class SchemaNotCurrent(ServiceUnavailable):
    """The database's schema is not the revision this code needs; ``devart db upgrade`` migrates it."""


@lru_cache
def database_url() -> str:
    """The URL every process uses; starts the embedded server when none is configured."""
    url = settings.DatabaseSettings().database_url
    if url:
        return url
    from devart.core.devstack.embedded import ensure_postgres

    url = ensure_postgres(settings.state().root)
    # Children (worker, agents, API) reuse it instead of each resolving the embedded server again.
    os.environ["DATABASE_URL"] = url
    return url


APP_PASSWORD_FILE = "db-app-password"


def app_password(*, create: bool = False) -> str:
    """The application role's password: ``DEVART_DB_APP_PASSWORD``, or the one kept in the state folder (made by
    ``devart db upgrade`` when ``create``)."""
    given = settings.DatabaseSettings().app_password
    if given:
        return given
    stored = settings.state().root / APP_PASSWORD_FILE
    if create and not stored.exists():
        from devart.core.devstack.statedir import write_private

        write_private(stored, secrets.token_urlsafe(32))
    try:
        return stored.read_text().strip()
    except FileNotFoundError:
        raise SchemaNotCurrent(f"the services' database role has no password yet: run `{UPGRADE_COMMAND}` first "
                               "(or set DEVART_DB_APP_PASSWORD)") from None


@lru_cache
def app_database_url() -> str:
    """The URL the services use: logged in as the application role (``DEVART_DB_APP_ROLE``), which owns no table and
    has no BYPASSRLS, so row-level security holds for everything they run and no statement can leave the role
    (``SET ROLE`` needs a membership it does not have). Migrations and the first administrator use ``database_url``.
    """
    cfg = settings.DatabaseSettings()
    if cfg.app_database_url:
        return cfg.app_database_url
    if not cfg.app_role:
        return database_url()
    url = make_url(database_url()).set(username=cfg.app_role, password=app_password())
    return url.render_as_string(hide_password=False)


@lru_cache
def engine() -> AsyncEngine:
    """The services' engine, as the application role; each transaction names its tenant (``tenancy``)."""
    from devart.core.database import tenancy  # noqa: F401 - installs the per-transaction tenant

    cfg = settings.DatabaseSettings()
    return create_async_engine(app_database_url(), pool_size=cfg.pool_size, max_overflow=cfg.pool_overflow,
                               pool_timeout=cfg.pool_timeout, pool_pre_ping=cfg.pool_pre_ping)


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


async def patiently(work: Callable[[AsyncSession], Awaitable[None]], *, seconds: float = 300.0) -> None:
    """Run ``work`` in a session of its own, waiting for a free pooled connection for up to ``seconds``.

    For a write that follows a step which cannot be undone (a workflow started, an answer about to be sent): failing
    it on the pool's timeout would answer an error for work that was done, and the caller's retry would do it
    twice. Under load it waits, which is the back-pressure; any other error is raised at once.
    """
    async for attempt in AsyncRetrying(retry=retry_if_exception_type(PoolTimeout), stop=stop_after_delay(seconds),
                                       wait=wait_exponential_jitter(initial=0.1, max=2.0), reraise=True):
        with attempt:
            async with session() as s:
                await work(s)


def _alembic_config(url: str) -> Config:
    from alembic.config import Config

    from devart import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _current(conn: Connection) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    heads = set(MigrationContext.configure(conn).get_current_heads())
    conn.commit()  # end the read's transaction: the migrations open their own
    return heads


def upgrade(revision: str = "head", url: str | None = None) -> list[str]:
    """Apply the migrations up to ``revision`` under the advisory lock; returns the revisions applied, oldest first.

    The lock is held for the whole upgrade on one connection, so a second upgrade started meanwhile (a compose job
    beside ``devart up``, two hosts deploying at once) waits, then finds the schema current and applies nothing,
    rather than creating the same tables at the same time.
    """
    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    cfg = _alembic_config(url or database_url())
    engine = create_engine(url or database_url(), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            lock = {"key": MIGRATION_LOCK}
            if not conn.execute(text("SELECT pg_try_advisory_lock(:key)"), lock).scalar_one():
                log.info("another schema upgrade is running on this database: waiting for it to finish")
                conn.execute(text("SELECT pg_advisory_lock(:key)"), lock)
            try:
                before = _current(conn)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
                after = _current(conn)
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), lock)
                conn.commit()
    finally:
        engine.dispose()
    if after == before:
        return []
    script = ScriptDirectory.from_config(cfg)
    applied = script.iterate_revisions(tuple(after), tuple(before) or "base")
    return [s.revision for s in reversed(list(applied))]


def require_current_schema(url: str | None = None) -> None:
    """Raise ``SchemaNotCurrent`` unless the database's schema is exactly the revision this code was written for.

    The API and the pipeline worker call this at start instead of migrating: a service that migrated on start
    would race its siblings and hold its start hostage to a long migration; one that started on an old schema
    would fail later, on the first query that touches a new column.
    """
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    cfg = _alembic_config(url or database_url())
    needed = set(ScriptDirectory.from_config(cfg).get_heads())
    engine = create_engine(url or database_url(), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            current = _current(conn)
    finally:
        engine.dispose()
    if current == needed:
        return
    known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
    want = ", ".join(sorted(needed))
    if not current:
        raise SchemaNotCurrent(f"the database has no devart schema yet (this devart needs revision {want}): "
                               f"run `{UPGRADE_COMMAND}` first")
    have = ", ".join(sorted(current))
    if current - known:
        raise SchemaNotCurrent(f"the database's schema is at revision {have}, which this devart does not know (a "
                               f"newer devart migrated it): run the newer devart, or restore a database at {want}")
    raise SchemaNotCurrent(f"the database's schema is at revision {have}, this devart needs {want}: "
                           f"run `{UPGRADE_COMMAND}` first")
