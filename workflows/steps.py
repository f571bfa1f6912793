"""How ``PipelineWorkflow`` runs its steps, by engine: as regular or local activities, and what each one reads
as in the Web UI.

Engines 3 to 5 ran every housekeeping step as a local activity. Provisioning and tearing down a sandbox may clone
a remote repository or start and delete a Kubernetes pod, which takes minutes: engine 6 made both regular
activities with heartbeats, so a worker that dies mid-clone is noticed within the heartbeat timeout, not when
the whole step times out. That cost every run two workflow tasks more, also where the step is a copy of a local
folder and the removal of another, so from engine 7 only a networked step is regular: a provision from a remote
URL, a teardown on a backend other than the local one. The run's record and the budget check stay local.
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
        #: Engine 6 made the sandbox steps regular again, with heartbeats, and named every step.
        self._regular_sandbox = engine >= 6
        #: Engine 7 keeps a sandbox step local when it does not go over the network.
        self._only_networked = engine >= 7

    def name(self, text: str) -> str | None:
        """``text`` as an activity's summary from engine 6 on; older runs replay without one."""
        return text if self._regular_sandbox else None

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

    async def sandbox(self, name: str, arg: Any, result_type: type | None, timeout: timedelta,
                      retry: RetryPolicy, heartbeat: timedelta, summary: str, networked: bool) -> Any:
        """A sandbox step, which may wait on the network for minutes (``networked``: clone, pod start or deletion).

        A regular activity that heartbeats from engine 6 (from 7 only when ``networked``); engines 3 to 5 ran it as
        a local activity, 1 and 2 as a regular one without heartbeats.
        """
        if self._regular_sandbox and (networked or not self._only_networked):
            return await workflow.execute_activity(
                name, arg, result_type=result_type, start_to_close_timeout=timeout, heartbeat_timeout=heartbeat,
                retry_policy=retry, summary=summary,
            )
        return await self.short(name, arg, result_type, timeout, retry, summary)
