"""The knowledge base's reads and writes: failures recorded, remedies learned or written, hints found, outcomes
counted, entries moved to a new embedding model.

Every function works on the caller's ``AsyncSession`` and so for the caller's organisation: row-level security
(migration 0012) keeps each transaction to its organisation's entries, and the searches name the organisation as
well (``tenancy.org_of``) so the planner can use it. Nothing here commits except ``reembed``, which commits each
batch (a long re-embed holds no transaction open, and resumes where it stopped when interrupted).

Texts become vectors through an ``Embedder`` (``core.embeddings``; the settings' model by default). A signature is
embedded as a *passage* when stored and as a *query* when searched for, as e5-style models expect.

Ranking (``similar``): entries with the same digest (the same normalised failure) come first; then the entries
nearest by cosine similarity, among the ``candidates`` nearest, ordered by ``similarity × (succeeded + 1) /
(applied + 2)`` (``hints.score``: the Laplace-smoothed success rate, 0.5 for an untried remedy). Only entries with
a remedy or guidance are hints; bare recorded failures wait for a remedy to be learned for them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import func, text, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core.database import tenancy
from devart.core.database.models import utcnow
from devart.core.database.models_knowledge import KnowledgeEntry
from devart.core.errors import Invalid, NotFound
from devart.domain.knowledge import vectors
from devart.domain.knowledge.hints import FailureContext, Hint, Record, Source, score
from devart.domain.knowledge.signature import Signature, normalise

if TYPE_CHECKING:
    from devart.core.embeddings import Embedder

#: Nearest entries looked at per hint asked for, before ranking by record (at least ``MIN_CANDIDATES``).
CANDIDATES_PER_HINT, MIN_CANDIDATES = 4, 20
#: Entries a page of ``list_entries`` may hold.
MAX_PAGE = 500


class EntryNotFound(NotFound):
    """The organisation has no knowledge entry with that id."""


@dataclass(frozen=True)
class Reembedded:
    """What ``reembed`` did: the model and dimension entries move to, how many moved, how many remain under another
    model, and the model's index once none remains."""

    model: str
    dimension: int
    moved: int
    remaining: int
    index: str | None


def _default_embedder() -> Embedder:
    from devart.core.embeddings import embedder

    return embedder()


def _context(context: FailureContext | Mapping[str, Any] | None) -> dict[str, Any]:
    if context is None:
        return {}
    if isinstance(context, FailureContext):
        return context.model_dump(exclude_none=True)
    try:
        return FailureContext.model_validate(dict(context)).model_dump(exclude_none=True)
    except ValidationError as err:
        raise Invalid(f"a failure's context: {err.errors()[0]['msg']}") from err


def _org(session: AsyncSession) -> str | None:
    """The organisation to name in searches: the session's, or none for the system role acting for none."""
    return tenancy.org_of(session) or None


async def _embed_passage(embedder: Embedder, signature: Signature) -> tuple[str, list[float]]:
    found = await embedder.embed([signature.text()], kind="passage")
    return found.model, list(found.vectors[0])


async def _insert(session: AsyncSession, embedder: Embedder, signature: Signature, *, source: Source,
                  context: dict[str, Any], remedy: str | None = None, parameters: Mapping[str, Any] | None = None,
                  guidance: str | None = None, run_id: str | None = None, attempt: int | None = None,
                  author: str | None = None, applied: int = 0, succeeded: int = 0) -> int:
    model, vector = await _embed_passage(embedder, signature)
    await vectors.ensure_index(session, model, len(vector))
    now = utcnow()
    entry = KnowledgeEntry(
        skill=signature.skill, error_type=signature.error_type, message=signature.message,
        log_tail=signature.log_tail, digest=signature.digest(), context=context, remedy=remedy,
        parameters=dict(parameters or {}), guidance=guidance, source=source, run_id=run_id, attempt=attempt,
        author=author, applied=applied, succeeded=succeeded, created_at=now, updated_at=now, model=model,
        embedding=vector)
    session.add(entry)
    await session.flush()
    assert entry.id is not None
    return entry.id


