"""Administrator routes of the dead-letter queue (bearer ``DEVART_ADMIN_TOKEN``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from devart.api.auth import access
from devart.api.deps import SessionDep
from devart.core.bounds import INT8_MAX
from devart.domain import dead_letters as dlq
from devart.domain.identity import Role

router = APIRouter(prefix="/v1/dlq", tags=["dead letters (admin)"])

LetterId = Annotated[int, Path(ge=1, le=INT8_MAX, description="The dead letter's id.")]


@router.get("", **access(Role.VIEWER))
async def list_letters(session: SessionDep, include_redriven: bool = False) -> list[dict[str, Any]]:
    return [letter.model_dump(exclude={"body", "headers"}) for letter in
            await dlq.list_letters(session, include_redriven)]


@router.get("/{letter_id}", **access(Role.VIEWER))
async def show(letter_id: LetterId, session: SessionDep) -> dict[str, Any]:
    return (await dlq.get(session, letter_id)).model_dump()


@router.post("/{letter_id}/redrive", **access(Role.SUPERVISOR))
async def redrive(letter_id: LetterId, session: SessionDep) -> dict[str, Any]:
    letter = await dlq.redrive(session, letter_id)
    return {"id": letter.id, "lane": letter.lane, "redriven_at": letter.redriven_at}


@router.delete("", **access(Role.ADMIN))
async def purge(session: SessionDep) -> dict[str, int]:
    return {"purged": await dlq.purge(session)}
