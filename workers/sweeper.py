"""The sandbox sweeper: removes sandboxes whose run has ended or that outlived their time to live, and ends runs
whose workflow never started.

Teardown in the workflow's ``finally`` covers every normal path; this catches the rest (a run terminated from
outside, a worker that died between provision and teardown and never came back for it), for every backend. The
API records a run before it starts the run's workflow, two writes no transaction spans: an API that dies between
them leaves a run that says "running" with no workflow to ever end it. Once such a run is older than the grace
period and Temporal does not know its workflow, the sweep fails it and says why in the feed. The API records the
run's start after its workflow started, another pair of writes: a run that goes on without its start in the feed gets
it from the sweep (or from its own end, ``domain.run_feed``).

It is housekeeping, not a run, so it is no workflow: a periodic task in each pipeline worker, of which only one
sweeps at a time (a PostgreSQL advisory lock), keeps Temporal's workflow list to the runs. Releases before it ran
it from a Temporal Schedule; ``retire_schedule`` removes that schedule from upgraded deployments.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from contextlib import suppress
from datetime import timedelta

from pydantic import BaseModel, Field
from sqlalchemy import func, text
from sqlmodel import col, select
from temporalio.client import Client, ScheduleActionExecutionStartWorkflow, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from devart.core.contracts import SandboxHandle
from devart.core.database import db
from devart.core.database.models import Run, utcnow
from devart.core.orgs import DEFAULT_ORG
from devart.core.settings import SweepSettings
from devart.core.temporal_namespaces import Namespaces
from devart.domain import run_feed
from devart.domain.events import add_event
from devart.sandboxes import artifacts
from devart.sandboxes.base import Sandbox
from devart.sandboxes.factory import get_sandbox

log = logging.getLogger(__name__)

#: The schedule older releases swept with, one per task queue (``<id>-<task queue>``).
OLD_SCHEDULE_ID = "devart-sandbox-sweeper"
#: The advisory lock a worker holds while it sweeps; any other worker skips that round.
LOCK_KEY = zlib.crc32(b"devart-sandbox-sweeper")


#: Running runs looked up in Temporal per sweep at most, drawn at random so that every one is looked at in time
#: however many long runs there are, and a large backlog cannot stall a sweep.
UNSTARTED_BATCH = 200
#: Why a run whose workflow never started is failed.
NEVER_STARTED = "Temporal has no workflow for it: the API stopped between recording the run and starting it"
_FAIL_UNSTARTED = text("UPDATE runs SET status = 'failed', error = :error, finished_at = now() "
                       "WHERE id = :id AND status = 'running' RETURNING pipeline")
#: Why the sweep, not the API, recorded a run's start: the API stopped after starting the workflow (or, under
#: heavy load, still waits for a database connection to record it).
LATE_START = "the API had not recorded it within the grace period"


class SweepResult(BaseModel):
    removed: dict[str, str] = Field(default_factory=dict, description="Sandbox id -> why it was removed.")
    runs_failed: list[str] = Field(default_factory=list, description="Runs failed because their workflow never "
                                   "started.")
    runs_started: list[str] = Field(default_factory=list, description="Runs going whose start the sweep put in the "
                                    "feed, the API not having recorded it within the grace period.")
    kept: int = 0
    artifacts_removed: list[str] = Field(default_factory=list, description="Runs whose handed-on files were dropped.")


def _why(handle: SandboxHandle, run_status: str | None, cfg: SweepSettings) -> str | None:
    """Why this sandbox should go, or None to keep it."""
    if run_status is not None and run_status != "running":
        return f"its run is {run_status}"
    age = utcnow() - handle.created_at if handle.created_at else None
    if age is not None and age > timedelta(seconds=cfg.ttl_seconds):
        return f"older than its time to live ({cfg.ttl_seconds:.0f}s)"
    if run_status is None and (age is None or age > timedelta(seconds=cfg.grace_seconds)):
        # A young sandbox of an unknown run may be a run being started; an old one is an orphan.
        return "its run is unknown"
    return None


async def _temporal_status(temporal: Namespaces, run_id: str, org: str | None) -> str | None:
    try:
        described = await (await temporal.for_org(org or DEFAULT_ORG)).get_workflow_handle(run_id).describe()
    except RPCError:
        return None
    if described.status in (None, WorkflowExecutionStatus.RUNNING):
        return None
    return described.status.name.lower()


async def _unstarted(temporal: Namespaces, cfg: SweepSettings) -> tuple[list[str], list[str]]:
    """Fail the runs older than the grace period that still say "running" but whose workflow Temporal does not know,
    and record the start of those it knows whose start the feed lacks: ``(failed, started)``.

    The grace period covers a start in progress (recorded, its workflow about to start, its start about to be
    recorded). A run whose workflow ended without recording it is left to the API, which reads its end from
    Temporal; an unreachable Temporal fails nothing, the next sweep looks again.
    """
    cutoff = utcnow() - timedelta(seconds=cfg.grace_seconds)
    async with db.session() as s:
        candidates = (await s.exec(select(Run.id, Run.org_id).where(Run.status == "running", Run.created_at < cutoff)
                                   .order_by(func.random()).limit(UNSTARTED_BATCH))).all()
        in_feed = await run_feed.started_among(s, [run_id for run_id, _ in candidates])
    failed, started = [], []
    for run_id, org in candidates:
        try:
            await (await temporal.for_org(org or DEFAULT_ORG)).get_workflow_handle(run_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND and await _fail_unstarted(run_id):
                failed.append(run_id)
            continue
        if run_id not in in_feed:
            async with db.session() as s:
                if await run_feed.record_started(s, run_id, late=f"by the sweep: {LATE_START}"):
                    started.append(run_id)
    return failed, started


async def _fail_unstarted(run_id: str) -> bool:
    """Fail a run whose workflow Temporal does not know, unless something else ended it meanwhile."""
    async with db.session() as s:
        changed = (await s.execute(_FAIL_UNSTARTED, {"id": run_id, "error": f"could not start: {NEVER_STARTED}"}
                                   )).first()
        if changed is None:
            return False
        add_event(s, "run.finished", f"run failed: could not start: {NEVER_STARTED}", run_id=run_id,
                  pipeline=changed.pipeline, status="failed")
        return True



async def sweep(temporal: Namespaces, cfg: SweepSettings) -> SweepResult:
    """Fail the runs whose workflow never started, tear down every leftover sandbox, and report each in the feed."""
    failed, started = await _unstarted(temporal, cfg)
    result = SweepResult(runs_failed=failed, runs_started=started)
    sandbox = get_sandbox()
    handles = await sandbox.list()
    run_ids = {h.run_id for h in handles if h.run_id}
    async with db.session() as s:
        rows = (await s.exec(select(Run.id, Run.status, Run.org_id).where(col(Run.id).in_(run_ids)))).all() \
            if run_ids else []
    statuses = {run_id: status for run_id, status, _ in rows}
    for run_id, status, org in rows:
        if status == "running":  # PostgreSQL may not know yet that the workflow was terminated from outside
            statuses[run_id] = await _temporal_status(temporal, run_id, org) or status
    for handle in handles:
        reason = _why(handle, statuses.get(handle.run_id), cfg)
        if reason is None:
            result.kept += 1
            continue
        await sandbox.teardown(handle)
        result.removed[handle.id] = reason
    result.artifacts_removed = await _prune_artifacts(temporal, sandbox)
    if result.removed:
        async with db.session() as s:
            owners = {h.id: h.run_id or None for h in handles}
            for sandbox_id, why in result.removed.items():
                add_event(s, "sandbox.swept", f"sandbox {sandbox_id} removed: {why}", run_id=owners.get(sandbox_id),
                          sandbox=sandbox_id, backend=sandbox.backend)
    return result


async def _prune_artifacts(temporal: Namespaces, sandbox: Sandbox) -> list[str]:
    """Drop the files stages handed on (``sandboxes/artifacts.py``) of every run that is no longer going."""
    from devart.sandboxes.local import LocalSandbox

    if not isinstance(sandbox, LocalSandbox):
        return []
    stored = await asyncio.to_thread(artifacts.runs, sandbox.root)
    if not stored:
        return []
    async with db.session() as s:
        rows = (await s.exec(select(Run.id, Run.org_id).where(col(Run.id).in_(stored), Run.status == "running"))).all()
    going = {run_id for run_id, org in rows if await _temporal_status(temporal, run_id, org) is None}
    return await asyncio.to_thread(sandbox.remove_artifacts, going)


async def sweep_if_alone(temporal: Namespaces, cfg: SweepSettings) -> SweepResult | None:
    """One sweep, unless another worker holds the sweeper's lock (then None: that one is sweeping)."""
    async with db.engine().connect() as conn:
        locked = (await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY})).scalar_one()
        if not locked:
            return None
        try:
            return await sweep(temporal, cfg)
        finally:
            # A session lock outlives transactions, so it is released by hand before the connection is pooled again.
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            await conn.commit()


