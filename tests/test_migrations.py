"""The migrations produce exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import devart.core.database.models  # noqa: F401
from devart.core.database import db
from tests.stack import Stack


def test_models_match_migrations(stack: Stack) -> None:
    engine = create_engine(db.database_url())
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
            ext = conn.exec_driver_sql("SELECT extname FROM pg_extension WHERE extname = 'vector'").scalar()
    finally:
        engine.dispose()
    assert diff == []
    assert ext == "vector"
