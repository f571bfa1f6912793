"""Records activity: keep the run's row in PostgreSQL in step with the workflow."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from temporalio import activity

from devart.core.contracts import RunRecord, RunStatus, StageStatus
from devart.core.database import db
from devart.core.database.models import Run, utcnow
from devart.core.orgs import DEFAULT_ORG
from devart.core.telemetry import metrics
from devart.domain import run_feed
from devart.domain.events import add_event
from devart.domain.settle import settle_run
from devart.github import reporter as github_reporter


@activity.defn
async def record_run(rec: RunRecord) -> None:
    """Upsert the run and put its start or end in the feed once; writing the same record again is harmless.

    The same record does get written more than once: a local activity whose worker died before its workflow task
    completed runs again on the next worker, as a first attempt again, and an attempt that failed after its commit
    is retried. The upsert locks the run's row, so writers of one run take turns, and only the one that finds no
    event of its kind adds it (and counts the run's end in the metrics). Counting attempts instead wrote a second
    event after such a replay, and none at all when the first attempt failed before committing. The run's end also
    adds its start when the feed lacks it (``domain.run_feed``): every run's feed has both, in that order.
    """
    finished = rec.status != RunStatus.RUNNING
    values = {
        "id": rec.run_id,
        "pipeline": rec.pipeline,
        "repository": rec.repository,
        "ref": rec.ref,
        "trigger": rec.trigger,
        "params": rec.params,
        "status": rec.status.value,
        "error": rec.error,
        "stages": [s.model_dump(mode="json") for s in rec.stages],
        "finished_at": utcnow() if finished else None,
    }
    # The API recorded the run, in its organisation, before starting the workflow; the upsert keeps that organisation.
    # A workflow started without the API (by hand, with Temporal's own tools) belongs to the default organisation.
    runs = Run.__table__.c  # type: ignore[attr-defined]
    org = func.coalesce(select(runs.org_id).where(runs.id == rec.run_id).scalar_subquery(),
                        func.nullif(func.current_setting("devart.org_id", True), ""), DEFAULT_ORG)
    stmt = insert(Run).values(**values, created_at=utcnow(), org_id=org)
    stmt = stmt.on_conflict_do_update(index_elements=["id"], set_=values)
    kind = run_feed.FINISHED if finished else run_feed.STARTED
    async with db.session() as s:
        if finished:
            # The workflow may hear of a stage's end before the API settled the agent's report (``domain.settle``):
            # the reports that ended its stages are settled here first, so a run read as finished shows every
            # stage's outcome, and its end follows them in the feed.
            await settle_run(s, rec.run_id, *_accepted(rec))
        await s.exec(stmt)  # type: ignore[call-overload]
        recorded = await run_feed.in_feed(s, rec.run_id)
        if finished and run_feed.STARTED not in recorded:  # the API stopped before it recorded the start
            run_feed.add_started(s, rec.run_id, rec.pipeline, late="at the run's end: the API did not record it")
        first = kind not in recorded
        if first:
            message = f"run {rec.status.value}" + (f": {rec.error}" if rec.error else "")
            add_event(s, kind, message, run_id=rec.run_id, pipeline=rec.pipeline, status=rec.status.value)
    if finished and first:
        _observe(rec)
    if rec.report_github:  # engines before 6: from 6 on the workflow reports to GitHub from activities of its own
        await github_reporter.run_recorded(rec)  # check runs and the review (bounded, never raises)


def _accepted(rec: RunRecord) -> tuple[list[tuple[str, int, str]], list[str]]:
    """The reports that ended the run's stages: ``(stage, attempt, state)``, and the stages that were cancelled."""
    accepted = [(s.name, s.result.attempt, s.status.value) for s in rec.stages
                if s.result is not None and s.status in (StageStatus.SUCCEEDED, StageStatus.FAILED)]
    return accepted, [s.name for s in rec.stages if s.status == StageStatus.CANCELLED]


def _observe(rec: RunRecord) -> None:
    metrics.RUNS_FINISHED.labels(rec.pipeline, rec.status.value).inc()
    for stage in rec.stages:
        if stage.started_at and stage.finished_at:
            seconds = (stage.finished_at - stage.started_at).total_seconds()
            metrics.STAGE_SECONDS.labels(rec.pipeline, stage.name, stage.status.value).observe(seconds)
