"""Where a run's time goes, step by step: read afterwards from Temporal histories and ``task_attempts`` rows.

Apart from ``bench.scale`` because it measures nothing while runs are in flight: it reads what the finished runs
left behind (the histories' event times, the attempts' created, claimed and finished times).
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import text
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bench import report
from devart.core.database import db


async def breakdown(client: Client, run_ids: list[str]) -> dict[str, float]:
    """Median milliseconds a run spends in each step, from the runs' Temporal histories (and, for devart runs,
    their ``task_attempts`` rows).

    For every activity type: ``<type> queued`` (scheduled → a worker started it) and ``<type> running``
    (started → completed). Workflow tasks likewise (``queued`` is matching, ``running`` the worker's turn and the
    completion RPC). ``run_agent_task running`` splits into ``attempt recorded`` (activity started → the attempt
    row's created_at, just before the publish), ``published → claimed`` and ``claimed → reported`` (the skill,
    and the API's completion through Temporal). ``workflow`` is start → close; for devart runs,
    ``run recorded → workflow started`` is the API's insert of the run → its workflow's first event.
    """
    per_step: dict[str, list[float]] = {}
    attempts = await _attempt_times(run_ids)
    recorded = await _run_times(run_ids)
    for run_id in run_ids:
        history = await client.get_workflow_handle(run_id).fetch_history()
        scheduled: dict[int, tuple[str, float]] = {}
        started: dict[int, float] = {}
        task_scheduled = task_started = 0.0
        steps: defaultdict[str, float] = defaultdict(float)
        times = [event.event_time.ToNanoseconds() / 1e6 for event in history.events]
        for event, at in zip(history.events, times, strict=True):
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled[event.event_id] = (event.activity_task_scheduled_event_attributes.activity_type.name, at)
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                sid = event.activity_task_started_event_attributes.scheduled_event_id
                name, when = scheduled[sid]
                steps[f"{name} queued"] += at - when
                started[sid] = at
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                sid = event.activity_task_completed_event_attributes.scheduled_event_id
                name, _ = scheduled[sid]
                steps[f"{name} running"] += at - started[sid]
                if name == "run_agent_task":
                    for created, claimed, finished in attempts.get(run_id, []):
                        if started[sid] <= created <= at:
                            steps["  attempt recorded"] += created - started[sid]
                            steps["  published → claimed"] += claimed - created
                            steps["  claimed → reported"] += finished - claimed
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                task_scheduled = at
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                task_started = at
                steps["workflow tasks queued"] += at - task_scheduled
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                steps["workflow tasks running"] += at - task_started
        if run_id in recorded:
            steps["run recorded → workflow started"] += times[0] - recorded[run_id]
        steps["workflow"] = times[-1] - times[0]
        for step, ms in steps.items():
            per_step.setdefault(step, []).append(ms)
    return {step: round(sorted(v)[len(v) // 2], 2) for step, v in per_step.items()}


async def _attempt_times(run_ids: list[str]) -> dict[str, list[tuple[float, float, float]]]:
    """created_at, claimed_at and finished_at (epoch ms) of the runs' finished task attempts."""
    query = text("SELECT run_id, EXTRACT(EPOCH FROM created_at) * 1000 AS c, EXTRACT(EPOCH FROM claimed_at) * 1000 "
                 "AS cl, EXTRACT(EPOCH FROM finished_at) * 1000 AS f FROM task_attempts WHERE run_id = ANY(:ids) "
                 "AND claimed_at IS NOT NULL AND finished_at IS NOT NULL")
    out: dict[str, list[tuple[float, float, float]]] = {}
    async with db.session() as s:
        for r in (await s.execute(query, {"ids": run_ids})).all():
            out.setdefault(r.run_id, []).append((float(r.c), float(r.cl), float(r.f)))
    return out


async def _run_times(run_ids: list[str]) -> dict[str, float]:
    """When the API recorded each devart run (epoch ms), before it started the run's workflow."""
    query = text("SELECT id, EXTRACT(EPOCH FROM created_at) * 1000 AS c FROM runs WHERE id = ANY(:ids)")
    async with db.session() as s:
        return {r.id: float(r.c) for r in (await s.execute(query, {"ids": run_ids})).all()}


async def claim_seconds(run_ids: list[str]) -> list[float]:
    """Queued → claimed (seconds) of the runs' first attempts, from ``task_attempts`` (created_at is set just before
    the publish; claimed_at after the agent's claim went through the API, Temporal's heartbeat and the commit)."""
    if not run_ids:
        return []
    query = text("SELECT EXTRACT(EPOCH FROM (claimed_at - created_at)) AS s FROM task_attempts "
                 "WHERE run_id = ANY(:ids) AND attempt = 1 AND claimed_at IS NOT NULL")
    async with db.session() as s:
        return [float(r.s) for r in (await s.execute(query, {"ids": run_ids})).all()]


async def dispatch_delays(run_ids: list[str]) -> dict[str, float]:
    """``claim_seconds`` summarised: p50 / p99 / mean in milliseconds."""
    return report.latency(await claim_seconds(run_ids))