async def keep_sweeping(temporal: Namespaces, stop: asyncio.Event, cfg: SweepSettings | None = None) -> None:
    """Sweep now and then every ``cfg.every`` seconds until ``stop``; a failed sweep is logged, the next one runs."""
    cfg = cfg or SweepSettings()
    while not stop.is_set():
        try:
            result = await sweep_if_alone(temporal, cfg)
            if result is not None and result.removed:
                log.info("swept %d sandbox(es): %s", len(result.removed), result.removed)
            if result is not None and result.runs_started:
                log.warning("recorded the start of %d run(s) the API had not: %s", len(result.runs_started),
                            result.runs_started)
            if result is not None and result.runs_failed:
                log.warning("failed %d run(s) whose workflow never started: %s", len(result.runs_failed),
                            result.runs_failed)
        except Exception:
            log.exception("sandbox sweep failed; the next one is in %ss", cfg.every)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=cfg.every)


async def retire_schedule(client: Client, task_queue: str) -> None:
    """Delete the sweep schedule an older release created, and stop a sweep it may have left running."""
    handle = client.get_schedule_handle(f"{OLD_SCHEDULE_ID}-{task_queue}")
    try:
        described = await handle.describe()
        await handle.delete()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            log.warning("could not remove the old sweep schedule %s: %s", handle.id, exc.message)
        return
    log.info("removed the old sweep schedule %s: the pipeline worker sweeps now", handle.id)
    for action in described.info.running_actions:
        if isinstance(action, ScheduleActionExecutionStartWorkflow):
            with suppress(RPCError):  # it may have finished meanwhile
                await client.get_workflow_handle(action.workflow_id, run_id=action.first_execution_run_id).terminate(
                    "the sandbox sweeper now runs in the pipeline worker")
