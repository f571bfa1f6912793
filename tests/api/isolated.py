"""A second API process of the session's stack on a database of its own, for tests whose requests must touch
nothing other tests see (generated budgets, purges, role checks that succeed), and a task queue no worker polls
(so nothing it accepts ever runs). Its first administrator holds the session's ``DEVART_ADMIN_TOKEN``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from devart.core.database import db
from devart.core.devstack.services import free_port
from devart.domain.bootstrap import bootstrap_admin
from tests.stack import Stack


def _admin_sql(statement: str) -> None:
    engine = create_engine(db.database_url(), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


@contextmanager
def scratch_database(name: str) -> Iterator[tuple[str, str]]:
    """A fresh database on the session's server, migrated; yields its owner's and the services' role's URLs, then
    drops it (a benchmark slice's data touches nothing other tests see)."""
    database = f"{name}_{uuid.uuid4().hex[:8]}"
    _admin_sql(f'CREATE DATABASE "{database}"')
    try:
        owner = make_url(db.database_url()).set(database=database).render_as_string(hide_password=False)
        app = make_url(db.app_database_url()).set(database=database).render_as_string(hide_password=False)
        db.upgrade(url=owner)
        yield owner, app
    finally:
        _admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@contextmanager
def isolated_api(stack: Stack, name: str) -> Iterator[str]:
    """Start the API on a fresh database; yields its URL, then stops it and drops the database."""
    database = f"{name}_{uuid.uuid4().hex[:8]}"
    _admin_sql(f'CREATE DATABASE "{database}"')
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    database_url = make_url(db.database_url()).set(database=database).render_as_string(hide_password=False)
    env = {"DATABASE_URL": database_url, "TEMPORAL_TASK_QUEUE": f"{name}-{uuid.uuid4().hex[:8]}",
           "DEVART_API_PORT": str(port), "DEVART_API_URL": url, "DEVART_LOG_LEVEL": "WARNING"}
    db.upgrade(url=database_url)  # the API checks the schema, it does not migrate
    bootstrap_admin(stack.env["DEVART_ADMIN_TOKEN"], database_url)
    child = stack.supervisor.spawn(f"api-{name}", "api", "--host", "127.0.0.1", "--port", str(port), env=env)
    try:
        stack.supervisor.wait_healthy(url, child)
        yield url
    finally:
        stack.supervisor.stop(child, grace=5)
        _admin_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
