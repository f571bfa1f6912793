"""GitHub routes: the App's webhook, and the administrator's repository → pipeline mapping."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field, field_validator

from devart.api.auth import GITHUB, access, declared
from devart.api.deps import SessionDep, TemporalDep
from devart.core.bounds import MAX_LOCATION_CHARS, MAX_NAME_CHARS, text_problem
from devart.core.database.models import GitHubRepository
from devart.domain.identity import Role
from devart.github import webhooks as github
from devart.github.webhooks import WebhookReply

router = APIRouter(prefix="/v1/github", tags=["github"])

#: An owner or repository name as GitHub allows them.
Name = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]
#: The webhook answers 201 when it started runs, 202 when it ignored the delivery, 200 for a redelivery.
_DELIVERY_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"model": WebhookReply, "description": "A redelivery of a delivery already handled: nothing started."},
    201: {"model": WebhookReply, "description": "The delivery started runs."},
}
_CLONE = re.compile(r"^(https?://|git@|ssh://|file://|git://|/)")


class MappingRequest(BaseModel):
    pipeline: str = Field(min_length=1, max_length=MAX_NAME_CHARS,
                          description="Pipeline the repository's pull requests run.")
    clone_url: str | None = Field(default=None, max_length=MAX_LOCATION_CHARS,
                                  description="Clone from here instead of the PR head's clone URL.")

    @field_validator("pipeline", "clone_url")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and (why := text_problem(value)):
            raise ValueError(why)
        return value

    @field_validator("clone_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not _CLONE.match(value):
            raise ValueError("clone_url must be a git URL or an absolute path")
        return value


class MappingView(BaseModel):
    repository: str
    pipeline: str
    clone_url: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, m: GitHubRepository) -> MappingView:
        return cls(repository=m.full_name, pipeline=m.pipeline, clone_url=m.clone_url, created_at=m.created_at,
                   updated_at=m.updated_at)


@router.post("/webhook", response_model=WebhookReply, status_code=202, responses=_DELIVERY_ANSWERS,
              **declared(GITHUB))
async def webhook(request: Request, response: Response, session: SessionDep, temporal: TemporalDep) -> WebhookReply:
    """GitHub's deliveries; the signature is verified on the raw body before anything else.

    A body past ``MAX_WEBHOOK_BYTES`` (1 MiB) is refused with 413 by ``api.edge`` before it is read whole, so before
    its signature is checked: the body is counted as it arrives, never held past the limit.
    """
    headers = request.headers
    reply = await github.receive(session, temporal, event=headers.get("X-GitHub-Event"),
                                 delivery=headers.get("X-GitHub-Delivery"),
                                 signature=headers.get("X-Hub-Signature-256"), body=await request.body())
    response.status_code = reply.http_status
    return reply


@router.get("/repositories", response_model=list[MappingView], **access(Role.VIEWER))
async def list_mappings(session: SessionDep) -> list[MappingView]:
    return [MappingView.of(m) for m in await github.list_mappings(session)]


@router.get("/repositories/{owner}/{repo}", response_model=MappingView, **access(Role.VIEWER))
async def get_mapping(owner: str, repo: str, session: SessionDep) -> MappingView:
    return MappingView.of(await github.get_mapping(session, f"{owner}/{repo}"))


@router.put("/repositories/{owner}/{repo}", response_model=MappingView, **access(Role.ADMIN))
async def put_mapping(owner: Name, repo: Name, req: MappingRequest, session: SessionDep) -> MappingView:
    """Map the repository's pull requests to a pipeline (replacing any earlier mapping)."""
    return MappingView.of(await github.put_mapping(session, f"{owner}/{repo}", req.pipeline, req.clone_url))


@router.delete("/repositories/{owner}/{repo}", status_code=204, **access(Role.ADMIN))
async def delete_mapping(owner: str, repo: str, session: SessionDep) -> None:
    await github.delete_mapping(session, f"{owner}/{repo}")
