"""devart's agent SDK: write a specialised agent in a few lines.

    from devart_sdk import AgentApp, SkillContext, StageResult

    app = AgentApp()

    @app.skill("dependency-audit", capabilities=["python", "audit"])
    async def audit(ctx: SkillContext) -> StageResult:
        listing = await ctx.run(["cat", "pyproject.toml"])
        ctx.progress("checking dependencies")
        return ctx.result("3 findings", output={"findings": [...]})

A result is checked before it is sent: one past the API's limit (``core.bounds.MAX_RESULT_BYTES``, 256 KiB as
Temporal encodes it) fails the stage with "result of N bytes exceeds the limit of M bytes" instead of being sent.

Run it with ``devart agent --name auditor --module mypkg.agents`` (the agent's capabilities default to the union
of its skills' capabilities). Pipelines use the skill by name once an agent offering it has come online.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devart.core.bounds import skills_problem
from devart.core.contracts import StageResult, Usage
from devart.core.errors import SkillError
from devart.core.telemetry import tracing as telemetry
from devart.sandboxes.base import ExecResult
from devart.workers.skills.base import SkillContext as _BaseContext

__all__ = ["AgentApp", "ExecResult", "SkillContext", "SkillError", "StageResult", "Usage", "load"]


class SkillContext(_BaseContext):
    """What a skill gets: the task (``task.inputs``), its sandbox, and helpers to run commands and report."""

    async def run(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600.0
    ) -> ExecResult:
        """Run a command in the task's sandbox (cwd = the repository checkout)."""
        self.progress(f"$ {' '.join(argv)}"[:500])
        with telemetry.tracer().start_as_current_span(
            "sandbox exec", attributes={"devart.command": " ".join(argv)[:500]}
        ):
            return await self.sandbox.exec(self.task.sandbox, list(argv), env=env, timeout=timeout)

    def result(
        self, summary: str, *, output: dict[str, Any] | None = None, usage: Usage | None = None, log_tail: str = ""
    ) -> StageResult:
        """A successful result; raise ``SkillError`` to fail instead."""
        return StageResult(
            status="succeeded", summary=summary, output=output or {}, usage=usage or Usage(), log_tail=log_tail
        )


SkillFunction = Callable[[SkillContext], Awaitable[StageResult]]


@dataclass
class SkillSpec:
    name: str
    capabilities: list[str]
    function: SkillFunction


@dataclass
class AgentApp:
    """A set of skills an agent offers."""

    skills: dict[str, SkillSpec] = field(default_factory=dict)

    def skill(self, name: str, *, capabilities: Sequence[str]) -> Callable[[SkillFunction], SkillFunction]:
        """Declare a skill and the capabilities an agent needs to run it.

        The name is checked here, where the author sees it, against the rule the API applies to every agent's
        announcement (``core.bounds.SKILL_NAME``: lower-case letters, digits and . _ -, up to 64 characters).
        """
        if problem := skills_problem([name]):
            raise ValueError(problem)

        def register(function: SkillFunction) -> SkillFunction:
            if name in self.skills:
                raise ValueError(f"skill {name!r} is declared twice")
            self.skills[name] = SkillSpec(name, sorted(set(capabilities)), function)
            return function

        return register

    @property
    def capabilities(self) -> list[str]:
        return sorted({c for spec in self.skills.values() for c in spec.capabilities})

    def runners(self) -> dict[str, Callable[[_BaseContext], Awaitable[StageResult]]]:
        """The skills as the agent runtime calls them (with the SDK's richer context)."""

        def wrap(spec: SkillSpec) -> Callable[[_BaseContext], Awaitable[StageResult]]:
            async def run(ctx: _BaseContext) -> StageResult:
                return await spec.function(
                    SkillContext(task=ctx.task, sandbox=ctx.sandbox, python=ctx.python, progress=ctx.progress)
                )

            return run

        return {name: wrap(spec) for name, spec in self.skills.items()}


def load(module_name: str) -> AgentApp:
    """Import ``module_name`` and merge every ``AgentApp`` it defines."""
    module = importlib.import_module(module_name)
    apps = [value for value in vars(module).values() if isinstance(value, AgentApp)]
    if not apps:
        raise ValueError(f"module {module_name!r} defines no AgentApp")
    merged = AgentApp()
    for app in apps:
        for spec in app.skills.values():
            merged.skills[spec.name] = spec
    return merged
