"""Reporting runs back to GitHub: one check run per stage, and a pull-request review from the review stage.

Called by the records activity (run start: a queued check run per stage; run end: conclusions of what the agents
did not report, and the review) and by the API's task service (claim: in progress; complete / fail: completed
with figures and annotations). Only runs started by a webhook have a ``GitHubRun`` row, so every other run costs
one primary-key lookup per process (remembered: the row is written before the run starts, so a miss stays one).
GitHub never breaks the pipeline: every report is bounded in time, and a failure is
logged and written to the activity feed as ``github.report_failed``, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from githubkit import GitHub
from githubkit.exception import RequestFailed
from sqlalchemy import or_, update
from sqlmodel import col, select

from core import db
from core import github_format as fmt
from core import settings as core_settings
from core.contracts import RunRecord, RunStatus, StageResult, StageStatus
from core.events import add_event
from core.github import TRIGGER, check_name, client, external_id, settings, split_repo
from core.github_review import post_review
from core.models import GitHubCheck, GitHubRun, TaskAttempt, utcnow
from core.temporal import ui_link

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
    """The workflow recorded the run: create the queued check runs at its start, conclude the rest at its end."""
    if rec.trigger != TRIGGER:
        return
    what = "run start" if rec.status == RunStatus.RUNNING else "run end"
    reports = _started_reports if what == "run start" else _finished_reports
    await _guarded(rec.run_id, None, what, _report_run(rec, reports))


@dataclass(frozen=True)
class Attempt:
    """What a report needs of a task attempt (a snapshot: the report outlives the request's session)."""

    run_id: str
    stage: str
    attempt: int
    agent: str | None
    claimed_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: TaskAttempt) -> Attempt:
        return cls(row.run_id, row.stage, row.attempt, row.claimed_by, row.claimed_at, row.finished_at)


def stage_claimed(row: TaskAttempt) -> None:
    """An agent claimed an attempt: the check run goes in progress (in the background)."""
    attempt = Attempt.of(row)
    note = f"attempt {attempt.attempt} claimed by {attempt.agent}"
    fields = {"status": "in_progress", "started_at": attempt.claimed_at or utcnow()}
    _spawn(attempt, "claim", lambda: _stage(attempt, fields, note))


def stage_finished(row: TaskAttempt, result: StageResult | None, error_type: str | None = None,
                   error: str | None = None, non_retryable: bool = False) -> None:
    """An agent completed or failed an attempt (reported in the background); a failure Temporal will retry keeps
    the check run in progress."""
    attempt = Attempt.of(row)
    _spawn(attempt, "stage report", lambda: _finished(attempt, result, error_type, error, non_retryable))


#: The latest background report of each stage: the next one waits for it, so claim → complete keep their order.
_chains: dict[tuple[str, str], asyncio.Task[None]] = {}
#: Runs known not to come from GitHub (most recent last), so their stage reports skip the lookup entirely.
_not_github: OrderedDict[str, None] = OrderedDict()
_NOT_GITHUB_KEPT = 4096


def _remember_not_github(run_id: str) -> None:
    _not_github[run_id] = None
    _not_github.move_to_end(run_id)
    while len(_not_github) > _NOT_GITHUB_KEPT:
        _not_github.popitem(last=False)


def _spawn(attempt: Attempt, what: str, report: Callable[[], Awaitable[None]]) -> None:
    """Report without holding up the agent's call (a slow GitHub must not eat its heartbeat timeout)."""
    if attempt.run_id in _not_github:
        return
    key = (attempt.run_id, attempt.stage)
    previous = _chains.get(key)

    async def chained() -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        await _guarded(attempt.run_id, attempt.stage, what, report())

    try:
        task = asyncio.get_running_loop().create_task(chained())
    except RuntimeError:  # no event loop (a synchronous caller): nothing to report with
        log.warning("GitHub report (%s) for run %s skipped: no event loop", what, attempt.run_id)
        return
    _chains[key] = task
    task.add_done_callback(lambda done: _chains.pop(key) if _chains.get(key) is done else None)


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
        why = _describe(exc)
        log.warning("GitHub report (%s) for run %s failed: %s", what, run_id, why)
        try:
            async with db.session() as s:
                add_event(s, "github.report_failed", f"GitHub {what}: {why}", run_id=run_id, stage=stage)
        except Exception:  # the database is down too; the log line above stays
            log.exception("could not record the failed GitHub report")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RequestFailed):
        return f"GitHub answered {exc.response.status_code}: {exc.response.raw_response.text[:300]}"
    return f"no answer within {REPORT_TIMEOUT:g}s" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"


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
                     history=ui_link(ctx.run_id))


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


