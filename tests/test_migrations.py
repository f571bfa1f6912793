"""The migrations produce exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import devart.core.database.models  # noqa: F401
from devart.core.database import db
from devart.core.database.models_knowledge import declared
from tests.stack import Stack


def test_models_match_migrations(stack: Stack) -> None:
    engine = create_engine(db.database_url())
    try:
        with engine.connect() as conn:
            # The knowledge base's per-model HNSW indexes are made at run time, not by the migrations.
            context = MigrationContext.configure(conn, opts={"include_name": declared})
            diff = compare_metadata(context, SQLModel.metadata)
            ext = conn.exec_driver_sql("SELECT extname FROM pg_extension WHERE extname = 'vector'").scalar()
    finally:
        engine.dispose()
    assert diff == []
    assert ext == "vector"