async def _upsert_learned(session: AsyncSession, signature: Signature, *, context: dict[str, Any],
                          remedy: str | None, parameters: Mapping[str, Any] | None, guidance: str | None,
                          run_id: str | None, attempt: int | None, success: bool, embedder: Embedder | None) -> int:
    """The learned entry of this digest and remedy (of this digest and guidance, for none): counted again when it
    exists, inserted otherwise. A repeated call for the same run and attempt (a retried activity) counts nothing."""
    digest = signature.digest()
    # Two attempts learning the same thing at once take turns, so they make one entry between them.
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                          {"key": "\x1f".join(("knowledge", tenancy.org_of(session), digest, remedy or "",
                                               "" if remedy else guidance or ""))})
    query = select(KnowledgeEntry).where(col(KnowledgeEntry.digest) == digest, KnowledgeEntry.source == "learned",
                                         col(KnowledgeEntry.remedy).is_not_distinct_from(remedy))
    if remedy is None:
        query = query.where(col(KnowledgeEntry.guidance).is_not_distinct_from(guidance))
    if (org := _org(session)) is not None:
        query = query.where(col(KnowledgeEntry.org_id) == org)
    found = (await session.exec(query.order_by(col(KnowledgeEntry.id)).limit(1).with_for_update())).first()
    if found is None:
        return await _insert(session, embedder or _default_embedder(), signature, source="learned",
                             context=context, remedy=remedy, parameters=parameters, guidance=guidance, run_id=run_id,
                             attempt=attempt, applied=int(success), succeeded=int(success))
    assert found.id is not None
    if run_id is not None and (found.run_id, found.attempt) == (run_id, attempt):
        return found.id
    found.seen += 1
    found.applied += int(success)
    found.succeeded += int(success)
    found.run_id, found.attempt, found.updated_at = run_id, attempt, utcnow()
    if context:
        found.context = context
    if parameters is not None:
        found.parameters = dict(parameters)  # the latest that worked
    if guidance is not None:
        found.guidance = guidance
    session.add(found)
    await session.flush()
    return found.id


async def record_failure(session: AsyncSession, signature: Signature,
                         context: FailureContext | Mapping[str, Any] | None, run_id: str | None,
                         attempt: int | None, *, embedder: Embedder | None = None) -> int:
    """Record that an attempt failed so: a bare learned entry (no remedy, no guidance) per digest, its ``seen``
    counting the occurrences. Returns its id. It is not a hint until a remedy is learned or written for it."""
    return await _upsert_learned(session, signature, context=_context(context), remedy=None, parameters=None,
                                 guidance=None, run_id=run_id, attempt=attempt, success=False, embedder=embedder)


async def learn(session: AsyncSession, failure_signature: Signature, remedy: str | None,
                parameters: Mapping[str, Any] | None, guidance: str | None, run_id: str | None, attempt: int | None,
                *, context: FailureContext | Mapping[str, Any] | None = None,
                embedder: Embedder | None = None) -> int:
    """Record that ``remedy`` (and/or ``guidance``) fixed this failure: the attempt after it succeeded. The same
    digest and remedy again counts on the existing entry (applied and succeeded + 1, the parameters replaced by
    these) instead of adding one. Returns the entry's id.

    When the fix came from a hint of that same entry, ``record_outcome`` already counted it; the loop calls one of
    the two for one success, not both."""
    if remedy is None and guidance is None:
        raise Invalid("a learned entry needs a remedy or guidance; a failure alone is record_failure's")
    return await _upsert_learned(session, failure_signature, context=_context(context), remedy=remedy,
                                 parameters=parameters or {}, guidance=guidance, run_id=run_id, attempt=attempt,
                                 success=True, embedder=embedder)


async def learn_diagnosis(session: AsyncSession, failure_signature: Signature, remedy: str,
                          parameters: Mapping[str, Any] | None, run_id: str | None, attempt: int | None,
                          *, context: FailureContext | Mapping[str, Any] | None = None,
                          embedder: Embedder | None = None) -> int:
    """Record that ``remedy`` diagnosed this failure (a flaky-or-broken verdict, a proposed patch) while the attempt
    still, rightly, failed: an entry that names the remedy for the next such failure, keyed like ``learn``'s, with no
    success counted that did not happen. Returns the entry's id."""
    return await _upsert_learned(session, failure_signature, context=_context(context), remedy=remedy,
                                 parameters=parameters or {}, guidance=None, run_id=run_id, attempt=attempt,
                                 success=False, embedder=embedder)


