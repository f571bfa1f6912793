"""The knowledge base's vectors in PostgreSQL: each embedding model's HNSW index, and the one way to search it.

``embedding`` is an untyped ``vector`` (two models' vectors coexist during a re-embed), so each model's index is a
partial expression index: ``USING hnsw ((embedding::vector(<d>)) vector_cosine_ops) WHERE model = '<model>'``.
PostgreSQL uses it only for a query written the same way: ordered by the cosine distance of
``embedding::vector(<d>)``, and filtered by ``model = '<model>'`` *as a constant* (a bound parameter would not prove
the index's predicate in a generic plan, and a prepared statement turns generic after five runs). ``nearest`` is
that query; the model goes in as an escaped literal (``literal_execute``), never by string formatting.

A search runs with ``hnsw.iterative_scan``: the index yields candidates nearest first and the organisation's filter
(row-level security, and the explicit ``org_id``) is applied after, so without it a tenant whose entries are few
among many could get fewer than ``k`` of them back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import bindparam, cast, func, select, text
from sqlalchemy.orm import defer
from sqlalchemy.sql import Select
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core.database.models_knowledge import RUNTIME_INDEX_PREFIX, KnowledgeEntry

#: Candidates the HNSW graph search keeps (pgvector's default is 40): bench.kb_search measured recall@10 0.98 at
#: 100,000 entries with 64 (0.976 with 40, 0.986 with 100), at a median of 1.8 ms for the statement.
EF_SEARCH = 64
#: The widest vectors an HNSW index takes (pgvector's limit for ``vector``).
MAX_INDEXED_DIMENSION = 2000

#: Indexes already known to exist, by (model, dimension): asking PostgreSQL once per process is enough.
_indexed: set[tuple[str, int]] = set()


def index_name(model: str, dimension: int) -> str:
    """The name ``devart_knowledge_index`` (migration 0012) gives the model's index."""
    return RUNTIME_INDEX_PREFIX + hashlib.md5(f"{model}/{dimension}".encode()).hexdigest()[:16]


async def ensure_index(session: AsyncSession, model: str, dimension: int) -> str:
    """Create the model's HNSW index unless it exists; returns its name. The services' role owns no table, so the
    migration's SECURITY DEFINER function creates it; it answers at once when the index exists."""
    if (model, dimension) not in _indexed:
        await session.execute(text("SELECT devart_knowledge_index(:model, :dimension)"),
                              {"model": model, "dimension": dimension})
        _indexed.add((model, dimension))
    return index_name(model, dimension)


def forget_indexes() -> None:
    """Forget which indexes exist (a test that drops them, a database switched under a long-lived process)."""
    _indexed.clear()


async def tune(session: AsyncSession, ef_search: int = EF_SEARCH) -> None:
    """Set the search's HNSW parameters for the current transaction only (``set_config(…, true)``)."""
    await session.execute(text("SELECT set_config('hnsw.ef_search', :ef, true), "
                               "set_config('hnsw.iterative_scan', 'relaxed_order', true)"), {"ef": str(ef_search)})


def distance(vector: Sequence[float]) -> Any:
    """The cosine distance of each entry's embedding to ``vector``, written as the model's index is."""
    dimension = len(vector)
    typed = Vector(dimension)
    return cast(col(KnowledgeEntry.embedding), typed).cosine_distance(cast(bindparam("query", list(vector),
                                                                                   type_=typed), typed))


def nearest(vector: Sequence[float], model: str, limit: int, *, org: str | None = None,
            with_remedy: bool = True, kinds: Collection[str] | None = None) -> Select[Any]:
    """The ``limit`` entries of ``model`` nearest to ``vector``: (entry, cosine distance) rows, nearest first.

    Only entries with a remedy or guidance when ``with_remedy``, only those whose remedy is one of ``kinds`` when
    given; only ``org``'s when given (row-level security keeps the tenant's anyway; naming it lets the planner use
    it, and keeps the system role to one organisation)."""
    if not 0 < len(vector) <= MAX_INDEXED_DIMENSION:
        raise ValueError(f"a query vector has 1 to {MAX_INDEXED_DIMENSION} dimensions, not {len(vector)}")
    gap = distance(vector)
    # The entries' own vectors stay in the database: a hint does not need them, and reading k of them as text
    # costs more than the index scan.
    unread = defer(KnowledgeEntry.embedding)  # type: ignore[arg-type]
    query = select(KnowledgeEntry, gap.label("distance")).options(unread).where(
        col(KnowledgeEntry.model) == bindparam("model", model, literal_execute=True))
    if with_remedy:
        query = query.where(col(KnowledgeEntry.remedy).isnot(None) | col(KnowledgeEntry.guidance).isnot(None))
    if kinds is not None:
        query = query.where(col(KnowledgeEntry.remedy).in_(list(kinds)))
    if org is not None:
        query = query.where(col(KnowledgeEntry.org_id) == org)
    return query.order_by(gap).limit(limit)


def dimensions() -> Any:
    """The dimension of each entry's embedding, as SQL (``vector_dims``)."""
    return func.vector_dims(col(KnowledgeEntry.embedding))
