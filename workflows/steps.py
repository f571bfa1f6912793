"""How ``PipelineWorkflow`` runs its steps, by engine: as regular or local activities, and what each one reads
as in the Web UI.

Engines 3 to 5 ran every housekeeping step as a local activity. From engine 6 only the short steps that stay on
this worker and its database (the run's record, the budget check) are local; provisioning and tearing down a
sandbox may clone a remote repository or start and delete a Kubernetes pod, which takes minutes, so they are
regular activities with heartbeats: a worker that dies mid-clone is noticed within the heartbeat timeout, not
when the whole step times out, and a local activity that outlives its workflow task timeout is not needed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy


def summary(stage: str, step: str) -> str:
    """The line the Web UI shows for an activity: its stage first, since every stage runs the same activities."""
    return f"{stage} · {step}"


class Steps:
    """Runs the workflow's steps the way the run's engine did, so histories of every engine replay."""

    def __init__(self, engine: int) -> None:
        #: Engine 3 made the housekeeping steps local activities.
        self._local = engine >= 3
        #: Engine 6 made the networked sandbox steps regular again, with heartbeats, and named every step.
        self._networked = engine >= 6

    def name(self, text: str) -> str | None:
        """``text`` as an activity's summary from engine 6 on; older runs replay without one."""
        return text if self._networked else None

    async def short(self, name: str, arg: Any, result_type: type | None, timeout: timedelta, retry: RetryPolicy,
                    summary: str) -> Any:
        """A short step on this worker's database (record, budget check): a local activity from engine 3 on.

        No round trip through the server's activity task queue: a one-stage run costs two workflow tasks fewer
        per step than with regular activities.
        """
        if self._local:
            return await workflow.execute_local_activity(
                name, arg, result_type=result_type, start_to_close_timeout=timeout, retry_policy=retry,
                summary=self.name(summary),
            )
        return await workflow.execute_activity(
            name, arg, result_type=result_type, start_to_close_timeout=timeout, retry_policy=retry,
        )

    async def networked(self, name: str, arg: Any, result_type: type | None, timeout: timedelta,
                        retry: RetryPolicy, heartbeat: timedelta, summary: str) -> Any:
        """A step that may wait on the network for minutes (clone, pod start, pod deletion).

        From engine 6 a regular activity that heartbeats; engines 3 to 5 ran it as a local activity, 1 and 2 as a
        regular one without heartbeats.
        """
        if self._networked:
            return await workflow.execute_activity(
                name, arg, result_type=result_type, start_to_close_timeout=timeout, heartbeat_timeout=heartbeat,
                retry_policy=retry, summary=summary,
            )
        return await self.short(name, arg, result_type, timeout, retry, summary)
