"""GitHub webhooks (signature, de-duplication, events → runs) and the repository → pipeline mapping.

Order matters in ``receive``: the signature is checked on the raw body before anything is parsed, then the
payload is parsed with githubkit's webhook models, then the delivery id is inserted if absent (a redelivery
stops there), and only then does anything start.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from githubkit import webhooks
from githubkit.exception import WebhookTypeNotFound
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from devart.core.bounds import MAX_NAME_CHARS, text_problem
from devart.core.database import db, tenancy
from devart.core.database.models import GitHubCheck, GitHubDelivery, GitHubRepository, utcnow
from devart.core.database.tenancy import SYSTEM, system_in
from devart.core.orgs import DEFAULT_ORG
from devart.core.temporal_namespaces import Namespaces
from devart.domain import catalog
from devart.domain.events import add_event
from devart.github.client import (
    PERMITTED_ASSOCIATIONS,
    MappingNotFound,
    WebhookDisabled,
    WebhookInvalid,
    WebhookSignatureInvalid,
    settings,
    verify_signature,
)
from devart.github.reporter import SUPERSEDED
from devart.github.runs import PullContext, cancel_older, latest_context, rerun_stage, start_for_pull

log = logging.getLogger(__name__)

#: Events devart acts on; any other (signed) event is acknowledged and ignored.
HANDLED = {"pull_request", "check_run", "issue_comment"}
PULL_ACTIONS = {"opened", "synchronize", "reopened"}
RERUN_COMMAND = "/devart rerun"


class WebhookReply(BaseModel):
    status: Literal["started", "ignored", "duplicate"]
    message: str
    runs: list[str] = Field(default_factory=list, description="Runs this delivery started.")
    cancelled: list[str] = Field(default_factory=list, description="Older runs of the PR it cancelled.")

    @property
    def http_status(self) -> int:
        return {"started": 201, "ignored": 202, "duplicate": 200}[self.status]


def _ignored(message: str) -> WebhookReply:
    return WebhookReply(status="ignored", message=message)


async def receive(session: AsyncSession, temporal: Namespaces, *, event: str | None, delivery: str | None,
                  signature: str | None, body: bytes) -> WebhookReply:
    """Handle one delivery; raises ``WebhookSignatureInvalid`` before reading anything unsigned."""
    try:
        secret = settings().webhook_secret
    except ValidationError as exc:
        raise WebhookDisabled(f"the GitHub webhook is disabled: invalid DEVART_GITHUB_* settings: {exc}") from None
    if not secret:
        raise WebhookDisabled("the GitHub webhook is disabled: set DEVART_GITHUB_WEBHOOK_SECRET to the App's secret")
    if not verify_signature(secret, body, signature):
        raise WebhookSignatureInvalid("missing or wrong X-Hub-Signature-256: the body is not signed with the "
                                      "webhook secret this devart has")
    if not event or not delivery:
        raise WebhookInvalid("a GitHub delivery carries X-GitHub-Event and X-GitHub-Delivery headers")
    if len(delivery) > MAX_NAME_CHARS or text_problem(delivery):
        raise WebhookInvalid(f"X-GitHub-Delivery is not a delivery id GitHub sends (at most {MAX_NAME_CHARS} "
                             "characters of text)")
    if event not in HANDLED:
        return _ignored("pong" if event == "ping" else f"event '{event}' is not one devart acts on")
    try:
        payload = webhooks.parse(event, body)
    except (ValidationError, ValueError, WebhookTypeNotFound) as exc:
        raise WebhookInvalid(f"the '{event}' payload does not match GitHub's schema: {str(exc)[:500]}") from None
    if why := _not_for_us(event, payload):
        return _ignored(why)  # before the delivery is recorded: GitHub also sends devart's own check runs' events
    # Signed by GitHub, for no organisation yet: the repository's mapping says whose runs it starts (``_dispatch``).
    await tenancy.adopt(session, SYSTEM)
    inserted = await session.exec(insert(GitHubDelivery).values(id=delivery, event=event, received_at=utcnow())
                                  .on_conflict_do_nothing().returning(col(GitHubDelivery.id)))  # type: ignore[call-overload]
    if inserted.first() is None:
        return WebhookReply(status="duplicate", message=f"delivery {delivery} was already handled")
    await session.commit()
    try:
        reply = await _dispatch(session, temporal, event, payload)
    except BaseException:
        await _forget(delivery)  # nothing was started: GitHub's redelivery may try again
        raise
    if reply.runs:
        row = await session.get(GitHubDelivery, delivery)
        if row is not None:
            row.run_id = reply.runs[0]
            await session.commit()
    return reply


def _not_for_us(event: str, payload: Any) -> str | None:
    """Why a delivery starts nothing whatever the database says, or None."""
    action = payload.action
    if event == "pull_request" and action not in PULL_ACTIONS:
        return f"pull_request '{action}' starts nothing"
    if event == "check_run" and action != "rerequested":
        return f"check_run '{action}' starts nothing"
    if event == "issue_comment":
        if action != "created" or not payload.issue.pull_request:
            return "only new comments on pull requests are read"
        if not payload.comment.body.strip().startswith(RERUN_COMMAND):
            return f"the comment is not '{RERUN_COMMAND}'"
    return None


async def _forget(delivery: str) -> None:
    try:
        async with db.session() as s:
            await s.exec(delete(GitHubDelivery).where(col(GitHubDelivery.id) == delivery))  # type: ignore[call-overload]
    except Exception:
        log.exception("could not forget delivery %s", delivery)


async def _dispatch(session: AsyncSession, temporal: Namespaces, event: str, payload: Any) -> WebhookReply:
    full_name = payload.repository.full_name.lower()
    installation_id = payload.installation.id if payload.installation else None
    mapped = await session.get(GitHubRepository, full_name)
    org = mapped.org_id if mapped is not None and mapped.org_id is not None else DEFAULT_ORG
    if mapped is not None and mapped.org_id is not None:
        await tenancy.adopt(session, system_in(mapped.org_id))  # the runs it starts are the organisation's
    client = await temporal.for_org(org)  # in the organisation's namespace
    if event == "check_run":
        return await _check_run(session, client, full_name, payload, installation_id)
    mapping = await session.get(GitHubRepository, full_name)
    if mapping is None:
        return _ignored(f"repository {full_name} is not mapped to a pipeline "
                        f"(devart github map {full_name} PIPELINE)")
    if event == "pull_request":
        pr = payload.pull_request
        head_repo = pr.head.repo
        clone_url = mapping.clone_url or (head_repo.clone_url if head_repo else payload.repository.clone_url)
        ctx = PullContext(repo=full_name, pr=pr.number, head_sha=pr.head.sha, base_sha=pr.base.sha,
                          clone_url=clone_url, installation_id=installation_id)
        return await _start(session, client, mapping.pipeline, ctx, f"pull request {payload.action}")
    return await _comment(session, client, mapping, payload, installation_id)


async def _start(session: AsyncSession, client: Client, pipeline: str, ctx: PullContext, why: str) -> WebhookReply:
    created = await start_for_pull(session, client, pipeline, ctx)
    cancelled = await cancel_older(session, client, ctx.repo, ctx.pr, keep=created.run_id)
    message = f"{why}: started {created.run_id} on {ctx.repo}#{ctx.pr} at {ctx.head_sha[:12]}"
    return WebhookReply(status="started", message=message, runs=[created.run_id], cancelled=cancelled)


async def _comment(session: AsyncSession, client: Client, mapping: GitHubRepository, payload: Any,
                   installation_id: int | None) -> WebhookReply:
    comment, issue = payload.comment, payload.issue
    who = comment.user.login if comment.user else "someone"
    if comment.author_association not in PERMITTED_ASSOCIATIONS:
        return _ignored(f"{who} ({comment.author_association}) may not re-run pipelines: "
                        f"{', '.join(sorted(PERMITTED_ASSOCIATIONS))} may")
    found = await latest_context(session, mapping.full_name, issue.number)
    if found is None:
        return _ignored(f"no run of {mapping.full_name}#{issue.number} to re-run yet: push to the pull request")
    context, run = found
    ctx = PullContext(repo=context.repo, pr=context.pr, head_sha=context.head_sha, base_sha=context.base_sha,
                      clone_url=mapping.clone_url or run.repository,
                      installation_id=installation_id or context.installation_id)
    return await _start(session, client, mapping.pipeline, ctx, f"{RERUN_COMMAND} by {who}")


async def _check_run(session: AsyncSession, client: Client, full_name: str, payload: Any,
                     installation_id: int | None) -> WebhookReply:
    check_run_id = payload.check_run.id
    row = (await session.exec(
        select(GitHubCheck).where(GitHubCheck.check_run_id == check_run_id, GitHubCheck.repo == full_name,
                                  col(GitHubCheck.status).is_distinct_from(SUPERSEDED))
        .order_by(col(GitHubCheck.updated_at).desc()).limit(1))).first()
    if row is None:
        return _ignored(f"check run {check_run_id} was not created by this devart")
    created = await rerun_stage(session, client, row, installation_id)
    if created is None:
        return _ignored(f"run {row.run_id} or its stage '{row.stage}' no longer exists")
    return WebhookReply(status="started", runs=[created.run_id],
                        message=f"re-running stage '{row.stage}' of {row.run_id} as {created.run_id}")


# --- the repository → pipeline mapping (admin) ---


async def list_mappings(session: AsyncSession) -> list[GitHubRepository]:
    return list((await session.exec(select(GitHubRepository).order_by(col(GitHubRepository.full_name)))).all())


async def get_mapping(session: AsyncSession, full_name: str) -> GitHubRepository:
    mapping = await session.get(GitHubRepository, full_name.lower())
    if mapping is None:
        raise MappingNotFound(f"repository {full_name} is not mapped to a pipeline")
    return mapping


async def put_mapping(session: AsyncSession, full_name: str, pipeline: str,
                      clone_url: str | None) -> GitHubRepository:
    """Map (or re-map) a repository; the pipeline must exist."""
    await catalog.get(session, pipeline)
    key = full_name.lower()
    mapping = await session.get(GitHubRepository, key)
    if mapping is None:
        mapping = GitHubRepository(full_name=key, pipeline=pipeline, clone_url=clone_url)
    else:
        mapping.pipeline, mapping.clone_url, mapping.updated_at = pipeline, clone_url, utcnow()
    session.add(mapping)
    add_event(session, "github.mapped", f"{key} runs pipeline {pipeline}", repo=key, pipeline=pipeline)
    await session.commit()
    return mapping


async def delete_mapping(session: AsyncSession, full_name: str) -> None:
    mapping = await get_mapping(session, full_name)
    await session.delete(mapping)
    add_event(session, "github.unmapped", f"{mapping.full_name} no longer runs a pipeline", repo=mapping.full_name)
    await session.commit()
