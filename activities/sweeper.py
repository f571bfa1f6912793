"""Sweeper activity: remove sandboxes whose run has ended or that outlived their time to live.

Teardown in the workflow's ``finally`` covers every normal path; this catches the rest (a run terminated from
outside, a worker that died between provision and teardown and never came back for it), for every backend.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field
from sqlmodel import col, select
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError

from core import db
from core.contracts import SandboxHandle
from core.events import add_event
from core.models import Run, utcnow
from sandboxes.factory import get_sandbox


class SweepInput(BaseModel):
    ttl_seconds: float = Field(default=6 * 3600, description="Remove any sandbox older than this.")
    grace_seconds: float = Field(default=60, description="Never remove a sandbox younger than this.")


class SweepResult(BaseModel):
    removed: dict[str, str] = Field(default_factory=dict, description="Sandbox id -> why it was removed.")
    kept: int = 0


def _why(handle: SandboxHandle, run_status: str | None, inp: SweepInput) -> str | None:
    """Why this sandbox should go, or None to keep it."""
    if run_status is not None and run_status != "running":
        return f"its run is {run_status}"
    age = utcnow() - handle.created_at if handle.created_at else None
    if age is not None and age > timedelta(seconds=inp.ttl_seconds):
        return f"older than its time to live ({inp.ttl_seconds:.0f}s)"
    if run_status is None and (age is None or age > timedelta(seconds=inp.grace_seconds)):
        # A young sandbox of an unknown run may be a run being started; an old one is an orphan.
        return "its run is unknown"
    return None


async def _temporal_status(run_id: str) -> str | None:
    try:
        described = await activity.client().get_workflow_handle(run_id).describe()
    except RPCError:
        return None
    if described.status in (None, WorkflowExecutionStatus.RUNNING):
        return None
    return described.status.name.lower()


@activity.defn
async def sweep_sandboxes(inp: SweepInput) -> SweepResult:
    """Tear down every leftover sandbox and report each one in the feed."""
    sandbox = get_sandbox()
    handles = await sandbox.list()
    run_ids = {h.run_id for h in handles if h.run_id}
    async with db.session() as s:
        rows = (await s.exec(select(Run.id, Run.status).where(col(Run.id).in_(run_ids)))).all() if run_ids else []
    statuses = {run_id: status for run_id, status in rows}
    for run_id, status in list(statuses.items()):
        if status == "running":  # PostgreSQL may not know yet that the workflow was terminated from outside
            statuses[run_id] = await _temporal_status(run_id) or status
    result = SweepResult()
    for handle in handles:
        reason = _why(handle, statuses.get(handle.run_id), inp)
        if reason is None:
            result.kept += 1
            continue
        await sandbox.teardown(handle)
        result.removed[handle.id] = reason
    if result.removed:
        async with db.session() as s:
            owners = {h.id: h.run_id or None for h in handles}
            for sandbox_id, why in result.removed.items():
                add_event(s, "sandbox.swept", f"sandbox {sandbox_id} removed: {why}", run_id=owners.get(sandbox_id),
                          sandbox=sandbox_id, backend=sandbox.backend)
    return result
