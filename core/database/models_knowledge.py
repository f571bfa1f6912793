"""The knowledge base's table (migration 0012): failures, the remedies and guidance that fixed them, their record.

Signatures, embeddings, ranking and who writes what are ``domain.knowledge``'s; this class is the typed view of the
table. The per-model HNSW indexes are not declared here: each is created when its model is first used
(``devart_knowledge_index``), since the embedding models are the deployment's choice, not the schema's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import JSON, BigInteger, CheckConstraint, Column, Index, Text
from sqlmodel import Field, SQLModel

from devart.core.database.models import _created, _org

#: The name every per-model HNSW index starts with (``devart_knowledge_index``, migration 0012).
RUNTIME_INDEX_PREFIX = "knowledge_hnsw_"


def declared(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's ``include_name``: whether a schema object is one the models declare. The per-model HNSW indexes
    are made at run time, one per embedding model in use, so comparing the models with a live schema skips them."""
    return not (type_ == "index" and (name or "").startswith(RUNTIME_INDEX_PREFIX))


class KnowledgeEntry(SQLModel, table=True):
    """One failure signature of an organisation, with the remedy and/or guidance for it (none yet: a bare recorded
    failure), where it came from, its record since, and its embedding under ``model``."""

    __tablename__ = "knowledge_entries"
    __table_args__ = (
        Index("knowledge_entries_org_digest", "org_id", "digest"),
        Index("knowledge_entries_org_model", "org_id", "model"),
        CheckConstraint("source IN ('learned', 'written')", name="knowledge_entries_source"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    org_id: str | None = _org()
    skill: str
    error_type: str
    message: str = Field(sa_column=Column(Text, nullable=False), description="Normalised (domain.knowledge).")
    log_tail: str = Field(default="", sa_column=Column(Text, nullable=False), description="Normalised too.")
    digest: str = Field(description="SHA-256 of the normalised signature: the same failure, exactly.")
    context: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False),
                                    description="language, tools (name -> version), pipeline, stage.")
    remedy: str | None = Field(default=None, description="A named action, e.g. more_memory.")
    parameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    guidance: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    source: str = Field(description="learned (from a run's attempt) or written (by a supervisor).")
    run_id: str | None = None
    attempt: int | None = None
    author: str | None = None
    seen: int = Field(default=1, description="Times this signature (with this remedy) was recorded or learned.")
    suggested: int = 0
    applied: int = 0
    succeeded: int = Field(default=0, description="Times the attempt after applying it succeeded.")
    created_at: datetime = _created()
    updated_at: datetime = _created()
    model: str = Field(description="The embedding model of ``embedding``.")
    embedding: list[float] = Field(sa_column=Column(Vector(), nullable=False))
