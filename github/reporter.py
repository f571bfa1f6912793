"""Reporting runs back to GitHub: one check run per stage, and a pull-request review from the review stage.

From engine 6 the workflow sends every report as a regular activity (``activities.github``): queued check runs at
the run's start, in progress when a stage starts, completed with figures and annotations when it ends, and at the
run's end the conclusions still missing and the review. ``report`` raises, so Temporal retries a report until
GitHub takes it, whichever process restarts meanwhile. Runs of older engines are still reported by the records
activity at their start and end (``run_recorded``: bounded, a failure only logged and written to the feed as
``github.report_failed``). Only runs started by a webhook have a ``GitHubRun`` row, so every other run costs one
primary-key lookup per process (remembered: the row is written before the run starts, so a miss stays one).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from functools import lru_cache
from typing import Any, cast

from githubkit import GitHub
from githubkit.exception import RequestFailed
from sqlalchemy import or_, update
from sqlmodel import col, select
from temporalio import activity

from devart.core import settings as core_settings
from devart.core.contracts import GitHubReport, RunRecord, RunStatus, StageState, StageStatus
from devart.core.database import db
from devart.core.database.models import GitHubCheck, GitHubRun, utcnow
from devart.core.temporal import ui_link
from devart.domain.events import add_event
from devart.github import format as fmt
from devart.github.client import TRIGGER, check_name, client, external_id, settings, split_repo
from devart.github.review import post_review

log = logging.getLogger(__name__)

#: Longest a report may take in all (GitHub's own retries included): the records activity has 30 s.
REPORT_TIMEOUT = 20.0
#: Rows no report may touch any more: a re-run took their check run over.
SUPERSEDED = "superseded"
#: A report is sending the conclusion right now.
COMPLETING = "completing"
#: Statuses after which a check run takes no other report (until a re-run takes it over with a new row).
_FINAL = ("completed", COMPLETING, SUPERSEDED)
_ENDED = {StageStatus.SUCCEEDED, StageStatus.FAILED, StageStatus.SKIPPED, StageStatus.CANCELLED}


async def run_recorded(rec: RunRecord) -> None:
    """The records activity recorded a run of an engine before 6: queued check runs at its start, the rest at its
    end. Bounded, and never raises: those engines had no retry for a report."""
    if rec.trigger != TRIGGER:
        return
    what = "run start" if rec.status == RunStatus.RUNNING else "run end"
    reports = _started_reports if what == "run start" else _finished_reports
    await _guarded(rec.run_id, None, what, _report_run(rec, reports))


#: What each of the workflow's reports sends, and how the feed names it.
_REPORTS: dict[str, tuple[str, RunReports]] = {}


async def report(rep: GitHubReport) -> None:
    """Send one of the workflow's reports (engine 6); raises whatever went wrong, for the activity to retry."""
    if rep.record.trigger == TRIGGER:
        await _report_run(rep.record, _REPORTS[rep.event][1])


def what(rep: GitHubReport) -> str:
    """The report as the feed names it: ``run start``, ``stage end``…"""
    return _REPORTS[rep.event][0]


#: Runs known not to come from GitHub (most recent last), so their stage reports skip the lookup entirely.
_not_github: OrderedDict[str, None] = OrderedDict()
_NOT_GITHUB_KEPT = 4096


def _remember_not_github(run_id: str) -> None:
    _not_github[run_id] = None
    _not_github.move_to_end(run_id)
    while len(_not_github) > _NOT_GITHUB_KEPT:
        _not_github.popitem(last=False)


@lru_cache
def _reporting() -> bool:
    """Whether this process has GitHub credentials; without them runs still start and nothing is reported."""
    try:
        mode = settings().auth_mode
    except Exception as exc:  # invalid settings must not break a pipeline either
        log.warning("GitHub reporting is off: the DEVART_GITHUB_* settings are invalid: %s", exc)
        return False
    if mode is None:
        log.warning("GitHub reporting is off: set DEVART_GITHUB_TOKEN, or DEVART_GITHUB_APP_ID and a private key")
    return mode is not None


async def _guarded(run_id: str, stage: str | None, what: str, report: Awaitable[None]) -> None:
    try:
        await asyncio.wait_for(report, REPORT_TIMEOUT)
    except Exception as exc:  # GitHub, the network or our own bug: the pipeline goes on, the feed says why
        await report_failed(run_id, stage, what, describe(exc, REPORT_TIMEOUT))


async def report_failed(run_id: str, stage: str | None, what: str, why: str) -> None:
    """Log a report GitHub never got, and put it in the run's feed (``github.report_failed``)."""
    log.warning("GitHub report (%s) for run %s failed: %s", what, run_id, why)
    try:
        async with db.session() as s:
            add_event(s, "github.report_failed", f"GitHub {what}: {why}", run_id=run_id, stage=stage)
    except Exception:  # the database is down too; the log line above stays
        log.exception("could not record the failed GitHub report")


