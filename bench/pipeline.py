"""What the pipeline benchmarks run: the bare Temporal baseline workflow, and devart's noop pipelines.

* baseline: ``BenchBaseline``, a workflow with one no-op activity, on an in-process worker with the pipeline
  worker's settings, polling a task queue of its own;
* devart: a published pipeline of one (or three chained) stages running the ``noop`` skill, on a lane only the
  benchmark's agents serve.

Temporal's workflow sandbox re-executes this module for every workflow it starts, as it does
``workflows/pipeline.py``, so it holds only the workflow, its activity and the pipeline definition: the load
driver lives in ``bench.scale``. The baseline passes a string rather than a model defined here, because a
pydantic class defined in a workflow module is rebuilt for each workflow (devart's contracts are passed through).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

#: The baseline activity does nothing; a minute is far beyond any honest latency here.
NOOP_TIMEOUT = timedelta(seconds=60)
#: A no-op never fails; bounded anyway (the default policy retries forever).
NOOP_RETRY = RetryPolicy(maximum_attempts=3)


@activity.defn(name="bench_noop")
async def noop(token: str) -> str:
    return token


@workflow.defn(name="BenchBaseline")
class BaselineWorkflow:
    @workflow.run
    async def run(self, token: str) -> str:
        return await workflow.execute_activity(noop, token, start_to_close_timeout=NOOP_TIMEOUT,
                                               retry_policy=NOOP_RETRY)


#: A stage's start-to-close and wait timeouts (seconds). At 5,000 runs in flight a task waits in its lane behind
#: thousands of others for minutes: the benchmark's deadline per run, not the stage's timeout, must be what
#: counts a slow run as an error (a timeout would retry the stage and blur the figures).
STAGE_TIMEOUT = 3600


def noop_pipeline(name: str, capability: str, stages: int) -> dict[str, Any]:
    """A pipeline of ``stages`` noop stages in a chain, each on the benchmark agents' lane."""
    retry = {"initial_interval": 1, "backoff_coefficient": 2.0, "maximum_interval": 5, "maximum_attempts": 3}
    names = [f"s{i + 1}" for i in range(stages)]
    return {
        "name": name,
        "description": f"benchmark: {stages} noop stage(s)",
        "stages": [
            {"name": n, "skill": "noop", "requires": [capability], "timeout": STAGE_TIMEOUT, "heartbeat_timeout": 30,
             "wait_timeout": STAGE_TIMEOUT, "depends_on": names[:i][-1:], "retry": retry}
            for i, n in enumerate(names)
        ],
    }