async def _stage(attempt: Attempt, fields: dict[str, Any], note: str) -> None:
    found = await _context(attempt.run_id)
    row = found[1].get(attempt.stage) if found else None
    if found is None or row is None or row.status in _FINAL:
        return
    ctx = found[0]
    fields.setdefault("output", fmt.check_output(attempt.stage, "running", None, None, None, _links(ctx), note))
    async with client(ctx.installation_id) as gh:
        await _send(gh, ctx, row, fields)


async def _finished(attempt: Attempt, result: StageResult | None, error_type: str | None, error: str | None,
                    non_retryable: bool) -> None:
    found = await _context(attempt.run_id)
    row = found[1].get(attempt.stage) if found else None
    if found is None or row is None or row.status in _FINAL:
        return
    ctx, links = found[0], _links(found[0])
    seconds = fmt.seconds_between(attempt.claimed_at, attempt.finished_at)
    failed = error_type is not None
    final = (not failed or non_retryable or error_type in row.non_retryable
             or attempt.attempt >= row.max_attempts)
    if not final:
        note = f"attempt {attempt.attempt} failed ({error_type}: {error}); Temporal retries it"
        fields: dict[str, Any] = {"status": "in_progress", "output": fmt.check_output(
            attempt.stage, "retrying", result, error, seconds, links, note)}
        notes: list[dict[str, Any]] = []
    else:
        status = StageStatus.FAILED if failed else StageStatus.SUCCEEDED
        message = f"{error_type}: {error}" if failed else None
        fields = {"conclusion": fmt.conclusion(status, error), "completed_at": attempt.finished_at or utcnow(),
                  "output": fmt.check_output(attempt.stage, status, result, message, seconds, links)}
        notes = fmt.finding_annotations(result)
    async with client(ctx.installation_id) as gh:
        await _send(gh, ctx, row, fields, notes)


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


def _started_reports(rec: RunRecord, gh: GitHub[Any], ctx: GitHubRun, rows: dict[str, GitHubCheck],
                     links: fmt.Links) -> list[Awaitable[None]]:
    """A queued check run for every stage that has none in progress or done yet."""
    out: list[Awaitable[None]] = []
    for stage in rec.stages:
        row = rows.get(stage.name)
        if row is None or row.status in (*_FINAL, "in_progress"):
            continue  # a retried record must not move a check run back
        waits = f"waits for {', '.join(stage.depends_on)}" if stage.depends_on else "waits for an agent"
        output = fmt.check_output(stage.name, "queued", None, None, None, links, waits)
        out.append(_send(gh, ctx, row, {"status": "queued", "output": output}))
    return out


def _finished_reports(rec: RunRecord, gh: GitHub[Any], ctx: GitHubRun, rows: dict[str, GitHubCheck],
                      links: fmt.Links) -> list[Awaitable[None]]:
    """The conclusion of every stage the agents did not report, and the review of a successful review stage."""
    out: list[Awaitable[None]] = []
    for stage in rec.stages:
        row = rows.get(stage.name)
        if row is None or row.status in _FINAL:
            continue
        status = stage.status if stage.status in _ENDED else StageStatus.CANCELLED  # never started: cancelled
        fields = {"conclusion": fmt.conclusion(status, stage.error), "completed_at": stage.finished_at or utcnow(),
                  "output": fmt.check_output(stage.name, status, stage.result, stage.error,
                                             fmt.seconds_between(stage.started_at, stage.finished_at), links)}
        out.append(_send(gh, ctx, row, fields, fmt.finding_annotations(stage.result)))
    for stage in rec.stages:
        row = rows.get(stage.name)
        if row is not None and row.skill == "review" and stage.status == StageStatus.SUCCEEDED and stage.result:
            out.append(post_review(gh, ctx, stage, links))
    return out

