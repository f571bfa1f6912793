"""One claimed task on an agent: its skill beside a heartbeat loop, then the report of how it ended.

Split from ``workers.agent``, which decides *which* tasks to run and when to stop; this module runs one. A task
ends in exactly one report: its result, its failure, its cancellation, or (``handback`` set) its hand-back. A
handed-back task goes back to its lane within the same activity attempt (``api.services.tasks.release``), so the
agent's caller puts its message back on the queue for another agent instead of acknowledging it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from devart.core.contracts import StageResult, TaskDetail
from devart.core.errors import SkillError
from devart.core.telemetry import tracing as telemetry
from devart.sandboxes.base import Sandbox, store_name, store_secrets
from devart.workers import outcomes
from devart.workers.agent_client import AgentClient, Refused
from devart.workers.skills.base import Skill, SkillContext

log = logging.getLogger("devart.agent")


@dataclass
class Execution:
    """One task this agent is running; ``handback`` set means: stop and give it back."""

    task: TaskDetail
    skill: asyncio.Task[StageResult] | None = None
    handback: str | None = None
    progress: dict[str, str] = field(default_factory=dict)
    #: The API took the task back: its message must go back to the lane, not be acknowledged.
    handed_back: bool = False

    def hand_back(self, reason: str) -> None:
        """Stop the skill; the report then hands the task back with ``reason``."""
        if self.handback is None and self.skill is not None:
            self.handback = reason
            self.skill.cancel()


class Runner:
    """Runs claimed tasks with the agent's skills, sandbox and API client."""

    def __init__(self, name: str, client: AgentClient, sandbox: Sandbox, skills: dict[str, Skill],
                 heartbeat_interval: float | None) -> None:
        self.name = name
        self.client = client
        self.sandbox = sandbox
        self.skills = skills
        self._heartbeat_interval = heartbeat_interval

    async def execute(self, execution: Execution) -> None:
        """Run the skill beside a heartbeat loop; report the outcome; a cancel or lost claim stops the skill."""
        ctx = SkillContext(task=execution.task, sandbox=self.sandbox, python=sys.executable,
                           progress=_progress_setter(execution.progress))
        execution.skill = asyncio.create_task(self._run_skill(ctx))  # inherits the "agent task" span
        outcome = await self._supervise(execution)
        await self._report(execution, outcome)

    async def _supervise(self, execution: Execution) -> str:
        assert execution.skill is not None
        interval = self._heartbeat_interval or execution.task.heartbeat_interval
        outcome = "done"
        while not execution.skill.done():
            done, _ = await asyncio.wait({execution.skill}, timeout=interval)
            if done:
                break
            try:
                if await self.client.heartbeat(execution.task, execution.progress):
                    outcome = "cancelled"
                    execution.skill.cancel()
            except Refused:
                outcome = "lost"
                execution.skill.cancel()
        return outcome

    async def _report(self, execution: Execution, outcome: str) -> None:
        task, skill = execution.task, execution.skill
        assert skill is not None
        try:
            result = await skill
        except asyncio.CancelledError:
            if outcome == "cancelled":
                await self.client.cancelled(task)
            elif execution.handback is not None:
                await self.client.release(task, execution.handback)
                execution.handed_back = True
            log.info("%s/%s attempt %s %s", task.run_id, task.stage, task.attempt, execution.handback or outcome)
            return
        except SkillError as exc:
            report = StageResult(status="failed", summary=str(exc), output=exc.output, log_tail=exc.log_tail)
            await outcomes.fail(self.client, task, exc.error_type, str(exc), exc.non_retryable, report)
            return
        except Exception as exc:  # a bug in a skill must fail the attempt, not kill the agent
            log.exception("skill %s crashed", task.skill)
            await outcomes.fail(self.client, task, "AgentError", f"{type(exc).__name__}: {exc}", False, None)
            return
        with telemetry.tracer().start_as_current_span("report"):
            await outcomes.complete(self.client, task, result)

    async def _run_skill(self, ctx: SkillContext) -> StageResult:
        with telemetry.tracer().start_as_current_span(
            f"skill {ctx.task.skill}", attributes={"devart.skill": ctx.task.skill}
        ):
            values = await self._store_secrets(ctx.task)
            with store_secrets(values):  # the sandbox puts them in the commands' environment, masked in output
                return await self._call_skill(ctx)

    async def _store_secrets(self, task: TaskDetail) -> dict[str, str]:
        """The values of the stage's ``secret:`` references, asked of the API now that this agent holds the claim:
        they never travel in the task's message or Temporal's history. A name the organisation's store lacks fails
        the stage for good (``SecretMissing``): retrying cannot create it."""
        if not any(store_name(ref) is not None for ref in task.sandbox.spec.secrets.values()):
            return {}
        answer = await self.client.task_secrets(task)
        missing = [str(name) for name in answer.get("missing", [])]
        if missing:
            raise SkillError(f"the stage's secrets name {', '.join(repr(n) for n in missing)}, which the "
                             "organisation's secret store does not hold: create with `devart secrets set NAME`",
                             error_type="SecretMissing", non_retryable=True)
        return {str(k): str(v) for k, v in dict(answer.get("values", {})).items()}

    async def _call_skill(self, ctx: SkillContext) -> StageResult:
        skill = self.skills.get(ctx.task.skill)
        if skill is None:
            raise SkillError(
                f"agent {self.name} has no skill {ctx.task.skill!r}", error_type="SkillNotFound", non_retryable=True
            )
        return await skill(ctx)


def _progress_setter(progress: dict[str, str]) -> Callable[[str], None]:
    def set_progress(message: str) -> None:
        progress["progress"] = message[:500]

    return set_progress
