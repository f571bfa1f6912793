"""The floor ladder's workflow: one activity that publishes its task and is completed from another process.

Temporal's workflow sandbox re-executes this module for every workflow it starts (see ``bench.pipeline``), so it
holds the workflow alone: the activity (with its AMQP channel) lives in ``bench.floor`` and is called by name, and
the arguments are plain strings and booleans, which the sandbox does not rebuild.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

#: The activity's name, shared with ``bench.floor``, which defines it.
HOP_ACTIVITY = "bench_floor_hop"
#: Generous: the activity waits in a queue behind up to a round's runs. The heartbeat timeout is a stage's (the
#: claim step heartbeats once, as devart's claim does).
HOP_TIMEOUT, HOP_HEARTBEAT = timedelta(seconds=300), timedelta(seconds=30)


@workflow.defn(name="BenchFloorHop")
class FloorHopWorkflow:
    """Steps (b) and (c) of the ladder: ``claim`` asks the consumer to heartbeat by token before completing."""

    @workflow.run
    async def run(self, token: str, claim: bool) -> str:
        result: str = await workflow.execute_activity(
            HOP_ACTIVITY, args=[token, claim], start_to_close_timeout=HOP_TIMEOUT, heartbeat_timeout=HOP_HEARTBEAT,
            retry_policy=RetryPolicy(maximum_attempts=1), result_type=str)
        return result
