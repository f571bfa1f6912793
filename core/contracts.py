"""Pydantic contracts shared by the API, the pipeline worker, the workflow and the agents.

Every workflow and activity takes one of these models and returns one, and the AMQP task message is one too, so
the wire format between processes is defined in exactly one place. The module has no side effects and imports
only pydantic and the standard library: workflows import it inside Temporal's deterministic sandbox. The contracts
of a pipeline template live in ``core/contracts_pipeline.py`` and are re-exported here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from devart.core.contracts_pipeline import BUILTIN_SKILLS as BUILTIN_SKILLS
from devart.core.contracts_pipeline import CAPABILITY as CAPABILITY
from devart.core.contracts_pipeline import PipelineDefinition as PipelineDefinition
from devart.core.contracts_pipeline import RetrySpec as RetrySpec
from devart.core.contracts_pipeline import SandboxSpec as SandboxSpec
from devart.core.contracts_pipeline import Source as Source
from devart.core.contracts_pipeline import StageSpec as StageSpec
from devart.core.contracts_pipeline import Strict as Strict
from devart.core.contracts_pipeline import check_capabilities as check_capabilities

#: The version of PipelineWorkflow's behaviour a new run gets (see ``RunInput.engine``): 2 checks budgets before
#: each dispatch, 3 runs the housekeeping steps as local activities, 4 records the run's start while its first
#: stages prepare, 5 gives every stage a verdict (any error fails it), bounds the wait for an approval and ends a
#: failed run as a failed workflow, 6 provisions and tears sandboxes down as regular activities with heartbeats,
#: reports to GitHub from activities of its own and names each activity's stage in its summary, 7 keeps the
#: sandbox steps that do not go over the network (a local folder's copy, a local sandbox's removal) local, 8 lets a
#: stage that needed a retry, or failed, teach the knowledge base (``learn_from_stage``), 9 leaves the run's start
#: to the API, which records it (no record step), and names the run's organisation in each budget check, so a
#: worker that knows the organisation has no budget reads nothing (``domain.budget_cache``).
ENGINE = 9


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


#: Most tokens of one model a task may report: a trillion, far beyond any task, within what costs can hold.
MAX_TOKENS = 10**12
#: Most CPU-seconds a task may report: a year of one CPU.
MAX_CPU_SECONDS = 366 * 86400.0


class Usage(Strict):
    """Resources one task consumed; costs are derived from these.

    Agents report it, so it is bounded: a negative count would lower its run's cost and its budget's spending,
    and an endless one would overflow the cost's column (a server error where a 422 is due).
    """

    model_tokens: dict[str, Annotated[int, Field(ge=0, le=MAX_TOKENS)]] = Field(
        default_factory=dict, description="Tokens by model name.")
    sandbox_cpu_seconds: float = Field(default=0.0, ge=0.0, le=MAX_CPU_SECONDS, allow_inf_nan=False)


class AppliedRemedy(Strict):
    """A remedy the knowledge base had applied to a retry: what changed, why, and from which entry."""

    name: str = Field(description="A built-in remedy, e.g. more_memory.")
    parameters: dict[str, Any] = Field(default_factory=dict)
    attempt: int = Field(description="The attempt it was applied to.")
    after: str = Field(description="The failure it answers: the previous attempt's error type.")
    entry_id: int | None = Field(default=None, description="The knowledge entry that suggested it; None: tried "
                                 "because the failure's kind has this built-in remedy and no entry knew better.")
    change: str = Field(description="What it changed, e.g. 'memory 128 -> 256 MiB'.")


class TaskHint(Strict):
    """A knowledge-base entry handed to a retry: for the agent's skill and its model prompt."""

    entry_id: int
    remedy: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    guidance: str | None = None
    similarity: float
    success_rate: float


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
    remedies: list[AppliedRemedy] = Field(default_factory=list,
                                          description="Remedies applied to this attempt's task (set by the API).")


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


class PrepareInput(Strict):
    """A stage's first step from engine 9: its budget check, then (when the budget allows) its sandbox."""

    budget: BudgetCheck
    provision: ProvisionInput
    #: A supervisor approved the run: a soft limit no longer holds the stage.
    approved: bool = False


class Prepared(Strict):
    """The budget's decision and, when it let the stage go on, the sandbox provisioned for it."""

    decision: BudgetDecision
    handle: SandboxHandle | None = None


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
    self_heal: Literal["apply", "suggest", "off"] = Field(default="apply", description="The stage's policy.")
    hints: list[TaskHint] = Field(default_factory=list, description="Knowledge-base entries for a retry's failure.")
    remedies: list[AppliedRemedy] = Field(default_factory=list, description="Remedies applied to this task so far.")


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
    #: The run's organisation (engine 9): with it, a worker that knows the organisation has no budget reads nothing.
    org: str | None = None


class BudgetDecision(Strict):
    """Whether a stage may start: ``ok``, ``soft`` (pause for approval) or ``hard`` (stop the run)."""

    state: Literal["ok", "soft", "hard"]
    message: str = ""


class LearnInput(Strict):
    """Input of ``learn_from_stage`` (engine 8): how a stage's agent task ended, after retries or failing."""

    run_id: str
    pipeline: str
    stage: str
    skill: str
    status: Literal["succeeded", "failed"]
    attempts: int
    remedies: list[AppliedRemedy] = Field(default_factory=list)
