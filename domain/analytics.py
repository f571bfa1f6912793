"""Analytics: per pipeline, per agent and skill, and the slowest stages.

Percentiles use the nearest-rank method (the smallest value with at least p% of values at or below it), so the
figures can be checked by hand.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from devart.domain.costs import to_money


def nearest_rank(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


async def pipelines(session: AsyncSession, pipeline: str | None = None) -> list[dict[str, Any]]:
    where = "WHERE r.status <> 'running'" + (" AND r.pipeline = :p" if pipeline else "")
    runs = (await session.execute(text(
        "SELECT r.id, r.pipeline, r.status, r.stages, r.created_at, r.finished_at, "
        "coalesce((SELECT sum(cost_micros) FROM task_attempts a WHERE a.run_id = r.id), 0) AS micros, "
        "coalesce((SELECT count(*) FROM task_attempts a WHERE a.run_id = r.id AND a.attempt > 1), 0) AS retries "
        f"FROM runs r {where} ORDER BY r.created_at"), {"p": pipeline} if pipeline else {})).all()
    grouped: dict[str, list[Any]] = defaultdict(list)
    for row in runs:
        grouped[row.pipeline].append(row)
    out = []
    for name, rows in sorted(grouped.items()):
        durations: dict[str, list[float]] = defaultdict(list)
        for row in rows:
            for stage in row.stages:
                seconds = _seconds(stage.get("started_at"), stage.get("finished_at"))
                if seconds is not None and stage.get("status") == "succeeded":
                    durations[stage["name"]].append(seconds)
        succeeded = sum(r.status == "succeeded" for r in rows)
        out.append({
            "pipeline": name, "runs": len(rows), "succeeded": succeeded,
            "success_rate": succeeded / len(rows), "retries": int(sum(r.retries for r in rows)),
            "stages": {s: {"p50": nearest_rank(v, 50), "p95": nearest_rank(v, 95), "count": len(v)}
                       for s, v in sorted(durations.items())},
            "cost_per_run": [{"run_id": r.id, "at": r.created_at.isoformat(), "cost": to_money(int(r.micros)),
                              "seconds": (r.finished_at - r.created_at).total_seconds() if r.finished_at else None}
                             for r in rows],
        })
    return out


async def agents(session: AsyncSession) -> list[dict[str, Any]]:
    rows = (await session.execute(text(
        "SELECT agent, skill, tasks, successes, total_seconds, cost FROM agent_skill_stats ORDER BY agent, skill"
    ))).all()
    return [{"agent": r.agent, "skill": r.skill, "tasks": r.tasks, "success_rate": r.successes / r.tasks if r.tasks
             else 0.0, "mean_seconds": r.total_seconds / r.tasks if r.tasks else 0.0, "cost": r.cost} for r in rows]


def slowest(pipeline_stats: list[dict[str, Any]], limit: int = 10) -> list[dict[str, Any]]:
    stages = [{"pipeline": p["pipeline"], "stage": s, **v} for p in pipeline_stats for s, v in p["stages"].items()
              if v["p95"] is not None]
    return sorted(stages, key=lambda s: s["p95"], reverse=True)[:limit]
