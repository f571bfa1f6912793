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
from devart.domain.costs import MICROS

#: What settling an attempt does beside moving it to the state it reported, as common table expressions over
#: ``done`` (the attempts settled): the agent that held it is freed; a finished task counts in the agent's statistics
#: for its skill (summed per agent and skill, so several attempts of one agent settled at once make one upsert); the
#: feed gets the outcome, with the error, the result's summary or the state as its message. One round trip for all
#: of it, where the statements one by one took five.
_CONSEQUENCES = (
    "freed AS (UPDATE agents SET current_task = NULL, status = CASE WHEN agents.status = 'busy' THEN 'idle' "
    "ELSE agents.status END FROM done WHERE agents.name = done.claimed_by AND agents.current_task = done.id), "
    "counted AS (INSERT INTO agent_skill_stats AS s (agent, skill, org_id, tasks, successes, total_seconds, cost) "
    "SELECT claimed_by, skill, min(org_id), count(*), count(*) FILTER (WHERE reported = 'succeeded'), sum(seconds), "
    f"sum(cost_micros) / {MICROS}.0 FROM done WHERE claimed_by IS NOT NULL AND seconds IS NOT NULL "
    "AND reported IN ('succeeded', 'failed') GROUP BY claimed_by, skill "
    "ON CONFLICT (agent, skill) DO UPDATE SET tasks = s.tasks + excluded.tasks, "
    "successes = s.successes + excluded.successes, total_seconds = s.total_seconds + excluded.total_seconds, "
    "cost = s.cost + excluded.cost), "
    "told AS (INSERT INTO events (kind, message, run_id, stage, agent, data, created_at) "
    "SELECT CASE reported WHEN 'succeeded' THEN 'stage.attempt.succeeded' WHEN 'failed' THEN 'stage.attempt.failed' "
    "ELSE 'stage.cancelled' END, coalesce(nullif(error, ''), CASE WHEN json_typeof(result) = 'object' "
    "THEN nullif(result ->> 'summary', '') END, reported), run_id, stage, claimed_by, "
    "json_build_object('attempt', attempt), clock_timestamp() FROM done ORDER BY stage, attempt) "
    "SELECT skill, reported FROM done"
)
_DONE = ("RETURNING id, org_id, run_id, stage, attempt, skill, claimed_by, reported, error, result, cost_micros, "
         "extract(epoch FROM now() - claimed_at) AS seconds")
_SETTLE = text("WITH done AS (UPDATE task_attempts SET status = reported, finished_at = now() "
               f"WHERE id = ANY(:ids) AND status = 'reporting' {_DONE}), {_CONSEQUENCES}")
#: At the run's end, in one statement: the reports that ended their stage, as the run's record shows
#: (``stage/attempt/state``, or a cancelled stage's cancellation), settle as they reported; the others end superseded
#: (Temporal never took them: the API stopped before it could say so). One statement sees one snapshot, and a row
#: whose report the API is committing meanwhile is judged on that report once it is committed: two statements could
#: judge it ``claimed`` in the first and ``reporting`` in the second, and supersede a report its stage ended with.
_SETTLE_RUN = text(
    "WITH moved AS (UPDATE task_attempts SET status = CASE WHEN stage || '/' || attempt || '/' || reported = "
    "ANY(:accepted) OR (reported = 'cancelled' AND stage = ANY(:cancelled)) THEN reported ELSE 'superseded' END, "
    f"finished_at = now() WHERE run_id = :run AND status = 'reporting' {_DONE}, status), "
    f"done AS (SELECT * FROM moved WHERE status <> 'superseded'), {_CONSEQUENCES}"
)


async def settle(session: AsyncSession, ids: Sequence[str]) -> int:
    """End the given attempts that are still ``reporting`` as they reported (in the caller's transaction); returns
    how many this call settled (the others were settled already, or were never reporting)."""
    if not ids:
        return 0
    return _count((await session.execute(_SETTLE, {"ids": list(ids)})).all())


async def settle_run(session: AsyncSession, run_id: str, accepted: Sequence[tuple[str, int, str]],
                     cancelled: Sequence[str]) -> int:
    """At the run's end, settle its reports still on their way: those its record shows as ending their stage
    (``(stage, attempt, state)``, or a stage in ``cancelled`` for a cancellation); the others end superseded."""
    params = {"run": run_id, "accepted": [f"{stage}/{attempt}/{state}" for stage, attempt, state in accepted],
              "cancelled": list(cancelled)}
    return _count((await session.execute(_SETTLE_RUN, params)).all())


def _count(rows: Sequence[Any]) -> int:
    for row in rows:
        metrics.TASKS_REPORTED.labels(row.skill, row.reported).inc()
    return len(rows)