def describe(exc: BaseException, timeout: float) -> str:
    """Why a report failed, in a line."""
    if isinstance(exc, RequestFailed):
        return f"GitHub answered {exc.response.status_code}: {exc.response.raw_response.text[:300]}"
    return f"no answer within {timeout:g}s" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"


def refused(exc: BaseException) -> bool:
    """Whether GitHub refused the report for good (a 4xx but a timeout or a rate limit): retrying cannot help."""
    return isinstance(exc, RequestFailed) and 400 <= exc.response.status_code < 500 and \
        exc.response.status_code not in (408, 429)


async def _context(run_id: str) -> tuple[GitHubRun, dict[str, GitHubCheck]] | None:
    """The run's PR context and check rows; None when GitHub did not start the run or reporting is off."""
    if run_id in _not_github:
        return None
    async with db.session() as s:
        ctx = await s.get(GitHubRun, run_id)
        if ctx is None:
            _remember_not_github(run_id)
            return None
        if not _reporting():
            return None
        rows = (await s.exec(select(GitHubCheck).where(GitHubCheck.run_id == run_id))).all()
    return ctx, {r.stage: r for r in rows}


def _links(ctx: GitHubRun) -> fmt.Links:
    cfg = settings()
    base = (cfg.public_url or core_settings.api().url).rstrip("/")
    trace = cfg.trace_url.format(trace_id=ctx.trace_id, run_id=ctx.run_id) if cfg.trace_url and ctx.trace_id else None
    return fmt.Links(run=f"{base}/v1/runs/{ctx.run_id}", trace=trace, trace_id=ctx.trace_id,
                     history=ui_link(ctx.run_id, _namespace()))


def _namespace() -> str | None:
    """The run's Temporal namespace: its workflow's, when reporting from the workflow's activity."""
    return activity.info().workflow_namespace if activity.in_activity() else None


async def _send(gh: GitHub[Any], ctx: GitHubRun, row: GitHubCheck, fields: dict[str, Any],
                notes: list[dict[str, Any]] | None = None) -> None:
    """Create the stage's check run or update the one it has, then remember what GitHub now shows.

    Completing is claimed in the database first: the agent's report (API) and the run's end (worker) may both
    try, and only one of them may send the conclusion and the annotations (GitHub appends annotations).
    """
    completing = "conclusion" in fields
    if completing and not await _claim_completion(row):
        return
    try:
        await _post(gh, ctx, row, fields, notes or [])
    except BaseException:
        if completing:  # give the completion back: the run's end reports it again
            await _store(row, row.status, None)
        raise
    row.status = "completed" if completing else fields.get("status", row.status)
    await _store(row, row.status, fields.get("conclusion"))


async def _post(gh: GitHub[Any], ctx: GitHubRun, row: GitHubCheck, fields: dict[str, Any],
                notes: list[dict[str, Any]]) -> None:
    owner, repo = split_repo(ctx.repo)
    body = {"external_id": external_id(row.run_id, row.stage), "details_url": _links(ctx).run, **fields}
    output = fields.get("output")
    if output and notes:
        body["output"] = {**output, "annotations": notes[: fmt.ANNOTATIONS_PER_REQUEST]}
    if row.check_run_id is None:
        new = {"name": check_name(row.stage), "head_sha": row.head_sha, **body}
        created = await gh.rest.checks.async_create(owner, repo, data=cast(Any, new))
        row.check_run_id = created.parsed_data.id
        # never create it twice, whatever happens next
        await _store(row, COMPLETING if "conclusion" in fields else fields.get("status", "queued"), None)
    else:
        await gh.rest.checks.async_update(owner, repo, row.check_run_id, data=cast(Any, body))
    for start in range(fmt.ANNOTATIONS_PER_REQUEST, len(notes), fmt.ANNOTATIONS_PER_REQUEST):
        assert output is not None and row.check_run_id is not None
        more = {"title": output["title"], "summary": output["summary"],
                "annotations": notes[start: start + fmt.ANNOTATIONS_PER_REQUEST]}
        await gh.rest.checks.async_update(owner, repo, row.check_run_id, data=cast(Any, {"output": more}))


async def _claim_completion(row: GitHubCheck) -> bool:
    async with db.session() as s:
        claimed = await s.exec(
            update(GitHubCheck)
            .where(col(GitHubCheck.run_id) == row.run_id, col(GitHubCheck.stage) == row.stage,
                   or_(col(GitHubCheck.status).is_(None), col(GitHubCheck.status).not_in(_FINAL)))
            .values(status=COMPLETING).returning(col(GitHubCheck.stage)))  # type: ignore[call-overload]
        return claimed.first() is not None


