"""What a skill receives and how it reports progress."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from devart.core.contracts import StageResult, TaskDetail
from devart.sandboxes.base import Sandbox


@dataclass
class SkillContext:
    """Everything a skill may use: the task, its sandbox, and a way to tell the supervisor how it is going."""

    task: TaskDetail
    sandbox: Sandbox
    #: Interpreter whose tools (pytest, ruff, build) run inside the sandbox; the host is mounted read-only there.
    python: str
    progress: Callable[[str], None] = field(default=lambda _msg: None)

    @property
    def workspace(self) -> str:
        return self.task.sandbox.workspace


Skill = Callable[[SkillContext], Awaitable[StageResult]]
