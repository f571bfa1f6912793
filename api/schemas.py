"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, computed_field, field_validator

from devart.core import bounds
from devart.core.contracts import StageResult, StageState, StageStatus, check_capabilities
from devart.core.messaging.topology import DEFAULT_PRIORITY, PRIORITIES


def _text(value: str) -> str:
    if why := bounds.text_problem(value):
        raise ValueError(why)
    return value


def _free(value: dict[str, Any]) -> dict[str, Any]:
    if problems := bounds.tree_problems(value):
        raise ValueError("; ".join(problems))
    return value


def _params(value: dict[str, str]) -> dict[str, str]:
    if (found := bounds.json_size(value)) > bounds.MAX_PARAMS_BYTES:
        raise ValueError(f"the parameters are {found} bytes as JSON; at most {bounds.size(bounds.MAX_PARAMS_BYTES)} "
                         "(they travel in the run's workflow input and in every task)")
    return value


# The bounded strings and values of request bodies (core.bounds says why each limit is what it is). Text fields
# refuse NUL bytes and lone surrogates here, at the edge, instead of failing in PostgreSQL after being accepted.
Name = Annotated[str, Field(max_length=bounds.MAX_NAME_CHARS), AfterValidator(_text)]
Location = Annotated[str, Field(max_length=bounds.MAX_LOCATION_CHARS), AfterValidator(_text)]
Text = Annotated[str, Field(max_length=bounds.MAX_TEXT_CHARS), AfterValidator(_text)]
ParamValue = Annotated[str, Field(max_length=bounds.MAX_STRING_CHARS), AfterValidator(_text)]
#: A free-form JSON object (heartbeat details): nesting, sizes and text checked by ``bounds.tree_problems``.
FreeJson = Annotated[dict[str, Any], AfterValidator(_free)]
Params = Annotated[dict[Name, ParamValue], Field(max_length=bounds.MAX_PARAMS), AfterValidator(_params)]


class RunRequest(BaseModel):
    pipeline: Name = Field(min_length=1, description="Name of a built-in or published pipeline.")
    repo: Location = Field(min_length=1, description="Absolute local path or git URL of the repository.")
    ref: Location | None = Field(default=None, description="Branch, tag or commit (default: the working tree / HEAD).")
    params: Params = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=1, le=bounds.INT4_MAX,
                                description="Pipeline version (default: the latest).")
    trigger: str = Field(default="api", pattern=r"^[a-z][a-z0-9_-]{0,30}$")
    priority: int | None = Field(
        default=None, description="1 (lowest) to 5 (highest), honoured within a lane (default: the pipeline's)."
    )

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: int | None) -> int | None:
        if value is not None and value not in PRIORITIES:
            raise ValueError(f"priority must be an integer from 1 (lowest) to 5 (highest), got {value}")
        return value


class RunCreated(BaseModel):
    run_id: str
    pipeline: str
    version: int
    status: str
    ui_url: str


class AttemptView(BaseModel):
    attempt: int
    status: str
    agent: str | None
    lane: str
    created_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    error: str | None
    late_reports: int
    waiting_reason: str | None = None


class FailedTest(BaseModel):
    """One failing test of a stage, as the ``test`` skill lists it in ``result.output.failures``."""

    test: str = Field(description="pytest node id, e.g. tests/test_slug.py::test_slugify.")
    outcome: str = Field(default="failed", description="failed or errors (an error outside the test body).")
    message: str = Field(default="", description="First line of the failure message.")