async def _store(row: GitHubCheck, status: str | None, conclusion: str | None) -> None:
    async with db.session() as s:
        stored = await s.get(GitHubCheck, (row.run_id, row.stage))
        if stored is not None and stored.status != SUPERSEDED:
            stored.check_run_id, stored.status, stored.updated_at = row.check_run_id, status, utcnow()
            stored.conclusion = conclusion


async def _together(reports: Sequence[Awaitable[None]]) -> None:
    """The stages' reports side by side (the records activity waits for them); the first failure is raised once
    all are done, so one refused check run does not stop the others."""
    failed = [r for r in await asyncio.gather(*reports, return_exceptions=True) if isinstance(r, BaseException)]
    if failed:
        raise failed[0]


#: Builds the reports of a run's start or end: (record, GitHub client, PR context, check rows by stage, links).
RunReports = Callable[[RunRecord, GitHub[Any], GitHubRun, dict[str, GitHubCheck], fmt.Links], list[Awaitable[None]]]


async def _report_run(rec: RunRecord, reports: RunReports) -> None:
    """Send a run's stage reports over one GitHub client, side by side; nothing for a run GitHub did not start."""
    found = await _context(rec.run_id)
    if found is None:
        return
    ctx, rows = found
    async with client(ctx.installation_id) as gh:
        await _together(reports(rec, gh, ctx, rows, _links(ctx)))


def _open_rows(rec: RunRecord, rows: dict[str, GitHubCheck],
               past: tuple[str | None, ...]) -> list[tuple[StageState, GitHubCheck]]:
    """The stages of ``rec`` with a check run whose status is not in ``past``: a retried or late report must not
    move a check run back, nor send the same update twice."""
    return [(stage, rows[stage.name]) for stage in rec.stages
            if stage.name in rows and rows[stage.name].status not in past]


def _started_reports(rec: RunRecord, gh: GitHub[Any], ctx: GitHubRun, rows: dict[str, GitHubCheck],
                     links: fmt.Links) -> list[Awaitable[None]]:
    """A queued check run for every stage that has none in progress or done yet."""
    out: list[Awaitable[None]] = []
    for stage, row in _open_rows(rec, rows, (*_FINAL, "in_progress")):
        waits = f"waits for {', '.join(stage.depends_on)}" if stage.depends_on else "waits for an agent"
        output = fmt.check_output(stage.name, "queued", None, None, None, links, waits)
        out.append(_send(gh, ctx, row, {"status": "queued", "output": output}))
    return out


def _in_progress_reports(rec: RunRecord, gh: GitHub[Any], ctx: GitHubRun, rows: dict[str, GitHubCheck],
                         links: fmt.Links) -> list[Awaitable[None]]:
    """The check run of each stage of ``rec`` goes in progress: the stage started (its sandbox, then an agent)."""
    note = "the stage started: its sandbox is prepared, then an agent takes its task"
    return [_send(gh, ctx, row, {"status": "in_progress", "started_at": stage.started_at or utcnow(),
                                 "output": fmt.check_output(stage.name, "running", None, None, None, links, note)})
            for stage, row in _open_rows(rec, rows, (*_FINAL, "in_progress"))]


def _conclusion_reports(rec: RunRecord, gh: GitHub[Any], ctx: GitHubRun, rows: dict[str, GitHubCheck],
                        links: fmt.Links) -> list[Awaitable[None]]:
    """The conclusion of every stage of ``rec`` whose check run has none yet (a stage never started: cancelled)."""
    out: list[Awaitable[None]] = []
    for stage, row in _open_rows(rec, rows, _FINAL):
        status = stage.status if stage.status in _ENDED else StageStatus.CANCELLED
        note = f"{stage.attempts} attempts of its task (Temporal retried it)" if stage.attempts > 1 else ""
        fields = {"conclusion": fmt.conclusion(status, stage.error), "completed_at": stage.finished_at or utcnow(),
                  "output": fmt.check_output(stage.name, status, stage.result, stage.error,
                                             fmt.seconds_between(stage.started_at, stage.finished_at), links, note)}
        out.append(_send(gh, ctx, row, fields, fmt.finding_annotations(stage.result)))
    return out


def _finished_reports(rec: RunRecord, gh: GitHub[Any], ctx: GitHubRun, rows: dict[str, GitHubCheck],
                      links: fmt.Links) -> list[Awaitable[None]]:
    """The conclusion of every stage not reported yet, and the review of a successful review stage."""
    out = _conclusion_reports(rec, gh, ctx, rows, links)
    for stage in rec.stages:
        row = rows.get(stage.name)
        if row is not None and row.skill == "review" and stage.status == StageStatus.SUCCEEDED and stage.result:
            out.append(post_review(gh, ctx, stage, links))
    return out


_REPORTS.update({"run_started": ("run start", _started_reports), "run_finished": ("run end", _finished_reports),
                 "stage_started": ("stage start", _in_progress_reports),
                 "stage_finished": ("stage end", _conclusion_reports)})
