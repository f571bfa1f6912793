"""Records activity: keep the run's row in PostgreSQL in step with the workflow."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from temporalio import activity

from core import db, github_reporter, metrics
from core.contracts import RunRecord, RunStatus
from core.events import add_event
from core.models import Run, utcnow


@activity.defn
async def record_run(rec: RunRecord) -> None:
    """Upsert the run and add a feed event; replaying the same record is harmless."""
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
    stmt = insert(Run).values(**values, created_at=utcnow())
    stmt = stmt.on_conflict_do_update(index_elements=["id"], set_=values)
    if finished and activity.info().attempt == 1:
        _observe(rec)
    async with db.session() as s:
        await s.exec(stmt)  # type: ignore[call-overload]
        if activity.info().attempt == 1:
            kind = "run.finished" if finished else "run.started"
            message = f"run {rec.status.value}" + (f": {rec.error}" if rec.error else "")
            add_event(s, kind, message, run_id=rec.run_id, pipeline=rec.pipeline, status=rec.status.value)
    await github_reporter.run_recorded(rec)  # GitHub hook: check runs and the review (bounded, never raises)


def _observe(rec: RunRecord) -> None:
    metrics.RUNS_FINISHED.labels(rec.pipeline, rec.status.value).inc()
    for stage in rec.stages:
        if stage.started_at and stage.finished_at:
            seconds = (stage.finished_at - stage.started_at).total_seconds()
            metrics.STAGE_SECONDS.labels(rec.pipeline, stage.name, stage.status.value).observe(seconds)
