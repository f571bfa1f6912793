"""Pydantic contracts shared by the API, the pipeline worker, the workflow and the agents.

Every workflow and activity takes one of these models and returns one, and the AMQP task message is one too, so
the wire format between processes is defined in exactly one place. The module has no side effects and imports
only pydantic and the standard library: workflows import it inside Temporal's deterministic sandbox.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Skills an agent knows how to run; a pipeline naming another skill is refused before it starts.
BUILTIN_SKILLS: frozenset[str] = frozenset({"build", "test", "lint", "review", "shell"})


class Strict(BaseModel):
    """Base for contracts: unknown fields are an error, so a typo in a template never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")


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
        description="Variables filled at exec time from the executing process's environment: NAME -> env:VAR. "
        "Only the reference travels in history and messages, never the value.",
    )

    @field_validator("secrets")
    @classmethod
    def _references(cls, value: dict[str, str]) -> dict[str, str]:
        for name, ref in value.items():
            if not ref.startswith("env:") or len(ref) <= 4:
                raise ValueError(f"secret '{name}' must reference an environment variable as 'env:NAME', got {ref!r}")
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


#: The version of PipelineWorkflow's behaviour a new run gets (see ``RunInput.engine``): 2 checks budgets before
#: each dispatch, 3 runs the housekeeping steps as local activities, 4 records the run's start while its first
#: stages prepare, 5 gives every stage a verdict (any error fails it), bounds the wait for an approval and ends a
#: failed run as a failed workflow, 6 provisions and tears sandboxes down as regular activities with heartbeats,
#: reports to GitHub from activities of its own and names each activity's stage in its summary, 7 keeps the
#: sandbox steps that do not go over the network (a local folder's copy, a local sandbox's removal) local.
ENGINE = 7


#: ``RunInput.trigger`` of the runs a GitHub webhook starts: only they report to GitHub.
GITHUB_TRIGGER = "github"


class EngineUnknown(Exception):
    """A run started with an engine newer than this worker knows: it must fail, not be run the wrong way.

    Not a ``ValueError``, so pydantic lets it through instead of folding it into a ``ValidationError``: the
    workflow declares it a failure exception, so the run fails at once (naming both versions) instead of its
    workflow task failing again and again on a worker that cannot read the input.
    """


class RunInput(Strict):
    """Input of ``PipelineWorkflow``: the validated definition plus everything that varies per run."""

    run_id: str
    pipeline: PipelineDefinition
    source: Source
    params: dict[str, str] = Field(default_factory=dict)
    trigger: str = "api"
    priority: int = Field(default=3, ge=1, le=5, description="1 (lowest) to 5 (highest), honoured within a lane.")
    engine: int = Field(
        default=1,
        description="The workflow behaviour this run started with (ENGINE); absent in runs from before it existed. "
        "It selects replay-sensitive branches instead of patch markers, each of which costs every run a "
        "search-attribute write on the server.",
    )
    approval_timeout: timedelta = Field(
        default=timedelta(hours=24),
        description="How long a stage paused on a soft budget waits for an approval before it fails (engine 5).",
    )

    @model_validator(mode="before")
    @classmethod
    def _known_engine(cls, data: Any) -> Any:
        """Refuse a newer engine before any field is read: its input may carry fields this version lacks."""
        engine = data.get("engine") if isinstance(data, dict) else None
        if isinstance(engine, int) and engine > ENGINE:
            raise EngineUnknown(f"run {data.get('run_id', '?')} was started with engine {engine}, but this worker "
                                f"knows engines up to {ENGINE} only: upgrade the worker (or start the run from an "
                                f"API of the worker's version)")
        return data


class StageStatus(StrEnum):
    PENDING = "pending"
    AWAITING_APPROVAL = "awaiting_approval"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Usage(Strict):
    """Resources one task consumed; costs are derived from these."""

    model_tokens: dict[str, int] = Field(default_factory=dict, description="Tokens by model name.")
    sandbox_cpu_seconds: float = 0.0


