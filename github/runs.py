"""Runs for pull requests: start the mapped pipeline on a PR's head, re-run one stage into its own check run, and
cancel what a newer push made obsolete.

The PR context (``GitHubRun``) and one ``GitHubCheck`` row per stage are added to the session before
``runs.start`` commits the run, so the workflow's first record already finds them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from opentelemetry import trace
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from devart.api.schemas import RunCreated, RunRequest
from devart.core.contracts import PipelineDefinition, RunStatus, StageSpec
from devart.core.database.models import GitHubCheck, GitHubRun, Run
from devart.core.errors import DevartError, RunNotFound
from devart.domain import catalog, runs
from devart.github.client import TRIGGER
from devart.github.reporter import SUPERSEDED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PullContext:
    """What a run needs to know about the pull request it checks."""

    repo: str  #: owner/repo, lower case
    pr: int
    head_sha: str
    base_sha: str | None
    clone_url: str
    installation_id: int | None

    def params(self) -> dict[str, str]:
        """Parameters a pipeline receives when it declares them (and only then)."""
        offered = {"pr_number": str(self.pr), "head_sha": self.head_sha, "base_sha": self.base_sha or "",
                   "base": self.base_sha or ""}
        return {k: v for k, v in offered.items() if v}


def _trace_id() -> str | None:
    """The current trace (the webhook request's), which the run's workflow and agents join."""
    span = trace.get_current_span().get_span_context()
    return format(span.trace_id, "032x") if span.is_valid else None


def _check(run_id: str, ctx: GitHubRun, spec: StageSpec, check_run_id: int | None) -> GitHubCheck:
    retry = spec.retry
    return GitHubCheck(run_id=run_id, stage=spec.name, check_run_id=check_run_id, repo=ctx.repo, pr=ctx.pr,
                       head_sha=ctx.head_sha, skill=spec.skill, max_attempts=retry.maximum_attempts,
                       non_retryable=list(retry.non_retryable_error_types))


async def _current_checks(session: AsyncSession, ctx: PullContext) -> dict[str, GitHubCheck]:
    """The rows whose check runs report this commit's stages now; a new run of the same commit takes them over."""
    rows = (await session.exec(
        select(GitHubCheck).where(GitHubCheck.repo == ctx.repo, GitHubCheck.pr == ctx.pr,
                                  GitHubCheck.head_sha == ctx.head_sha, col(GitHubCheck.check_run_id).is_not(None),
                                  col(GitHubCheck.status).is_distinct_from(SUPERSEDED))
        .order_by(col(GitHubCheck.updated_at)))).all()
    return {r.stage: r for r in rows}  # the latest row of each stage wins


async def start_for_pull(session: AsyncSession, client: Client, pipeline: str, ctx: PullContext) -> RunCreated:
    """Start ``pipeline`` on the PR's head commit; a stage that already has a check run on it reports there."""
    definition = await catalog.get(session, pipeline)
    params = {k: v for k, v in ctx.params().items() if k in definition.params}
    run_id = runs.new_run_id(definition.name)
    context = GitHubRun(run_id=run_id, repo=ctx.repo, pr=ctx.pr, head_sha=ctx.head_sha, base_sha=ctx.base_sha,
                        installation_id=ctx.installation_id, trace_id=_trace_id())
    session.add(context)
    current = await _current_checks(session, ctx)
    for spec in definition.stages:
        previous = current.get(spec.name)
        if previous is not None:
            previous.status = SUPERSEDED
            session.add(previous)
        session.add(_check(run_id, context, spec, previous.check_run_id if previous else None))
    request = RunRequest(pipeline=definition.name, repo=ctx.clone_url, ref=ctx.head_sha, params=params,
                         trigger=TRIGGER)
    return await runs.start(session, client, request, definition=definition, run_id=run_id)


async def rerun_stage(session: AsyncSession, client: Client, row: GitHubCheck,
                      installation_id: int | None) -> RunCreated | None:
    """Re-run the stage of ``row`` alone (its dependencies dropped) with the run's inputs and commit, reporting
    into the same check run; None when the run or the stage is gone."""
    original = await session.get(Run, row.run_id)
    origin = await session.get(GitHubRun, row.run_id)
    if original is None or origin is None:
        return None
    definition = await catalog.get(session, original.pipeline, original.pipeline_version)
    spec = next((s for s in definition.stages if s.name == row.stage), None)
    if spec is None:
        return None
    derived = derive(definition, spec, original.id)
    run_id = runs.new_run_id(definition.name)
    context = GitHubRun(run_id=run_id, repo=origin.repo, pr=origin.pr, head_sha=origin.head_sha,
                        base_sha=origin.base_sha, installation_id=installation_id or origin.installation_id,
                        origin_run_id=origin.origin_run_id or origin.run_id, trace_id=_trace_id())
    session.add(context)
    row.status = SUPERSEDED
    session.add(row)
    session.add(_check(run_id, context, spec, row.check_run_id))
    request = RunRequest(pipeline=definition.name, repo=original.repository, ref=original.ref,
                         params=original.params, trigger=TRIGGER)
    return await runs.start(session, client, request, definition=derived, run_id=run_id)


def derive(definition: PipelineDefinition, spec: StageSpec, origin_run: str) -> PipelineDefinition:
    """A one-stage pipeline: ``spec`` without its dependencies, under the same name, version and parameters."""
    return definition.model_copy(update={
        "stages": [spec.model_copy(update={"depends_on": []})],
        "description": f"re-run of stage '{spec.name}' of run {origin_run}",
    })


async def latest_context(session: AsyncSession, repo: str, pr: int) -> tuple[GitHubRun, Run] | None:
    """The most recent whole-pipeline run of a pull request, with its PR context."""
    found = (await session.exec(
        select(GitHubRun, Run).join(Run, col(Run.id) == col(GitHubRun.run_id))
        .where(GitHubRun.repo == repo, GitHubRun.pr == pr, col(GitHubRun.origin_run_id).is_(None))
        .order_by(col(GitHubRun.created_at).desc()).limit(1))).first()
    return (found[0], found[1]) if found else None


async def cancel_older(session: AsyncSession, client: Client, repo: str, pr: int, keep: str) -> list[str]:
    """Cancel the pull request's runs still in flight other than ``keep``; a failure to cancel is logged only."""
    older = (await session.exec(
        select(GitHubRun.run_id).join(Run, col(Run.id) == col(GitHubRun.run_id))
        .where(GitHubRun.repo == repo, GitHubRun.pr == pr, GitHubRun.run_id != keep,
               Run.status == RunStatus.RUNNING.value))).all()
    cancelled = []
    for run_id in older:
        try:
            await runs.cancel(session, client, run_id)
            cancelled.append(run_id)
        except RunNotFound:
            continue
        except DevartError as exc:  # already finished, or Temporal refused: the new run goes on regardless
            log.warning("could not cancel run %s superseded on %s#%s: %s", run_id, repo, pr, exc)
    return cancelled
