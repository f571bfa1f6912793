"""The built-in remedies a retry can apply: each a named, bounded change to the failed task, for the failure kinds
it answers. The knowledge base says which one worked for a similar failure; this module says what each does.

A remedy changes only the task the next attempt receives (its sandbox limits, its command time limit, the skill
inputs that make it diagnose or propose), never the stage's definition, and never past the caps the operator sets
(``DEVART_SELFHEAL_*``): a failure that more memory cannot fix costs at most the cap once. A remedy that would change
nothing (the limit is at its cap, the failure is not one it can answer) is not applied. Each remedy reads the
previous attempt's failure (``Failure``): some answer any failure of their kind, others only the diagnosis the
skill wrote into its output (the failed tests' node ids, a build backend missing offline, fixable lint findings).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings

from devart.core.contracts import AgentTaskInput
from devart.core.settings_base import env_config


class SelfHealSettings(BaseSettings):
    """Caps on what a remedy may give a retry, and when a remedy is trusted enough to apply unasked."""

    model_config = env_config("DEVART_SELFHEAL_")
    max_memory_mb: int = Field(default=8192, ge=32, description="The most memory a remedy gives a sandbox (MiB).")
    max_pids: int = Field(default=4096, ge=8, description="The most processes a remedy allows a sandbox.")
    max_command_seconds: float = Field(default=3600.0, gt=0,
                                       description="The longest command time limit a remedy sets.")
    min_success_rate: float = Field(
        default=0.3, ge=0.0, le=1.0,
        description="A remedy whose record (Laplace-smoothed success rate) falls below this is only suggested, never "
        "applied unasked: a guard against harmful memories.")


@dataclass(frozen=True)
class Failure:
    """The previous attempt's failure, as its row holds it: what a remedy answers."""

    error_type: str
    message: str = ""
    #: The skill's structured output of the failed attempt (its diagnosis: test node ids, the failed step...).
    output: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """A remedy's effect on a task: the new task and what changed, in words."""

    task: AgentTaskInput
    change: str


def _factor(parameters: Mapping[str, Any]) -> float:
    try:
        factor = float(parameters.get("factor", 2.0))
    except (TypeError, ValueError):
        return 2.0
    return min(max(factor, 1.1), 8.0)


def more_memory(task: AgentTaskInput, parameters: Mapping[str, Any], caps: SelfHealSettings,
                failure: Failure) -> Change | None:
    spec = task.sandbox.spec
    wanted = min(int(spec.memory_mb * _factor(parameters)), caps.max_memory_mb)
    if wanted <= spec.memory_mb:
        return None
    healed = spec.model_copy(update={"memory_mb": wanted})
    return Change(_with_spec(task, healed), f"memory {spec.memory_mb} -> {wanted} MiB")


def more_processes(task: AgentTaskInput, parameters: Mapping[str, Any], caps: SelfHealSettings,
                   failure: Failure) -> Change | None:
    spec = task.sandbox.spec
    wanted = min(int(spec.pids * _factor(parameters)), caps.max_pids)
    if wanted <= spec.pids:
        return None
    return Change(_with_spec(task, spec.model_copy(update={"pids": wanted})), f"processes {spec.pids} -> {wanted}")


def longer_timeout(task: AgentTaskInput, parameters: Mapping[str, Any], caps: SelfHealSettings,
                   failure: Failure) -> Change | None:
    """A longer limit per command. The stage's own timeout (Temporal's start-to-close) still bounds the attempt."""
    spec = task.sandbox.spec
    now = spec.timeout.total_seconds()
    wanted = min(now * _factor(parameters), caps.max_command_seconds)
    if wanted <= now:
        return None
    healed = spec.model_copy(update={"timeout": timedelta(seconds=wanted)})
    return Change(_with_spec(task, healed), f"command time limit {now:g} -> {wanted:g} s")


def _with_spec(task: AgentTaskInput, spec: Any) -> AgentTaskInput:
    return task.model_copy(update={"sandbox": task.sandbox.model_copy(update={"spec": spec})})


Remedy = Callable[[AgentTaskInput, Mapping[str, Any], SelfHealSettings, Failure], Change | None]

#: Each built-in remedy, and the error types it answers (what the knowledge base explores first for them).
REMEDIES: dict[str, tuple[Remedy, frozenset[str]]] = {
    "more_memory": (more_memory, frozenset({"OutOfMemory"})),
    "more_processes": (more_processes, frozenset({"PidsLimit"})),
    "longer_timeout": (longer_timeout, frozenset({"CommandTimeout", "Timeout"})),
}


def answering(error_type: str) -> list[str]:
    """The built-in remedies for an error type, in the order they are tried when no entry knows better."""
    return [name for name, (_, kinds) in REMEDIES.items() if error_type in kinds]


def apply(name: str, task: AgentTaskInput, parameters: Mapping[str, Any], caps: SelfHealSettings | None = None,
          failure: Failure | None = None) -> Change | None:
    """``name``'s change to ``task`` after ``failure``; None for an unknown remedy, a failure of a kind it does not
    answer, or one it would change nothing for."""
    found = REMEDIES.get(name)
    if found is None:
        return None
    function, kinds = found
    if failure is not None and failure.error_type not in kinds:
        return None
    return function(task, parameters, caps or SelfHealSettings(), failure or Failure(error_type=""))
