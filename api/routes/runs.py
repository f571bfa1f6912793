"""Run routes: start, list, inspect, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from devart.api.auth import access
from devart.api.deps import SessionDep, TemporalDep, client_for
from devart.api.schemas import RunCreated, RunRequest, RunView
from devart.core.bounds import MAX_NAME_CHARS
from devart.domain import runs
from devart.domain.identity import Role

router = APIRouter(prefix="/v1/runs", tags=["runs"])

RunId = Annotated[str, Path(max_length=MAX_NAME_CHARS, description="The run's id (also its workflow's).")]


@router.post("", status_code=201, response_model=RunCreated, **access(Role.SUPERVISOR))
async def start_run(req: RunRequest, session: SessionDep, temporal: TemporalDep) -> RunCreated:
    """Validate the pipeline, parameters and repository, then start the run."""
    return await runs.start(session, await client_for(temporal, session), req)


@router.get("", **access(Role.VIEWER))
async def list_runs(
    session: SessionDep,
    pipeline: str | None = Query(default=None, max_length=MAX_NAME_CHARS),
    status: str | None = Query(default=None, pattern="^(running|succeeded|failed|cancelled)$"),
    limit: int = Query(default=50, ge=1, le=500),
) -> list[dict[str, Any]]:
    rows = await runs.list_runs(session, pipeline=pipeline, status=status, limit=limit)
    return [
        {
            "run_id": r.id,
            "pipeline": r.pipeline,
            "status": r.status,
            "repository": r.repository,
            "trigger": r.trigger,
            "priority": r.priority,
            "created_at": r.created_at,
            "finished_at": r.finished_at,
            "error": r.error,
        }
        for r in rows
    ]


@router.get("/{run_id}", response_model=RunView, **access(Role.VIEWER))
async def get_run(run_id: RunId, session: SessionDep, temporal: TemporalDep) -> RunView:
    """The run with every stage's state, result, reason, failing tests and log tail."""
    return await runs.view(session, await client_for(temporal, session), run_id)


@router.post("/{run_id}/cancel", status_code=202, **access(Role.SUPERVISOR))
async def cancel_run(run_id: RunId, session: SessionDep, temporal: TemporalDep) -> dict[str, str]:
    await runs.cancel(session, await client_for(temporal, session), run_id)
    return {"run_id": run_id, "status": "cancelling"}


@router.post("/{run_id}/approve", status_code=202, **access(Role.SUPERVISOR))
async def approve_run(run_id: RunId, session: SessionDep, temporal: TemporalDep) -> dict[str, str]:
    """Approve a run paused on a soft budget limit (administrator)."""
    await runs.approve(session, await client_for(temporal, session), run_id)
    return {"run_id": run_id, "status": "approved"}
