"""The contracts that describe a pipeline template: its stages, their retries, sandboxes and capabilities.

Split from ``core/contracts.py`` (which re-exports every name here, so ``from devart.core.contracts import X`` keeps
working) because a template is one idea and a run's messages another: this module holds what a pipeline *is*, and
``Strict``, the base of every contract. Like ``core/contracts.py`` it has no side effects and imports only pydantic
and the standard library: workflows import it inside Temporal's deterministic sandbox.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Skills an agent knows how to run; a pipeline naming another skill is refused before it starts.
BUILTIN_SKILLS: frozenset[str] = frozenset({"build", "test", "lint", "review", "shell"})


class Strict(BaseModel):
    """Base for contracts: unknown fields are an error, so a typo in a template never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


#: Error types a self-healing stage (``self_heal: apply``, engine 8 on) leaves to its skill although the default
#: retry policy lists them as final: the skill allows a retry only when a remedy answers that very failure (re-run
#: the failed tests, build without isolation offline, propose ``ruff --fix``), never a blind re-run.
REMEDY_DIAGNOSED_ERROR_TYPES: frozenset[str] = frozenset({"TestsFailed", "BuildFailed", "LintFailed"})


class RetrySpec(Strict):
    """How Temporal retries one stage's agent task (maps onto ``temporalio.common.RetryPolicy``)."""

    initial_interval: timedelta = Field(default=timedelta(seconds=2), description="Delay before the 2nd attempt.")
    backoff_coefficient: float = Field(default=2.0, ge=1.0, description="Growth factor of the delay.")
    maximum_interval: timedelta = Field(default=timedelta(seconds=60), description="Cap on the delay.")
    maximum_attempts: int = Field(default=3, ge=1, le=100, description="Attempts in all, the first included.")
    non_retryable_error_types: list[str] = Field(
        default_factory=lambda: ["TestsFailed", "TestCollectionFailed", "TestDependenciesFailed", "BuildFailed",
                                 "InstallFailed", "LintFailed", "InvalidInput", "SkillNotFound"],
        description="Error types that fail the stage at once.",
    )

    @field_validator("initial_interval", "maximum_interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
        return value


#: What a secret reference names after ``secret:`` or ``env:``: a store secret's or a variable's name.
SECRET_TARGET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class SandboxSpec(Strict):
    """What a stage's sandbox needs; the local backend honours what it can, Kubernetes all of it."""

    image: str = Field(default="python:3.11-slim", description="Container image (Kubernetes backend).")
    cpu: float = Field(default=1.0, gt=0, description="CPU cores.")
    memory_mb: int = Field(default=1024, ge=32, description="Memory limit in MiB.")
    pids: int = Field(default=512, ge=8, description="Maximum number of processes.")
    disk_mb: int = Field(default=2048, ge=16, description="Workspace size limit in MiB.")
    timeout: timedelta = Field(default=timedelta(minutes=30), description="Wall-clock limit of one command.")
    network: Literal["none", "packages", "egress"] = Field(
        default="none",
        description="Outbound network access: none; packages (only the configured package index, through the "
        "agent's index proxy); egress (unrestricted).",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables for every command.")
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="Variables filled at exec time: NAME -> secret:NAME (the organisation's secret store, "
        "`devart secrets set`) or NAME -> env:VAR (the agent's environment, only variables an operator allow-listed "
        "in DEVART_SECRETS_ALLOWED). Only the reference travels in history and messages, never the value, and the "
        "value is masked in the stage's output.",
    )

    @field_validator("secrets")
    @classmethod
    def _references(cls, value: dict[str, str]) -> dict[str, str]:
        for name, ref in value.items():
            kind, _, target = ref.partition(":")
            if kind not in ("env", "secret") or not SECRET_TARGET.match(target):
                raise ValueError(f"secret '{name}' must reference the organisation's secret store as 'secret:NAME' "
                                 f"or an environment variable as 'env:NAME', got {ref!r}")
        return value


#: A capability: what an agent offers and a stage requires. '+' joins a lane's requirements and ',' separates
#: capabilities on the command line and priority bands in queue names, so neither may appear in one.
CAPABILITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@#/-]{0,63}")


def check_capabilities(values: list[str]) -> list[str]:
    """The capabilities, stripped; a clear error for the first that could not name a lane unambiguously."""
    stripped = [v.strip() for v in values]
    for value in stripped:
        if not CAPABILITY.fullmatch(value):
            raise ValueError(f"invalid capability {value!r}: use letters, digits and . _ : @ # / - (up to 64, no "
                             "spaces, '+' or ',')")
    return stripped


class StageSpec(Strict):
    """One stage of a pipeline template."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    skill: str
    requires: list[str] = Field(default_factory=list, description="Capabilities an agent needs for this stage.")
    depends_on: list[str] = Field(default_factory=list)
    inputs: dict[str, Any] = Field(default_factory=dict, description="Skill inputs; ${param} is substituted.")
    timeout: timedelta = Field(default=timedelta(minutes=10), description="Start-to-close timeout of a task.")
    heartbeat_timeout: timedelta = Field(default=timedelta(seconds=30), description="A silent agent is dead.")
    wait_timeout: timedelta = Field(
        default=timedelta(minutes=10), description="How long a task may wait while no active agent can serve it."
    )
    retry: RetrySpec = Field(default_factory=RetrySpec)
    sandbox: SandboxSpec = Field(default_factory=SandboxSpec)
    self_heal: Literal["apply", "suggest", "off"] = Field(
        default="apply",
        description="What a retry does with the knowledge base: apply a built-in remedy whose record is good "
        "(and pass the hints on), only suggest (the hints reach the agent and its model), or nothing.",
    )

    @field_validator("requires")
    @classmethod
    def _capabilities(cls, value: list[str]) -> list[str]:
        return check_capabilities(value)


class PipelineDefinition(Strict):
    """A pipeline template: a DAG of stages plus the parameters it accepts."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    version: int = Field(default=1, ge=1)
    description: str = ""
    params: dict[str, str] = Field(default_factory=dict, description="Parameter names and their defaults.")
    priority: int = Field(default=3, ge=1, le=5, description="Priority of its runs unless a run asks for another.")
    stages: list[StageSpec] = Field(min_length=1)


class Source(Strict):
    """The repository a run works on: a local path or a git URL, at a ref."""

    repo: str = Field(min_length=1, description="Local path or git URL.")
    ref: str | None = Field(default=None, description="Branch, tag or commit; None means the working tree.")
