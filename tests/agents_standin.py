"""A stand-in skill for tests that drive the real agent runtime (``devart agent --module tests.agents_standin``).

It runs nothing in the sandbox and answers at once, so a test of how tasks reach agents (routing, claims, reports)
spends its time in the agent runtime, RabbitMQ and the API rather than in a build. It reports the task it was given,
so the test can check that each task reached its skill whole and as dispatched.
"""

from __future__ import annotations

from devart_sdk import AgentApp, SkillContext, StageResult

app = AgentApp()

#: The skill's name, for the tests' task messages and pipelines.
PROBE = "route-probe"


@app.skill(PROBE, capabilities=[])
async def route_probe(ctx: SkillContext) -> StageResult:
    """Succeed with the task's identity and requirements as its output."""
    ctx.progress(f"probing {ctx.task.stage}")
    task = ctx.task
    return ctx.result(f"probed {task.task_id}", output={
        "task_id": task.task_id, "run_id": task.run_id, "stage": task.stage, "attempt": task.attempt,
        "requires": sorted(task.requires), "inputs": task.inputs,
    })
