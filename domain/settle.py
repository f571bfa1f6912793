"""Settling a recorded report: the attempt ends as its report said, once Temporal took the report.

An agent's report is written first (the attempt becomes ``reporting``, with its result, error and cost), then sent to
Temporal by the activity's task token, then settled here: the attempt moves to the state it ``reported``, the feed
gets its outcome, the agent its statistics and its freedom. No transaction is open while Temporal answers.

Two parties settle, whichever comes first, each with a compare-and-set on ``reporting`` so an attempt is settled
once: the API right after Temporal took the report, and the run's final record (``activities.records``), for the
attempts whose report ended their stage. So a run read as finished never shows a stage's report still on its way,
and the run's end always follows its stages' outcomes in the feed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.core.telemetry import metrics
from devart.domain import agents
from devart.domain.costs import to_money
from devart.domain.events import add_event

_RETURNING = ("RETURNING id, org_id, run_id, stage, attempt, skill, claimed_by, reported, error, result, cost_micros, "
              "extract(epoch FROM now() - claimed_at) AS seconds")
_SETTLE = text("UPDATE task_attempts SET status = reported, finished_at = now() "
               f"WHERE id = ANY(:ids) AND status = 'reporting' {_RETURNING}")
#: At the run's end: the reports that ended their stage, as the run's record shows (``stage/attempt/state``, or a
#: cancelled stage's cancellation).
_SETTLE_RUN = text(
    "UPDATE task_attempts SET status = reported, finished_at = now() WHERE run_id = :run AND status = 'reporting' "
    "AND (stage || '/' || attempt || '/' || reported = ANY(:accepted) "
    f"OR (reported = 'cancelled' AND stage = ANY(:cancelled))) {_RETURNING}"
)
#: ... and the reports that did not: Temporal never took them (the API stopped before it could say so).
_REFUSED_AT_END = text("UPDATE task_attempts SET status = 'superseded', finished_at = now() "
                       "WHERE run_id = :run AND status = 'reporting'")
_FREE = text(
    "UPDATE agents SET current_task = NULL, status = CASE WHEN status = 'busy' THEN 'idle' ELSE status END "
    "WHERE name = :agent AND current_task = :task"
)
_KIND = {"succeeded": "stage.attempt.succeeded", "failed": "stage.attempt.failed"}


async def settle(session: AsyncSession, ids: Sequence[str]) -> int:
    """End the given attempts that are still ``reporting`` as they reported (in the caller's transaction); returns
    how many this call settled (the others were settled already, or were never reporting)."""
    if not ids:
        return 0
    rows = (await session.execute(_SETTLE, {"ids": list(ids)})).all()
    for row in rows:
        await _settled(session, row)
    return len(rows)


async def settle_run(session: AsyncSession, run_id: str, accepted: Sequence[tuple[str, int, str]],
                     cancelled: Sequence[str]) -> int:
    """At the run's end, settle its reports still on their way: those its record shows as ending their stage
    (``(stage, attempt, state)``, or a stage in ``cancelled`` for a cancellation); the others end superseded."""
    params = {"run": run_id, "accepted": [f"{stage}/{attempt}/{state}" for stage, attempt, state in accepted],
              "cancelled": list(cancelled)}
    rows = (await session.execute(_SETTLE_RUN, params)).all()
    for row in rows:
        await _settled(session, row)
    await session.execute(_REFUSED_AT_END, {"run": run_id})
    return len(rows)


async def _settled(session: AsyncSession, row: Any) -> None:
    status: str = row.reported
    metrics.TASKS_REPORTED.labels(row.skill, status).inc()
    if row.claimed_by:
        await session.execute(_FREE, {"agent": row.claimed_by, "task": row.id})
        if status in _KIND and row.seconds is not None:
            await agents.record_outcome(session, row.claimed_by, row.skill, status == "succeeded",
                                        float(row.seconds), to_money(row.cost_micros), org=row.org_id)
    summary = (row.result or {}).get("summary") if isinstance(row.result, dict) else None
    add_event(session, _KIND.get(status, "stage.cancelled"), row.error or summary or status, run_id=row.run_id,
              stage=row.stage, agent=row.claimed_by, attempt=row.attempt)
