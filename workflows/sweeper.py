"""SandboxSweepWorkflow: started by a Temporal Schedule, it runs one sweep of leftover sandboxes."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.sweeper import SweepInput, SweepResult

#: The schedule's id; one per namespace and task queue.
SCHEDULE_ID = "devart-sandbox-sweeper"
#: How often the sweeper runs.
SWEEP_EVERY = timedelta(minutes=1)
#: Listing and removing sandboxes; a cluster with many pods can take a while.
SWEEP_TIMEOUT = timedelta(minutes=5)
#: A failed sweep is retried a few times; the next scheduled one tries again anyway.
SWEEP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(seconds=30),
                          maximum_attempts=3)


@workflow.defn
class SandboxSweepWorkflow:
    @workflow.run
    async def run(self, inp: SweepInput) -> SweepResult:
        return await workflow.execute_activity(
            "sweep_sandboxes", inp, result_type=SweepResult, start_to_close_timeout=SWEEP_TIMEOUT,
            retry_policy=SWEEP_RETRY,
        )