def first_line(text: str | None) -> str | None:
    """The first non-blank line of ``text``: reasons are shown on one line, the rest is in the log tail."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return None


def failed_tests(result: StageResult | None) -> list[FailedTest]:
    """``result.output.failures``, tolerating a missing or malformed list (skills and agent versions differ)."""
    listed = (result.output.get("failures") if result else None) or []
    tests = []
    for item in listed if isinstance(listed, list) else []:
        if isinstance(item, dict) and item.get("test"):
            tests.append(FailedTest(test=str(item["test"]), outcome=str(item.get("outcome") or "failed"),
                                    message=first_line(str(item.get("message") or "")) or ""))
        elif isinstance(item, str) and item:
            tests.append(FailedTest(test=item))
    return tests


class StageView(StageState):
    """A stage of a run, with what a person needs to see why it failed or was skipped."""

    # Redeclared only to document them in the OpenAPI schema.
    result: StageResult | None = Field(
        default=None,
        description="The agent's report of the last attempt, also for a failed stage when the agent sent one: "
        "summary, skill-specific output (the test skill: counts and `failures` with `test`, `outcome`, `message`), "
        "`log_tail` (the last lines of the commands' output), usage and cost. None when no agent reported.",
    )
    error: str | None = Field(
        default=None,
        description="Why the stage failed (`ErrorType: message`), was skipped or is paused; None otherwise.",
    )
    attempt_log: list[AttemptView] = Field(default_factory=list)
    waiting: str | None = Field(default=None, description="Why the stage's task is not being worked on, if so.")
    cost: float = Field(default=0.0, description="Cost of all of the stage's attempts.")
    warnings: list[str] = Field(default_factory=list)

    @computed_field(  # type: ignore[prop-decorator]
        description="One line saying why the stage did not succeed (failed, skipped, cancelled or paused): the first "
        "line of `error`, else of the result's summary; None for a stage that succeeded or has not ended."
    )
    @property
    def reason(self) -> str | None:
        if self.status in (StageStatus.SUCCEEDED, StageStatus.PENDING, StageStatus.RUNNING):
            return None
        summary = self.result.summary if self.result and self.status == StageStatus.FAILED else None
        return first_line(self.error) or first_line(summary)

    @computed_field(  # type: ignore[prop-decorator]
        description="The failing tests of the last attempt (from `result.output.failures`; empty when the skill "
        "lists none). The test skill lists up to 50; `result.output.failed` and `errors` count all of them."
    )
    @property
    def failures(self) -> list[FailedTest]:
        return failed_tests(self.result)


class RunView(BaseModel):
    run_id: str
    pipeline: str
    status: str
    repository: str
    ref: str | None
    trigger: str
    params: dict[str, str]
    priority: int = DEFAULT_PRIORITY
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    stages: list[StageView]
    cost: float = Field(default=0.0, description="Cost of the run: the sum of its stages' costs.")
    ui_url: str


class PipelineSummary(BaseModel):
    name: str
    version: int
    description: str
    stages: list[str]
    params: dict[str, str]
    builtin: bool


class ValidationReport(BaseModel):
    valid: bool
    pipeline: str | None = None
    problems: list[str] = Field(default_factory=list)


class HeartbeatRequest(BaseModel):
    claim_id: Name
    details: FreeJson = Field(default_factory=dict)


class HeartbeatReply(BaseModel):
    cancel_requested: bool


class CompleteRequest(BaseModel):
    claim_id: Name
    result: StageResult


class FailRequest(BaseModel):
    claim_id: Name
    error_type: str = Field(default="SkillFailed", pattern=r"^[A-Za-z][A-Za-z0-9_.]{0,63}$")
    message: str
    non_retryable: bool = False
    result: StageResult | None = None


class CancelledRequest(BaseModel):
    claim_id: Name


class ClaimRequest(BaseModel):
    """An agent may name the claim it asks for, so that asking again after a lost answer gets the same claim back
    instead of a refusal (the claim is the agent's own: only its key can use it)."""

    claim_id: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$",
                                 description="32 lowercase hex digits, new for each task the agent claims.")


class ReleaseRequest(BaseModel):
    claim_id: Name
    reason: str = Field(default="agent is shutting down", max_length=500)


class KeepaliveRequest(BaseModel):
    status: Literal["idle", "busy", "draining", "offline"]
    skills: list[Name] = Field(default_factory=list, max_length=bounds.MAX_ITEMS,
                               description="Skills this agent can run (custom ones included).")


class KeepaliveReply(BaseModel):
    active: bool
    handback: bool = Field(description="Deactivated with hand-back: release the current task now.")


class BrokerAccess(BaseModel):
    enforced: bool = Field(description="The agent has a RabbitMQ user of its own, limited to its organisation's "
                                       "queues; false: it uses AMQP_URL's credentials.")
    user: str | None = Field(default=None, description="That user; its password is derived from the agent's key "
                                                       "(devart.core.messaging.broker_users.broker_password).")


class AgentCreate(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    capabilities: list[str] = Field(min_length=1, max_length=bounds.MAX_ITEMS)
    owner: Name = "admin"

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, value: list[str]) -> list[str]:
        return check_capabilities(value)


class AgentCreated(BaseModel):
    name: str
    capabilities: list[str]
    key: str = Field(description="The agent's API key. Shown once; only its hash is stored.")


class SkillStats(BaseModel):
    skill: str
    tasks: int
    successes: int
    success_rate: float
    mean_seconds: float
    cost: float


class AgentView(BaseModel):
    name: str
    capabilities: list[str]
    skills: list[str]
    active: bool
    status: str
    current_task: str | None
    owner: str
    key_prefix: str
    created_at: datetime
    last_seen_at: datetime | None
    stats: list[SkillStats] = Field(default_factory=list)


class BudgetPut(BaseModel):
    soft_limit: float | None = Field(default=None, ge=0, le=bounds.MAX_MONEY, allow_inf_nan=False,
                                     description="Alert and pause for approval at this spend.")
    hard_limit: float | None = Field(default=None, ge=0, le=bounds.MAX_MONEY, allow_inf_nan=False,
                                     description="Stop runs at this spend.")


class BudgetView(BaseModel):
    scope: Literal["pipeline", "repository"]
    name: str
    soft_limit: float | None
    hard_limit: float | None
    spent: float
