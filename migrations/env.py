"""Alembic environment: runs migrations with a synchronous psycopg connection.

``core.db.upgrade`` hands over the connection that holds the migration lock (``config.attributes["connection"]``),
so the migrations run inside that lock; run any other way (the ``alembic`` command), the environment connects
itself.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import devart.core.database.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from devart.core.database.models_knowledge import declared  # the per-model HNSW indexes are made at run time


def run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=SQLModel.metadata, include_name=declared)
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run(given)
else:
    url = context.config.get_main_option("sqlalchemy.url")
    with create_engine(str(url), poolclass=pool.NullPool).connect() as connection:
        run(connection)
