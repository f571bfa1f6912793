"""Analytics: what is slow, what fails, what it costs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from devart.api.auth import access
from devart.api.deps import SessionDep
from devart.core.bounds import MAX_NAME_CHARS
from devart.domain import analytics
from devart.domain.identity import Role

router = APIRouter(prefix="/v1/analytics", tags=["analytics"])


@router.get("", **access(Role.VIEWER))
async def get_analytics(session: SessionDep,
                        pipeline: str | None = Query(default=None, max_length=MAX_NAME_CHARS)) -> dict[str, Any]:
    """Per pipeline (runs, success rate, p50/p95 stage durations, retries, cost per run over time), per agent and
    skill (tasks, success rate, mean duration, cost), and the slowest stages by p95."""
    per_pipeline = await analytics.pipelines(session, pipeline)
    return {"pipelines": per_pipeline, "agents": await analytics.agents(session),
            "slowest_stages": analytics.slowest(per_pipeline)}