class StageResult(Strict):
    """What an agent reports when a task finishes (successfully or not)."""

    status: Literal["succeeded", "failed"]
    summary: str
    output: dict[str, Any] = Field(default_factory=dict, description="Structured, skill-specific figures.")
    log_tail: str = ""
    usage: Usage = Field(default_factory=Usage)
    attempt: int = Field(default=0, description="Attempt that produced this result (set by the API).")
    cost: float = Field(default=0.0, description="Cost of this attempt's usage under the price table (set by the API).")
    agent: str | None = Field(default=None, description="Agent that produced it (set by the API).")


class StageState(Strict):
    """A stage as the workflow sees it; returned by the ``stages`` query and kept in the run's record."""

    name: str
    status: StageStatus = StageStatus.PENDING
    depends_on: list[str] = Field(default_factory=list)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    result: StageResult | None = None
    error: str | None = None


class RunResult(Strict):
    """Output of ``PipelineWorkflow``."""

    run_id: str
    status: RunStatus
    stages: list[StageState]
    error: str | None = None


class SandboxHandle(Strict):
    """A provisioned sandbox: enough for any process on the backend to exec in it and tear it down."""

    backend: str
    id: str
    isolated: bool = Field(default=True, description="False when the operator chose to run without isolation.")
    run_id: str = Field(default="", description="The run the sandbox belongs to (for sweeping).")
    created_at: datetime | None = Field(default=None, description="When it was provisioned (for sweeping).")
    workspace: str = Field(description="Path of the repository checkout as commands see it.")
    spec: SandboxSpec = Field(default_factory=SandboxSpec)


class ProvisionInput(Strict):
    run_id: str
    stage: str
    source: Source
    spec: SandboxSpec


class TeardownInput(Strict):
    handle: SandboxHandle


class AgentTaskInput(Strict):
    """Input of the dispatch activity: everything the agent needs, minus the per-attempt identity."""

    run_id: str
    pipeline: str
    stage: str
    skill: str
    requires: list[str]
    inputs: dict[str, Any]
    sandbox: SandboxHandle
    source: Source
    wait_timeout: float = Field(default=600.0, description="Seconds the task may wait with no agent able to serve it.")
    priority: int = Field(default=3, ge=1, le=5, description="The run's priority: higher runs first within a lane.")


class AgentTaskMessage(Strict):
    """The AMQP message on a capability lane; the agent claims ``task_id`` through the API before working."""

    task_id: str
    run_id: str
    stage: str
    attempt: int
    lane: str
    priority: int = Field(default=3, ge=1, le=5)


class TaskDetail(AgentTaskInput):
    """What a successful claim returns to the agent."""

    task_id: str
    attempt: int
    claim_id: str
    heartbeat_interval: float


class RunRecord(Strict):
    """Input of the records activity: the run's state to persist."""

    run_id: str
    pipeline: str
    repository: str
    ref: str | None
    trigger: str
    params: dict[str, str]
    status: RunStatus
    stages: list[StageState]
    error: str | None = None
    report_github: bool = Field(
        default=True,
        description="Whether the records activity reports to GitHub itself (engines before 6, whose histories "
        "replay with it); from engine 6 the workflow sends each report as an activity of its own.",
    )


class GitHubReport(Strict):
    """Input of the GitHub report activity (engine 6): a run's start or end, or one stage's start or end."""

    event: Literal["run_started", "run_finished", "stage_started", "stage_finished"]
    record: RunRecord = Field(description="The run as the workflow sees it; a stage's report holds that stage only.")
    stage: str | None = Field(default=None, description="The stage of a stage_* event.")


class BudgetCheck(Strict):
    run_id: str
    pipeline: str
    repository: str
    stage: str


class BudgetDecision(Strict):
    """Whether a stage may start: ``ok``, ``soft`` (pause for approval) or ``hard`` (stop the run)."""

    state: Literal["ok", "soft", "hard"]
    message: str = ""
