"""Sandbox activities: provision a stage's workspace before its task, tear it down after (always).

From engine 6 both are regular activities (a clone or a Kubernetes pod can take minutes) and heartbeat while they
work, so a worker that dies mid-step is noticed within the heartbeat timeout; run as local activities (older
engines' runs) they do not heartbeat, which local activities cannot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from temporalio import activity
from temporalio.exceptions import ApplicationError

from devart.activities.budgets import check_budget
from devart.core.contracts import Prepared, PrepareInput, ProvisionInput, SandboxHandle, TeardownInput
from devart.core.errors import SandboxError, SandboxUnavailable
from devart.sandboxes.factory import get_sandbox


@asynccontextmanager
async def heartbeating(step: str) -> AsyncIterator[None]:
    """Heartbeat every third of the activity's heartbeat timeout while the body runs (regular activities only).

    The sandbox backends wait on git or Kubernetes without a point to beat from, so a task beats beside them; the
    beat also carries Temporal's cancellation to the activity, which then cancels the step.
    """
    info = activity.info()
    if info.is_local or not info.heartbeat_timeout:
        yield
        return

    async def beat(every: float) -> None:
        while True:  # the first beat after a while: a quick step (most of them) costs no heartbeat call at all
            await asyncio.sleep(every)
            activity.heartbeat(step)

    beats = asyncio.create_task(beat(info.heartbeat_timeout.total_seconds() / 3))
    try:
        yield
    finally:
        beats.cancel()
        with suppress(asyncio.CancelledError):
            await beats


@activity.defn
async def provision_sandbox(inp: ProvisionInput) -> SandboxHandle:
    """Create the stage's sandbox holding the repository at the requested ref."""
    try:
        async with heartbeating(f"provisioning {inp.stage}"):
            return await get_sandbox().provision(inp.run_id, inp.stage, inp.source, inp.spec)
    except SandboxUnavailable as exc:
        raise ApplicationError(str(exc), type="SandboxUnavailable", non_retryable=True) from exc
    except SandboxError as exc:
        # A missing repository, path or ref will not fix itself on retry; a network fault or a busy cluster may.
        raise ApplicationError(str(exc), type=exc.reason if exc.retryable else "SandboxProvisionFailed",
                               non_retryable=not exc.retryable) from exc


@activity.defn
async def prepare_stage(inp: PrepareInput) -> Prepared:
    """A stage's budget check and, when the budget lets it go on, its sandbox: one step instead of two (engine 9).

    The check reads nothing where the run's organisation has no budget (``domain.budget_cache``); a soft limit
    holds the stage unless the run was approved, and the workflow then waits for the approval and asks again.
    """
    decision = await check_budget(inp.budget)
    if decision.state == "ok" or (decision.state == "soft" and inp.approved):
        return Prepared(decision=decision, handle=await provision_sandbox(inp.provision))
    return Prepared(decision=decision)


@activity.defn
async def teardown_sandbox(inp: TeardownInput) -> None:
    """Kill whatever still runs in the sandbox and remove it; idempotent, so retries are safe."""
    async with heartbeating(f"tearing {inp.handle.id} down"):
        await get_sandbox().teardown(inp.handle)