async def add_entry(session: AsyncSession, signature: Signature, *, remedy: str | None = None,
                    parameters: Mapping[str, Any] | None = None, guidance: str | None = None,
                    context: FailureContext | Mapping[str, Any] | None = None, author: str,
                    embedder: Embedder | None = None) -> int:
    """A supervisor's entry for a failure kind of their own: a remedy and/or written guidance. Returns its id."""
    if remedy is None and guidance is None:
        raise Invalid("an entry needs a remedy, guidance or both: say what to do about the failure")
    return await _insert(session, embedder or _default_embedder(), signature, source="written",
                         context=_context(context), remedy=remedy, parameters=parameters, guidance=guidance,
                         author=author)


def _hint(entry: KnowledgeEntry, similarity: float, exact: bool) -> Hint:
    record = Record(suggested=entry.suggested, applied=entry.applied, succeeded=entry.succeeded)
    assert entry.id is not None
    return Hint(entry_id=entry.id, remedy=entry.remedy, parameters=entry.parameters, guidance=entry.guidance,
                similarity=similarity, exact=exact, score=score(similarity, record), record=record,
                source="written" if entry.source == "written" else "learned", skill=entry.skill,
                error_type=entry.error_type, message=entry.message)


async def similar(session: AsyncSession, signature_or_text: Signature | str, *, k: int = 5,
                  kinds: Collection[str] | None = None, embedder: Embedder | None = None,
                  ef_search: int = vectors.EF_SEARCH) -> list[Hint]:
    """The ``k`` best hints for a failure (a ``Signature``) or a text a person typed, best first.

    Exact matches of a signature's digest come first, then the nearest entries under the embedder's model: for a
    signature, those of its error type before the others, each group ranked by ``similarity × success rate``
    (module docstring). ``kinds`` keeps only entries whose remedy is one of those
    names (what a stage can apply); None keeps guidance-only entries too. Reads only: suggesting a hint is counted
    by ``record_outcome``."""
    if k < 1:
        return []
    if isinstance(signature_or_text, Signature):
        signature, query_text = signature_or_text, signature_or_text.text()
    else:
        signature, query_text = None, normalise(signature_or_text)
    if not query_text:
        return []
    org = _org(session)
    exact: list[Hint] = []
    if signature is not None:
        same = select(KnowledgeEntry).where(
            col(KnowledgeEntry.digest) == signature.digest(),
            col(KnowledgeEntry.remedy).isnot(None) | col(KnowledgeEntry.guidance).isnot(None))
        if org is not None:
            same = same.where(col(KnowledgeEntry.org_id) == org)
        if kinds is not None:
            same = same.where(col(KnowledgeEntry.remedy).in_(list(kinds)))
        exact = sorted((_hint(e, 1.0, True) for e in (await session.exec(same.limit(MAX_PAGE))).all()),
                       key=lambda h: (-h.score, h.entry_id))
        if len(exact) >= k:
            return exact[:k]
    found = await (embedder or _default_embedder()).embed([query_text], kind="query")
    await vectors.tune(session, ef_search)
    nearest = vectors.nearest(found.vectors[0], found.model, max(k * CANDIDATES_PER_HINT, MIN_CANDIDATES), org=org,
                              kinds=kinds)
    taken = {h.entry_id for h in exact}
    ranked = [_hint(entry, 1.0 - float(gap), False) for entry, gap in (await session.execute(nearest)).all()
              if entry.id not in taken]
    # A failure of the same error type comes before any of another type, however close the texts read: the type is
    # the signature's structured part (an out-of-memory hint says nothing about a lint failure), the text its prose.
    same_type = signature.error_type if signature is not None else None
    ranked.sort(key=lambda h: (h.error_type != same_type, -h.score, -h.similarity, h.entry_id))
    return [*exact, *ranked][:k]


async def record_outcome(session: AsyncSession, entry_id: int, *, applied: bool, succeeded: bool) -> Record:
    """Count a hint given to an attempt: suggested + 1; applied + 1 when its remedy was applied; succeeded + 1 when
    it was applied and the attempt then succeeded (a success without the remedy says nothing of it). Returns the
    entry's record; ``EntryNotFound`` for an id the organisation does not have."""
    counted = (update(KnowledgeEntry).where(col(KnowledgeEntry.id) == entry_id)
               .values(suggested=col(KnowledgeEntry.suggested) + 1,
                       applied=col(KnowledgeEntry.applied) + int(applied),
                       succeeded=col(KnowledgeEntry.succeeded) + int(applied and succeeded), updated_at=utcnow())
               .returning(col(KnowledgeEntry.suggested), col(KnowledgeEntry.applied),
                          col(KnowledgeEntry.succeeded)))
    row = (await session.execute(counted)).first()
    if row is None:
        raise EntryNotFound(f"no knowledge entry {entry_id} in this organisation")
    return Record(suggested=row[0], applied=row[1], succeeded=row[2])


