"""Sandbox activities: provision a stage's workspace before its task, tear it down after (always)."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.contracts import ProvisionInput, SandboxHandle, TeardownInput
from core.errors import SandboxError, SandboxUnavailable
from sandboxes.factory import get_sandbox


@activity.defn
async def provision_sandbox(inp: ProvisionInput) -> SandboxHandle:
    """Create the stage's sandbox holding the repository at the requested ref."""
    try:
        return await get_sandbox().provision(inp.run_id, inp.stage, inp.source, inp.spec)
    except SandboxUnavailable as exc:
        raise ApplicationError(str(exc), type="SandboxUnavailable", non_retryable=True) from exc
    except SandboxError as exc:
        # A missing repository, path or ref will not fix itself on retry; a network fault or a busy cluster may.
        raise ApplicationError(str(exc), type=exc.reason if exc.retryable else "SandboxProvisionFailed",
                               non_retryable=not exc.retryable) from exc


@activity.defn
async def teardown_sandbox(inp: TeardownInput) -> None:
    """Kill whatever still runs in the sandbox and remove it; idempotent, so retries are safe."""
    await get_sandbox().teardown(inp.handle)
