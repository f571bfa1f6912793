"""The knowledge base: failures, the remedies and guidance that fixed them, and their record (``domain.knowledge``).

Members read and search their organisation's entries; supervisors write guidance and remedies for their own
failure kinds; administrators move the entries to a new embedding model. Another organisation's entry is a 404,
as if it did not exist (row-level security hides it). Learned entries are the learning loop's, never this API's.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from devart.api.auth import Caller, access
from devart.api.deps import SessionDep
from devart.api.schemas import Name, Text
from devart.api.schemas_knowledge import REMEDY_PATTERN, EntryCreate, EntryView, ReembedRequest, ReembedView
from devart.core.bounds import INT8_MAX
from devart.core.embeddings import embedder
from devart.domain.identity import Role
from devart.domain.knowledge import store
from devart.domain.knowledge.hints import Hint
from devart.domain.knowledge.signature import Signature

router = APIRouter(prefix="/v1/knowledge", tags=["knowledge"])

EntryId = Annotated[int, Path(ge=1, le=INT8_MAX, description="The entry's id.")]
ACTIONABLE = ("Only entries with (true) or without (false) a remedy or guidance; the latter are failures nothing "
              "fixed yet.")
#: Hints one search answers at most.
MAX_K = 50


@router.get("", response_model=list[EntryView], **access(Role.VIEWER))
async def list_entries(
    session: SessionDep,
    skill: Annotated[Name | None, Query()] = None,
    remedy: Annotated[str | None, Query(pattern=REMEDY_PATTERN)] = None,
    source: Literal["learned", "written"] | None = None,
    actionable: Annotated[bool | None, Query(description=ACTIONABLE)] = None,
    limit: Annotated[int, Query(ge=1, le=store.MAX_PAGE)] = 50,
    before: Annotated[int | None, Query(ge=1, le=INT8_MAX, description="Entries older than this id.")] = None,
) -> list[EntryView]:
    """The organisation's entries, newest first; the next page is ``before`` the last id of this one."""
    rows = await store.list_entries(session, skill=skill, remedy=remedy, source=source, with_remedy=actionable,
                                    before=before, limit=limit)
    return [EntryView.of(entry) for entry in rows]


@router.get("/search", response_model=list[Hint], **access(Role.VIEWER))
async def search(
    session: SessionDep,
    q: Annotated[Text, Query(min_length=1, description="A failure's message, log line or a description of it.")],
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
) -> list[Hint]:
    """The entries most similar to the text that have a remedy or guidance, ranked by similarity × success rate
    (503 when the embedding model cannot be reached)."""
    return await store.similar(session, q, k=k)


@router.get("/{entry_id}", response_model=EntryView, **access(Role.VIEWER))
async def get_entry(entry_id: EntryId, session: SessionDep) -> EntryView:
    """One entry with its record (404 for an id the organisation does not have)."""
    return EntryView.of(await store.get_entry(session, entry_id))


@router.post("", status_code=201, response_model=EntryView, **access(Role.SUPERVISOR))
async def add_entry(body: EntryCreate, caller: Caller, session: SessionDep) -> EntryView:
    """Write a remedy and/or guidance for a failure kind; hints for similar failures include it from now on."""
    signature = Signature(body.skill, body.error_type, body.message, body.log_tail)
    entry_id = await store.add_entry(session, signature, remedy=body.remedy, parameters=body.parameters,
                                     guidance=body.guidance, context=body.context.model_dump(exclude_none=True),
                                     author=caller.user)
    entry = await store.get_entry(session, entry_id)
    await session.commit()
    return EntryView.of(entry)


@router.post("/reembed", response_model=ReembedView, **access(Role.ADMIN))
async def reembed(body: ReembedRequest, session: SessionDep) -> ReembedView:
    """Move up to ``limit`` of the organisation's entries to the configured embedding model (``devart kb reembed``
    calls it until ``remaining`` is 0); the model's index is made once none remains."""
    done = await store.reembed(session, embedder(), body.batch, limit=body.limit)
    return ReembedView(model=done.model, dimension=done.dimension, moved=done.moved, remaining=done.remaining,
                       index=done.index)
