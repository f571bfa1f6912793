"""SDK agents the API tests start (``devart agent --module tests.api.agent_apps``)."""

from __future__ import annotations

from devart_sdk import AgentApp, SkillContext, StageResult

app = AgentApp()


@app.skill("oversized", capabilities=[])
async def oversized(ctx: SkillContext) -> StageResult:
    """Succeeds with an output of ``inputs.bytes`` bytes: far past what Temporal carries when asked to."""
    return ctx.result("made a big result", output={"blob": "x" * int(ctx.task.inputs.get("bytes", 0))})