async def get_entry(session: AsyncSession, entry_id: int) -> KnowledgeEntry:
    """The entry; ``EntryNotFound`` for an id the organisation does not have (another's included)."""
    entry = await session.get(KnowledgeEntry, entry_id)
    if entry is None:
        raise EntryNotFound(f"no knowledge entry {entry_id} in this organisation")
    return entry


async def list_entries(session: AsyncSession, *, skill: str | None = None, remedy: str | None = None,
                       source: Source | None = None, with_remedy: bool | None = None, before: int | None = None,
                       limit: int = 50) -> list[KnowledgeEntry]:
    """The organisation's entries, newest first: ``limit`` of them with ids below ``before`` (the next page starts
    below the last id of this one), filtered by skill, remedy name, source, and having a remedy or guidance."""
    query = select(KnowledgeEntry)
    if (org := _org(session)) is not None:
        query = query.where(col(KnowledgeEntry.org_id) == org)
    if skill is not None:
        query = query.where(col(KnowledgeEntry.skill) == skill)
    if remedy is not None:
        query = query.where(col(KnowledgeEntry.remedy) == remedy)
    if source is not None:
        query = query.where(col(KnowledgeEntry.source) == source)
    if with_remedy is not None:
        actionable = col(KnowledgeEntry.remedy).isnot(None) | col(KnowledgeEntry.guidance).isnot(None)
        query = query.where(actionable if with_remedy else ~actionable)
    if before is not None:
        query = query.where(col(KnowledgeEntry.id) < before)
    page = max(1, min(limit, MAX_PAGE))
    return list((await session.exec(query.order_by(col(KnowledgeEntry.id).desc()).limit(page))).all())


async def reembed(session: AsyncSession, embedder: Embedder, batch: int = 64, *,
                  limit: int | None = None) -> Reembedded:
    """Move the organisation's entries to the embedder's model (at most ``limit`` of them, all by default): embed
    each signature again, ``batch`` entries at a time, each batch committed. Once none remains under another model
    (or dimension), make sure the model's HNSW index exists: built once over the moved rows rather than grown row by
    row, unless a new entry created it meanwhile. Until an entry has moved, searches under the new model do not
    find it, except by its exact digest."""
    probe = await embedder.embed(["knowledge base re-embedding"], kind="passage")
    model, dimension = probe.model, probe.dimension
    stale = select(KnowledgeEntry).where((col(KnowledgeEntry.model) != model) |
                                         (vectors.dimensions() != dimension))
    if (org := _org(session)) is not None:
        stale = stale.where(col(KnowledgeEntry.org_id) == org)
    moved = 0
    while limit is None or moved < limit:
        size = max(1, batch if limit is None else min(batch, limit - moved))
        entries = list((await session.exec(stale.order_by(col(KnowledgeEntry.id)).limit(size))).all())
        if not entries:
            break
        found = await embedder.embed(texts(entries), kind="passage")
        if found.model != model or found.dimension != dimension:
            raise Invalid(f"the embedding model changed during the re-embed ({model}/{dimension} → "
                          f"{found.model}/{found.dimension}); run it again")
        for entry, vector in zip(entries, found.vectors, strict=True):
            entry.model, entry.embedding = model, list(vector)
            session.add(entry)
        await session.commit()
        moved += len(entries)
    remaining = (await session.exec(select(func.count()).select_from(stale.subquery()))).one()
    index = None
    if remaining == 0:
        index = await vectors.ensure_index(session, model, dimension)
        await session.commit()
    return Reembedded(model=model, dimension=dimension, moved=moved, remaining=remaining, index=index)


async def count_by_model(session: AsyncSession) -> dict[str, int]:
    """How many of the organisation's entries each embedding model holds (a re-embed's progress)."""
    query = select(KnowledgeEntry.model, func.count()).group_by(col(KnowledgeEntry.model))
    if (org := _org(session)) is not None:
        query = query.where(col(KnowledgeEntry.org_id) == org)
    return {model: n for model, n in (await session.exec(query)).all()}


def texts(entries: Sequence[KnowledgeEntry]) -> list[str]:
    """The texts the entries' embeddings were made from."""
    return [Signature(e.skill, e.error_type, e.message, e.log_tail).text() for e in entries]
